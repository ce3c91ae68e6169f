"""What ingest's tasks run and what a source is: the readers of image files (a folder, a zip read in
place, members capped at their declared size), the per-task decode loop that quarantines what fails,
the :class:`Source` types (image files, zip members, array records) and the :class:`SourceLimits`
checked before memory is allocated. The formats are opened in ``pipeline.data.sources`` (folders,
zips, the dispatch) and ``pipeline.data.arrays`` (CIFAR-10, IDX, npz).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import threading
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

from pipeline.config import IngestConfig
from pipeline.data.images import Block, CropPolicy, Rejected, decode_image, quarantine_reason
from storage.errors import SubsampleError

STAGE = "ingest"
ARRAY_BLOCK = 1024  # records per task for array sources (CIFAR, IDX, npz)


@dataclass(frozen=True)
# --- readers and tasks (module level: they run in Dask workers) --------------------------------------


class FolderReader:
    root: str

    def open(self, rel: str) -> str:
        path = os.path.join(self.root, rel)
        if os.path.islink(path):  # again at read time (one lstat): the listing may be older than the file
            check_inside_source(self.root, path)
        if os.path.getsize(path) == 0:
            raise Rejected("zero bytes")
        return path


def check_inside_source(root: str | os.PathLike, path: str | os.PathLike) -> None:
    """Raise :class:`Rejected` when ``path`` (after following symlinks) leaves the source folder
    ``root``: a symlink to a file elsewhere on the machine is never read."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise Rejected(f"symlink: points outside the source folder (to {real})")


_thread_zips = threading.local()


@dataclass(frozen=True)
class ZipReader:
    """Reads members in place. Each worker thread keeps its own open ZipFile for the run (``token``):
    parsing CelebA's central directory per task would cost more than decoding. The workers' threads
    (or processes) end with the run, and their ZipFiles are closed with them."""

    path: str
    token: str
    max_bytes: int

    def _zip(self) -> zipfile.ZipFile:
        cache = getattr(_thread_zips, "cache", None)
        if cache is None:
            cache = _thread_zips.cache = {}
        zf = cache.get(self.token)
        if zf is None:
            zf = cache[self.token] = zipfile.ZipFile(self.path)
        return zf

    def open(self, member: str) -> io.BytesIO:
        zf = self._zip()
        info = zf.getinfo(member)
        if info.file_size == 0:
            raise Rejected("zero bytes")
        if info.file_size > self.max_bytes:
            raise Rejected(f"too large: {info.file_size:,} bytes uncompressed")
        return io.BytesIO(read_member_capped(zf, info))


def read_member_capped(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A zip member's bytes, read a capped piece at a time and never past its declared size.
    (``ZipFile.read`` inflates up to 2 GiB in one call before it truncates to the declared size,
    so a member whose declared size was patched small still costs gigabytes.) A member whose data
    run past or short of its declared size fails its CRC: Rejected."""
    with zf.open(info) as f:
        data = _read_capped(f, info.file_size)  # the member stream itself stops at the declared size and checks the CRC
    if len(data) != info.file_size:
        raise Rejected(f"corrupt: member ends after {len(data):,} of its declared {info.file_size:,} bytes")
    return data


def decode_files(reader: FolderReader | ZipReader, refs: list[str], policy: CropPolicy, max_pixels: int) -> Block:
    """A task's files, decoded one by one (the fast decoder, or Pillow alone: ``policy.decoder``;
    nvJPEG decodes a task's JPEGs as one batch); a file that fails is quarantined with its reason."""
    decode_one = decode_image
    if policy.decoder != "pillow":
        from pipeline.data import decode

        if policy.decode_device == "cuda":
            return decode.decode_files_cuda(reader, refs, policy, max_pixels)
        decode_one = decode.decode_file
    out = np.empty((len(refs), policy.size, policy.size, 3), np.uint8)
    n, bad = 0, []
    for ref in refs:
        try:
            out[n] = decode_one(reader.open(ref), policy, max_pixels)
            n += 1
        except Exception as exc:  # Pillow raises many types for bad data; the reason keeps the type
            bad.append({"path": ref, "reason": quarantine_reason(exc)})
    return Block(out[:n], None, bad)


def prepare_array_block(images: np.ndarray, labels: np.ndarray | None, policy: CropPolicy) -> Block:
    """Array sources: (k, H, W) grey or (k, H, W, 3) → RGB, then the crop/resize policy."""
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return Block(np.ascontiguousarray(policy.apply_array(images)), labels)


def _worker_init(max_image_pixels: int | None = Image.MAX_IMAGE_PIXELS) -> None:
    """A worker process decodes under the parent's decompression-bomb limit (a spawned process
    would otherwise have Pillow's default), and the warning between it and twice it is an error."""
    Image.MAX_IMAGE_PIXELS = max_image_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


# --- sources ----------------------------------------------------------------------------------------


Task = tuple[Callable[..., Block], tuple]


@dataclass
class Source:
    """A detected source: its kind, the files it reads (for the fingerprint) and its tasks."""

    path: Path
    format: str
    files: list[Path]
    n_items: int
    has_labels: bool = False
    class_names: list[str] | None = None
    n_ignored: int = 0
    listing_quarantine: list[dict] = field(default_factory=list)

    def fingerprint(self) -> str:
        """sha256 of the format and the sorted (relative path, size, mtime_ns) of the files read."""
        base = self.path if self.path.is_dir() else self.path.parent
        h = hashlib.sha256(self.format.encode() + b"\n")
        for f in sorted(self.files):
            st = f.stat()
            h.update(f"{f.relative_to(base).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def tasks(self, policy: CropPolicy, cfg: IngestConfig, token: str) -> Iterator[Task]:
        raise NotImplementedError


@dataclass
class ImageFilesSource(Source):
    root: Path = Path()
    refs: list[str] = field(default_factory=list)

    def tasks(self, policy, cfg, token):
        reader = FolderReader(str(self.root))
        for s in range(0, len(self.refs), cfg.files_per_task):
            yield decode_files, (reader, self.refs[s : s + cfg.files_per_task], policy, cfg.max_pixels)


@dataclass
class ZipSource(Source):
    members: list[str] = field(default_factory=list)

    def tasks(self, policy, cfg, token):
        reader = ZipReader(str(self.path), token, max_bytes=4 * cfg.max_pixels + (1 << 20))
        for s in range(0, len(self.members), cfg.files_per_task):
            yield decode_files, (reader, self.members[s : s + cfg.files_per_task], policy, cfg.max_pixels)


@dataclass
class ArraySource(Source):
    """CIFAR, IDX and npz: ``load`` yields (images, labels) per file, in order."""

    load: Callable[[], Iterator[tuple[np.ndarray, np.ndarray | None]]] = lambda: iter(())

    def tasks(self, policy, cfg, token):
        for images, labels in self.load():
            for s in range(0, len(images), ARRAY_BLOCK):
                lab = None if labels is None else np.asarray(labels[s : s + ARRAY_BLOCK], np.int64)
                yield prepare_array_block, (np.asarray(images[s : s + ARRAY_BLOCK]), lab, policy)


ARRAY_BLOCK_BYTES = 16 << 20  # array sources are read this many bytes (at most ARRAY_BLOCK records) at a time


READ_PIECE = 1 << 20  # the largest single read from a compressed stream (a real cap on what one read inflates)


# --- source limits --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceLimits:
    """What a source may hold, checked from headers and declared sizes before anything is read:
    ``max_pixels`` per image (H × W), ``max_bytes`` in all (image files' and zip members' sizes;
    N × H × W × C of arrays). Array sources are then read in blocks of :data:`ARRAY_BLOCK_BYTES`,
    so memory stays bounded whatever a header claims."""

    max_pixels: int = IngestConfig.model_fields["max_pixels"].default
    max_bytes: int = IngestConfig.model_fields["max_bytes"].default

    @classmethod
    def of(cls, cfg: IngestConfig) -> "SourceLimits":
        return cls(cfg.max_pixels, cfg.max_bytes)

    def check_images(self, path: Path, shape: tuple[int, ...], itemsize: int = 1) -> None:
        """``shape`` (N, H, W[, C]) of an array source: no empty dimension, H × W within
        ``max_pixels``, the whole within ``max_bytes``; else one :class:`SubsampleError` line."""
        if any(d == 0 for d in shape):
            raise SubsampleError(
                STAGE, f"{path}: images of shape {_dims(shape)} have an empty dimension; nothing to ingest"
            )
        n, h, w = shape[:3]
        if h * w > self.max_pixels:
            raise SubsampleError(
                STAGE,
                f"{path}: images of {h:,}×{w:,} = {h * w:,} pixels exceed --max-pixels {self.max_pixels:,}; "
                "refusing the source",
            )
        self.check_bytes(path, math.prod(shape) * itemsize, f"{_dims(shape)} images")

    def check_bytes(self, path: Path, nbytes: int, what: str) -> None:
        if nbytes > self.max_bytes:
            raise SubsampleError(
                STAGE,
                f"{path}: {what} hold {nbytes:,} bytes, more than --max-bytes {self.max_bytes:,}; refusing the source "
                "(raise --max-bytes if it is genuine)",
            )


def _dims(shape: tuple[int, ...]) -> str:
    return "×".join(str(d) for d in shape)


def _read_capped(f: Any, n: int) -> bytes:
    """Exactly ``n`` bytes from ``f`` (fewer only at its end), in reads of at most
    :data:`READ_PIECE`: a compressed stream (gzip, a zip member) never inflates more than that per
    call, whatever the file's headers declare."""
    parts, left = [], n
    while left > 0:
        piece = f.read(min(left, READ_PIECE))
        if not piece:
            break
        parts.append(piece)
        left -= len(piece)
    return b"".join(parts)


def _block_records(record_bytes: int) -> int:
    return max(1, min(ARRAY_BLOCK, ARRAY_BLOCK_BYTES // max(record_bytes, 1)))
