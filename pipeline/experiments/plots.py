"""The comparison report's figures: feature KL and FID against epochs, metrics against batch size,
last-epoch sample grids and never-drawn montages, each titled with what it shows and big enough
to read. Drawn from :mod:`pipeline.experiments.stats`' numbers and the runs' MLflow artifacts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import numpy as np

from pipeline.experiments.stats import EVAL_METRICS, ReportData, _count, _quiet_downloads, epoch_kl_key, scratch
from storage.safe_io import atomic_path, make_dirs


def _savefig(fig: Any, path: Path) -> None:
    """``fig.savefig`` inside the home, never through a link, renamed into place when complete."""
    with atomic_path(path, what="plot", suffix=path.suffix) as tmp:
        fig.savefig(tmp, dpi=100)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _suptitle(fig, text: str) -> None:
    """A figure title wrapped to the figure's width (a narrow grid would clip it)."""
    import textwrap

    fig.suptitle(textwrap.fill(text, max(int(fig.get_figwidth() * 9), 30)), fontsize=12)


COLOURS = {"random": "tab:grey", "constructed": "tab:blue", "dealt": "tab:orange"}


def _curves(data: ReportData, key_of, title: str, ylabel: str, path: Path) -> bool:
    """One subplot per (preset, B): mean over seeds against epoch, one line per strategy, band ± s.d."""
    strategies, sizes, presets, _ = data.axes()
    series, floors = {}, {}
    for p in presets:
        for b in sizes:
            for s in strategies:
                per_step: dict[int, list[float]] = {}
                for m in data.select(preset=p, batch_size=b, strategy=s):
                    k = key_of(m)
                    for step, v in m.history.get(k, []) if k else []:
                        per_step.setdefault(step, []).append(v)
                    if k and f"{k}_floor" in m.metrics:  # the KL's floor at its sample size
                        floors.setdefault((p, b, s), []).append(m.metrics[f"{k}_floor"])
                if per_step:
                    series[(p, b, s)] = sorted(per_step.items())
    if not series:
        return False
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    # panels: presets × B; a design that is not a full grid (the paper's) gets only its panels
    pairs = [(p, b) for p in presets for b in sizes if any((p, b, s) in series for s in strategies)]
    if len(pairs) < len(presets) * len(sizes):
        ncols = min(3, len(pairs))
        nrows = -(-len(pairs) // ncols)
        layout = {pair: divmod(k, ncols) for k, pair in enumerate(pairs)}
    else:
        nrows, ncols = len(presets), len(sizes)
        layout = {(p, b): (i, j) for i, p in enumerate(presets) for j, b in enumerate(sizes)}
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(max(3.6 * ncols, 5.5), 2.8 * nrows + 0.5), squeeze=False, sharex=False
    )
    for ax in axes.flat[len(layout) :]:
        ax.set_visible(False)
    for (p, b), (i, j) in layout.items():
        ax = axes[i][j]
        for s in strategies:
            pts = series.get((p, b, s))
            if not pts:
                continue
            x = np.array([st for st, _ in pts])
            mean = np.array([np.mean(v) for _, v in pts])
            sd = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for _, v in pts])
            n = max(len(v) for _, v in pts)
            ax.plot(x, mean, marker="o", ms=3, color=COLOURS.get(s), label=f"{s} (n={n})")
            ax.fill_between(x, mean - sd, mean + sd, color=COLOURS.get(s), alpha=0.2, lw=0)
            if floors.get((p, b, s)):
                ax.axhline(
                    float(np.mean(floors[(p, b, s)])),
                    ls="--",
                    lw=1,
                    color=COLOURS.get(s),
                    label="its floor (real images)",
                )
        ax.set_title(f"{p}, B={b}", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    _suptitle(fig, title)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)
    return True


def _per_epoch_fid_curves(data: ReportData, plots: Path) -> dict[str, str]:
    """FID after every evaluated epoch, when the runs were trained with ``--eval-every`` (MLflow
    step metrics ``fid{N}_train``, step = epoch): ``fid_curves.png`` then shows those curves
    instead of the final evaluation's one point per run. One sample count N for all runs (the
    most common), so the curves compare. Reads the histories from MLflow itself."""
    from collections import Counter

    from storage import tracking

    pattern = re.compile(r"^fid(\d+k?)_train$")
    keys = {m.run_id: k for m in data.members for k in m.metrics if pattern.match(k)}
    if not keys:
        return {}
    key = Counter(keys.values()).most_common(1)[0][0]
    c = tracking.client()
    name = f"epoch/{key}"
    for m in data.members:
        if keys.get(m.run_id) == key:
            by_step: dict[int, float] = {}
            for h in sorted(c.get_metric_history(m.run_id, key), key=lambda h: (h.step, h.timestamp)):
                by_step[int(h.step)] = float(h.value)  # the last value logged at each step
            m.history[name] = sorted(by_step.items())
    n = _count(pattern.match(key).group(1))
    make_dirs(plots, what="plots folder")
    if not _curves(
        data,
        lambda m: name if name in m.history else None,
        f"FID ({n:,} generated vs the training set) after each evaluated epoch (mean ± s.d. over seeds)",
        "FID",
        plots / "fid_curves.png",
    ):
        return {}
    return {
        "fid_curves.png": f"FID of {n:,} generated images against the training set after every evaluated epoch "
        "(`subsample train --eval-every`), mean ± s.d. over seeds; the table's FID is the final "
        "evaluation's."
    }


def _vs_batch_size(summary: dict[str, Any], path: Path) -> bool:
    """Final metrics (mean ± s.d. over seeds) against batch size, one line per strategy."""
    specs = [spec for spec in EVAL_METRICS if any(c["metrics"][spec.name]["n"] for c in summary["configurations"])]
    if not specs:
        return False
    plt = _plt()
    presets, sizes = summary["presets"], summary["batch_sizes"]
    fig, axes = plt.subplots(
        len(presets), len(specs), figsize=(max(4.8 * len(specs), 8.0), 3.4 * len(presets) + 0.8), squeeze=False
    )
    xs = np.arange(len(sizes))
    for i, p in enumerate(presets):
        for j, spec in enumerate(specs):
            ax = axes[i][j]
            for k, s in enumerate(summary["strategies"]):
                rows = {
                    c["batch_size"]: c["metrics"][spec.name]
                    for c in summary["configurations"]
                    if c["preset"] == p and c["strategy"] == s
                }
                have = [b in rows and rows[b]["n"] > 0 for b in sizes]
                y = [rows[b]["mean"] if h else np.nan for b, h in zip(sizes, have)]
                e = [(rows[b]["sd"] or 0.0) if h else 0.0 for b, h in zip(sizes, have)]
                ax.errorbar(xs + (k - 1) * 0.06, y, yerr=e, marker="o", ms=4, capsize=3, color=COLOURS.get(s), label=s)
            ax.set_xticks(xs, [str(b) for b in sizes])
            ax.set_xlabel("batch size B", fontsize=8)
            ax.set_title(f"{spec.label} ({'lower' if spec.lower_is_better else 'higher'} is better), {p}", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=7)
    _suptitle(fig, "final metrics against batch size (mean ± s.d. over seeds)")
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)
    return True


def _montage(
    tiles: list[list[Optional[Path]]], row_labels: list[str], col_labels: list[Any], title: str, path: Path
) -> bool:
    """Images in a grid; a column label is one string, or one per row (a title on every tile)."""
    if not any(t for row in tiles for t in row):
        return False
    from PIL import Image

    plt = _plt()
    rows, cols = len(tiles), len(tiles[0])
    images = [[np.asarray(Image.open(t).convert("RGB")) if t is not None else None for t in row] for row in tiles]
    # tiles at their native pixels (the stages' grids are >= 512 px wide and titled); each row as tall
    # and each column as wide as its largest tile, so a short tile leaves no gap
    heights = [max((im.shape[0] for im in row if im is not None), default=120) / 100 for row in images]
    widths = [
        max((images[i][j].shape[1] for i in range(rows) if images[i][j] is not None), default=240) / 100
        for j in range(cols)
    ]
    fig, axes = plt.subplots(
        rows,
        cols,
        squeeze=False,
        layout="constrained",  # room for the title and labels
        figsize=(max(sum(widths) + 0.3 * cols + 0.6, 6.0), sum(heights) + 0.45 * rows + 0.8),
        gridspec_kw={"height_ratios": heights, "width_ratios": widths},
    )
    for i in range(rows):
        for j in range(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if images[i][j] is not None:
                ax.imshow(images[i][j], interpolation="nearest")
            else:
                ax.text(0.5, 0.5, "no image", ha="center", va="center", fontsize=10, transform=ax.transAxes)
            label = col_labels[j] if isinstance(col_labels[j], str) else col_labels[j][i]
            if i == 0 or not isinstance(col_labels[j], str):
                ax.set_title(label, fontsize=11)
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=11)
    _suptitle(fig, title)
    _savefig(fig, path)
    plt.close(fig)
    return True


def _download(run_id: str, artifact: str, dst: Path) -> Optional[Path]:
    from mlflow.exceptions import MlflowException

    from storage import tracking

    try:
        return Path(tracking.client().download_artifacts(run_id, artifact, str(dst)))
    except (MlflowException, OSError):
        return None


def _last_grid(run_id: str, dst: Path) -> Optional[Path]:
    from storage import tracking

    grids = sorted(f.path for f in tracking.client().list_artifacts(run_id, "grids") if f.path.endswith(".png"))
    return _download(run_id, grids[-1], dst) if grids else None


def write_plots(data: ReportData, summary: dict[str, Any], plots: Path) -> dict[str, str]:
    """The PNGs (name -> caption), from the histories and artifacts MLflow holds."""
    make_dirs(plots, what="plots folder")
    made: dict[str, str] = {}
    strategies, sizes, presets, seeds = data.axes()
    if _curves(
        data,
        lambda m: epoch_kl_key(m.history),
        "feature KL(f_G || f_X) of fixed-z samples after each epoch, epoch 0 = untrained (mean ± s.d. over seeds; "
        "lower is better)",
        "feature KL",
        plots / "feature_kl_curves.png",
    ):
        made["feature_kl_curves.png"] = (
            "Feature KL against epochs (training's per-epoch metric, lower is better), "
            "from epoch 0, the untrained generator; dashed: its floor, what as many real "
            "images score."
        )
    fid = next(spec for spec in EVAL_METRICS if spec.name == "fid")
    if _curves(
        data, lambda m: m.eval_key(fid), "FID against epochs (mean ± s.d. over seeds)", "FID", plots / "fid_curves.png"
    ):
        made["fid_curves.png"] = (
            "FID against epochs. The evaluation runs once, on the final generator, so each "
            "run contributes one point, at its last epoch."
        )
    made.update(_per_epoch_fid_curves(data, plots))
    if _vs_batch_size(summary, plots / "metrics_vs_batch_size.png"):
        made["metrics_vs_batch_size.png"] = "Final metrics against batch size, per preset (mean ± s.d. over seeds)."
    seed0 = seeds[0] if seeds else 0
    with scratch() as tmp, _quiet_downloads():
        tmp = Path(tmp)
        tiles, row_labels = [], []
        for p in presets:  # rows: preset × strategy; columns: B (each tile a run's titled grid)
            for s in strategies:
                row = []
                for b in sizes:
                    runs = data.select(preset=p, batch_size=b, strategy=s, seed=seed0)
                    row.append(_last_grid(runs[0].run_id, tmp / runs[0].run_id) if runs else None)
                tiles.append(row)
                row_labels.append(f"{p}\n{s}" if len(presets) > 1 else s)
        if _montage(
            tiles,
            row_labels,
            [f"B={b}" for b in sizes],
            f"{data.dataset}: samples of the last epoch's generator (fixed z, seed {seed0})"
            + (f", preset {presets[0]}" if len(presets) == 1 else ""),
            plots / "samples.png",
        ):
            made["samples.png"] = (
                f"Last-epoch sample grids (seed {seed0}): rows strategies, columns batch sizes; "
                "each grid's title names its run (from each run's `grids/`)."
            )
        tiles, titles = [], {b: [] for b in sizes}
        for s in strategies:
            row = []
            for b in sizes:
                got, count = None, None
                for m in data.select(strategy=s, batch_size=b, seed=seed0, ok=False):
                    got = _download(m.run_id, "batches/never_drawn.png", tmp / f"nd-{m.run_id}")
                    count = m.metrics.get("batches/n_never_drawn")
                    if got:
                        break
                row.append(got)
                titles[b].append(f"B={b}: {int(count) if count is not None else '?'} never drawn")
            tiles.append(row)
        if _montage(
            tiles,
            strategies,
            [titles[b] for b in sizes],
            f"images never drawn in the first epoch (batches seed {seed0}; up to 64 shown)",
            plots / "never_drawn.png",
        ):
            made["never_drawn.png"] = (
                f"Images no batch of the first epoch drew (batches seed {seed0}; the paper's "
                "Fig. 5). Random batches leave out n mod B images at random; constructed "
                "batches leave out images of the rare cells."
            )
    return made
