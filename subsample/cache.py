"""The features cache: ``cache=True`` keeps them as an artifact ``$SUBSAMPLE_HOME/stages/library/<key>/``
(built atomically, verified by its content hash when opened, like every stage's), ``cache=PATH``
in one ``.npz`` file the caller names. Either way the file records the key it was computed for,
and a file with another key (other images, size or features) is recomputed, never used.

The key hashes the parameters (kind, size, crop, feature names, value range) and the data's
content: an array's bytes (exact); a path's files as ingest fingerprints them (relative paths,
sizes, mtimes); a Dataset's type, length and transform, the files it lists (``samples`` of a
torchvision ``ImageFolder``: paths, sizes, mtimes) and the pixels of a few items read through it
(``PROBE_ITEMS``, spread over the index range). A Dataset is a program, not a file: an item changed
where the key does not look is not noticed (docs/library.md says so).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from storage.errors import SubsampleError
from subsample.extract import PROBE_ITEMS, Extracted
from subsample.images import STAGE, first_element, to_uint8

CACHE_STAGE = "library"
CODE_VERSION = "library/1"
FEATURES_FILE = "features.npz"
MAX_CACHE_BYTES = 1 << 32  # a features file is N × F float64 plus file names: far below this


def array_fingerprint(arr: np.ndarray, chunk: int = 4096) -> str:
    h = hashlib.sha256(f"array|{arr.dtype}|{arr.shape}".encode())
    for s in range(0, len(arr), chunk):
        h.update(np.ascontiguousarray(arr[s : s + chunk]).tobytes())
    return h.hexdigest()


def dataset_fingerprint(dataset: Any, value_range: tuple[float, float] | None) -> str:
    n = len(dataset)
    h = hashlib.sha256(f"dataset|{type(dataset).__module__}.{type(dataset).__qualname__}|{n}".encode())
    for attr in ("transform", "target_transform", "root"):
        h.update(f"|{attr}={getattr(dataset, attr, None)!r}".encode())
    samples = getattr(dataset, "samples", None) or getattr(dataset, "imgs", None)
    if isinstance(samples, list):
        for s in samples:
            p = s[0] if isinstance(s, (tuple, list)) else s
            try:
                st = os.stat(p)
                h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except (OSError, TypeError):
                h.update(f"{p!r}\n".encode())
    for i in sorted({int(i) for i in np.linspace(0, n - 1, min(n, PROBE_ITEMS))}):
        h.update(to_uint8(first_element(dataset[i]), value_range).tobytes())
    return h.hexdigest()


def cache_key(params: dict, fingerprint: str) -> str:
    from storage.artifacts import artifact_key

    return artifact_key(CACHE_STAGE, params, {"data": fingerprint}, CODE_VERSION)


def _save(path: Path, got: Extracted, key: str) -> None:
    np.savez(
        path,
        key=np.asarray(key),
        values=got.values,
        names=np.asarray(got.names, dtype=str),
        files=np.asarray(got.files if got.files is not None else [], dtype=str),
        has_files=np.asarray(got.files is not None),
        quarantine=np.asarray([f"{q['path']}\t{q['reason']}" for q in got.quarantine], dtype=str),
        value_range=np.asarray(got.value_range if got.value_range is not None else [np.nan, np.nan], np.float64),
    )


def _load(path: Path, key: str, n_features: int) -> Extracted | None:
    """The cached features at ``path`` when they are for ``key``; None when absent, for another key,
    or not a features file (a file from outside is read without pickles, its size checked first)."""
    try:
        if path.stat().st_size > MAX_CACHE_BYTES:
            return None
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            values = np.asarray(z["values"], dtype=np.float64)
            names = tuple(str(s) for s in z["names"])
            files = [str(s) for s in z["files"]] if bool(z["has_files"]) else None
            quarantine = [dict(zip(("path", "reason"), str(q).split("\t", 1))) for q in z["quarantine"]]
            vr = z["value_range"]
    except (OSError, ValueError, KeyError, EOFError):
        return None
    if values.ndim != 2 or values.shape[1] != n_features or not np.isfinite(values).all():
        return None
    if files is not None and len(files) != len(values):
        return None
    value_range = None if np.isnan(vr).any() else (float(vr[0]), float(vr[1]))
    return Extracted(values, names, files, quarantine, value_range)


def cached(cache: bool | str | os.PathLike, key: str, n_features: int, compute) -> tuple[Extracted, bool]:
    """``(features, cache_hit)``: from the cache when it holds ``key``, else ``compute()`` and stored."""
    if cache is True:
        from storage.artifacts import build_artifact, open_artifact

        art = open_artifact(CACHE_STAGE, key)
        if art is not None and (hit := _load(art.path / FEATURES_FILE, key, n_features)) is not None:
            return hit, True
        got = compute()
        with build_artifact(CACHE_STAGE, key, params={}, inputs={}, code_version=CODE_VERSION) as b:
            _save(b.path / FEATURES_FILE, got, key)
            b.summary = {"n_images": len(got.values), "features": list(got.names)}
        return got, False
    path = Path(cache).expanduser()
    if path.suffix != ".npz":
        raise SubsampleError(STAGE, f"cache={str(path)!r}: name a .npz file (or pass cache=True)")
    if (hit := _load(path, key, n_features)) is not None:
        return hit, True
    got = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp.npz")
    _save(tmp, got, key)
    os.replace(tmp, path)
    return got, False
