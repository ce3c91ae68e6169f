"""Feature-space metrics between generated images and the training set (spec §5).

Plain numpy on already-binned cells; no I/O. ``pipeline.evaluate`` and the training stage's
per-epoch diagnostics both use :func:`feature_kl`.

Decisions (spec §5):

- ``KL(f_G || f_X)`` (Eq. 10, natural log) with ``f_G`` the generated images' empirical cell
  distribution and ``f_X`` the training table smoothed with an additive pseudo-count of
  ``PSEUDO_COUNT = 0.5`` per cell, ``f_X' = (T + 0.5) / (n + 0.5 C)`` over all C cells. A generated
  image in a cell no training image occupies then costs a large but finite amount instead of
  making the KL infinite. ``f_G`` is not smoothed: cells with ``f_G = 0`` contribute 0.
- ``JS(f_G, f_X)`` (natural log, so ``0 <= JS <= ln 2``) on the *unsmoothed* distributions: the
  mixture ``M = (f_G + f_X) / 2`` is positive wherever either term is, so JS is finite without
  smoothing, and leaving it unsmoothed keeps its bounds and ``JS = 0`` iff the histograms agree.
"""
from __future__ import annotations

from typing import Any

import numpy as np

PSEUDO_COUNT = 0.5


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
    (``table.bin_values(compute_features(images))``). ``table``: a :class:`pipeline.tables.Table`
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
