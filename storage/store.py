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

Integrity: ``open_store(name, verify=True)`` (what a stage that reads the images calls) checks the
data against the recorded content hash before the stage builds on it. Hashing the whole store on
every stage would cost a full read, so a successful check is recorded in ``<store>/.verified.json``
with the size and modification time of every file of the store; while they are unchanged the next
check is a ``stat`` of each chunk file (ingest records it for the store it wrote). A chunk that is
rewritten, truncated, swapped or deleted changes its size or mtime and the next stage hashes the
data again, finds the mismatch and stops with one line naming the data set and the command that
rebuilds it. (The record guards against corruption and accidents, not against someone who can
write the home and reset mtimes: see docs/security.md.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from storage.artifacts import dir_identity, replace_dir
from storage.errors import SubsampleError, did_you_mean
from storage.locks import owner_tag, remove_stale
from storage.paths import dataset_path, datasets_dir
from storage.safe_io import write_atomic

FORMAT = "subsample-dataset/1"
STORE_CODE_VERSION = "1"
QUARANTINE_FILE = "quarantine.json"
VERIFIED_FILE = ".verified.json"

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

    def rebuild_command(self) -> str:
        source = self.attrs.get("source") or "SOURCE"
        return f"subsample ingest {source} --name {self.attrs.get('name', 'NAME')} --refresh"

    def verify(self, stage: str = "store", *, use_record: bool = False) -> None:
        """Recompute the content hash from the data; raise :class:`SubsampleError` (stage ``stage``)
        naming the data set and the command that rebuilds it if it differs from the recorded one or
        a chunk cannot be read (deleted, truncated or garbled). ``use_record``: skip the hashing when
        ``.verified.json`` shows no file changed since the last successful check."""

        def corrupt(why: str) -> str:
            name = self.attrs.get("name", "NAME")
            return f"data set {name} ({self.path}) is corrupt ({why}); rebuild it with `{self.rebuild_command()}`"

        if self.attrs.get("n_images") != self.n or (self.labels is not None and self.labels.shape[0] != self.n):
            raise SubsampleError(stage, corrupt("image/label counts disagree with the attributes"))
        files = self._file_stats()
        if use_record and self._record_matches(files):
            return
        try:
            labels = self.labels[:] if self.labels is not None else None
            h = _ContentHasher(self.images.shape[1:])
            step = self.images.chunks[0]
            for start in range(0, self.n, step):
                h.update(self.images[start : start + step])
        except Exception as e:  # codec errors for garbled chunks come in many types
            raise SubsampleError(stage, corrupt(f"unreadable chunk: {type(e).__name__}: {e}")) from None
        if h.hexdigest(labels) != self.content_hash:
            raise SubsampleError(stage, corrupt("content hash mismatch"))
        if self._file_stats() == files:  # unchanged while it was hashed
            self.record_verified(files)

    def _file_stats(self) -> dict[str, list[int]]:
        """{relative path: [size, mtime_ns]} of every file of the store but the verification record."""
        out = {}
        for dirpath, _, filenames in os.walk(self.path):
            for fn in filenames:
                full = os.path.join(dirpath, fn)
                rel = os.path.relpath(full, self.path)
                if rel.startswith(VERIFIED_FILE):
                    continue
                st = os.stat(full)
                out[rel] = [st.st_size, st.st_mtime_ns]
        return dict(sorted(out.items()))

    def _record_matches(self, files: dict[str, list[int]]) -> bool:
        try:
            record = json.loads((self.path / VERIFIED_FILE).read_text())
        except (OSError, ValueError):
            return False
        if record.get("content_hash") != self.content_hash or record.get("files") != files:
            return False
        racy = record.get("racy")
        return isinstance(racy, dict) and all(_sha256_file(self.path / rel) == h for rel, h in racy.items())

    def record_verified(self, files: dict | None = None) -> None:
        """Record that the store's data match its content hash as its files are now. File times
        have a coarse clock (a few ms, up to seconds on some file systems): a file modified in
        the same tick as it was last written keeps its mtime, so files written within
        ``RACY_SECONDS`` of the record are recorded by the sha256 of their bytes as well (as git
        does for "racily clean" files)."""
        files = files if files is not None else self._file_stats()
        now = time.time_ns()
        racy = {
            rel: _sha256_file(self.path / rel) for rel, (_, mtime) in files.items() if mtime >= now - RACY_SECONDS * 1e9
        }
        record = {"content_hash": self.content_hash, "files": files, "racy": racy}
        try:
            write_atomic(self.path / VERIFIED_FILE, json.dumps(record), what="store verification record")
        except OSError:  # a read-only store (or a full disk): it is verified again next time
            pass


RACY_SECONDS = 2


def _sha256_file(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


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


def _check_layout(group: zarr.Group) -> bool:
    """The arrays are what the project writes: images uint8 (N, S, S, 3), labels int64 (N,)."""
    images = group["images"]
    if not isinstance(images, zarr.Array) or images.dtype != np.uint8 or images.ndim != 4:
        return False
    if images.shape[3] != 3 or images.shape[1] != images.shape[2] or images.shape[1] < 1:
        return False
    if "labels" in group:
        labels = group["labels"]
        if not isinstance(labels, zarr.Array) or labels.dtype != np.int64 or labels.ndim != 1:
            return False
    return True


def open_store(name_or_path: str | Path, *, verify: bool = False, stage: str = "store") -> DatasetStore:
    """Open a finished store by data set name (or path). Raises :class:`SubsampleError` naming the
    path and what to do when the store is missing or incomplete. ``verify``: check the data against
    the content hash first (cheap when nothing changed since the last check: see the module doc)."""
    try:
        path = resolve_store_path(name_or_path)
    except ValueError as e:  # not a path and not a valid data set name
        raise SubsampleError("store", str(e)) from None
    for attempt in range(5):  # a store another process replaced while it was read is read again
        before = dir_identity(path)
        try:
            return _open_store(path, name_or_path, verify, stage)
        except (SubsampleError, OSError):
            after = dir_identity(path)
            if after == before and (after is not None or attempt >= 2):
                raise
            time.sleep(0.02 * (attempt + 1))  # None: between the two renames of a replacement
    return _open_store(path, name_or_path, verify, stage)


def _open_store(path: Path, name_or_path: str | Path, verify: bool, stage: str) -> DatasetStore:
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
        layout = complete and _check_layout(group)
    except Exception:  # a garbled zarr.json
        complete = layout = False
    if not complete:
        raise SubsampleError("store", f"{path} is not a finished data set store (interrupted ingest?); re-run ingest")
    if not layout:
        raise SubsampleError(
            "store",
            f"{path}: the arrays are not uint8 images (N, S, S, 3) and int64 labels (N,); re-run ingest with --refresh",
        )
    store = DatasetStore(path, group)
    _check_extent(store, stage)
    if verify:
        store.verify(stage, use_record=True)
    return store


MAX_CHUNK_BYTES = 256 << 20  # what one chunk may declare (the project writes ~CHUNK_TARGET_BYTES)


def _check_extent(store: DatasetStore, stage: str) -> None:
    """The images' declared shape against what the store holds, before any work (metadata edited to
    declare 2^40 images would make a stage read fill values for ever): a chunk of at most
    :data:`MAX_CHUNK_BYTES`, and a chunk file for every chunk the shape declares (a listing of
    ``images/c/``; stores are written with ``write_empty_chunks``, so an all-black chunk has its file)."""
    path, images, labels = store.path, store.images, store.labels
    n, cn = int(images.shape[0]), int(images.chunks[0])
    chunk_bytes = cn * int(images.shape[1]) * int(images.shape[2]) * 3
    if labels is not None:
        chunk_bytes = max(chunk_bytes, 8 * int(labels.chunks[0]))
    if chunk_bytes > MAX_CHUNK_BYTES:
        raise SubsampleError(
            stage,
            f"{path}: its metadata declare chunks of {chunk_bytes:,} bytes (at most {MAX_CHUNK_BYTES:,}); rebuild it",
        )
    declared = -(-n // cn)
    try:
        held = sum(1 for e in os.scandir(path / "images" / "c") if e.name.isdigit() and int(e.name) < declared)
    except FileNotFoundError:
        held = 0
    if held < declared:
        raise SubsampleError(
            stage,
            f"{path}: its metadata declare {n:,} images in {declared:,} chunks, but it holds {held:,} chunk files; "
            f"it is damaged or was edited: rebuild it with `{store.rebuild_command()}`",
        )


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
        remove_stale(self.final.parent, STALE_PREFIXES)
        self._replaces = dir_identity(self.final)  # what finish() may replace; anything newer wins
        self.tmp = self.final.parent / f"{_TMP_PREFIX.format(self.final.name)}{owner_tag()}-{uuid.uuid4().hex[:8]}"
        self.chunk = chunk or chunk_len(size)
        self.group = zarr.open_group(str(self.tmp), mode="w", zarr_format=3)
        self.images = self.group.create_array(
            "images",
            shape=(max(n_max, 1), size, size, 3),
            chunks=(self.chunk, size, size, 3),
            dtype="uint8",
            config={"write_empty_chunks": True},  # every chunk has its file: open_store checks the count
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

    @property
    def n_appended(self) -> int:
        """Images appended so far (``n`` counts only those already flushed to whole chunks)."""
        return self.n + self._buffered

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
        store = DatasetStore(self.tmp, zarr.open_group(str(self.tmp), mode="r"))
        store.record_verified()  # the data were hashed as they were appended
        # False: another process finished a store of this name first; it is kept, this copy discarded
        replace_dir(self.tmp, self.final, replaces=self._replaces)
        return open_store(self.final)


_TMP_PREFIX = ".{}.tmp-"
STALE_PREFIXES = (".",)  # hidden entries of datasets/: temporary (.<name>.zarr.tmp-*) and trash (.trash-*) stores


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
