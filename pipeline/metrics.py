"""Feature-space metrics between generated images and the training set (spec §5), and the
registry of the evaluation's metrics by protocol name (:data:`METRICS`).

Plain numpy on already-binned cells; no I/O. ``pipeline.stages.evaluate`` and the training stage's
per-epoch diagnostics both use :func:`feature_kl`. The metric names live here, torch-free, so a
config naming them is checked where it is made; ``pipeline.fidelity`` computes them.

Decisions (spec §5):

- ``KL(f_G || f_X)`` (Eq. 10, natural log) with ``f_G`` the generated images' empirical cell
  distribution and ``f_X`` the training table smoothed with an additive pseudo-count of
  ``PSEUDO_COUNT = 0.5`` per cell, ``f_X' = (T + 0.5) / (n + 0.5 C)`` over all C cells. A generated
  image in a cell no training image occupies then costs a large but finite amount instead of
  making the KL infinite. ``f_G`` is not smoothed: cells with ``f_G = 0`` contribute 0.
- ``JS(f_G, f_X)`` (natural log, so ``0 <= JS <= ln 2``) on the *unsmoothed* distributions: the
  mixture ``M = (f_G + f_X) / 2`` is positive wherever either term is, so JS is finite without
  smoothing, and leaving it unsmoothed keeps its bounds and ``JS = 0`` iff the histograms agree.
- Every feature KL has a *floor* at its sample size N (:func:`feature_kl_floor`): the same
  estimator on N real images drawn at random, with replacement, from the training set, i.e. what a
  generator whose feature distribution is exactly f_X scores with N samples. It is not 0: a finite
  sample's histogram is noisy and f_X' is smoothed. For N several times the number K of occupied
  cells, ``floor ≈ KL(f_X || f_X') + (K - 1) / (2N)`` (the smoothing's cost plus the plug-in
  estimator's bias). On the CIFAR-10 subset (5,592 images, 32 × 32 bins, K = 504): 0.078 at
  N = 10,000, 0.178 at N = 2,048.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import numpy as np

from pipeline.registry import Registry

PSEUDO_COUNT = 0.5
FLOOR_REPEATS = 10  # real samples behind a floor (its mean and s.d.)
FLOOR_SEED = 0


def count_tag(n: int) -> str:
    """stylegan2-ada's count notation in metric names: 50000 -> '50k', 1234 -> '1234'."""
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


# --- the evaluation's metrics, registered by protocol name ------------------------------------------
# stylegan2-ada's metric_main registers fid50k_full: the name says what is computed, on how many
# images, against what. Here N (the generated-sample count, ``EvaluateConfig.samples``) varies, so
# a metric is registered under its template ("fid{N}_train") and named for a given N by
# :func:`metrics_for` (fid10k_train at N = 10,000; fid2k_train at 2,000).

STAGE = "evaluate"


@dataclass(frozen=True)
class Metric:
    """One selectable metric: its protocol ``template`` (``{N}`` is the sample count in
    :func:`count_tag` notation), what it is, the ``family`` that computes it
    (``pipeline.fidelity.METRIC_FAMILIES``: the metrics of one family share their work, e.g. one
    feature extraction for IS, FID and KID) and the ``companions`` reported with it (its s.d., its
    floor)."""

    template: str
    description: str
    family: str
    companions: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.template

    def at(self, n: int) -> str:
        """The metric's name for N = ``n`` generated images: ``fid{N}_train`` -> ``fid10k_train``."""
        return self.template.replace("{N}", count_tag(n))

    def outputs(self, n: int) -> tuple[str, ...]:
        """Every value it reports at N = ``n``: its name, then its companions'."""
        return (self.at(n), *(c.replace("{N}", count_tag(n)) for c in self.companions))


METRICS: Registry[Metric] = Registry("metric", stage=STAGE)
IS = METRICS.register(
    Metric(
        "is{N}",
        "Inception Score of N generated images (torch-fidelity; mean over ``isc_splits`` splits, s.d. ``is{N}_std``)",
        "fidelity",
        ("is{N}_std",),
    )
)
FID = METRICS.register(
    Metric("fid{N}_train", "FID between N generated images and the full training set (torch-fidelity)", "fidelity")
)
KID = METRICS.register(
    Metric(
        "kid{N}_train",
        "KID between N generated images and the full training set (torch-fidelity; mean over "
        "``kid_subsets`` subsets, s.d. ``kid{N}_train_std``)",
        "fidelity",
        ("kid{N}_train_std",),
    )
)
FEATURE_KL = METRICS.register(
    Metric(
        "feature_kl{N}_train",
        "KL(f_G || f_X) of N generated images' binned features against the training table, "
        "f_X smoothed (spec §5); its floor at N real samples beside it (``feature_kl{N}_train_floor``, ``_floor_sd``)",
        "feature",
        ("feature_kl{N}_train_floor", "feature_kl{N}_train_floor_sd"),
    )
)
FEATURE_JS = METRICS.register(
    Metric("feature_js{N}_train", "JS(f_G, f_X) of the same binned distributions, unsmoothed, in [0, ln 2]", "feature")
)
FEATURE_OUTSIDE = METRICS.register(
    Metric(
        "feature_outside{N}_train", "fraction of the N generated images in cells no training image occupies", "feature"
    )
)
SHARPNESS_MEAN = METRICS.register(
    Metric("sharpness_mean{N}", "mean energy-gradient sharpness (Eq. 15) of N generated images", "sharpness")
)
SHARPNESS_DIFF = METRICS.register(
    Metric(
        "sharpness_diff{N}_train",
        "generated minus training mean sharpness (the training mean as ``sharpness_mean_train``)",
        "sharpness",
        ("sharpness_mean_train",),
    )
)


def metrics_for(n: int) -> Registry[Metric]:
    """The metrics under their names for N = ``n`` (``fid10k_train``, ...), in registration order:
    what ``--metrics`` accepts, and what an unknown name is told."""
    reg: Registry[Metric] = Registry("metric", stage=STAGE)
    for m in METRICS.values():
        reg.register(m, name=m.at(n))
    return reg


def selected_metrics(names: Optional[Iterable[str]], n: int, *, stage: str = STAGE) -> tuple[Metric, ...]:
    """The metrics ``names`` select at N = ``n`` (None: all), in registration order;
    :class:`~pipeline.registry.UnknownName` for a name that is not one of :func:`metrics_for`."""
    if names is None:
        return tuple(METRICS.values())
    reg = metrics_for(n)
    chosen = {reg.get(name, stage=stage) for name in names}
    return tuple(m for m in METRICS.values() if m in chosen)


def _template_re(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(re.escape("{N}"), r"(\d+)(k?)") + r"\Z")


def parse_metric_name(name: str) -> Optional[tuple[Metric, int]]:
    """``(metric, N)`` of a metric's name at some N (``fid10k_train`` -> (FID, 10000)), or None
    when ``name`` is no metric's name at any N (``fid10000_train`` is not: 10,000 is ``10k``)."""
    for m in METRICS.values():
        hit = _template_re(m.template).match(name)
        if hit:
            n = int(hit[1]) * (1000 if hit[2] else 1)
            if n > 0 and m.at(n) == name:
                return m, n
    return None


def cell_distribution(cells: np.ndarray, n_cells: int) -> np.ndarray:
    """Empirical distribution of flat cell indices over ``n_cells`` cells (float64, sums to 1)."""
    cells = np.asarray(cells, dtype=np.int64).ravel()
    if cells.size == 0:
        raise ValueError("no generated cells: cannot form a distribution from zero images")
    if cells.min() < 0 or cells.max() >= n_cells:
        raise ValueError(f"cell indices must lie in [0, {n_cells}), got [{cells.min()}, {cells.max()}]")
    return np.bincount(cells, minlength=n_cells).astype(np.float64) / cells.size


def smoothed(counts: np.ndarray, pseudo_count: float = PSEUDO_COUNT) -> np.ndarray:
    """``(counts + a) / (sum(counts) + a C)``: additive (Laplace/Jeffreys-style) smoothing."""
    c = np.asarray(counts, dtype=np.float64).ravel() + pseudo_count
    return c / c.sum()


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """``KL(p || q) = sum p log(p / q)`` in nats, 0 log 0 = 0; ``inf`` if p > 0 where q = 0."""
    p = np.asarray(p, dtype=np.float64).ravel()
    q = np.asarray(q, dtype=np.float64).ravel()
    m = p > 0
    if np.any(q[m] <= 0):
        return float("inf")
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence in nats: ``(KL(p||m) + KL(q||m)) / 2``, ``m = (p + q) / 2``;
    lies in ``[0, ln 2]``."""
    p = np.asarray(p, dtype=np.float64).ravel()
    q = np.asarray(q, dtype=np.float64).ravel()
    m = 0.5 * (p + q)
    return 0.5 * kl_divergence(p, m) + 0.5 * kl_divergence(q, m)


def feature_kl(gen_cells: np.ndarray, table: Any, *, pseudo_count: float = PSEUDO_COUNT) -> dict[str, float]:
    """Feature-space divergences of generated images from the training set (spec §5).

    ``gen_cells``: flat cell indices of generated images, binned with the *training* scale
    (``table.bin_values(compute_features(images))``). ``table``: a :class:`pipeline.stages.tables.Table`
    (only ``counts`` is used). Returns ``{"kl": KL(f_G || f_X'), "js": JS(f_G, f_X),
    "occupied_cells": distinct generated cells, "empty_cells_hit": fraction of generated images in
    cells with f_X = 0}``.
    """
    counts = np.asarray(table.counts)
    f_g = cell_distribution(gen_cells, counts.size)
    f_x = counts.ravel().astype(np.float64) / counts.sum()
    return {
        "kl": kl_divergence(f_g, smoothed(counts, pseudo_count)),
        "js": js_divergence(f_g, f_x),
        "occupied_cells": int(np.count_nonzero(f_g)),
        "empty_cells_hit": float(f_g[f_x == 0].sum()),
    }


def feature_kl_floor(
    table: Any,
    size: int,
    *,
    repeats: int = FLOOR_REPEATS,
    seed: int = FLOOR_SEED,
    pseudo_count: float = PSEUDO_COUNT,
) -> dict[str, Any]:
    """The floor of :func:`feature_kl` at sample size ``size`` (spec §5 decision): the same
    estimator applied to ``size`` real images drawn uniformly, with replacement, from the training
    set (their cells are ``table.cells``), against the training table. Returns the mean and sample
    s.d. over ``repeats`` draws, and ``approx = KL(f_X || f_X') + (K - 1) / (2 size)``, the
    large-sample value (K = occupied cells; close once ``size`` is a few times K)."""
    if size < 1:
        raise ValueError(f"a floor needs a sample size of at least 1, got {size}")
    cells = np.asarray(table.cells, dtype=np.int64)
    counts = np.asarray(table.counts)
    rng = np.random.default_rng([seed, size])
    v = np.array(
        [
            feature_kl(cells[rng.integers(0, len(cells), size)], table, pseudo_count=pseudo_count)["kl"]
            for _ in range(repeats)
        ]
    )
    f_x = counts.ravel().astype(np.float64) / counts.sum()
    occupied = int(np.count_nonzero(f_x))
    approx = kl_divergence(f_x, smoothed(counts, pseudo_count)) + (occupied - 1) / (2.0 * size)
    return {
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if repeats > 1 else None,
        "size": int(size),
        "repeats": int(repeats),
        "approx": float(approx),
        "occupied_cells": occupied,
    }


def at_floor(value: float, floor: dict[str, Any], spread: float | None = None, factor: float = 2.0) -> bool:
    """Whether a KL is indistinguishable from its floor: ``value - floor <= factor * sqrt(spread² +
    floor_sd²)``, ``spread`` being the value's own s.d. (over seeds), if known."""
    sd = float(np.hypot(spread or 0.0, floor.get("sd") or 0.0))
    return value - floor["mean"] <= factor * sd


def sharpness_stats(gen_sharpness: np.ndarray, train_sharpness_mean: float) -> dict[str, float]:
    """Seed paper 004's 清晰度均值 / 差值: the generated images' mean energy-gradient sharpness
    (spec §1 Eq. 15) and its difference from the training set's mean (generated − training)."""
    gen_sharpness = np.asarray(gen_sharpness, dtype=np.float64).ravel()
    mean = float(gen_sharpness.mean())
    return {
        "sharpness_mean": mean,
        "sharpness_train_mean": float(train_sharpness_mean),
        "sharpness_diff": mean - float(train_sharpness_mean),
    }
