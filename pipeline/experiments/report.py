"""The comparison report, built from what MLflow recorded for a comparison's parent run.

``build_report(parent_run_id)`` reads the parent's params and ``grid.json`` and every child run
(:func:`storage.tracking.child_runs`: tags ``compare.*``, latest metrics, metric histories,
artifacts), never the stage artifacts or the flow's memory, and writes into
``$SUBSAMPLE_HOME/reports/<parent run id>/``:

``report.html``   self-contained (the plots embedded as base64 PNG)
``report.md``     the same text, plots linked as ``plots/*.png``
``report.json``   every number the report shows, machine-readable
``plots/``        the PNG plots

and logs them to the parent run under ``report/``. The numbers are read and summarised in
``pipeline.experiments.stats``, worded in ``pipeline.experiments.summary`` (``report.json`` is that
summary) and drawn in ``pipeline.experiments.plots``; this module lays them out. Contents:

- first, the answer (:func:`pipeline.experiments.answer.compose_answer`): at most six lines composed
  from the records the sections print, the verdict (or why there is none) first, each line naming
  the section that shows it;
- whether each generator learned (:func:`learning_check`): its training feature KL at epoch 0
  (untrained) against its last epoch; a run that did not move is named in words;
- the batch diagnostics in the paper's layout (Tables 1 and 2: rows strategies, columns batch
  sizes): coverage per epoch (with Eq. 5's ``(n - n mod B)/n``) and ``KL(f_Xi || f_X)`` mean, s.d.,
  minimum, median and maximum, averaged over the seeds' constructions;
- per configuration (preset × strategy × B): feature KL, FID, KID and IS as mean ± s.d. over seeds
  (sample s.d., ``ddof=1``) with the number of seeds; a metric no run has is one sentence saying why;
- each strategy against random, per preset, batch size and metric: difference of means against
  twice the pooled seed s.d., and Welch's t-test, worded plainly;
- curves of feature KL (logged by training every epoch) and FID against epochs, metrics against
  batch size, last-epoch sample grids (seed 0) and the never-drawn images per strategy and B;
- (issues 14 and 19, :mod:`pipeline.experiments.report_sections`): the design's configurations,
  recipes and G-update budgets, every strategy's batches at every B of the design with the label-KL
  check and the random-sample references, the never-drawn count per run and epoch, each feature KL
  beside its bootstrap and held-out floors, in the paper design the paper's own comparisons (its
  claim, random against constructed at the same B, then the method against strategies (a)-(d),
  with the paper's figures), and what the seeds could detect.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any, Optional

from pipeline.experiments.plots import write_plots
from pipeline.experiments.report_sections import (
    batch_check_blocks,
    design_blocks,
    floor_blocks,
    never_drawn_blocks,
    paper_comparison_blocks,
    power_blocks,
)
from pipeline.experiments.stats import EVAL_METRICS, KL_STATS, SPREAD_FACTOR, collect, mean_sd
from pipeline.experiments.summary import summarise
from pipeline.experiments.words import (
    SECTION_BATCHES,
    SECTION_LEARNING,
    SECTION_RESULTS,
    SECTION_SPREAD,
    _compact,
    _run_label,
    fmt,
    fmt_mean_sd,
    learning_sentence,
    missing_sentence,
)
from storage.errors import SubsampleError
from storage.paths import home

STAGE = "report"


def reports_dir(parent_run_id: str) -> Path:
    from storage.paths import inside_home, is_run_id

    if not is_run_id(parent_run_id):  # it names a folder: never a path
        raise SubsampleError(
            STAGE, f"{parent_run_id!r} is not an MLflow run id (32 hex digits); give the id `subsample compare` printed"
        )
    return inside_home(home() / "reports" / parent_run_id, what="report folder")


# --- documents ---------------------------------------------------------------------------------------


SCALE_NOTES = {
    "smoke": "**Smoke scale**: tiny models trained for a few steps. These numbers check that the machinery works; "
    "they say nothing about the method. Run `--scale cpu` for generators that learn on a CPU, "
    "`--scale paper` on a GPU for the paper's settings.",
    "cpu": "**CPU scale**: small DCGANs trained for minutes on a small data set: large enough for the generators to "
    "learn the coarse colour and sharpness statistics the feature KL measures (see *Did the generators "
    "learn?*), far smaller than the paper's models. A difference here is evidence about small models on small "
    "data; run `--scale paper` on a GPU for the paper's settings.",
}


def _blocks(summary: dict[str, Any], plots: dict[str, str]) -> list[tuple]:
    """The report as blocks: ("h", level, text), ("p", text), ("ul", items), ("table", head, rows),
    ("img", name, caption). The first paragraph answers the question; each section after it is one function."""
    out: list[tuple] = [("h", 1, f"Subsample comparison on {summary['dataset']} ({summary['scale']} scale)")]
    out.append(("p", summary["answer"]))
    out += _setup_blocks(summary)
    out += design_blocks(summary)
    out += _learning_blocks(summary)
    out += paper_comparison_blocks(summary)
    out += _spread_blocks(summary)
    out += power_blocks(summary)
    out += _batch_blocks(summary, plots)
    out += _results_blocks(summary, plots)
    if "samples.png" in plots:
        out.append(("h", 2, "Samples"))
        out.append(("img", "samples.png", plots["samples.png"]))
    return out


def _setup_blocks(summary: dict[str, Any]) -> list[tuple]:
    S, B, P = summary["strategies"], summary["batch_sizes"], summary["presets"]
    paper = (summary.get("design") or {}).get("design") == "paper"
    out: list[tuple] = [
        (
            "p",
            f"MLflow parent run `{summary['parent_run_id']}` ({summary['run_name']}, {summary['status']}), "
            f"experiment {summary['experiment_id']}: {summary['runs']} child runs, {summary['runs_ok']} finished. "
            + (
                f"Design: the paper's {len(summary['configurations'])} configurations (below) × "
                if paper
                else f"Grid: strategies {', '.join(S)} × B {', '.join(map(str, B))} × presets {', '.join(P)} × "
            )
            + f"{len(summary['seeds'])} seeds; {summary['n_images']} training images. Every number below was "
            "read back from MLflow (the child runs' metrics, histories, tags and artifacts).",
        )
    ]
    st = summary.get("settings", {})
    factor = (summary.get("design") or {}).get("epoch_factor") if paper else None
    if factor is not None:  # the paper design's epochs are each preset's × the factor, not the scale's own
        st = {**st, "scale_train": {k: v for k, v in st.get("scale_train", {}).items() if k != "epochs"}}
        st["scale_train"]["epochs"] = f"each preset's × {factor:g}"
    over = lambda sec: ", ".join(f"{k}={v}" for k, v in st.get(sec, {}).items()) or "none"  # noqa: E731
    out.append(
        (
            "p",
            f"Over each preset's training values: the scale's ({over('scale_train')}; each recipe's learning "
            f"rates × its optimiser's factor: {over('scale_lr_factors')}), then these given "
            f"values ({over('train')}), then the cell's seed. Evaluation: the scale's ({over('scale_evaluate')}), "
            f"then given ({over('evaluate')}).",
        )
    )
    if summary["scale"] in SCALE_NOTES:
        out.append(("p", SCALE_NOTES[summary["scale"]]))
    return out


def _learning_blocks(summary: dict[str, Any]) -> list[tuple]:
    """Did the generators learn: one sentence, the runs that did not (in words), a table per configuration."""
    learning = summary["learning"]
    out: list[tuple] = [("h", 2, SECTION_LEARNING)]
    out.append(
        (
            "p",
            f"Training logs the feature KL of its fixed-z samples before the first step (epoch 0: the "
            f"untrained generator) and after every epoch. A run whose last value is within "
            f"{learning['tolerance']:.0%} of its epoch-0 value did not learn. " + learning_sentence(learning),
        )
    )
    if learning["not_moved"]:
        out.append(
            (
                "ul",
                [
                    f"{_run_label(r)} (run `{r['run_id']}`): **did not learn**; its evaluation describes an "
                    "untrained generator"
                    for r in learning["not_moved"]
                ],
            )
        )
    rows = []
    by_conf: dict[str, list[dict]] = {}
    for r in learning["runs"]:
        by_conf.setdefault(r["configuration"], []).append(r)
    mean = lambda rs, k: _compact(mean_sd([r[k] for r in rs if r[k] is not None]))  # noqa: E731
    for _conf, rs in by_conf.items():
        known = [r for r in rs if r["moved"] is not None]
        rows.append(
            [
                rs[0]["preset"],
                str(rs[0]["batch_size"]),
                rs[0]["strategy"],
                f"{sum(bool(r['moved']) for r in known)}/{len(rs)}" + ("" if len(known) == len(rs) else " (?)"),
                mean(rs, "feature_kl_initial"),
                mean(rs, "feature_kl_last"),
                f"{mean(rs, 'loss_d_first')} → {mean(rs, 'loss_d_last')}",
                f"{mean(rs, 'loss_g_first')} → {mean(rs, 'loss_g_last')}",
            ]
        )
    if rows:
        out.append(
            (
                "table",
                [
                    "preset",
                    "B",
                    "strategy",
                    "learned",
                    "feature KL, epoch 0",
                    "feature KL, last epoch",
                    "D loss, epoch 1 → last",
                    "G loss, epoch 1 → last",
                ],
                rows,
            )
        )
    return out


def _spread_blocks(summary: dict[str, Any]) -> list[tuple]:
    comps, bcomps = summary["comparisons"], summary.get("batch_comparisons", [])
    out: list[tuple] = [("h", 2, SECTION_SPREAD)]
    if not comps and not bcomps:
        out.append(("p", "No comparison possible: the grid has no random-batch baseline or no finished runs."))
        return out
    every = bcomps + comps
    big = [c for c in every if c["exceeds"] and not c.get("not_learned")]
    out.append(
        (
            "p",
            f"{len(big)} of {len(every)} comparisons with random batches differ by more than "
            f"{SPREAD_FACTOR:g} × the pooled seed s.d. (√((s_a² + s_b²)/2), sample s.d. over seeds); "
            "Welch's t-test is given alongside. With 3 seeds, treat single hits with care: "
            "many comparisons are made. A comparison involving generators that did not learn gives no verdict"
            + (f" ({stuck} of them)." if (stuck := sum(bool(c.get("not_learned")) for c in every)) else "."),
        )
    )
    out.append(("ul", [c["sentence"] for c in big] or ["None: every difference is within the seed spread."]))
    if bcomps:
        out.append(("p", "Batch level (the batches of each strategy, B and seed; the same for every preset):"))
        out.append(("ul", [c["sentence"] for c in bcomps]))
    if comps:
        out.append(("p", "Generator level (the final generators' evaluation):"))
        out.append(("ul", [c["sentence"] for c in comps]))
    return out


def _batch_blocks(summary: dict[str, Any], plots: dict[str, str]) -> list[tuple]:
    S, B = summary["strategies"], summary["batch_sizes"]
    out: list[tuple] = [("h", 2, SECTION_BATCHES)]
    cov_head = ["strategy"] + [f"B={b}" for b in B]
    cov_rows = []
    for s in S:
        row = [s]
        for b in B:
            c = summary["coverage"][f"{s}|{b}"]
            if c["mean"] is None:
                row.append("–")
                continue
            rng = f" ({c['min']:.4f}–{c['max']:.4f})" if c["max"] - c["min"] > 5e-5 else ""
            row.append(f"{c['mean']:.4f}{rng}")
        cov_rows.append(row)
    if summary["coverage_eq5"]:
        cov_rows.append(["Eq. 5: (n − n mod B)/n"] + [f"{summary['coverage_eq5'][str(b)]:.4f}" for b in B])
    epochs = max((c["epochs"] for c in summary["coverage"].values()), default=0)
    out.append(
        (
            "p",
            f"Table 1, coverage per epoch (distinct images drawn / n; higher is better): mean over {epochs} "
            "epoch(s) and the seeds' constructions (range in brackets when it varies).",
        )
    )
    out.append(("table", cov_head, cov_rows))
    kl_rows = []
    for s in S:
        for stat in KL_STATS:
            kl_rows.append([s if stat == "mean" else "", stat] + [fmt(summary["kl"][f"{s}|{b}"][stat]) for b in B])
    out.append(
        (
            "p",
            "Table 2, KL(f_Xi || f_X) of each batch against the data set (Eq. 10, natural log; lower is "
            "better) over all batches of those epochs: mean, s.d., minimum, median, maximum, each averaged "
            "over the seeds.",
        )
    )
    out.append(("table", ["strategy", "statistic"] + [f"B={b}" for b in B], kl_rows))
    if "never_drawn.png" in plots:
        out.append(("img", "never_drawn.png", plots["never_drawn.png"]))
    out += batch_check_blocks(summary)
    out += never_drawn_blocks(summary)
    return out


def _results_blocks(summary: dict[str, Any], plots: dict[str, str]) -> list[tuple]:
    """Results per configuration; a metric no run has is one sentence, not a column of "n/a"."""
    out: list[tuple] = [("h", 2, SECTION_RESULTS)]
    missing = summary.get("missing_metrics") or {}
    specs = [spec for spec in EVAL_METRICS if spec.label not in missing]
    keys = sorted(
        {k for c in summary["configurations"] for spec in EVAL_METRICS for k in c["metrics"][spec.name]["mlflow_keys"]}
    )
    out.append(
        (
            "p",
            "Evaluation of the final generator (MLflow keys: "
            + (", ".join(f"`{k}`" for k in keys) or "none")
            + "). Feature KL is KL(f_G || f_X) in the paper's feature space (f_X smoothed with 0.5 per "
            "cell); lower FID, KID and feature KL and higher IS are better. n = seeds with a finished run."
            + (" " + missing_sentence(missing) if missing else ""),
        )
    )
    head = ["preset", "B", "strategy", "runs ok"] + [spec.label for spec in specs]
    rows = []
    for c in summary["configurations"]:
        rows.append(
            [c["preset"], str(c["batch_size"]), c["strategy"], f"{c['ok']}/{c['planned']}"]
            + [fmt_mean_sd(c["metrics"][spec.name]) for spec in specs]
        )
    out.append(("table", head, rows))
    failed = [(c, f) for c in summary["configurations"] for f in c["failed"]]
    if failed:
        out.append(("p", "Runs that did not finish:"))
        out.append(
            (
                "ul",
                [
                    f"{c['configuration']} seed {f['seed']}: {f['error']}"
                    + (f" (run `{f['run_id']}`)" if f["run_id"] else "")
                    for c, f in failed
                ],
            )
        )
    out += floor_blocks(summary)
    for name in ("metrics_vs_batch_size.png", "feature_kl_curves.png", "fid_curves.png"):
        if name in plots:
            out.append(("img", name, plots[name]))
    if "fid_curves.png" not in plots and "FID" not in missing:
        reasons = {c["metrics"]["fid"]["missing"] for c in summary["configurations"] if c["metrics"]["fid"]["missing"]}
        out.append(("p", f"No FID curves: FID {', '.join(sorted(reasons)) or 'n/a'}."))
    return out


def _html_inline(text: str) -> str:
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def render_markdown(blocks: list[tuple]) -> str:
    lines: list[str] = []
    for b in blocks:
        if b[0] == "h":
            lines += ["#" * b[1] + " " + b[2], ""]
        elif b[0] == "p":
            lines += [b[1], ""]
        elif b[0] == "ul":
            lines += [f"- {item}" for item in b[1]] + [""]
        elif b[0] == "table":
            head, rows = b[1], b[2]
            lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
            lines += ["| " + " | ".join(str(x).replace("|", "\\|") for x in r) + " |" for r in rows] + [""]
        elif b[0] == "img":
            lines += [f"![{b[2]}](plots/{b[1]})", "", f"*{b[2]}*", ""]
    return "\n".join(lines)


CSS = (
    'body{font-family:system-ui,sans-serif,"Noto Sans CJK SC","Source Han Sans SC","PingFang SC","Microsoft YaHei";'
    "max-width:1200px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}\n"
    "table{border-collapse:collapse;margin:0.6em 0 1.2em;font-size:0.9em}"
    "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}\n"
    "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #ddd}\n"
    "figcaption{font-size:0.85em;color:#555;margin-bottom:1.5em}code{background:#f5f5f5;padding:0 3px}"
    "li{margin:0.2em 0}"
)


def render_html(blocks: list[tuple], plots_dir: Path, title: str) -> str:
    body: list[str] = []
    for b in blocks:
        if b[0] == "h":
            body.append(f"<h{b[1]}>{_html_inline(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            body.append("<p>" + "<br>\n".join(_html_inline(line) for line in b[1].split("  \n")) + "</p>")
        elif b[0] == "ul":
            body.append("<ul>" + "".join(f"<li>{_html_inline(i)}</li>" for i in b[1]) + "</ul>")
        elif b[0] == "table":
            head = "".join(f"<th>{_html_inline(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{_html_inline(str(x))}</td>" for x in r) + "</tr>" for r in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b[0] == "img":
            data = base64.b64encode((plots_dir / b[1]).read_bytes()).decode("ascii")
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b[2])}">'
                f"<figcaption>{_html_inline(b[2])}</figcaption></figure>"
            )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


# --- the entry point -------------------------------------------------------------------------------


def build_report(parent_run_id: str, out_dir: Optional[Path] = None, *, log_to_mlflow: bool = True) -> dict[str, Any]:
    """Read the comparison from MLflow, write report.html/.md/.json and plots/ into ``out_dir``
    (default ``$SUBSAMPLE_HOME/reports/<parent run id>/``) and log them to the parent run under
    ``report/``. Returns the paths and headline counts."""
    data = collect(parent_run_id)
    out = Path(out_dir) if out_dir else reports_dir(parent_run_id)
    plots_dir = out / "plots"
    from storage.safe_io import make_dirs, write_atomic

    make_dirs(out, what="report folder")
    summary = summarise(data)
    plots = write_plots(data, summary, plots_dir)
    blocks = _blocks(summary, plots)
    title = f"Subsample comparison on {summary['dataset']} ({summary['scale']})"
    write_atomic(out / "report.md", render_markdown(blocks), what="report")
    write_atomic(out / "report.html", render_html(blocks, plots_dir, title), what="report")
    write_atomic(out / "report.json", json.dumps({**summary, "plots": plots}, indent=1, default=str), what="report")
    if log_to_mlflow:
        from storage import tracking

        tracking.log_artifacts(
            parent_run_id,
            [(out / f, "report") for f in ("report.html", "report.md", "report.json")] + [(plots_dir, "report/plots")],
        )
        from pipeline.experiments.mlflow_record import record_on_parent

        record_on_parent(parent_run_id, summary)  # the verdict and summary metrics on the parent, its runs' view
    return {
        "html": str(out / "report.html"),
        "md": str(out / "report.md"),
        "json": str(out / "report.json"),
        "dir": str(out),
        "parent_run_id": parent_run_id,
        "runs": summary["runs"],
        "runs_ok": summary["runs_ok"],
        "comparisons": len(summary["comparisons"]),
        "exceeding_seed_spread": sum(bool(c["exceeds"]) for c in summary["comparisons"]),
    }
