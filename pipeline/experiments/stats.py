"""A comparison's numbers: what MLflow recorded for its parent run and children, read into
:class:`ReportData`, and summarised (means and seed spreads, each strategy against the baseline,
whether the generators learned, the paper design's checks). No words, no pictures: the report
(``pipeline.experiments.report``) renders these, the plots (``pipeline.experiments.plots``) draw them.
"""

from __future__ import annotations

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

from pipeline.experiments.compare import ERROR_TAG, FIDELITY_TAG, GRID_ARTIFACT, GridCell
from storage.errors import SubsampleError


def scratch() -> tempfile.TemporaryDirectory:
    """A temporary folder for downloaded MLflow artifacts, under the home like every write."""
    from storage.paths import scratch_dir

    scratch_dir().mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=scratch_dir())


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
        return (
            uniq(c.strategy for c in cells),
            sorted(uniq(c.batch_size for c in cells)),
            uniq(c.preset for c in cells),
            sorted(uniq(c.seed for c in cells)),
        )

    def select(
        self,
        *,
        strategy: Optional[str] = None,
        batch_size: Optional[int] = None,
        preset: Optional[str] = None,
        seed: Optional[int] = None,
        ok: bool = True,
    ) -> list[Member]:
        out = []
        for m in self.members:
            c = m.cell
            if (
                (strategy is None or c.strategy == strategy)
                and (batch_size is None or c.batch_size == batch_size)
                and (preset is None or c.preset == preset)
                and (seed is None or c.seed == seed)
                and (not ok or (m.status == "FINISHED" and not m.error))
            ):
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
            STAGE,
            f"no MLflow run {parent_run_id!r} in {tracking.mlflow_tracking_uri()}; give the parent run id "
            "that `subsample compare` printed",
        ) from None
    grid: list[dict[str, Any]] = []
    with scratch() as tmp, _quiet_downloads():
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
            run_id=run.info.run_id,
            cell=cell,
            status=run.info.status,
            error=run.data.tags.get(ERROR_TAG),
            fidelity=run.data.tags.get(FIDELITY_TAG, "unknown"),
            metrics=dict(run.data.metrics),
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
        parent_run_id=parent_run_id,
        run_name=parent.info.run_name or "",
        status=parent.info.status,
        dataset=parent.data.tags.get(tracking.DATASET_TAG, "?"),
        params=dict(parent.data.params),
        grid=grid,
        members=members,
        experiment_id=parent.info.experiment_id,
    )


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
    out: dict[str, Any] = {
        "a": sa,
        "b": sb,
        "diff": None,
        "pooled_sd": None,
        "exceeds": None,
        "better": None,
        "t": None,
        "p": None,
    }
    if sa["n"] < 2 or sb["n"] < 2:
        return out
    diff = sa["mean"] - sb["mean"]
    pooled = math.sqrt((sa["sd"] ** 2 + sb["sd"] ** 2) / 2)
    out.update(
        diff=diff,
        pooled_sd=pooled,
        exceeds=abs(diff) > SPREAD_FACTOR * pooled,
        better=(diff < 0) == lower_is_better if diff != 0 else None,
    )
    if pooled > 0:
        with warnings.catch_warnings():  # one side without spread (random batches' coverage): still a valid test
            warnings.simplefilter("ignore", RuntimeWarning)
            res = stats.ttest_ind(a, b, equal_var=False)
        out.update(t=float(res.statistic), p=float(res.pvalue))
    return out


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
        runs.append(
            {
                "run_id": m.run_id,
                "configuration": m.cell.configuration,
                "preset": m.cell.preset,
                "batch_size": m.cell.batch_size,
                "strategy": m.cell.strategy,
                "seed": m.cell.seed,
                "feature_kl_initial": initial,
                "feature_kl_last": last,
                "last_epoch": last_epoch,
                "moved": moved,
                "loss_d_first": d0,
                "loss_d_last": d1,
                "loss_g_first": g0,
                "loss_g_last": g1,
            }
        )
    not_moved = [r for r in runs if r["moved"] is False]
    by_setting: dict[str, int] = {}
    for r in not_moved:
        k = f"{r['preset']}|{r['batch_size']}|{r['strategy']}"
        by_setting[k] = by_setting.get(k, 0) + 1
    return {
        "tolerance": MOVE_TOLERANCE,
        "runs": runs,
        "not_moved": not_moved,
        "unknown": [r for r in runs if r["moved"] is None],
        "not_moved_by_setting": by_setting,
    }


BATCH_METRICS = (
    MetricSpec("batch_kl", "KL(f_Xi || f_X) of a batch to the data set", r"^batches/kl_mean$", True, "batches"),
    MetricSpec("coverage", "coverage per epoch", r"^batches/coverage_mean$", False, "batches"),
)


BATCH_KEYS = {"batch_kl": "batches/kl_mean", "coverage": "batches/coverage_mean"}


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


EVAL_KL = r"^eval/feature_kl(\d+k?)_train$"


def _parent_json(parent_run_id: str, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    from storage import tracking

    with scratch() as tmp, _quiet_downloads():
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
    out: dict[str, Any] = {
        **mean_sd(vals),
        "keys": sorted(keys),
        "floor": None,
        "floor_sd": None,
        "at_floor": None,
        "ratio": None,
    }
    if vals and floors:
        floor = {"mean": float(np.mean(floors)), "sd": float(np.mean(floor_sds)) if floor_sds else None}
        out.update(
            floor=floor["mean"],
            floor_sd=floor["sd"],
            at_floor=bool(at_floor(out["mean"], floor, out["sd"])),
            ratio=out["mean"] / floor["mean"] if floor["mean"] > 0 else None,
        )
    return out


def _eval_kl_key(m: Member) -> Optional[str]:
    keys = [(k, mm.group(1)) for k in m.metrics if (mm := re.match(EVAL_KL, k))]
    return max(keys, key=lambda kv: _count(kv[1]))[0] if keys else None


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


# --- power: what a comparison's seeds can detect ---------------------------------------------------

POWER = 0.8  # the chance of detecting a true difference that the figures below are for
ALPHA = 0.05  # Welch's test, two-sided


def detectable_difference(sd: Optional[float], n_a: int, n_b: int, alpha: float = ALPHA, power: float = POWER):
    """The smallest true difference of means that Welch's t-test (two-sided, ``alpha``) detects
    with probability ``power`` when both sides have seed s.d. ``sd`` (the pooled one), with
    ``n_a`` and ``n_b`` seeds: ``(t_{1-alpha/2, df} + t_{power, df}) · sd · √(1/n_a + 1/n_b)``,
    ``df = n_a + n_b − 2`` (equal spreads: Welch's df). None without a spread or with < 2 seeds a side."""
    from scipy import stats

    if sd is None or n_a < 2 or n_b < 2:
        return None
    df = n_a + n_b - 2
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * sd * math.sqrt(1 / n_a + 1 / n_b))


def rule_detectable_difference(sd: Optional[float], n_a: int, n_b: int, power: float = POWER):
    """The smallest true difference the report's rule (``|diff| > 2 × pooled seed s.d.``) flags
    with probability ``power``, the s.d. taken as known: ``2 sd + z_power · sd · √(1/n_a + 1/n_b)``.
    It never falls below ``2 sd``, whatever the seeds: the rule judges a difference against the
    seed spread, not against its standard error."""
    from scipy import stats

    if sd is None or n_a < 2 or n_b < 2:
        return None
    return float(SPREAD_FACTOR * sd + stats.norm.ppf(power) * sd * math.sqrt(1 / n_a + 1 / n_b))


def seeds_needed(delta: float, sd: Optional[float], alpha: float = ALPHA, power: float = POWER, most: int = 10_000):
    """The fewest seeds per cell (both cells alike) at which Welch's test detects a true difference
    ``delta`` with probability ``power``, at seed s.d. ``sd``; None when no spread is known or more
    than ``most`` would be needed."""
    if sd is None or delta == 0:
        return None
    if sd == 0:
        return 2
    lo, hi = 2, most
    if detectable_difference(sd, hi, hi, alpha, power) > abs(delta):
        return None
    while lo < hi:  # detectable_difference falls with n
        mid = (lo + hi) // 2
        if detectable_difference(sd, mid, mid, alpha, power) <= abs(delta):
            hi = mid
        else:
            lo = mid + 1
    return lo


def power_row(res: dict[str, Any], paper_delta: Optional[float] = None) -> dict[str, Any]:
    """What one comparison (:func:`compare_to_baseline`'s result) could detect, and how many seeds
    the paper's difference ``paper_delta`` would need at its spread."""
    sd, na, nb = res.get("pooled_sd"), res["a"]["n"], res["b"]["n"]
    out = {
        "pooled_sd": sd,
        "n_a": na,
        "n_b": nb,
        "welch_detectable": detectable_difference(sd, na, nb),
        "rule_detectable": rule_detectable_difference(sd, na, nb),
        "paper_delta": paper_delta,
        "seeds_needed": seeds_needed(paper_delta, sd) if paper_delta is not None else None,
        "rule_can_see_paper": None if paper_delta is None or sd is None else abs(paper_delta) > SPREAD_FACTOR * sd,
    }
    return out
