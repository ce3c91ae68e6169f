"""The dataset store: one zarr 3 group per data set, ``$SUBSAMPLE_HOME/datasets/<name>.zarr``.

Layout::

    images      uint8 (N, S, S, 3), chunked along N only
    labels      int64 (N,)            optional
    attrs       format, name, source, policy, n_images, n_quarantined, content_hash,
                code_version, complete=True (written last)
    quarantine.json                   [{path, reason}, ...] for every rejected source file

A store is built under a temporary name and renamed into place when complete, so a killed ingest
never leaves a store that looks finished; :func:`open_store` refuses a store without
``complete=True``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from storage.artifacts import replace_dir
from storage.errors import SubsampleError, did_you_mean
from storage.paths import dataset_path, datasets_dir

FORMAT = "subsample-dataset/1"
STORE_CODE_VERSION = "1"
QUARANTINE_FILE = "quarantine.json"

# Chunk target in bytes: ~2 MiB (682 images at 32 px, 170 at 64 px), no sharding.
# bench/store_chunks.py (zarr 3.1.6, zstd, 2 shared cores, best of 2; 20,000 32 px / 6,000 64 px
# images) measured write / full sequential read in MB/s and random-batch gather in images/s:
#                       32 px: write  read  gather64 gather1024    64 px: write  read  gather64 gather1024
#   0.25 MiB chunks            132   1326     3654      8638              143    959     3282      9201
#   1 MiB                      247   2721     4544     25787              241   1842     2493     11432
#   2 MiB                      309   3285     4133     28105              277   2175     2945     12812
#   4 MiB                      199   2404     2160     26200              283   2106     3094     12921
#   16 MiB                     253   2892     2430     21854              257   2218     2869     12153
#   16 MiB shards, 1-image chunks  14    24     3189      3516               54    109     2133      1576
#   16 MiB shards, 0.25 MiB chunks 330  1266     3379      8771              162   1023     1730      2877
# 2 MiB is best or within noise of best for writes and full reads at both sizes. Sharding loses
# everywhere: zarr's per-(inner-)chunk cost dominates, so small inner chunks do not make random
# gathers faster. Random gathers are slow for every layout (they touch most chunks of a data set
# this size): a training loader should read the store sequentially or load it into memory.
CHUNK_TARGET_BYTES = 2 << 20


def chunk_len(size: int, target_bytes: int = CHUNK_TARGET_BYTES) -> int:
    """Images per chunk for S×S×3 uint8 images."""
    return max(1, target_bytes // (size * size * 3))


@dataclass
class DatasetStore:
    """A finished, read-only data set store."""

    path: Path
    group: zarr.Group

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def name(self) -> str:
        return self.attrs["name"]

    @property
    def images(self) -> zarr.Array:
        return self.group["images"]

    @property
    def labels(self) -> zarr.Array | None:
        return self.group["labels"] if "labels" in self.group else None

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    @property
    def content_hash(self) -> str:
        return self.attrs["content_hash"]

    @property
    def quarantine(self) -> list[dict]:
        path = self.path / QUARANTINE_FILE
        return json.loads(path.read_text()) if path.exists() else []

    def verify(self) -> None:
        """Recompute the content hash from the data; raise :class:`SubsampleError` if it differs
        from the recorded one or a chunk cannot be read (deleted, truncated or garbled)."""
        def corrupt(why: str) -> str:
            name = self.attrs.get("name", "NAME")
            return f"{self.path}: the store is corrupt ({why}); re-run `subsample ingest SOURCE --name {name} --refresh`"

        if self.attrs.get("n_images") != self.n or (self.labels is not None and self.labels.shape[0] != self.n):
            raise SubsampleError("store", corrupt("image/label counts disagree with the attributes"))
        try:
            labels = self.labels[:] if self.labels is not None else None
            h = _ContentHasher(self.images.shape[1:])
            step = self.images.chunks[0]
            for start in range(0, self.n, step):
                h.update(self.images[start : start + step])
        except Exception as e:  # codec errors for garbled chunks come in many types
            raise SubsampleError("store", corrupt(f"unreadable chunk: {type(e).__name__}: {e}")) from None
        if h.hexdigest(labels) != self.content_hash:
            raise SubsampleError("store", corrupt("content hash mismatch"))


def store_names() -> list[str]:
    """Names of the finished-looking stores under ``$SUBSAMPLE_HOME/datasets`` (sorted)."""
    root = datasets_dir()
    if not root.is_dir():
        return []
    return sorted(p.name[: -len(".zarr")] for p in root.glob("*.zarr") if (p / "zarr.json").exists())


def resolve_store_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".zarr" or p.is_dir() and (p / "zarr.json").exists():
        return p.absolute()
    return dataset_path(str(name_or_path))


def open_store(name_or_path: str | Path, *, verify: bool = False) -> DatasetStore:
    """Open a finished store by data set name (or path). Raises :class:`SubsampleError` naming the
    path and what to do when the store is missing or incomplete."""
    try:
        path = resolve_store_path(name_or_path)
    except ValueError as e:  # not a path and not a valid data set name
        raise SubsampleError("store", str(e)) from None
    if not (path / "zarr.json").exists():
        names = store_names()
        known = f"; stores here: {', '.join(names)}" if names else ""
        raise SubsampleError(
            "store",
            f"no data set store at {path}{did_you_mean(str(name_or_path), names)}; "
            f"run `subsample ingest SOURCE --name {name_or_path}` first{known}",
        )
    try:
        group = zarr.open_group(str(path), mode="r")
        complete = group.attrs.get("complete") is True and group.attrs.get("format") == FORMAT and "images" in group
    except Exception:  # a garbled zarr.json
        complete = False
    if not complete:
        raise SubsampleError(
            "store", f"{path} is not a finished data set store (interrupted ingest?); re-run ingest"
        )
    store = DatasetStore(path, group)
    if verify:
        store.verify()
    return store


class _ContentHasher:
    """sha256 over shape, image bytes in order, then labels: the data set's content identity."""

    def __init__(self, image_shape: tuple[int, ...]):
        self._h = hashlib.sha256(repr(tuple(image_shape)).encode())

    def update(self, images: np.ndarray) -> None:
        self._h.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())

    def hexdigest(self, labels: np.ndarray | None) -> str:
        h = self._h.copy()
        if labels is not None:
            h.update(b"labels\0" + np.ascontiguousarray(labels, dtype=np.int64).tobytes())
        return h.hexdigest()


class StoreBuilder:
    """Write a store under a temporary name, appending images in order, and rename it into place
    on :meth:`finish`. Use as a context manager: an exception removes the temporary store.

    ``n_max`` is an upper bound on the image count (e.g. the number of source files); the arrays
    are shrunk to the accepted count at the end. Appends are buffered to whole chunks.
    """

    def __init__(
        self,
        name: str,
        *,
        size: int,
        n_max: int,
        has_labels: bool = False,
        attrs: dict[str, Any] | None = None,
        chunk: int | None = None,
    ):
        self.final = dataset_path(name)
        self.name = name
        self.size = size
        datasets_dir().mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(self.final)
        self.tmp = self.final.parent / f"{_TMP_PREFIX.format(self.final.name)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.chunk = chunk or chunk_len(size)
        self.group = zarr.open_group(str(self.tmp), mode="w", zarr_format=3)
        self.images = self.group.create_array(
            "images",
            shape=(max(n_max, 1), size, size, 3),
            chunks=(self.chunk, size, size, 3),
            dtype="uint8",
            dimension_names=("n", "y", "x", "c"),
        )
        self.labels_out = (
            self.group.create_array("labels", shape=(max(n_max, 1),), chunks=(max(n_max, 1),), dtype="int64")
            if has_labels
            else None
        )
        self._labels: list[np.ndarray] = []
        self._attrs = dict(attrs or {})
        self._buf: list[np.ndarray] = []
        self._buffered = 0
        self.n = 0
        self._hasher = _ContentHasher((size, size, 3))

    def __enter__(self) -> "StoreBuilder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def append(self, images: np.ndarray, labels: np.ndarray | None = None) -> None:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (self.size, self.size, 3) or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 (k, {self.size}, {self.size}, 3), got {images.dtype} {images.shape}")
        if (labels is None) != (self.labels_out is None):
            raise ValueError("labels must be given for every append iff the store has labels")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        if len(images) == 0:
            return
        self._hasher.update(images)
        if labels is not None:
            self._labels.append(np.asarray(labels, dtype=np.int64))
        self._buf.append(images)
        self._buffered += len(images)
        if self._buffered >= self.chunk:
            self._flush(whole_chunks_only=True)

    def _flush(self, whole_chunks_only: bool) -> None:
        if not self._buf:
            return
        data = np.concatenate(self._buf)
        take = (len(data) // self.chunk) * self.chunk if whole_chunks_only else len(data)
        if take:
            if self.n + take > self.images.shape[0]:  # n_max was an underestimate: grow
                self.images.resize((max(self.n + take, 2 * self.images.shape[0]), self.size, self.size, 3))
            self.images[self.n : self.n + take] = data[:take]
            self.n += take
        rest = data[take:]
        self._buf = [rest] if len(rest) else []
        self._buffered = len(rest)

    def finish(self, quarantine: list[dict] | None = None, extra_attrs: dict | None = None) -> DatasetStore:
        """Flush, shrink to the accepted count, write attributes (``complete`` last) and rename."""
        self._flush(whole_chunks_only=False)
        n = self.n
        self.images.resize((n, self.size, self.size, 3))
        labels = None
        if self.labels_out is not None:
            labels = np.concatenate(self._labels) if self._labels else np.zeros(0, np.int64)
            self.labels_out.resize((n,))
            if n:
                self.labels_out[:] = labels
        quarantine = list(quarantine or [])
        (self.tmp / QUARANTINE_FILE).write_text(json.dumps(quarantine, indent=2))
        attrs = {
            **self._attrs,
            **(extra_attrs or {}),
            "format": FORMAT,
            "name": self.name,
            "n_images": n,
            "n_quarantined": len(quarantine),
            "size": self.size,
            "content_hash": self._hasher.hexdigest(labels),
            "code_version": f"subsample-gan/{_package_version()} store/{STORE_CODE_VERSION}",
        }
        self.group.attrs.update(attrs)
        self.group.attrs["complete"] = True
        replace_dir(self.tmp, self.final)
        return open_store(self.final)


_TMP_PREFIX = ".{}.tmp-"


def _remove_stale_temps(final: Path) -> None:
    """Remove temporary stores of ``final`` left by killed processes (pid no longer running)."""
    prefix = _TMP_PREFIX.format(final.name)
    for p in final.parent.glob(prefix + "*"):
        try:
            pid = int(p.name[len(prefix) :].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def write_store(
    name: str,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    source: str = "array",
    policy: dict | None = None,
    quarantine: list[dict] | None = None,
) -> DatasetStore:
    """Write a whole in-memory array as a finished store (tests, ``.npz`` sources)."""
    images = np.asarray(images, dtype=np.uint8)
    with StoreBuilder(
        name,
        size=images.shape[1],
        n_max=len(images),
        has_labels=labels is not None,
        attrs={"source": source, "policy": policy or {}},
    ) as b:
        b.append(images, labels)
        return b.finish(quarantine)


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("subsample-gan")
    except Exception:
        return "0+unknown"
