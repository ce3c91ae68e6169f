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
