"""SubsampleBatchSampler: fresh and stored batches agree, epochs, DataLoader, rank split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pipeline.data.sampler import SubsampleBatchSampler
from pipeline.data.strategies import construct_epoch
from pipeline.stages.tables import Table
from storage.errors import SubsampleError


def make_table(n: int = 1000, seed: int = 0) -> Table:
    rng = np.random.default_rng(seed)
    cells = np.minimum(rng.geometric(0.25, n) - 1, 24).astype(np.int64)  # long-tailed, 5×5 table
    counts = np.bincount(cells, minlength=25).reshape(5, 5)
    return Table(features=("f0", "f1"), bins=(4, 4), maxima=np.ones(2), counts=counts, cells=cells)


def _batches_by_cell(cells: np.ndarray, batch: list[int]) -> bool:
    """Whether each cell's images are consecutive in ``batch`` (the order the rank split relies on)."""
    c = cells[batch]
    return int((np.diff(c) != 0).sum()) + 1 == len(np.unique(c))


@pytest.mark.parametrize("strategy", ["random", "constructed", "dealt"])
def test_the_sampler_keeps_each_strategys_promise(strategy):
    """What each strategy promises, checked on the sampler's own output (not against the function
    it wraps): m = floor(n/B) batches of B python ints in [0, n), the same for the same (seed,
    epoch) and different across epochs; random: an epoch never repeats an image; dealt: neither,
    and every batch holds floor or ceil of each cell's share B·c/n; constructed (spec §3): every
    batch holds round(B·c/n) images (halves up) of each cell outside the 8 most frequent, the
    top-up going to those 8 only, no image twice in a batch, each cell's images consecutive."""
    table = make_table(1000)
    n, b = 1000, 64
    cells, counts = np.asarray(table.cells), table.counts.ravel()
    sampler = SubsampleBatchSampler(table, batch_size=b, strategy=strategy, seed=5, top_k=8)
    epochs = []
    for e in range(3):
        sampler.set_epoch(e)
        epoch = list(sampler)
        assert len(epoch) == n // b and all(len(x) == b for x in epoch)
        assert all(type(i) is int and 0 <= i < n for x in epoch for i in x)
        epochs.append(epoch)
    assert epochs[0] != epochs[1] != epochs[2]
    again = SubsampleBatchSampler(table, batch_size=b, strategy=strategy, seed=5, top_k=8)
    again.set_epoch(1)
    assert list(again) == epochs[1]
    top8 = np.argsort(-counts, kind="stable")[:8]
    for epoch in epochs:
        flat = [i for x in epoch for i in x]
        if strategy in ("random", "dealt"):
            assert len(set(flat)) == len(flat) == (n // b) * b
        for batch in epoch:
            a = np.bincount(cells[batch], minlength=counts.size)
            if strategy == "dealt":
                assert (np.abs(a * n - b * counts) < n).all()  # |a - B c/n| < 1, in integers
            if strategy == "constructed":
                share = (2 * b * counts + n) // (2 * n)  # round(B c / n), halves up
                rest = np.setdiff1d(np.arange(counts.size), top8)
                assert (a[rest] == share[rest]).all() and (a[top8] >= share[top8] - 1).all()
                assert len(set(batch)) == b and _batches_by_cell(cells, batch)
            if strategy == "dealt":
                assert _batches_by_cell(cells, batch)


@pytest.mark.parametrize("strategy", ["random", "constructed", "dealt"])
def test_fresh_and_stored_batches_agree_and_set_epoch_changes_them(strategy):
    table = make_table()
    fresh = SubsampleBatchSampler(table, batch_size=64, strategy=strategy, seed=3, fill="coverage")
    stored = SubsampleBatchSampler.from_array(
        np.stack(
            [
                construct_epoch(table, batch_size=64, strategy=strategy, seed=3, epoch=e, fill="coverage")
                for e in range(3)
            ]
        )
    )
    assert len(fresh) == len(stored) == 1000 // 64
    seen = []
    for e in range(3):
        fresh.set_epoch(e)
        stored.set_epoch(e)
        a, b = list(fresh), list(stored)
        assert a == b
        assert len(a) == 15 and all(len(x) == 64 for x in a)
        assert all(type(i) is int for i in a[0])
        seen.append(a)
    assert seen[0] != seen[1] != seen[2]
    fresh.set_epoch(0)
    assert list(fresh) == seen[0]


def test_stored_epochs_beyond_the_stored_ones_raise_unless_cycling():
    table = make_table()
    arr = np.stack([construct_epoch(table, batch_size=100, strategy="dealt", seed=0, epoch=e) for e in range(2)])
    s = SubsampleBatchSampler.from_array(arr)
    s.set_epoch(2)
    with pytest.raises(SubsampleError, match=r"only epochs 0..1 are stored"):
        list(s)
    c = SubsampleBatchSampler.from_array(arr, cycle=True)
    c.set_epoch(3)
    assert list(c) == arr[1].tolist()


def test_dataloader_yields_the_batches_images():
    table = make_table(500)
    data = TensorDataset(torch.arange(500))
    sampler = SubsampleBatchSampler(table, batch_size=50, strategy="constructed", seed=1)
    loader = DataLoader(data, batch_sampler=sampler)
    assert len(loader) == 10
    sampler.set_epoch(2)
    got = [x.tolist() for (x,) in loader]
    assert got == construct_epoch(table, batch_size=50, strategy="constructed", seed=1, epoch=2).tolist()


@pytest.mark.parametrize("strategy", ["random", "constructed", "dealt"])
def test_rank_split_covers_each_batch_exactly_once(strategy):
    table = make_table()
    k = 4
    whole = SubsampleBatchSampler(table, batch_size=96, strategy=strategy, seed=2, num_replicas=1, rank=0)
    parts = [
        SubsampleBatchSampler(table, batch_size=96, strategy=strategy, seed=2, num_replicas=k, rank=r) for r in range(k)
    ]
    for s in [whole, *parts]:
        s.set_epoch(1)
    per_rank = [list(p) for p in parts]
    assert all(len(p) == len(whole) for p in per_rank)
    for j, batch in enumerate(whole):
        pieces = [per_rank[r][j] for r in range(k)]
        assert all(len(p) == 96 // k for p in pieces)
        assert sorted(sum(pieces, [])) == sorted(batch)
    if strategy != "random":  # batches are ordered by cell: each rank's quarter is stratified too
        cells = np.asarray(table.cells)
        for j, batch in enumerate(whole):
            full = np.bincount(cells[batch], minlength=25)
            for r in range(k):
                part = np.bincount(cells[per_rank[r][j]], minlength=25)
                assert (np.abs(part * k - full) < k).all()


def test_bad_configurations_are_clear_errors():
    table = make_table()
    with pytest.raises(SubsampleError, match="not divisible by num_replicas=3"):
        SubsampleBatchSampler(table, batch_size=64, num_replicas=3, rank=0)
    with pytest.raises(SubsampleError, match="rank 2 is not in"):
        SubsampleBatchSampler(table, batch_size=64, num_replicas=2, rank=2)
    with pytest.raises(SubsampleError, match="larger than the data set"):
        SubsampleBatchSampler(table, batch_size=5000)
    with pytest.raises(SubsampleError, match="either a table"):
        SubsampleBatchSampler()


def test_stored_sampler_agrees_with_fresh_construction(tmp_path, monkeypatch):
    from pipeline.config import BatchesConfig, FeaturesConfig, TablesConfig
    from pipeline.stages.batches import run_batches, stored_sampler
    from pipeline.stages.features import run_features
    from pipeline.stages.tables import load_table, run_tables, tables_artifact
    from storage.errors import MissingArtifactError
    from storage.store import write_store

    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path))
    rng = np.random.default_rng(1)
    images = np.clip(
        rng.normal(0, 1, (200, 8, 8, 3)) * rng.uniform(0, 80, (200, 1, 1, 1)) + rng.uniform(0, 255, (200, 1, 1, 3)),
        0,
        255,
    )
    write_store("toy", images.astype(np.uint8))
    run_features("toy", FeaturesConfig(workers=1), progress=False)
    tables = TablesConfig(bins=(4, 4))
    run_tables("toy", tables)
    cfg = BatchesConfig(batch_size=40, strategy="constructed", epochs=2, seed=7, fill="coverage")
    with pytest.raises(MissingArtifactError, match="subsample batches toy"):
        stored_sampler("toy", cfg, tables)
    run_batches("toy", cfg, tables, progress=False)
    stored = stored_sampler("toy", cfg, tables)
    fresh = SubsampleBatchSampler(
        load_table(tables_artifact("toy", tables)), batch_size=40, strategy="constructed", seed=7, fill="coverage"
    )
    assert stored.stored_epochs == 2 and len(stored) == len(fresh) == 5
    for e in range(2):
        stored.set_epoch(e)
        fresh.set_epoch(e)
        assert list(stored) == list(fresh)
