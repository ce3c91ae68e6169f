"""Batch construction (spec §3) and its diagnostics (spec §4): each strategy against its promise,
on tables made here with fixed seeds. The batches stage itself (cache, key, CLI, the label check)
is in ``test_batches_stage.py``."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.strategies import (
    STRATEGIES,
    construct_epoch,
    constructed_demand,
    count_table,
    largest_remainder,
    round_half_up_share,
    top_up,
)
from pipeline.stages.batches import coverage_per_epoch, kl_batch_vs_dataset, kl_stats, never_drawn
from pipeline.stages.tables import Table
from storage.errors import SubsampleError


def make_table(cells: np.ndarray, shape: tuple[int, ...]) -> Table:
    cells = np.asarray(cells, dtype=np.int64)
    counts = np.bincount(cells, minlength=int(np.prod(shape))).reshape(shape)
    return Table(
        features=tuple(f"f{i}" for i in range(len(shape))),
        bins=tuple(s - 1 for s in shape),
        maxima=np.ones(len(shape)),
        counts=counts,
        cells=cells,
    )


def skewed_table(n: int, seed: int = 0, side: int = 17):
    """A long-tailed 2-D table like real data: lognormal brightness × correlated sharpness."""
    rng = np.random.default_rng(seed)
    x = rng.lognormal(0.0, 0.6, n)
    y = 0.6 * np.log(x) + rng.normal(0.0, 0.5, n)
    i = np.clip(np.round(x / x.max() * (side - 1)), 0, side - 1).astype(np.int64)
    j = np.clip(np.round((y - y.min()) / (y.max() - y.min()) * (side - 1)), 0, side - 1).astype(np.int64)
    return make_table(i * side + j, (side, side))


def uniform_random_table(n: int, n_cells: int, seed: int):
    rng = np.random.default_rng(seed)
    return make_table(rng.integers(0, n_cells, n), (n_cells,))


def singleton_table(n_big: int, n_single: int, seed: int):
    """One big cell and many cells of one image each."""
    rng = np.random.default_rng(seed)
    cells = np.concatenate([np.zeros(n_big, np.int64), np.arange(1, n_single + 1)])
    return make_table(rng.permutation(cells), (n_single + 1,))


def per_batch_cell_counts(table, batches: np.ndarray) -> np.ndarray:
    n_cells = table.counts.size
    m = len(batches)
    codes = np.arange(m)[:, None] * n_cells + table.cells[batches]
    return np.bincount(codes.ravel(), minlength=m * n_cells).reshape(m, n_cells)


def assert_valid(batches: np.ndarray, n: int, b: int) -> None:
    assert batches.dtype == np.int64
    assert batches.shape == (n // b, b)
    assert batches.min() >= 0 and batches.max() < n
    srt = np.sort(batches, axis=1)
    assert not (srt[:, 1:] == srt[:, :-1]).any(), "an image repeats inside a batch"


TABLES = {
    "skewed": lambda: skewed_table(3000, seed=1),
    "uniform": lambda: uniform_random_table(1000, 40, seed=2),
    "singletons": lambda: singleton_table(60, 240, seed=3),
    "all-singletons": lambda: make_table(np.random.default_rng(4).permutation(500), (500,)),
    "tiny-big-top": lambda: make_table(np.r_[np.zeros(10, np.int64), np.arange(1, 991)], (991,)),
}


@pytest.mark.parametrize("name", sorted(TABLES))
@pytest.mark.parametrize(
    "strategy,fill", [("random", "topk"), ("constructed", "topk"), ("constructed", "coverage"), ("dealt", "topk")]
)
def test_every_batch_is_full_valid_and_without_repeats(name, strategy, fill):
    table = TABLES[name]()
    n = table.n
    for b in sorted({1, 2, 7, 64, n // 3, n // 2 + 1, n - 1, n}):
        for top_k in (1, 8):
            out = construct_epoch(table, batch_size=b, strategy=strategy, seed=5, epoch=1, top_k=top_k, fill=fill)
            assert_valid(out, n, b)


def test_batch_larger_than_the_data_set_is_a_clear_error():
    table = uniform_random_table(50, 5, seed=0)
    with pytest.raises(SubsampleError, match="larger than the data set"):
        construct_epoch(table, batch_size=51, strategy="constructed", seed=0, epoch=0)
    with pytest.raises(SubsampleError, match="unknown strategy"):
        construct_epoch(table, batch_size=5, strategy="stratified", seed=0, epoch=0)
    with pytest.raises(SubsampleError, match="fill"):
        construct_epoch(table, batch_size=5, strategy="constructed", seed=0, epoch=0, fill="rare")


@pytest.mark.parametrize("strategy", ["constructed", "dealt"])
def test_counts_that_are_multiples_of_m_reproduce_f_x_exactly(strategy):
    rng = np.random.default_rng(7)
    m = 6
    per_batch = rng.integers(0, 5, 30) * (rng.random(30) < 0.6)  # zeros included
    cells = np.repeat(np.arange(30), per_batch * m)
    table = make_table(rng.permutation(cells), (5, 6))
    b = int(per_batch.sum())
    for epoch in range(3):
        out = construct_epoch(table, batch_size=b, strategy=strategy, seed=1, epoch=epoch)
        assert out.shape == (m, b)
        assert np.allclose(kl_batch_vs_dataset(table, out), 0.0, atol=1e-12)
        assert (per_batch_cell_counts(table, out) == per_batch.ravel()).all()
        assert coverage_per_epoch(out, table.n) == 1.0


@pytest.mark.parametrize("name", sorted(TABLES))
def test_dealt_uses_each_image_once_and_stays_within_one_image_per_cell(name):
    table = TABLES[name]()
    n = table.n
    c = table.counts.ravel()
    for b in sorted({3, 17, 64, n // 4, n // 2 + 1, n - 1}):
        for epoch in range(2):
            out = construct_epoch(table, batch_size=b, strategy="dealt", seed=3, epoch=epoch)
            assert len(np.unique(out)) == out.size, "an image repeats within the epoch"
            a = per_batch_cell_counts(table, out)
            # |a_ij - B c_i / n| < 1, exactly in integers: |a_ij n - B c_i| < n
            assert (np.abs(a * n - b * c[None, :]) < n).all()


def test_kl_of_constructed_and_dealt_batches_is_below_random():
    table = skewed_table(20000, seed=11, side=33)
    for b in (256, 1024):
        mean_kl = {
            s: kl_stats(kl_batch_vs_dataset(table, construct_epoch(table, batch_size=b, strategy=s, seed=0, epoch=0)))[
                "mean"
            ]
            for s in STRATEGIES
        }
        # Not zero: with 350 occupied cells, most cells' share B·c/n is below one image, and a batch
        # holds a whole number of each (dealt: floor or ceil; constructed: round, topped up from the
        # 8 most frequent). Measured on this table, seeds 0-4: constructed 0.24-0.29x random, dealt
        # 0.43-0.53x random (B = 256 and 1024). The bounds leave a stated margin over the largest of
        # those, 0.11 (38 %) and 0.17 (32 %): a strategy that lost its stratification (random
        # batches under another name) sits at 1.0 and fails both.
        assert mean_kl["constructed"] < 0.4 * mean_kl["random"], mean_kl
        assert mean_kl["dealt"] < 0.7 * mean_kl["random"], mean_kl


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_seed_and_epoch_determine_the_batches(strategy):
    table = skewed_table(4000, seed=2)
    kw = dict(batch_size=300, strategy=strategy, fill="coverage")
    a = construct_epoch(table, seed=9, epoch=4, **kw)
    assert np.array_equal(a, construct_epoch(table, seed=9, epoch=4, **kw))
    assert not np.array_equal(a, construct_epoch(table, seed=9, epoch=5, **kw))
    assert not np.array_equal(a, construct_epoch(table, seed=10, epoch=4, **kw))


def test_random_coverage_is_eq5():
    table = skewed_table(5003, seed=3)
    for b in (1, 64, 1000, 2600, 5003):
        out = construct_epoch(table, batch_size=b, strategy="random", seed=0, epoch=0)
        assert coverage_per_epoch(out, table.n) == (table.n - table.n % b) / table.n
        assert len(never_drawn(out, table.n)) == table.n % b


def test_constructed_costs_coverage_at_small_b_and_coverage_fill_wins_it_back():
    table = skewed_table(20000, seed=5, side=33)
    n, b = table.n, 128
    cov = {
        fill: coverage_per_epoch(
            construct_epoch(table, batch_size=b, strategy="constructed", seed=0, epoch=0, fill=fill), n
        )
        for fill in ("topk", "coverage")
    }
    random_cov = (n - n % b) / n
    assert cov["topk"] < random_cov - 0.01
    assert cov["coverage"] > cov["topk"] + 0.005


def test_constructed_queue_repeats_an_image_only_after_all_its_cell_mates():
    """Spec §3.2's queue: in batch order, each cell's draws are successive shuffles of its members."""
    for table, b in [(skewed_table(3000, seed=6), 700), (singleton_table(40, 30, seed=1), 20)]:
        for fill in ("topk", "coverage"):
            out = construct_epoch(table, batch_size=b, strategy="constructed", seed=2, epoch=0, fill=fill)
            seq = out.ravel()
            seq_cells = table.cells[seq]
            for cell in np.flatnonzero(table.counts.ravel()):
                draws = seq[seq_cells == cell]
                size = table.counts.ravel()[cell]
                members = np.sort(np.flatnonzero(table.cells == cell))
                for start in range(0, len(draws), size):
                    chunk = np.sort(draws[start : start + size])
                    if len(chunk) == size:
                        assert np.array_equal(chunk, members)
                    else:
                        assert len(np.unique(chunk)) == len(chunk)


def test_count_table_rounds_half_up_and_takes_excess_from_the_largest_cells():
    assert round_half_up_share(np.array([1, 3, 5]), 1, 2).tolist() == [1, 2, 3]  # 0.5, 1.5, 2.5 up
    assert round_half_up_share(np.array([1, 2]), 1, 4).tolist() == [0, 1]  # 0.25, 0.5
    # n = 10 singletons, B = 5: every cell rounds 0.5 up to 1 (sum 10); 5 largest (ties: low index) give one back
    table = make_table(np.arange(10), (10,))
    assert count_table(table, 5).tolist() == [0] * 5 + [1] * 5
    # n = 100: 60 singletons and one cell of 40, B = 90 -> 60·1 + 36 = 96, excess 6
    table = make_table(np.r_[np.zeros(40, np.int64), np.arange(1, 61)], (61,))
    t2 = count_table(table, 90)
    assert t2.sum() == 90 and t2[0] == 35 and (t2[1:6] == 0).all() and (t2[6:] == 1).all()


def test_largest_remainder_sums_exactly():
    rng = np.random.default_rng(0)
    for _ in range(200):
        w = rng.integers(1, 1000, rng.integers(1, 12))
        total = int(rng.integers(0, 5000))
        q = largest_remainder(total, w)
        assert q.sum() == total
        assert (np.abs(q - total * w / w.sum()) < 1).all()
    assert largest_remainder(3, np.array([1, 1, 1, 1])).tolist() == [1, 1, 1, 0]


def test_top_up_fills_the_shortfall_from_the_top_k_cells_within_their_room():
    counts = np.array([50, 30, 10, 10, 5, 1, 0])
    order = np.argsort(-counts, kind="stable")
    add = top_up(9, counts, counts.copy(), 2, order)
    assert add.tolist() == [6, 3, 0, 0, 0, 0, 0]  # 9·50/80 = 5.6 -> 6, 9·30/80 = 3.4 -> 3
    room = np.array([2, 1, 10, 10, 5, 1, 0])
    add = top_up(9, counts, room, 2, order)
    assert add.sum() == 9 and (add <= room).all() and add[0] == 2 and add[1] == 1


def test_topk_demand_is_t2_plus_an_exact_top_up():
    table = skewed_table(10000, seed=8, side=33)
    for b in (50, 333, 2000):
        d = constructed_demand(table, b, np.random.default_rng(0), top_k=8, fill="topk")
        t2 = count_table(table, b)
        assert (d.sum(axis=1) == b).all()
        extra = d[0] - t2
        top8 = np.argsort(-table.counts.ravel(), kind="stable")[:8]
        assert extra.sum() == b - t2.sum() and (extra[np.setdiff1d(np.arange(extra.size), top8)] == 0).all()


def test_kl_batch_vs_dataset_matches_a_direct_computation():
    table = skewed_table(2000, seed=9)
    out = construct_epoch(table, batch_size=97, strategy="random", seed=1, epoch=0)
    p = table.counts.ravel() / table.n
    want = []
    for row in out:
        q = np.bincount(table.cells[row], minlength=p.size) / len(row)
        nz = q > 0
        want.append(np.sum(q[nz] * np.log(q[nz] / p[nz])))
    assert np.allclose(kl_batch_vs_dataset(table, out), want, rtol=1e-12, atol=1e-15)
    stats = kl_stats(np.array(want))
    assert stats["min"] <= stats["median"] <= stats["max"] and stats["std"] >= 0


def test_coverage_and_never_drawn_agree():
    out = np.array([[0, 3], [5, 3]])
    assert coverage_per_epoch(out, 8) == 3 / 8
    assert never_drawn(out, 8).tolist() == [1, 2, 4, 6, 7]
    assert coverage_per_epoch(np.stack([out, np.array([[0, 1], [0, 1]])]), 8).tolist() == [3 / 8, 2 / 8]


# --- the random top-up (spec §3.3, topup="random": the paper's reading) -----------------------------


@pytest.mark.parametrize("name", sorted(TABLES))
@pytest.mark.parametrize("fill", ["topk", "coverage"])
def test_random_topup_batches_are_full_valid_and_without_repeats(name, fill):
    table = TABLES[name]()
    for b in (16, 100):
        batches = construct_epoch(
            table, batch_size=b, strategy="constructed", seed=3, epoch=1, fill=fill, topup="random"
        )
        assert_valid(batches, table.n, b)


def test_random_topup_keeps_t2_in_every_batch_and_varies_only_the_top_k_cells():
    table = skewed_table(3000, seed=1)
    b, k = 256, 8
    t2 = count_table(table, b)
    top = set(np.argsort(-table.counts.ravel(), kind="stable")[:k].tolist())
    batches = construct_epoch(table, batch_size=b, strategy="constructed", seed=0, epoch=0, top_k=k, topup="random")
    got = per_batch_cell_counts(table, batches)
    extra = got - t2[None, :]
    assert (extra >= 0).all(), "a batch has fewer than T2 images of some cell"
    outside = np.array([c not in top for c in range(len(t2))])
    assert (extra[:, outside] == 0).all(), "the top-up touched a cell outside the k most frequent"
    assert (extra.sum(axis=1) == b - t2.sum()).all()
    assert len({tuple(r) for r in got}) > 1, "every batch has the same cell counts: the top-up is not random"
    # the feature KL of the batches now has a spread (the deterministic top-k gives exactly 0)
    kl_random_topup = kl_batch_vs_dataset(table, batches)
    kl_topk = kl_batch_vs_dataset(
        table, construct_epoch(table, batch_size=b, strategy="constructed", seed=0, epoch=0, top_k=k)
    )
    assert kl_stats(kl_topk)["std"] < 1e-12 < kl_stats(kl_random_topup)["std"]


def test_random_topup_draws_cells_in_proportion_to_their_frequency():
    """Over many batches the top-up's cells follow the multinomial over the top-k cells, p ∝ count."""
    rng = np.random.default_rng(7)
    counts = np.array([430, 330, 230, 130] + [5] * 8)  # 4 big cells, then rare ones with T2 = 0 at B = 100
    table = make_table(rng.permutation(np.repeat(np.arange(len(counts)), counts)), (len(counts),))
    b, k = 100, 4
    t2 = count_table(table, b)
    shortfall = b - int(t2.sum())
    assert shortfall > 0
    extra = np.zeros(len(counts))
    draws = 0
    for epoch in range(60):
        got = per_batch_cell_counts(
            table,
            construct_epoch(table, batch_size=b, strategy="constructed", seed=1, epoch=epoch, top_k=k, topup="random"),
        )
        extra += (got - t2[None, :]).sum(axis=0)
        draws += shortfall * len(got)
    expected = draws * counts[:k] / counts[:k].sum()
    assert extra[k:].sum() == 0
    chi2 = float(((extra[:k] - expected) ** 2 / expected).sum())
    assert chi2 < 16.3, f"top-up counts {extra[:k]} vs expected {expected} (chi2 = {chi2:.1f}, 3 d.o.f., p = 0.001)"


def test_random_topup_is_reproducible_from_seed_and_epoch():
    table = skewed_table(3000, seed=1)
    kw = dict(batch_size=128, strategy="constructed", top_k=8, topup="random")
    a = construct_epoch(table, seed=5, epoch=2, **kw)
    assert np.array_equal(a, construct_epoch(table, seed=5, epoch=2, **kw))
    assert not np.array_equal(a, construct_epoch(table, seed=5, epoch=3, **kw))
    assert not np.array_equal(a, construct_epoch(table, seed=6, epoch=2, **kw))
    with pytest.raises(SubsampleError, match="top-up mode"):
        construct_epoch(table, seed=5, epoch=2, **{**kw, "topup": "nope"})


def test_topup_only_keys_constructed_batches_and_topk_keeps_the_old_key():
    from pipeline.config import BatchesConfig

    base = BatchesConfig(batch_size=64, strategy="constructed")
    assert "topup" not in base.key_params()  # the default: artifacts keyed before top-up modes stay valid
    assert BatchesConfig(batch_size=64, strategy="constructed", topup="random").key_params()["topup"] == "random"
    assert "topup" not in BatchesConfig(batch_size=64, strategy="random", topup="random").key_params()


# --- the random-sample reference (spec §4) ----------------------------------------------------------


def test_random_sample_reference_is_the_mean_kl_of_random_batches():
    """The reference is what random batches score on average (both are samples without replacement)."""
    from pipeline.stages.batches import random_sample_reference

    table = skewed_table(3000, seed=1)
    ref = random_sample_reference(lambda s: kl_batch_vs_dataset(table, s), table.n, 100, repeats=200)
    kls = np.concatenate(
        [
            kl_batch_vs_dataset(table, construct_epoch(table, batch_size=100, strategy="random", seed=0, epoch=e))
            for e in range(10)
        ]
    )
    assert ref["mean"] == pytest.approx(kls.mean(), rel=0.05)
