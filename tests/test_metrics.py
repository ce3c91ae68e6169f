"""Feature-space metrics (spec §5) against direct numpy computations on hand-made tables."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.metrics import (
    PSEUDO_COUNT,
    cell_distribution,
    feature_kl,
    js_divergence,
    kl_divergence,
    sharpness_stats,
    smoothed,
)


def table_with(counts) -> SimpleNamespace:
    """Stand-in for pipeline.tables.Table: feature_kl reads only ``counts``."""
    return SimpleNamespace(counts=np.asarray(counts, dtype=np.int64))


def direct_kl_smoothed(gen_cells, counts, a=0.5):
    counts = np.asarray(counts, float).ravel()
    q = (counts + a) / (counts.sum() + a * counts.size)
    total = 0.0
    n = len(gen_cells)
    for c in set(gen_cells):
        p = gen_cells.count(c) / n
        total += p * math.log(p / q[c])
    return total


def test_feature_kl_matches_direct_computation_including_a_cell_empty_in_training():
    # 2×3 table, n = 10; cell 5 holds no training image.
    counts = [[4, 3, 0], [2, 1, 0]]
    gen = [0, 0, 1, 3, 5, 5]  # two generated images in cell 5 where f_X = 0
    r = feature_kl(np.array(gen), table_with(counts))
    assert math.isfinite(r["kl"])
    assert r["kl"] == pytest.approx(direct_kl_smoothed(gen, counts), rel=1e-12)
    # unsmoothed KL would be infinite there: the pseudo-count is what makes it finite
    assert kl_divergence(cell_distribution(gen, 6), np.ravel(counts) / 10) == math.inf
    assert r["empty_cells_hit"] == pytest.approx(2 / 6)
    assert r["occupied_cells"] == 4


def test_feature_kl_hand_value():
    # f_G = (1, 0), counts (1, 1): f_X' = (1.5, 1.5) / 3 = (0.5, 0.5) -> KL = ln 2
    r = feature_kl(np.array([0, 0, 0]), table_with([1, 1]))
    assert r["kl"] == pytest.approx(math.log(2))
    # JS on the unsmoothed pair (1, 0) vs (0.5, 0.5): m = (0.75, 0.25)
    js = 0.5 * math.log(1 / 0.75) + 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    assert r["js"] == pytest.approx(js)


def test_kl_of_identical_histograms_is_small_and_shrinks_with_n():
    counts = np.array([[50, 30], [15, 5]])
    cells = np.repeat(np.arange(4), counts.ravel())
    r = feature_kl(cells, table_with(counts))
    assert r["js"] == pytest.approx(0.0, abs=1e-15)
    # only the smoothing separates them
    assert 0 < r["kl"] < 0.01
    r10 = feature_kl(cells, table_with(counts * 10))
    assert r10["kl"] < r["kl"]


def test_js_bounds():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.dirichlet(np.ones(7) * 0.3)
        q = rng.dirichlet(np.ones(7) * 0.3)
        js = js_divergence(p, q)
        assert 0.0 <= js <= math.log(2) + 1e-12
        assert js == pytest.approx(js_divergence(q, p))  # symmetric
    assert js_divergence(p, p) == pytest.approx(0.0, abs=1e-15)
    # disjoint supports reach the bound
    assert js_divergence([1, 0, 0], [0, 0.5, 0.5]) == pytest.approx(math.log(2))


def test_smoothing_and_distribution_helpers():
    s = smoothed([2, 0, 0])
    assert s.sum() == pytest.approx(1.0)
    assert s[1] == pytest.approx(PSEUDO_COUNT / (2 + 3 * PSEUDO_COUNT))
    with pytest.raises(ValueError):
        cell_distribution(np.array([0, 4]), 4)
    with pytest.raises(ValueError):
        cell_distribution(np.array([], np.int64), 4)


def test_sharpness_difference():
    r = sharpness_stats(np.array([10.0, 20.0, 30.0]), 25.0)
    assert r == {"sharpness_mean": 20.0, "sharpness_train_mean": 25.0, "sharpness_diff": -5.0}
