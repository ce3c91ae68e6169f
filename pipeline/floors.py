"""Floors of the feature KL, cached per (table, sample size) (spec §5 decision).

:func:`pipeline.metrics.feature_kl_floor` computes the floor of ``KL(f_G || f_X')`` at a sample
size N: the estimator on N real images drawn with replacement from the training set. It takes
milliseconds, but every training run and evaluation asks for it, so it is kept in
``$SUBSAMPLE_HOME/floors/<table content hash>.json``, one entry per sample size (and estimator
settings). The file is rewritten atomically; two writers at once can only lose an entry, which
is then recomputed, identically (the draws are seeded from the sample size).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pipeline.metrics import FLOOR_REPEATS, FLOOR_SEED, PSEUDO_COUNT, feature_kl_floor
from storage.errors import SubsampleError
from storage.paths import home
from storage.safe_io import make_dirs, write_atomic

FLOOR_VERSION = 1  # bump when the estimator changes


def floors_path(table_hash: str) -> Path:
    return home() / "floors" / f"{table_hash}.json"


def _entry_key(size: int) -> str:
    return f"feature_kl|n={size}|repeats={FLOOR_REPEATS}|seed={FLOOR_SEED}|pseudo={PSEUDO_COUNT}|v{FLOOR_VERSION}"


def cached_feature_kl_floor(table: Any, table_hash: str | None, size: int) -> dict[str, Any]:
    """The floor of the feature KL at ``size`` samples for ``table`` (content hash ``table_hash``;
    None: computed, not cached), with ``cache_hit``."""
    if not table_hash:
        return {**feature_kl_floor(table, size), "cache_hit": False}
    path = floors_path(table_hash)
    key = _entry_key(size)
    try:
        cache = json.loads(path.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    hit = cache.get(key)
    if isinstance(hit, dict) and isinstance(hit.get("mean"), (int, float)):
        return {**hit, "cache_hit": True}
    floor = feature_kl_floor(table, size)
    cache[key] = floor
    try:
        make_dirs(path.parent, what="floors folder")
        write_atomic(path, json.dumps(cache, indent=1, sort_keys=True), what="feature-KL floor cache")
    except OSError:
        pass  # a cache that cannot be written (disk full, read-only) only costs a recomputation
    except SubsampleError as e:  # a link leading out of the home: never written through, said once
        print(str(e), file=sys.stderr)
    return {**floor, "cache_hit": False}


HELDOUT_VERSION = 1  # bump when the held-out estimator changes


def heldout_feature_kl_floor(
    table: Any,
    size: int,
    held_cells: Any = None,
    *,
    repeats: int = FLOOR_REPEATS,
    seed: int = FLOOR_SEED,
    pseudo_count: float = PSEUDO_COUNT,
) -> dict[str, Any]:
    """The held-out floor of the feature KL at ``size`` samples (issue 19): the same estimator as
    :func:`pipeline.metrics.feature_kl_floor`, on real images the table was *not* built from. A
    generator that generalises perfectly scores about this; the bootstrap floor (training images
    drawn again) is the floor of memorising the training set, and sits below it.

    ``held_cells``: the cells (on ``table``'s scale) of held-out images, e.g. the data set's test
    split: ``size`` of them drawn with replacement, against ``table``, ``repeats`` times. None: a
    split-half of the training images, drawn afresh each repeat: the table of one half (its
    counts; the bins and maxima stay the full table's) against ``size`` images drawn from the
    other half. A half-size table is a noisier estimate of f_X than the whole, so the split-half
    floor errs high (towards calling a generator indistinguishable from held-out data)."""
    import numpy as np

    from pipeline.metrics import feature_kl

    if size < 1:
        raise ValueError(f"a floor needs a sample size of at least 1, got {size}")
    counts = np.asarray(table.counts)
    cells = np.asarray(table.cells, dtype=np.int64)
    rng = np.random.default_rng([seed, size, 1])
    values = []
    for _ in range(repeats):
        if held_cells is not None:
            held = np.asarray(held_cells, dtype=np.int64)
            ref = counts
        else:
            order = rng.permutation(len(cells))
            half = len(cells) // 2
            ref = np.bincount(cells[order[:half]], minlength=counts.size).reshape(counts.shape)
            held = cells[order[half:]]
        if len(held) == 0:
            raise ValueError("a held-out floor needs at least one held-out image")
        sample = held[rng.integers(0, len(held), size)]
        values.append(feature_kl(sample, _Counts(ref), pseudo_count=pseudo_count)["kl"])
    v = np.asarray(values)
    return {
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if repeats > 1 else None,
        "size": int(size),
        "repeats": int(repeats),
        "source": "test split" if held_cells is not None else "split-half",
        "held_out_images": int(len(held_cells)) if held_cells is not None else int(len(cells) - len(cells) // 2),
    }


class _Counts:
    """What :func:`pipeline.metrics.feature_kl` reads of a table: its counts."""

    def __init__(self, counts: Any):
        self.counts = counts
