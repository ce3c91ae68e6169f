"""The comparison report, built from what MLflow recorded for a comparison's parent run.

``build_report(parent_run_id)`` reads the parent's params and ``grid.json`` and every child run
(:func:`storage.tracking.child_runs`: tags ``compare.*``, latest metrics, metric histories,
artifacts), never the stage artifacts or the flow's memory, and writes into
``$SUBSAMPLE_HOME/reports/<parent run id>/``:

``report.html``   self-contained (the plots embedded as base64 PNG)
``report.md``     the same text, plots linked as ``plots/*.png``
``report.json``   every number the report shows, machine-readable
``plots/``        the PNG plots

and logs them to the parent run under ``report/``. Contents:

- first, the answer (:func:`answer_paragraph`, its numbers :func:`answer_details`): do constructed
  batches help compared with random ones, at the batch level (batch KL, coverage) and at the
  generator level (feature KL, FID), with direction and whether it exceeds the seed spread;
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
- (issue 14, the self-contained sections below ``# --- the paper's design, floors and checks``):
  the design's configurations and G-update budgets, every strategy's batches at every B of the
  design with the label-KL check and the random-sample references, the never-drawn count per run
  and epoch, each feature KL beside its floor at its sample size, and, in the paper design, the
  paper's own comparisons (the method against strategies (a)-(d)).
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from pipeline.experiments.compare import CELL_TAGS, ERROR_TAG, FIDELITY_TAG, GRID_ARTIFACT, GridCell
from storage.errors import SubsampleError
from storage.paths import home

STAGE = "report"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    label: str
    pattern: str  # MLflow metric key, the sample count captured
    lower_is_better: bool
    family: str  # evaluate's metric family: "feature" or "fidelity"


EVAL_METRICS = (
    MetricSpec("feature_kl", "feature KL", r"^eval/feature_kl(\d+k?)_train$", True, "feature"),
    MetricSpec("fid", "FID", r"^eval/fid(\d+k?)_train$", True, "fidelity"),
    MetricSpec("kid", "KID", r"^eval/kid(\d+k?)_train$", True, "fidelity"),
    MetricSpec("is", "IS", r"^eval/is(\d+k?)$", False, "fidelity"),
)
KL_STATS = ("mean", "std", "min", "median", "max")
SPREAD_FACTOR = 2.0  # a difference "exceeds the seed spread" when |diff| > 2 × pooled seed s.d.


def reports_dir(parent_run_id: str) -> Path:
    from storage.paths import inside_home, is_run_id

    if not is_run_id(parent_run_id):  # it names a folder: never a path
        raise SubsampleError(STAGE, f"{parent_run_id!r} is not an MLflow run id (32 hex digits); give the id `subsample compare` printed")
    return inside_home(home() / "reports" / parent_run_id, what="report folder")


# --- reading MLflow -------------------------------------------------------------------------------


@dataclass
class Member:
    """One child run of the comparison, as MLflow recorded it."""

    run_id: str
    cell: GridCell
    status: str  # MLflow run status
    error: Optional[str]
    fidelity: str  # the evaluation's IS/FID/KID status tag
    metrics: dict[str, float]  # latest values
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # key -> [(step, value)]

    def eval_key(self, spec: MetricSpec) -> Optional[str]:
        """This run's MLflow key of ``spec`` (the largest sample count when several)."""
        keys = [(k, m.group(1)) for k in self.metrics if (m := re.match(spec.pattern, k))]
        if not keys:
            return None
        return max(keys, key=lambda kv: _count(kv[1]))[0]

    def eval_value(self, spec: MetricSpec) -> Optional[float]:
        k = self.eval_key(spec)
        return None if k is None else self.metrics[k]


def _count(tag: str) -> int:
    return int(tag[:-1]) * 1000 if tag.endswith("k") else int(tag)


@dataclass
class ReportData:
    parent_run_id: str
    run_name: str
    status: str
    dataset: str
    params: dict[str, str]
    grid: list[dict[str, Any]]  # grid.json rows
    members: list[Member]
    experiment_id: str

    @property
    def scale(self) -> str:
        return self.params.get("scale", "?")

    @property
    def n_images(self) -> Optional[int]:
        v = self.params.get("n_images")
        return int(v) if v and v.isdigit() else None

    def axes(self) -> tuple[list[str], list[int], list[str], list[int]]:
        """strategies, batch sizes, presets, seeds: the grid's order, from grid.json (else the runs)."""
        cells = [GridCell(r["strategy"], int(r["batch_size"]), r["preset"], int(r["seed"])) for r in self.grid]
        cells += [m.cell for m in self.members]
        uniq = lambda xs: list(dict.fromkeys(xs))  # noqa: E731
        return (uniq(c.strategy for c in cells), sorted(uniq(c.batch_size for c in cells)),
                uniq(c.preset for c in cells), sorted(uniq(c.seed for c in cells)))

    def select(self, *, strategy: Optional[str] = None, batch_size: Optional[int] = None,
               preset: Optional[str] = None, seed: Optional[int] = None, ok: bool = True) -> list[Member]:
        out = []
        for m in self.members:
            c = m.cell
            if ((strategy is None or c.strategy == strategy) and (batch_size is None or c.batch_size == batch_size)
                    and (preset is None or c.preset == preset) and (seed is None or c.seed == seed)
                    and (not ok or (m.status == "FINISHED" and not m.error))):
                out.append(m)
        return sorted(out, key=lambda m: m.cell.seed)


HISTORY_KEYS = ("feature_kl", "feature_js", "loss_d", "loss_g", "batches/coverage", "batches/never_drawn")
EPOCH_KL = r"^feature_kl(\d+k?)$"  # training's per-epoch feature KL at kl_samples (older runs: plain feature_kl)


def epoch_kl_key(metrics: dict[str, Any]) -> Optional[str]:
    """The run's per-epoch feature-KL key: ``feature_kl{n}``, else the older ``feature_kl``."""
    keys = [k for k in metrics if re.match(EPOCH_KL, k)]
    return keys[0] if keys else ("feature_kl" if "feature_kl" in metrics else None)


def collect(parent_run_id: str) -> ReportData:
    """The parent run and its children, read back from MLflow."""
    from mlflow.exceptions import MlflowException

    from storage import tracking

    c = tracking.client()
    try:
        parent = c.get_run(parent_run_id)
    except MlflowException:
        raise SubsampleError(
            STAGE, f"no MLflow run {parent_run_id!r} in {tracking.mlflow_tracking_uri()}; give the parent run id "
            "that `subsample compare` printed"
        ) from None
    grid: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, _quiet_downloads():
        try:
            grid = json.loads(Path(c.download_artifacts(parent_run_id, GRID_ARTIFACT, tmp)).read_text())
        except (MlflowException, OSError, ValueError):
            grid = []
    members = []
    for run in tracking.child_runs(parent_run_id):
        cell = GridCell.from_tags(run.data.tags)
        if cell is None:
            continue  # a run nested by hand, not a cell of this comparison
        m = Member(
            run_id=run.info.run_id, cell=cell, status=run.info.status, error=run.data.tags.get(ERROR_TAG),
            fidelity=run.data.tags.get(FIDELITY_TAG, "unknown"), metrics=dict(run.data.metrics),
        )
        keys = [k for k in HISTORY_KEYS if k in m.metrics]
        keys += [k for k in m.metrics if re.match(EPOCH_KL, k)]
        keys += [k for spec in EVAL_METRICS if (k := m.eval_key(spec))]
        for k in keys:
            hist = sorted((h.step, h.timestamp, h.value) for h in c.get_metric_history(m.run_id, k))
            by_step: dict[int, float] = {}
            for step, _, value in hist:  # the last value logged at each step
                by_step[int(step)] = float(value)
            m.history[k] = sorted(by_step.items())
        members.append(m)
    return ReportData(
        parent_run_id=parent_run_id, run_name=parent.info.run_name or "", status=parent.info.status,
        dataset=parent.data.tags.get(tracking.DATASET_TAG, "?"), params=dict(parent.data.params), grid=grid,
        members=members, experiment_id=parent.info.experiment_id,
    )


# --- statistics -------------------------------------------------------------------------------------


def mean_sd(values: list[float]) -> dict[str, Any]:
    """Mean, sample s.d. (ddof=1; None for one value) and n."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return {"mean": None, "sd": None, "n": 0}
    if len(v) == 1:
        return {"mean": float(v[0]), "sd": None, "n": 1}
    if np.all(v == v[0]):  # exactly: floating-point sums would give a 1e-16 "spread"
        return {"mean": float(v[0]), "sd": 0.0, "n": int(len(v))}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)), "n": int(len(v))}


def compare_to_baseline(a: list[float], b: list[float], lower_is_better: bool) -> dict[str, Any]:
    """``a`` (a strategy) against ``b`` (random) over seeds: difference of means, pooled seed s.d.
    ``sqrt((s_a² + s_b²) / 2)``, whether ``|diff|`` exceeds twice it, and Welch's t-test."""
    from scipy import stats

    sa, sb = mean_sd(a), mean_sd(b)
    out: dict[str, Any] = {"a": sa, "b": sb, "diff": None, "pooled_sd": None, "exceeds": None,
                           "better": None, "t": None, "p": None}
    if sa["n"] < 2 or sb["n"] < 2:
        return out
    diff = sa["mean"] - sb["mean"]
    pooled = math.sqrt((sa["sd"] ** 2 + sb["sd"] ** 2) / 2)
    out.update(diff=diff, pooled_sd=pooled, exceeds=abs(diff) > SPREAD_FACTOR * pooled,
               better=(diff < 0) == lower_is_better if diff != 0 else None)
    if pooled > 0:
        with warnings.catch_warnings():  # one side without spread (random batches' coverage): still a valid test
            warnings.simplefilter("ignore", RuntimeWarning)
            res = stats.ttest_ind(a, b, equal_var=False)
        out.update(t=float(res.statistic), p=float(res.pvalue))
    return out


# --- the report's numbers -----------------------------------------------------------------------------


def fidelity_reason(members: list[Member]) -> str:
    """Why IS/FID/KID are missing, from the evaluations' status tags."""
    notes = {m.fidelity for m in members}
    text = " ".join(notes).lower()
    if "disabled" in text:
        return "n/a (fidelity off at this scale)"
    if "offline" in text or "weights" in text:
        return "n/a (weights unavailable)"
    if not members:
        return "n/a (no finished run)"
    return f"n/a ({'; '.join(sorted(notes))[:80]})"


def summarise(data: ReportData) -> dict[str, Any]:
    """Every number the report shows, from ``data`` (what MLflow holds)."""
    strategies, sizes, presets, seeds = data.axes()
    n = data.n_images

    coverage, kl = {}, {}
    for s in strategies:
        for b in sizes:
            runs = {m.cell.seed: m for m in data.select(strategy=s, batch_size=b)}  # one per batches seed
            per_seed = [[v for _, v in m.history.get("batches/coverage", [])] for m in runs.values()]
            values = [v for vs in per_seed for v in vs]
            coverage[f"{s}|{b}"] = {
                "mean": float(np.mean(values)) if values else None,
                "min": float(np.min(values)) if values else None, "max": float(np.max(values)) if values else None,
                "epochs": max((len(vs) for vs in per_seed), default=0), "seeds": len(per_seed),
            }
            kl[f"{s}|{b}"] = {"seeds": len(runs)}
            for stat in KL_STATS:
                vals = [m.metrics[f"batches/kl_{stat}"] for m in runs.values() if f"batches/kl_{stat}" in m.metrics]
                kl[f"{s}|{b}"][stat] = float(np.mean(vals)) if vals else None

    configurations = []
    for p in presets:
        for b in sizes:
            for s in strategies:
                planned = [r for r in data.grid if (r["preset"], int(r["batch_size"]), r["strategy"]) == (p, b, s)]
                ok = data.select(preset=p, batch_size=b, strategy=s)
                failed = [m for m in data.select(preset=p, batch_size=b, strategy=s, ok=False) if m not in ok]
                if not planned and not ok and not failed:
                    continue  # not a cell of this design (the paper design is not a full factorial)
                row: dict[str, Any] = {
                    "configuration": f"{p} {s} B={b}", "preset": p, "strategy": s, "batch_size": b,
                    "planned": len(planned) or len(ok) + len(failed), "ok": len(ok),
                    "failed": [{"seed": m.cell.seed, "run_id": m.run_id, "error": m.error or m.status} for m in failed]
                    + [{"seed": r["seed"], "run_id": None, "error": r.get("error") or r.get("status")}
                       for r in planned if r.get("status") in ("failed", "not run") and r.get("run_id") is None],
                    "metrics": {},
                }
                for spec in EVAL_METRICS:
                    vals = {m.cell.seed: v for m in ok if (v := m.eval_value(spec)) is not None}
                    keys = sorted({k for m in ok if (k := m.eval_key(spec))})
                    row["metrics"][spec.name] = {
                        **mean_sd(list(vals.values())), "values": {str(k): v for k, v in vals.items()},
                        "mlflow_keys": keys,
                        "missing": None if vals else (fidelity_reason(ok) if spec.family == "fidelity" else "n/a (no finished run)"),
                    }
                configurations.append(row)

    comparisons = []
    baseline = "random"
    for p in presets:
        for b in sizes:
            base = data.select(preset=p, batch_size=b, strategy=baseline)
            for s in strategies:
                if s == baseline or not base:
                    continue
                runs = data.select(preset=p, batch_size=b, strategy=s)
                for spec in EVAL_METRICS:
                    a = [v for m in runs if (v := m.eval_value(spec)) is not None]
                    r = [v for m in base if (v := m.eval_value(spec)) is not None]
                    if not a or not r:
                        continue
                    res = compare_to_baseline(a, r, spec.lower_is_better)
                    comparisons.append({"preset": p, "batch_size": b, "strategy": s, "baseline": baseline,
                                        "metric": spec.name, "label": spec.label,
                                        "lower_is_better": spec.lower_is_better, **res,
                                        "sentence": comparison_sentence(s, baseline, spec, b, p, res)})
    settings = {
        section: {k[len(section) + 1:]: v for k, v in data.params.items() if k.startswith(section + ".")}
        for section in ("scale_train", "train", "scale_evaluate", "evaluate")
    }
    learning = learning_check(data)
    out = {
        **paper_summary(data, configurations),
        "settings": settings,
        "parent_run_id": data.parent_run_id, "run_name": data.run_name, "status": data.status,
        "dataset": data.dataset, "scale": data.scale, "n_images": n, "experiment_id": data.experiment_id,
        "strategies": strategies, "batch_sizes": sizes, "presets": presets, "seeds": seeds,
        "runs": len(data.members), "runs_ok": len(data.select()),
        "coverage": coverage, "coverage_eq5": {str(b): (n - n % b) / n for b in sizes} if n else {},
        "kl": kl, "configurations": configurations, "comparisons": comparisons,
        "batch_comparisons": batch_comparisons(data), "learning": learning,
        "missing_metrics": missing_metrics(configurations),
    }
    for c in comparisons:  # a comparison of generators that did not learn says so
        c["not_learned"] = learning["not_moved_by_setting"].get(f"{c['preset']}|{c['batch_size']}|{c['strategy']}", 0) \
            + learning["not_moved_by_setting"].get(f"{c['preset']}|{c['batch_size']}|{c['baseline']}", 0)
        if c["not_learned"]:
            c["sentence"] += (f" Caution: {c['not_learned']} of these runs did not learn (feature KL within "
                              f"{MOVE_TOLERANCE:.0%} of its untrained value).")
    out["answer"], out["answer_details"] = _answer(out, "random")
    return out


# --- did the generators learn? ------------------------------------------------------------------------

MOVE_TOLERANCE = 0.05  # "did not move": last-epoch feature KL within 5 % of the untrained (epoch-0) value


def _first_last(history: list[tuple[int, float]], skip_zero: bool = False) -> tuple[Any, Any, Any]:
    """(first value, last value, last step) of a metric history."""
    pts = [(st, v) for st, v in history if not (skip_zero and st == 0)]
    return (pts[0][1], pts[-1][1], pts[-1][0]) if pts else (None, None, None)


def learning_check(data: ReportData) -> dict[str, Any]:
    """Whether each finished run's generator moved from its untrained state: the training's feature
    KL at epoch 0 (logged before the first step) against its last epoch, with the first and last
    epochs' D and G losses. A run without an epoch-0 record (trained by older code) is "unknown"."""
    runs = []
    for m in sorted(data.select(), key=lambda m: (m.cell.preset, m.cell.batch_size, m.cell.strategy, m.cell.seed)):
        kl_key = epoch_kl_key(m.history) or "feature_kl"
        kl = dict(m.history.get(kl_key, []))
        initial = kl.get(0)
        _, last, last_epoch = _first_last(m.history.get(kl_key, []), skip_zero=True)
        moved = None if initial is None or last is None else abs(last - initial) > MOVE_TOLERANCE * abs(initial)
        d0, d1, _ = _first_last(m.history.get("loss_d", []), skip_zero=True)
        g0, g1, _ = _first_last(m.history.get("loss_g", []), skip_zero=True)
        runs.append({"run_id": m.run_id, "configuration": m.cell.configuration, "preset": m.cell.preset,
                     "batch_size": m.cell.batch_size, "strategy": m.cell.strategy, "seed": m.cell.seed,
                     "feature_kl_initial": initial, "feature_kl_last": last, "last_epoch": last_epoch, "moved": moved,
                     "loss_d_first": d0, "loss_d_last": d1, "loss_g_first": g0, "loss_g_last": g1})
    not_moved = [r for r in runs if r["moved"] is False]
    by_setting: dict[str, int] = {}
    for r in not_moved:
        k = f"{r['preset']}|{r['batch_size']}|{r['strategy']}"
        by_setting[k] = by_setting.get(k, 0) + 1
    return {"tolerance": MOVE_TOLERANCE, "runs": runs, "not_moved": not_moved,
            "unknown": [r for r in runs if r["moved"] is None], "not_moved_by_setting": by_setting}


def learning_sentence(learning: dict[str, Any]) -> str:
    """One sentence: did every generator move from its untrained feature KL?"""
    runs, bad, unknown = learning["runs"], learning["not_moved"], learning["unknown"]
    if not runs:
        return "No finished run: nothing learned."
    known = [r for r in runs if r["moved"] is not None]
    tol = f"{learning['tolerance']:.0%}"
    parts = []
    if known:
        init = sorted({round(r["feature_kl_initial"], 3) for r in known})
        init_txt = fmt(init[0], 3) if len(init) == 1 else f"{fmt(init[0], 3)}–{fmt(init[-1], 3)}"
        moved = [r for r in known if r["moved"]]
        if moved:
            lo, hi = min(r["feature_kl_last"] for r in moved), max(r["feature_kl_last"] for r in moved)
            epochs = sorted({r["last_epoch"] for r in moved})
            ep = f"epoch {epochs[0]}" if len(epochs) == 1 else f"epochs {epochs[0]}–{epochs[-1]}"
            parts.append(f"{len(moved)} of {len(runs)} generators learned: their training feature KL (lower is "
                         f"better) went from {init_txt} untrained (epoch 0) to {fmt(lo, 3)}–{fmt(hi, 3)} at {ep}")
        if bad:
            parts.append(f"**{len(bad)} of {len(runs)} did not learn**: their feature KL stayed within {tol} of the "
                         f"untrained value ({init_txt}), so their numbers describe untrained generators "
                         f"({'; '.join(_run_label(r) for r in bad[:6])}{'; …' if len(bad) > 6 else ''})")
    if unknown:
        parts.append(f"{len(unknown)} run(s) have no epoch-0 record (trained before it was logged): not judged")
    return "; ".join(parts) + "."


def _compact(m: dict[str, Any]) -> str:
    """``1.23 ± 0.05``: mean and seed s.d. to 3 digits (no s.d. when it is 0 or unknown)."""
    if not m["n"]:
        return "–"
    return fmt(m["mean"], 3) + (f" ± {fmt(m['sd'], 2)}" if m["sd"] else "")


def _run_label(r: dict[str, Any]) -> str:
    return (f"{r['configuration']} seed {r['seed']}: feature KL (lower is better) {fmt(r['feature_kl_initial'], 3)} "
            f"untrained, {fmt(r['feature_kl_last'], 3)} at epoch {r['last_epoch']}")


# --- batch level: each strategy's batches against random ones -------------------------------------------

BATCH_METRICS = (
    MetricSpec("batch_kl", "KL(f_Xi || f_X) of a batch to the data set", r"^batches/kl_mean$", True, "batches"),
    MetricSpec("coverage", "coverage per epoch", r"^batches/coverage_mean$", False, "batches"),
)
BATCH_KEYS = {"batch_kl": "batches/kl_mean", "coverage": "batches/coverage_mean"}


def batch_comparisons(data: ReportData, baseline: str = "random") -> list[dict[str, Any]]:
    """Per batch size, each strategy's batches against ``baseline``'s over the batches seeds: the
    mean KL(f_Xi || f_X) over an epoch's batches (lower is better) and the coverage per epoch
    (higher is better). Batches do not depend on the preset: one value per (strategy, B, seed)."""
    strategies, sizes, _, _ = data.axes()
    out = []
    for b in sizes:
        base = {m.cell.seed: m for m in data.select(strategy=baseline, batch_size=b)}
        for s in strategies:
            if s == baseline or not base:
                continue
            runs = {m.cell.seed: m for m in data.select(strategy=s, batch_size=b)}
            for spec in BATCH_METRICS:
                key = BATCH_KEYS[spec.name]
                a = [m.metrics[key] for m in runs.values() if key in m.metrics]
                r = [m.metrics[key] for m in base.values() if key in m.metrics]
                if not a or not r:
                    continue
                res = compare_to_baseline(a, r, spec.lower_is_better)
                out.append({"batch_size": b, "strategy": s, "baseline": baseline, "metric": spec.name,
                            "label": spec.label, "lower_is_better": spec.lower_is_better, **res,
                            "sentence": comparison_sentence(s, baseline, spec, b, "", res)})
    return out


# --- the first paragraph: the answer ------------------------------------------------------------------------


def _clause(c: dict[str, Any], with_preset: bool) -> str:
    """``0.05 vs 0.29 at B=128 (constructed better)``: both means, where, and which is better."""
    where = f"B={c['batch_size']}" + (f", {c['preset']}" if with_preset and c.get("preset") else "")
    if c["diff"] is None:
        return f"{where}: too few seeds"
    if c["diff"] == 0:
        return f"{fmt(c['a']['mean'], 3)} for both at {where}"
    ahead = c["strategy"] if c["better"] else c["baseline"]
    spread = "" if c["exceeds"] else ", within the spread"
    return f"{fmt(c['a']['mean'], 3)} vs {fmt(c['b']['mean'], 3)} at {where} ({ahead} better{spread})"


def _verdict(comps: list[dict[str, Any]], s: str, base: str, unit: str) -> tuple[str, str]:
    """(a short verdict word, a phrase) for one metric's comparisons of ``s`` with ``base``."""
    judged = [c for c in comps if c["diff"] is not None]
    better = [c for c in judged if c["exceeds"] and c["better"]]
    worse = [c for c in judged if c["exceeds"] and c["better"] is False]
    n = len(judged)
    every = f"at every {unit}" if n > 1 else f"at this {unit}"
    if not judged:
        return "unknown", "too few seeds to judge"
    if len(better) == n:
        return "better", f"{s} better than {base}, beyond the seed spread {every}"
    if len(worse) == n:
        return "worse", f"{s} worse than {base}, beyond the seed spread {every}"
    if not better and not worse:
        return "within", f"no difference between {s} and {base} exceeds the seed spread"
    within = [c for c in judged if c not in better and c not in worse]
    where = lambda cs: ", ".join(_where(c) for c in cs)  # noqa: E731
    parts = ([f"{s} better than {base} beyond the seed spread at {where(better)}"] if better else []) \
        + ([f"{s} worse than {base} beyond the seed spread at {where(worse)}"] if worse else []) \
        + ([f"no difference beyond the spread at {where(within)}"] if within else [])
    answer = "partly" if not worse else "no" if not better else "it depends"
    return "mixed", f"{answer}: " + "; ".join(parts)


def _where(c: dict[str, Any]) -> str:
    return f"B={c['batch_size']}" + (f" ({c['preset']})" if c.get("multi_preset") and c.get("preset") else "")


def answer_paragraph(summary: dict[str, Any], baseline: str = "random") -> str:
    """The report's first paragraph: do constructed batches help compared with random ones, at
    the batch level (batch KL, coverage) and at the generator level (feature KL), with direction
    and whether the difference exceeds the seed spread; whether the generators learned; which
    metrics were not computed. The numbers behind it: :func:`answer_details`."""
    return _answer(summary, baseline)[0]


def answer_details(summary: dict[str, Any], baseline: str = "random") -> list[str]:
    """One sentence per strategy, level and metric: both means per setting, which is better (and
    whether lower or higher is better), and whether it exceeds the seed spread."""
    return _answer(summary, baseline)[1]


def _answer(summary: dict[str, Any], baseline: str) -> tuple[str, list[str]]:
    others = [s for s in summary["strategies"] if s != baseline]
    others.sort(key=lambda s: s != "constructed")  # the paper's strategy first
    if baseline not in summary["strategies"] or not others:
        return (f"**The question this comparison exists for** (do constructed batches help compared with {baseline} "
                f"ones?) **cannot be answered here**: the grid needs the {baseline} baseline and at least one other "
                "strategy. " + learning_sentence(summary["learning"]), [])
    multi_preset = len(summary["presets"]) > 1
    for c in summary["comparisons"]:
        c["multi_preset"] = multi_preset
    unit_b = "batch size"
    unit_g = "configuration" if multi_preset else "batch size"
    details: list[str] = []
    lead = ""
    for s in others:
        bc = [c for c in summary["batch_comparisons"] if c["strategy"] == s]
        gc = [c for c in summary["comparisons"] if c["strategy"] == s]
        b_kl = [c for c in bc if c["metric"] == "batch_kl"]
        b_cov = [c for c in bc if c["metric"] == "coverage"]
        g_kl = [c for c in gc if c["metric"] == "feature_kl"]
        word_b, phrase_b = _verdict(b_kl, s, baseline, unit_b)
        word_cov, phrase_cov = _verdict(b_cov, s, baseline, unit_b)
        word_g, phrase_g = _verdict(g_kl, s, baseline, unit_g)
        untrained = sum(c.get("not_learned", 0) for c in g_kl)
        if s == others[0]:
            lead = _lead(s, baseline, word_b, word_cov, "untrained" if untrained else word_g, bool(b_kl), bool(g_kl),
                         untrained, unit_b, unit_g, phrase_b, phrase_g.replace(": ", ", in final feature KL (lower is better): ", 1))
        if b_kl:
            details.append(f"Batch level, {s} vs {baseline}: {BATCH_METRICS[0].label} (lower is better): {phrase_b} "
                           f"({'; '.join(_clause(c, False) for c in b_kl)}).")
        if b_cov:
            details.append(f"Batch level, {s} vs {baseline}: coverage per epoch (higher is better): {phrase_cov} "
                           f"({'; '.join(_clause(c, False) for c in b_cov)}).")
        for spec in EVAL_METRICS:
            cs = [c for c in gc if c["metric"] == spec.name]
            if not cs:
                continue
            _, phrase = _verdict(cs, s, baseline, unit_g)
            caution = sum(c.get("not_learned", 0) for c in cs)
            details.append(f"Generator level, {s} vs {baseline}: final {spec.label} ({direction(spec)}): {phrase} "
                           f"({'; '.join(_clause(c, multi_preset) for c in cs)})"
                           + (f"; {caution} of the runs compared did not learn, so this is no verdict" if caution else "")
                           + ".")
    paragraph = ["**Answer.** " + lead, learning_sentence(summary["learning"])]
    missing = summary.get("missing_metrics") or {}
    if missing:
        paragraph.append(missing_sentence(missing))
    return " ".join(paragraph), details


def _lead(s: str, base: str, word_b: str, word_cov: str, word_g: str, have_b: bool, have_g: bool, untrained: int,
          unit_b: str, unit_g: str, phrase_b: str = "", phrase_g: str = "") -> str:
    """The answer in one sentence: batch level (with what it costs in coverage), then generator level."""
    every_b, every_g = f"at every {unit_b}", f"at every {unit_g}"
    b = {"better": f"yes: {s} batches are closer to the data set's feature distribution than {base} ones, beyond "
                   f"the seed spread {every_b}",
         "worse": f"no: {s} batches are further from the data set's feature distribution than {base} ones, beyond "
                  f"the seed spread {every_b}",
         "within": f"no: {s} and {base} batches are equally close to the data set's feature distribution (no "
                   "difference beyond the seed spread)",
         "mixed": phrase_b,
         "unknown": "too few seeds to say"}[word_b] if have_b else "no batch diagnostics were recorded"
    if have_b and word_cov == "worse":
        b += f", but they cover fewer images per epoch ({base} better, beyond the seed spread)"
    elif have_b and word_cov == "better":
        b += f", and they cover more images per epoch ({s} better, beyond the seed spread)"
    g = {"better": f"yes: generators trained on {s} batches reach a lower final feature KL than on {base} ones, "
                   f"beyond the seed spread {every_g}",
         "worse": f"no: generators trained on {s} batches reach a higher (worse) final feature KL than on {base} "
                  f"ones, beyond the seed spread {every_g}",
         "within": f"no: the generators' final feature KL does not differ between {s} and {base} batches beyond "
                   "the seed spread",
         "mixed": phrase_g,
         "untrained": f"no verdict: {untrained} of the generators compared did not learn",
         "unknown": "too few seeds to say"}[word_g] if have_g else "no generator metric to compare"
    return (f"Do {s} batches help? At the batch level, {b}. At the generator level, {g}. "
            "(KL and FID: lower is better; the numbers follow the paragraph.)")


def missing_metrics(configurations: list[dict[str, Any]]) -> dict[str, str]:
    """Metrics no configuration has (label -> the reason, e.g. "n/a (fidelity off at this scale)"):
    the results table drops their columns and one sentence says why."""
    out = {}
    for spec in EVAL_METRICS:
        rows = [c["metrics"][spec.name] for c in configurations]
        if rows and all(not r["n"] for r in rows):
            reasons = sorted({r.get("missing") or "n/a" for r in rows})
            out[spec.label] = "; ".join(reasons)
    return out


def missing_sentence(missing: dict[str, str]) -> str:
    by_reason: dict[str, list[str]] = {}
    for label, reason in missing.items():
        by_reason.setdefault(reason, []).append(label)
    parts = []
    for reason, labels in by_reason.items():
        names = ", ".join(labels[:-1]) + " and " + labels[-1] if len(labels) > 1 else labels[0]
        why = reason[len("n/a ("):-1] if reason.startswith("n/a (") and reason.endswith(")") else reason
        parts.append(f"{names} {'were' if len(labels) > 1 else 'was'} not computed for any run ({why})")
    return "; ".join(parts)[0].upper() + "; ".join(parts)[1:] + "."


def fmt(v: Optional[float], digits: int = 4) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    if v == 0:
        return "0"
    mag = math.floor(math.log10(abs(v)))
    if mag >= digits + 2 or mag < -4:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{max(digits - 1 - mag, 0)}f}"


def fmt_mean_sd(m: dict[str, Any]) -> str:
    if not m["n"]:
        return m.get("missing") or "n/a"
    sd = f" ± {fmt(m['sd'])}" if m["sd"] is not None else ""
    return f"{fmt(m['mean'])}{sd} (n={m['n']})"


def direction(spec: MetricSpec) -> str:
    return "lower is better" if spec.lower_is_better else "higher is better"


def winner(s: str, base: str, r: dict[str, Any]) -> Optional[str]:
    """The strategy ahead on the means (``None`` when they are equal)."""
    return None if r["better"] is None else (s if r["better"] else base)


def comparison_sentence(s: str, base: str, spec: MetricSpec, b: int, p: str, r: dict[str, Any]) -> str:
    """One comparison in words: both means, which is better (and that lower or higher is better),
    and whether the difference exceeds twice the pooled seed s.d."""
    where = f"on {spec.label} at B={b}" + (f" ({p})" if p else "")
    if r["diff"] is None:
        return f"{s} vs {base} {where}: too few seeds to compare ({r['a']['n']} vs {r['b']['n']})."
    values = f"{fmt(r['a']['mean'])} vs {fmt(r['b']['mean'])}, {direction(spec)}"
    if r["diff"] == 0 and r["pooled_sd"] == 0:
        return (f"{s} vs {base} {where}: identical, {fmt(r['a']['mean'])} for every seed of both "
                f"({r['a']['n']} vs {r['b']['n']} seeds): no difference and no spread to judge.")
    welch = f"Welch t = {r['t']:.2f}, p = {r['p']:.3g}" if r["t"] is not None else "no seed-to-seed variation"
    seeds = f"{r['a']['n']} vs {r['b']['n']} seeds"
    bound = f"{SPREAD_FACTOR:g} × seed s.d. ({fmt(SPREAD_FACTOR * r['pooled_sd'])})"
    if r["exceeds"]:
        verb = "beats" if r["better"] else "is worse than"
        return f"{s} {verb} {base} {where} by {fmt(abs(r['diff']))}: {values}, > {bound}; {welch}; {seeds}."
    ahead = winner(s, base, r)
    lead = f"{ahead} is ahead by {fmt(abs(r['diff']))}" if ahead else "equal means"
    return (f"{s} vs {base} {where}: within seed spread ({values}: {lead}, ≤ {bound}; {welch}; {seeds}).")


# --- plots ---------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _suptitle(fig, text: str) -> None:
    """A figure title wrapped to the figure's width (a narrow grid would clip it)."""
    import textwrap

    fig.suptitle(textwrap.fill(text, max(int(fig.get_figwidth() * 9), 30)), fontsize=12)


@contextmanager
def _quiet_downloads():
    """No MLflow download progress bars on stderr while the report fetches its images."""
    old = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = old


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
                    for step, v in (m.history.get(k, []) if k else []):
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
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(3.6 * ncols, 5.5), 2.8 * nrows + 0.5),
                             squeeze=False, sharex=False)
    for ax in axes.flat[len(layout):]:
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
                ax.axhline(float(np.mean(floors[(p, b, s)])), ls="--", lw=1, color=COLOURS.get(s),
                           label="its floor (real images)")
        ax.set_title(f"{p}, B={b}", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    _suptitle(fig, title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
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
    plots.mkdir(parents=True, exist_ok=True)
    if not _curves(data, lambda m: name if name in m.history else None,
                   f"FID ({n:,} generated vs the training set) after each evaluated epoch (mean ± s.d. over seeds)",
                   "FID", plots / "fid_curves.png"):
        return {}
    return {"fid_curves.png": f"FID of {n:,} generated images against the training set after every evaluated epoch "
                              "(`subsample train --eval-every`), mean ± s.d. over seeds; the table's FID is the final "
                              "evaluation's."}


def _vs_batch_size(summary: dict[str, Any], path: Path) -> bool:
    """Final metrics (mean ± s.d. over seeds) against batch size, one line per strategy."""
    specs = [spec for spec in EVAL_METRICS
             if any(c["metrics"][spec.name]["n"] for c in summary["configurations"])]
    if not specs:
        return False
    plt = _plt()
    presets, sizes = summary["presets"], summary["batch_sizes"]
    fig, axes = plt.subplots(len(presets), len(specs), figsize=(max(4.8 * len(specs), 8.0), 3.4 * len(presets) + 0.8),
                             squeeze=False)
    xs = np.arange(len(sizes))
    for i, p in enumerate(presets):
        for j, spec in enumerate(specs):
            ax = axes[i][j]
            for k, s in enumerate(summary["strategies"]):
                rows = {c["batch_size"]: c["metrics"][spec.name] for c in summary["configurations"]
                        if c["preset"] == p and c["strategy"] == s}
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
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _montage(tiles: list[list[Optional[Path]]], row_labels: list[str], col_labels: list[Any], title: str,
             path: Path) -> bool:
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
    widths = [max((images[i][j].shape[1] for i in range(rows) if images[i][j] is not None), default=240) / 100
              for j in range(cols)]
    fig, axes = plt.subplots(rows, cols, squeeze=False, layout="constrained",  # room for the title and labels
                             figsize=(max(sum(widths) + 0.3 * cols + 0.6, 6.0), sum(heights) + 0.45 * rows + 0.8),
                             gridspec_kw={"height_ratios": heights, "width_ratios": widths})
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
    fig.savefig(path, dpi=100)
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
    plots.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    strategies, sizes, presets, seeds = data.axes()
    if _curves(data, lambda m: epoch_kl_key(m.history),
               "feature KL(f_G || f_X) of fixed-z samples after each epoch, epoch 0 = untrained (mean ± s.d. over seeds; "
               "lower is better)",
               "feature KL", plots / "feature_kl_curves.png"):
        made["feature_kl_curves.png"] = ("Feature KL against epochs (training's per-epoch metric, lower is better), "
                                         "from epoch 0, the untrained generator; dashed: its floor, what as many real "
                                         "images score.")
    fid = next(spec for spec in EVAL_METRICS if spec.name == "fid")
    if _curves(data, lambda m: m.eval_key(fid), "FID against epochs (mean ± s.d. over seeds)", "FID",
               plots / "fid_curves.png"):
        made["fid_curves.png"] = ("FID against epochs. The evaluation runs once, on the final generator, so each "
                                  "run contributes one point, at its last epoch.")
    made.update(_per_epoch_fid_curves(data, plots))
    if _vs_batch_size(summary, plots / "metrics_vs_batch_size.png"):
        made["metrics_vs_batch_size.png"] = "Final metrics against batch size, per preset (mean ± s.d. over seeds)."
    seed0 = seeds[0] if seeds else 0
    with tempfile.TemporaryDirectory() as tmp, _quiet_downloads():
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
        if _montage(tiles, row_labels, [f"B={b}" for b in sizes],
                    f"{data.dataset}: samples of the last epoch's generator (fixed z, seed {seed0})"
                    + (f", preset {presets[0]}" if len(presets) == 1 else ""), plots / "samples.png"):
            made["samples.png"] = (f"Last-epoch sample grids (seed {seed0}): rows strategies, columns batch sizes; "
                                   "each grid's title names its run (from each run's `grids/`).")
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
        if _montage(tiles, strategies, [titles[b] for b in sizes],
                    f"images never drawn in the first epoch (batches seed {seed0}; up to 64 shown)",
                    plots / "never_drawn.png"):
            made["never_drawn.png"] = (f"Images no batch of the first epoch drew (batches seed {seed0}; the paper's "
                                       "Fig. 5). Random batches leave out n mod B images at random; constructed "
                                       "batches leave out images of the rare cells.")
    return made


# --- the paper's design, floors and checks (issue 14) --------------------------------------------------
# Self-contained: paper_summary() adds its keys to summarise()'s dict, the *_blocks() functions add
# their sections to _blocks(). They read the parent's design.json and batch_diagnostics.json and
# the child runs' floor, label-KL and never-drawn metrics.

EVAL_KL = r"^eval/feature_kl(\d+k?)_train$"


def _parent_json(parent_run_id: str, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    from storage import tracking

    with tempfile.TemporaryDirectory() as tmp, _quiet_downloads():
        try:
            return json.loads(Path(tracking.client().download_artifacts(parent_run_id, name, tmp)).read_text())
        except (MlflowException, OSError, ValueError):
            return None


def _kl_with_floor(members: list[Member], key_of) -> dict[str, Any]:
    """A KL's mean ± s.d. over seeds and its floor (``<key>_floor``, ``_floor_sd``), with the verdict."""
    from pipeline.metrics import at_floor

    vals, floors, floor_sds, keys = [], [], [], set()
    for m in members:
        k = key_of(m)
        if k is None or k not in m.metrics:
            continue
        keys.add(k)
        vals.append(m.metrics[k])
        if f"{k}_floor" in m.metrics:
            floors.append(m.metrics[f"{k}_floor"])
            if f"{k}_floor_sd" in m.metrics:
                floor_sds.append(m.metrics[f"{k}_floor_sd"])
    out: dict[str, Any] = {**mean_sd(vals), "keys": sorted(keys), "floor": None, "floor_sd": None, "at_floor": None,
                           "ratio": None}
    if vals and floors:
        floor = {"mean": float(np.mean(floors)), "sd": float(np.mean(floor_sds)) if floor_sds else None}
        out.update(floor=floor["mean"], floor_sd=floor["sd"],
                   at_floor=bool(at_floor(out["mean"], floor, out["sd"])),
                   ratio=out["mean"] / floor["mean"] if floor["mean"] > 0 else None)
    return out


def _eval_kl_key(m: Member) -> Optional[str]:
    keys = [(k, mm.group(1)) for k in m.metrics if (mm := re.match(EVAL_KL, k))]
    return max(keys, key=lambda kv: _count(kv[1]))[0] if keys else None


def paper_summary(data: ReportData, configurations: list[dict[str, Any]]) -> dict[str, Any]:
    """The numbers of the issue-14 sections: the design (design.json), every strategy's batches
    (batch_diagnostics.json), each configuration's feature KLs beside their floors, the never-drawn
    counts per run and epoch, and in the paper design the method against (a)-(d)."""
    design = _parent_json(data.parent_run_id, "design.json") or {}
    diagnostics = _parent_json(data.parent_run_id, "batch_diagnostics.json") or []

    floors = []
    for c in configurations:
        ok = data.select(preset=c["preset"], batch_size=c["batch_size"], strategy=c["strategy"])
        floors.append({"configuration": c["configuration"], "preset": c["preset"], "strategy": c["strategy"],
                       "batch_size": c["batch_size"],
                       "epoch": _kl_with_floor(ok, lambda m: epoch_kl_key(m.metrics)),
                       "eval": _kl_with_floor(ok, _eval_kl_key)})

    batches: dict[str, dict[str, Any]] = {}
    for r in diagnostics:
        b = batches.setdefault(f"{r['strategy']}|{r['batch_size']}", {"strategy": r["strategy"],
                                                                     "batch_size": r["batch_size"], "rows": []})
        b["rows"].append(r)
    for b in batches.values():
        rows = b.pop("rows")
        avg = lambda f: float(np.mean([v for r in rows if (v := f(r)) is not None])) if any(f(r) is not None for r in rows) else None  # noqa: E731
        b.update(
            seeds=len(rows), topup=rows[0].get("topup"), coverage=avg(lambda r: r["coverage"]["mean"]),
            n_batches=int(sum((r.get("m") or 0) * (r.get("epochs") or 0) for r in rows)),
            label_kl_random_sd=avg(lambda r: (r.get("label_kl_random_sample") or {}).get("sd")),
            label_kl_random_repeats=avg(lambda r: (r.get("label_kl_random_sample") or {}).get("repeats")),
            kl_mean=avg(lambda r: r["kl"]["mean"]), kl_sd=avg(lambda r: r["kl"]["std"]),
            kl_random=avg(lambda r: (r.get("kl_random_sample") or {}).get("mean")),
            label_kl_mean=avg(lambda r: (r.get("label_kl") or {}).get("mean")),
            label_kl_sd=avg(lambda r: (r.get("label_kl") or {}).get("std")),
            label_kl_random=avg(lambda r: (r.get("label_kl_random_sample") or {}).get("mean")),
            label_note=next((r.get("label_kl_note") for r in rows if r.get("label_kl_note")), None),
            never_drawn=[float(np.mean(v)) for v in zip(*[r.get("n_never_drawn_per_epoch") or [] for r in rows])],
        )

    never = []
    for m in sorted(data.members, key=lambda m: (m.cell.preset, m.cell.batch_size, m.cell.strategy, m.cell.seed)):
        hist = m.history.get("batches/never_drawn", [])
        if hist:
            never.append({"configuration": m.cell.configuration, "seed": m.cell.seed,
                          "per_epoch": [int(v) for _, v in hist]})

    comparisons = []
    if design.get("design") == "paper":
        method = [c for c in configurations if c["strategy"] == "constructed"]
        others = [c for c in configurations if c["strategy"] == "random"]
        for a in method:
            for b in others:
                for spec in EVAL_METRICS:
                    va = [v for v in a["metrics"][spec.name]["values"].values()]
                    vb = [v for v in b["metrics"][spec.name]["values"].values()]
                    if not va or not vb:
                        continue
                    res = compare_to_baseline(va, vb, spec.lower_is_better)
                    comparisons.append({"a": a["configuration"], "b": b["configuration"], "metric": spec.name,
                                        **res, "sentence": _paper_sentence(a, b, spec, res, floors)})
    return {"design": design, "batch_diagnostics": sorted(batches.values(), key=lambda b: (b["batch_size"], b["strategy"])),
            "kl_floors": floors, "never_drawn_runs": never, "paper_comparisons": comparisons}


def _paper_sentence(a: dict, b: dict, spec: MetricSpec, r: dict[str, Any], floors: list[dict]) -> str:
    name = lambda c: f"{c['preset']} ({c['strategy']}, B={c['batch_size']})"  # noqa: E731
    head = f"{name(a)} vs {name(b)} on {spec.label}"
    if r["diff"] is None:
        return f"{head}: too few seeds to compare ({r['a']['n']} vs {r['b']['n']})."
    values = f"{fmt(r['a']['mean'])} vs {fmt(r['b']['mean'])}"
    welch = f"Welch t = {r['t']:.2f}, p = {r['p']:.3g}" if r["t"] is not None else "no seed-to-seed variation"
    verdict = (("better" if r["better"] else "worse") + f" by {fmt(abs(r['diff']))}, > {SPREAD_FACTOR:g} × seed s.d."
               if r["exceeds"] else f"within seed spread (difference {fmt(abs(r['diff']))})")
    text = f"{head}: {verdict} ({values}; {welch})."
    if spec.name == "feature_kl":
        fa = next((f["eval"] for f in floors if f["configuration"] == a["configuration"]), {})
        fb = next((f["eval"] for f in floors if f["configuration"] == b["configuration"]), {})
        if fa.get("at_floor") and fb.get("at_floor"):
            text += " Both are at their floor: this KL cannot tell them apart."
        elif fa.get("floor") is not None:
            text += f" Floor at this sample size: {fmt(fa['floor'])}."
    return text


def design_blocks(summary: dict[str, Any]) -> list[tuple]:
    design = summary.get("design") or {}
    confs = design.get("configurations") or []
    if not confs:
        return []
    out: list[tuple] = [("h", 2, f"The design ({design.get('design', '?')})")]
    if design.get("design") == "paper":
        out.append(("p", "The paper's cells only, not a factorial: the method at its two batch sizes and strategies "
                         "(a)-(d) at B = 128, each at its preset's batch size and epochs for this data set"
                         + (f", the batch sizes × {design['batch_scale']:g} to fit this data set"
                            if design.get("batch_scale", 1) not in (None, 1, 1.0) else "")
                         + ". Budgets: the paper compares (a)-(d) at equal epochs; (b) takes 5 "
                         "critic steps per G step, each on its own batch, so it trains 5× the epochs and makes the "
                         "same number of G updates as (a), (c) and (d). The method's runs keep their own epochs, as "
                         "the paper ran them; their G updates are in the table."))
    else:
        out.append(("p", "Every strategy × batch size × preset; each cell trains at its preset's epochs, so D steps "
                         "per G step change the G updates (see the table)."))
    rows = [[c["configuration"], c.get("reproduces") or "", str(c["batch_size"]), str(c["epochs"]), str(c["d_steps"]),
             str(c["batches_per_epoch"]), f"{c['g_updates']:,}" + (" (equalised)" if c.get("equal_g_updates") else ""),
             f"{c['images_seen']:,}"] for c in confs]
    out.append(("table", ["configuration", "reproduces", "B", "epochs", "D steps per G step", "batches per epoch",
                          "G updates", "images seen by D"], rows))
    return out


def batch_check_blocks(summary: dict[str, Any]) -> list[tuple]:
    diag = summary.get("batch_diagnostics") or []
    if not diag:
        return []
    out: list[tuple] = [("h", 2, "Every strategy's batches, with an independent check on the labels")]
    out.append(("p", "The batches of every strategy at every batch size of the design (cached batches artifacts; "
                     "trained or not), each averaged over the seeds' constructions: coverage per epoch (Table 1), "
                     "the feature KL(f_Xi || f_X) of the batches, mean ± s.d. over the batches (Table 2's mean and "
                     "spread), beside what a uniformly random sample of B images scores on the same estimator. "
                     "Constructed batches are built to match this very histogram, so they beat the random sample by "
                     "design. The label KL (each batch's class mix against the data set's) is a property the "
                     "sampler never sees: a strategy at the random-sample value is no closer to the data set's class "
                     "mix than random batches."))
    rows = []
    sd0 = lambda v: 0.0 if v is not None and abs(v) < 1e-12 else v  # noqa: E731  (floating-point "spread")
    for d in diag:
        never = " / ".join(f"{v:.0f}" for v in d["never_drawn"]) or "–"
        label = (f"{fmt(d['label_kl_mean'])} ± {fmt(sd0(d['label_kl_sd']))}" if d["label_kl_mean"] is not None
                 else "n/a (no labels)")
        rows.append([d["strategy"] + (f" (top-up {d['topup']})" if d.get("topup") else ""), str(d["batch_size"]),
                     fmt(d["coverage"]), f"{fmt(d['kl_mean'])} ± {fmt(sd0(d['kl_sd']))}", fmt(d["kl_random"]), label,
                     fmt(d["label_kl_random"]), never])
    out.append(("table", ["strategy", "B", "coverage", "feature KL (mean ± s.d. over batches)",
                          "random sample of B", "label KL (mean ± s.d.)", "random sample of B", "never drawn per epoch"],
                rows))
    sentences = []
    for d in diag:
        if d["strategy"] == "random" or d["label_kl_mean"] is None or not d["label_kl_random"]:
            continue
        ratio = d["label_kl_mean"] / d["label_kl_random"]
        # the difference against the standard error of both means (the batches', the reference's samples)
        se = math.sqrt((d["label_kl_sd"] or 0.0) ** 2 / max(d.get("n_batches") or 1, 1)
                       + (d.get("label_kl_random_sd") or 0.0) ** 2 / max(d.get("label_kl_random_repeats") or 1, 1))
        diff = d["label_kl_mean"] - d["label_kl_random"]
        words = ("no closer to the data set's class mix than random sampling, and no further (within 2 standard "
                 "errors)" if abs(diff) <= 2 * se else
                 "closer to the data set's class mix than random sampling" if diff < 0 else
                 "further from the data set's class mix than random sampling")
        sentences.append(f"{d['strategy']} batches at B={d['batch_size']}: label KL {fmt(d['label_kl_mean'])}, "
                         f"{ratio:.2f}× a random sample's ({fmt(d['label_kl_random'])}; {d.get('n_batches')} batches): "
                         f"{words}; their feature KL is {fmt(d['kl_mean'])} against {fmt(d['kl_random'])}.")
    if sentences:
        out.append(("ul", sentences))
    elif any(d.get("label_note") for d in diag):
        out.append(("p", "No label check: " + next(d["label_note"] for d in diag if d.get("label_note")) + "."))
    return out


def never_drawn_blocks(summary: dict[str, Any]) -> list[tuple]:
    runs = summary.get("never_drawn_runs") or []
    if not runs:
        return []
    epochs = max(len(r["per_epoch"]) for r in runs)
    n = summary.get("n_images")
    out: list[tuple] = [("h", 2, "Images never drawn, per run and epoch")]
    out.append(("p", "How many of the " + (f"{n:,} " if n else "") + "training images no batch of the epoch held, for "
                     "every training run (the batches it trained on): those images were not trained on in that "
                     "epoch. Random batches leave out n mod B; constructed batches leave out the cells whose quota "
                     "rounds to 0 (spec §3)."))
    rows = [[r["configuration"], str(r["seed"])] + [f"{v:,}" + (f" ({v / n:.1%})" if n else "") for v in r["per_epoch"]]
            + ["–"] * (epochs - len(r["per_epoch"])) for r in runs]
    out.append(("table", ["configuration", "seed"] + [f"epoch {e}" for e in range(1, epochs + 1)], rows))
    return out


def floor_blocks(summary: dict[str, Any]) -> list[tuple]:
    floors = [f for f in summary.get("kl_floors") or [] if f["epoch"]["n"] or f["eval"]["n"]]
    if not floors:
        return []

    def cell(k: dict[str, Any]) -> list[str]:
        if not k["n"]:
            return ["–", "–", ""]
        value = fmt(k["mean"]) + (f" ± {fmt(k['sd'])}" if k["sd"] is not None else "") + f" (n={k['n']})"
        if k["floor"] is None:
            return [value, "n/a (not recorded)", ""]
        floor = fmt(k["floor"]) + (f" ± {fmt(k['floor_sd'])}" if k["floor_sd"] is not None else "")
        words = ("at its floor" if k["at_floor"] else
                 f"{k['ratio']:.2f}× its floor" if k["ratio"] is not None else "above its floor")
        return [value, floor, words]

    epoch_keys = sorted({key for f in floors for key in f["epoch"]["keys"]})
    eval_keys = sorted({key for f in floors for key in f["eval"]["keys"]})
    out: list[tuple] = [("h", 2, "Each feature KL beside its floor")]
    out.append(("p", "A perfect generator does not score 0: the feature KL of N samples has a floor, the same "
                     "estimator on N real training images drawn at random (mean ± s.d. over 10 draws; "
                     "docs/evaluate.md). The two KLs below use different sample sizes and have different floors; "
                     "never compare one with the other. Per-epoch: training's fixed-z samples after the last epoch "
                     f"(MLflow {', '.join(f'`{k}`' for k in epoch_keys) or '–'}, floor `<key>_floor`). Evaluation: "
                     f"the final generator's samples (MLflow {', '.join(f'`{k}`' for k in eval_keys) or '–'}, floor "
                     "`<key>_floor`). \"At its floor\" means within 2 × √(seed s.d.² + floor s.d.²) of it: "
                     "indistinguishable from real images, and differences between such generators mean nothing."))
    rows = [[f["configuration"], *cell(f["epoch"]), *cell(f["eval"])] for f in floors]
    out.append(("table", ["configuration", "per-epoch KL", "its floor", "", "evaluation KL", "its floor", ""], rows))
    at = [f["configuration"] for f in floors if f["eval"]["at_floor"]]
    total = sum(f["eval"]["floor"] is not None for f in floors)
    if total:
        out.append(("p", f"{len(at)} of {total} configurations have an evaluation KL at its floor"
                         + (f": {', '.join(at)}." if at else ".")))
    return out


def paper_comparison_blocks(summary: dict[str, Any]) -> list[tuple]:
    comps = summary.get("paper_comparisons") or []
    if not comps:
        return []
    return [("h", 2, "The paper's comparisons: the method against strategies (a)-(d)"),
            ("p", "Each constructed-batch configuration against each random-batch one, per metric: difference of the "
                  f"means over seeds against {SPREAD_FACTOR:g} × the pooled seed s.d., and Welch's t-test."),
            ("ul", [c["sentence"] for c in comps])]


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
    """The report as blocks: ("h", level, text), ("p", text), ("ul", items), ("table", head, rows), ("img", name, caption).
    The first paragraph answers the question; each section after it is one function."""
    out: list[tuple] = [("h", 1, f"Subsample comparison on {summary['dataset']} ({summary['scale']} scale)")]
    out.append(("p", summary["answer"]))
    if summary.get("answer_details"):
        out.append(("ul", summary["answer_details"]))
    out += _setup_blocks(summary)
    out += design_blocks(summary)
    out += _learning_blocks(summary)
    out += _spread_blocks(summary)
    out += _batch_blocks(summary, plots)
    out += _results_blocks(summary, plots)
    if "samples.png" in plots:
        out.append(("h", 2, "Samples"))
        out.append(("img", "samples.png", plots["samples.png"]))
    return out


def _setup_blocks(summary: dict[str, Any]) -> list[tuple]:
    S, B, P = summary["strategies"], summary["batch_sizes"], summary["presets"]
    out: list[tuple] = [("p", f"MLflow parent run `{summary['parent_run_id']}` ({summary['run_name']}, {summary['status']}), "
                              f"experiment {summary['experiment_id']}: {summary['runs']} child runs, {summary['runs_ok']} finished. "
                              f"Grid: strategies {', '.join(S)} × B {', '.join(map(str, B))} × presets {', '.join(P)} × "
                              f"{len(summary['seeds'])} seeds; {summary['n_images']} training images. Every number below was "
                              "read back from MLflow (the child runs' metrics, histories, tags and artifacts).")]
    st = summary.get("settings", {})
    over = lambda sec: ", ".join(f"{k}={v}" for k, v in st.get(sec, {}).items()) or "none"  # noqa: E731
    out.append(("p", f"Over each preset's training values: the scale's ({over('scale_train')}), then these given "
                     f"values ({over('train')}), then the cell's seed. Evaluation: the scale's ({over('scale_evaluate')}), "
                     f"then given ({over('evaluate')})."))
    if summary["scale"] in SCALE_NOTES:
        out.append(("p", SCALE_NOTES[summary["scale"]]))
    return out


def _learning_blocks(summary: dict[str, Any]) -> list[tuple]:
    """Did the generators learn: one sentence, the runs that did not (in words), a table per configuration."""
    learning = summary["learning"]
    out: list[tuple] = [("h", 2, "Did the generators learn?")]
    out.append(("p", f"Training logs the feature KL of its fixed-z samples before the first step (epoch 0: the "
                     f"untrained generator) and after every epoch. A run whose last value is within "
                     f"{learning['tolerance']:.0%} of its epoch-0 value did not learn. "
                     + learning_sentence(learning)))
    if learning["not_moved"]:
        out.append(("ul", [f"{_run_label(r)} (run `{r['run_id']}`): **did not learn**; its evaluation describes an "
                           "untrained generator" for r in learning["not_moved"]]))
    rows = []
    by_conf: dict[str, list[dict]] = {}
    for r in learning["runs"]:
        by_conf.setdefault(r["configuration"], []).append(r)
    mean = lambda rs, k: _compact(mean_sd([r[k] for r in rs if r[k] is not None]))  # noqa: E731
    for conf, rs in by_conf.items():
        known = [r for r in rs if r["moved"] is not None]
        rows.append([rs[0]["preset"], str(rs[0]["batch_size"]), rs[0]["strategy"],
                     f"{sum(bool(r['moved']) for r in known)}/{len(rs)}" + ("" if len(known) == len(rs) else " (?)"),
                     mean(rs, "feature_kl_initial"), mean(rs, "feature_kl_last"),
                     f"{mean(rs, 'loss_d_first')} → {mean(rs, 'loss_d_last')}",
                     f"{mean(rs, 'loss_g_first')} → {mean(rs, 'loss_g_last')}"])
    if rows:
        out.append(("table", ["preset", "B", "strategy", "learned", "feature KL, epoch 0", "feature KL, last epoch",
                              "D loss, epoch 1 → last", "G loss, epoch 1 → last"], rows))
    return out


def _spread_blocks(summary: dict[str, Any]) -> list[tuple]:
    comps, bcomps = summary["comparisons"], summary.get("batch_comparisons", [])
    out: list[tuple] = [("h", 2, "Which differences exceed the seed-to-seed spread")]
    if not comps and not bcomps:
        out.append(("p", "No comparison possible: the grid has no random-batch baseline or no finished runs."))
        return out
    every = bcomps + comps
    big = [c for c in every if c["exceeds"]]
    out.append(("p", f"{len(big)} of {len(every)} comparisons with random batches differ by more than "
                     f"{SPREAD_FACTOR:g} × the pooled seed s.d. (√((s_a² + s_b²)/2), sample s.d. over seeds); "
                     "Welch's t-test is given alongside. With 3 seeds, treat single hits with care: "
                     "many comparisons are made."))
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
    out: list[tuple] = [("h", 2, "Batch diagnostics (the paper's Tables 1 and 2)")]
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
    out.append(("p", f"Table 1, coverage per epoch (distinct images drawn / n; higher is better): mean over {epochs} "
                     "epoch(s) and the seeds' constructions (range in brackets when it varies)."))
    out.append(("table", cov_head, cov_rows))
    kl_rows = []
    for s in S:
        for stat in KL_STATS:
            kl_rows.append([s if stat == "mean" else "", stat] + [fmt(summary["kl"][f"{s}|{b}"][stat]) for b in B])
    out.append(("p", "Table 2, KL(f_Xi || f_X) of each batch against the data set (Eq. 10, natural log; lower is "
                     "better) over all batches of those epochs: mean, s.d., minimum, median, maximum, each averaged "
                     "over the seeds."))
    out.append(("table", ["strategy", "statistic"] + [f"B={b}" for b in B], kl_rows))
    if "never_drawn.png" in plots:
        out.append(("img", "never_drawn.png", plots["never_drawn.png"]))
    out += batch_check_blocks(summary)
    out += never_drawn_blocks(summary)
    return out


def _results_blocks(summary: dict[str, Any], plots: dict[str, str]) -> list[tuple]:
    """Results per configuration; a metric no run has is one sentence, not a column of "n/a"."""
    out: list[tuple] = [("h", 2, "Results per configuration (mean ± s.d. over seeds)")]
    missing = summary.get("missing_metrics") or {}
    specs = [spec for spec in EVAL_METRICS if spec.label not in missing]
    keys = sorted({k for c in summary["configurations"] for spec in EVAL_METRICS for k in c["metrics"][spec.name]["mlflow_keys"]})
    out.append(("p", "Evaluation of the final generator (MLflow keys: " + (", ".join(f"`{k}`" for k in keys) or "none")
                     + "). Feature KL is KL(f_G || f_X) in the paper's feature space (f_X smoothed with 0.5 per "
                     "cell); lower FID, KID and feature KL and higher IS are better. n = seeds with a finished run."
                     + (" " + missing_sentence(missing) if missing else "")))
    head = ["preset", "B", "strategy", "runs ok"] + [spec.label for spec in specs]
    rows = []
    for c in summary["configurations"]:
        rows.append([c["preset"], str(c["batch_size"]), c["strategy"], f"{c['ok']}/{c['planned']}"]
                    + [fmt_mean_sd(c["metrics"][spec.name]) for spec in specs])
    out.append(("table", head, rows))
    failed = [(c, f) for c in summary["configurations"] for f in c["failed"]]
    if failed:
        out.append(("p", "Runs that did not finish:"))
        out.append(("ul", [f"{c['configuration']} seed {f['seed']}: {f['error']}"
                           + (f" (run `{f['run_id']}`)" if f["run_id"] else "") for c, f in failed]))
    out += floor_blocks(summary)
    out += paper_comparison_blocks(summary)
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


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:0.6em 0 1.2em;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:0.85em;color:#555;margin-bottom:1.5em}code{background:#f5f5f5;padding:0 3px}li{margin:0.2em 0}"""


def render_html(blocks: list[tuple], plots_dir: Path, title: str) -> str:
    body: list[str] = []
    for b in blocks:
        if b[0] == "h":
            body.append(f"<h{b[1]}>{_html_inline(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            body.append(f"<p>{_html_inline(b[1])}</p>")
        elif b[0] == "ul":
            body.append("<ul>" + "".join(f"<li>{_html_inline(i)}</li>" for i in b[1]) + "</ul>")
        elif b[0] == "table":
            head = "".join(f"<th>{_html_inline(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{_html_inline(str(x))}</td>" for x in r) + "</tr>" for r in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b[0] == "img":
            data = base64.b64encode((plots_dir / b[1]).read_bytes()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b[2])}">'
                        f"<figcaption>{_html_inline(b[2])}</figcaption></figure>")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# --- the entry point -------------------------------------------------------------------------------


def build_report(parent_run_id: str, out_dir: Optional[Path] = None, *, log_to_mlflow: bool = True) -> dict[str, Any]:
    """Read the comparison from MLflow, write report.html/.md/.json and plots/ into ``out_dir``
    (default ``$SUBSAMPLE_HOME/reports/<parent run id>/``) and log them to the parent run under
    ``report/``. Returns the paths and headline counts."""
    data = collect(parent_run_id)
    out = Path(out_dir) if out_dir else reports_dir(parent_run_id)
    plots_dir = out / "plots"
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(data)
    plots = write_plots(data, summary, plots_dir)
    blocks = _blocks(summary, plots)
    title = f"Subsample comparison on {summary['dataset']} ({summary['scale']})"
    (out / "report.md").write_text(render_markdown(blocks))
    (out / "report.html").write_text(render_html(blocks, plots_dir, title))
    (out / "report.json").write_text(json.dumps({**summary, "plots": plots}, indent=1, default=str))
    if log_to_mlflow:
        from storage import tracking

        tracking.log_artifacts(parent_run_id, [(out / f, "report") for f in ("report.html", "report.md", "report.json")]
                               + [(plots_dir, "report/plots")])
    return {
        "html": str(out / "report.html"), "md": str(out / "report.md"), "json": str(out / "report.json"),
        "dir": str(out), "parent_run_id": parent_run_id, "runs": summary["runs"], "runs_ok": summary["runs_ok"],
        "comparisons": len(summary["comparisons"]),
        "exceeding_seed_spread": sum(bool(c["exceeds"]) for c in summary["comparisons"]),
    }
