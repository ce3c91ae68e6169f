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
    """Stand-in for pipeline.stages.tables.Table: feature_kl reads only ``counts``."""
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


# --- the floor of the feature KL (spec §5 decision) -------------------------------------------------


def table_of(counts) -> SimpleNamespace:
    """A table stand-in with the images' cells too (the floor samples real images)."""
    counts = np.asarray(counts, dtype=np.int64)
    cells = np.repeat(np.arange(counts.size), counts.ravel())
    return SimpleNamespace(counts=counts, cells=np.random.default_rng(0).permutation(cells))


def test_floor_on_identical_distributions_is_the_documented_value():
    """A sample of the training set itself scores KL(f_X || f_X') + (K - 1)/(2N) (docs/evaluate.md),
    within the estimator's spread, once N is several times the K occupied cells."""
    from pipeline.metrics import feature_kl_floor

    rng = np.random.default_rng(3)
    counts = np.zeros(400, np.int64)
    counts[rng.choice(400, 60, replace=False)] = rng.integers(20, 400, 60)  # K = 60 occupied of 400 cells
    t = table_of(counts)
    f_x = counts / counts.sum()
    for size in (2_000, 10_000):
        floor = feature_kl_floor(t, size, repeats=40)
        documented = kl_divergence(f_x, smoothed(counts)) + (60 - 1) / (2 * size)
        assert floor["approx"] == pytest.approx(documented, rel=1e-12) and floor["occupied_cells"] == 60
        assert floor["mean"] == pytest.approx(documented, rel=0.05, abs=2 * floor["sd"] / np.sqrt(40))
        assert (
            floor["mean"] > kl_divergence(f_x, smoothed(counts)) > 0
        )  # a finite sample scores above the smoothing's cost
    # without smoothing and with a huge sample, the floor goes to (K - 1)/(2N) -> 0
    big = feature_kl_floor(t, 1_000_000, repeats=5, pseudo_count=0.0)
    assert big["mean"] == pytest.approx(59 / 2e6, rel=0.25)


def test_floor_is_reproducible_and_shrinks_with_the_sample_size():
    from pipeline.metrics import feature_kl_floor

    t = table_of(np.random.default_rng(1).integers(0, 50, (12, 12)))
    a, b = feature_kl_floor(t, 500), feature_kl_floor(t, 500)
    assert a == b and a["repeats"] == 10 and a["sd"] > 0
    assert feature_kl_floor(t, 5000)["mean"] < a["mean"]
    with pytest.raises(ValueError):
        feature_kl_floor(t, 0)


def test_floor_cache_per_table_and_sample_size(tmp_path, monkeypatch):
    import json

    from pipeline.floors import cached_feature_kl_floor, floors_path
    from pipeline.metrics import feature_kl_floor

    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path))
    t = table_of(np.random.default_rng(2).integers(0, 30, (8, 8)))
    first = cached_feature_kl_floor(t, "hashA", 300)
    assert first["cache_hit"] is False and first["mean"] == feature_kl_floor(t, 300)["mean"]
    again = cached_feature_kl_floor(t, "hashA", 300)
    assert again["cache_hit"] is True and again["mean"] == first["mean"]
    assert cached_feature_kl_floor(t, "hashA", 600)["cache_hit"] is False  # another sample size
    assert len(json.loads(floors_path("hashA").read_text())) == 2
    floors_path("hashA").write_text("{not json")  # a damaged cache is recomputed, not an error
    assert cached_feature_kl_floor(t, "hashA", 300)["mean"] == first["mean"]


def test_at_floor_uses_both_spreads():
    from pipeline.metrics import at_floor

    floor = {"mean": 0.18, "sd": 0.004}
    assert at_floor(0.185, floor) and not at_floor(0.20, floor)
    assert at_floor(0.20, floor, spread=0.02)  # a wide seed spread cannot tell 0.20 from 0.18
    assert at_floor(0.1, floor)  # below the floor is at it


def test_count_tag_names_sample_sizes():
    from pipeline.metrics import count_tag

    assert (count_tag(2048), count_tag(10_000), count_tag(256)) == ("2048", "10k", "256")
