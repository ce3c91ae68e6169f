"""Array sources read as records, never as whole files in memory: CIFAR-10 binary batches (records of
a label byte and 3,072 planar RGB bytes), CIFAR-10 python batches (through a restricted unpickler
that only builds numpy arrays and plain containers, shapes checked before allocation), MNIST IDX
files (header first, then the body streamed) and npz files (each member's .npy header first).
"""

from __future__ import annotations

import gzip
import math
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline.data.readers import ArraySource, SourceLimits, _block_records, _dims, _read_capped
from pipeline.data.unpickle import CIFAR_PY_MAX_FILE_BYTES, CIFAR_RECORD, restricted_load
from storage.errors import SubsampleError

STAGE = "ingest"


_CIFAR_PY = re.compile(r"^(data_batch_\d+|test_batch)$")


_IDX_IMAGES = re.compile(r"^(?P<stem>.*)images(?P<sep>[-.])idx3-ubyte(\.gz)?$")


def _get(d: dict, key: str) -> Any:
    return d.get(key.encode(), d.get(key))


def _cifar_planar(records: np.ndarray) -> np.ndarray:
    return records.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _open_cifar_bin(path: Path, files: list[Path], limits: SourceLimits = SourceLimits()) -> ArraySource:
    for f in files:
        if f.stat().st_size % 3073:
            raise SubsampleError(
                STAGE,
                f"{f}: {f.stat().st_size:,} bytes is not a whole number of CIFAR-10 records (3,073 bytes: "
                "1 label + 3,072 pixels); is it a CIFAR-10 binary batch?",
            )
    limits.check_bytes(path, sum(f.stat().st_size for f in files), "the CIFAR-10 binary files")
    meta = (path if path.is_dir() else path.parent) / "batches.meta.txt"
    names = None
    if meta.is_file():
        limits.check_bytes(meta, meta.stat().st_size, "the class names file")
        names = [ln.strip() for ln in meta.read_text(errors="replace").splitlines() if ln.strip()]

    def load():
        for f in files:  # memory-mapped: blocks are read as they are sliced
            rec = (
                np.memmap(f, dtype=np.uint8, mode="r").reshape(-1, 3073)
                if f.stat().st_size
                else np.zeros((0, 3073), np.uint8)
            )
            yield _cifar_planar(rec[:, 1:]), rec[:, 0]

    n = sum(f.stat().st_size // 3073 for f in files)
    return ArraySource(path, "cifar10-bin", files + ([meta] if names else []), n, True, names, load=load)


def _open_cifar_python(path: Path, files: list[Path], limits: SourceLimits = SourceLimits()) -> ArraySource:
    cap = min(limits.max_bytes, CIFAR_PY_MAX_FILE_BYTES)
    meta = (path if path.is_dir() else path.parent) / "batches.meta"
    names = None
    if meta.is_file():
        label_names = _get(restricted_load(meta, cap), "label_names")
        if label_names:
            names = [x.decode(errors="replace") if isinstance(x, bytes) else str(x) for x in label_names]
    limits.check_bytes(path, sum(f.stat().st_size for f in files), "the CIFAR-10 python batches")

    def batch(f: Path) -> tuple[np.ndarray, np.ndarray]:
        d = restricted_load(f, cap)
        data = _get(d, "data") if isinstance(d, dict) else None
        labels = _get(d, "labels") if isinstance(d, dict) else None
        if (
            not isinstance(data, np.ndarray)
            or data.dtype != np.uint8
            or data.ndim != 2
            or data.shape[1] != CIFAR_RECORD
        ):
            raise SubsampleError(STAGE, f"{f}: expected a dict with b'data' uint8 (N, 3072) and b'labels'")
        if labels is None or len(labels) != len(data):
            raise SubsampleError(STAGE, f"{f}: b'labels' missing or not one per image")
        try:
            labels = np.asarray(labels, np.int64)
        except (TypeError, ValueError, OverflowError):
            raise SubsampleError(STAGE, f"{f}: b'labels' must be integers") from None
        return _cifar_planar(data), labels

    def load():
        for f in files:
            yield batch(f)

    # the count is only known after unpickling; 10,000 per CIFAR-10 batch is an upper bound for
    # progress only (the store shrinks to the accepted count)
    return ArraySource(
        path, "cifar10-python", files + ([meta] if meta.is_file() else []), 10_000 * len(files), True, names, load=load
    )


# --- IDX (MNIST): header first, then the body streamed ---------------------------------------------


def _idx_open(path: Path) -> Any:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _idx_header(f: Any, path: Path, ndim: int) -> tuple[int, ...]:
    """The dimensions in an IDX header (magic: two zero bytes, type 0x08 = unsigned byte, ndim)."""
    head = f.read(4 + 4 * ndim)
    if len(head) < 4 + 4 * ndim or head[:3] != b"\0\0\x08" or head[3] != ndim:
        raise SubsampleError(
            STAGE, f"{path}: not an unsigned-byte IDX file with {ndim} dimension(s) (bad magic number)"
        )
    return tuple(int(d) for d in np.frombuffer(head, ">u4", ndim, 4))


def _read_idx_header(path: Path, ndim: int) -> tuple[int, ...]:
    """The dimensions of an IDX file, checked against the file's size when it is not compressed."""
    try:
        with _idx_open(path) as f:
            dims = _idx_header(f, path, ndim)
    except (OSError, EOFError) as e:
        raise SubsampleError(STAGE, f"{path}: cannot read IDX file ({e})") from None
    if not path.name.endswith(".gz"):
        body = path.stat().st_size - (4 + 4 * ndim)
        if body != math.prod(dims):
            raise SubsampleError(
                STAGE, f"{path}: header says {_dims(dims)} = {math.prod(dims):,} bytes, file holds {body:,}"
            )
    return dims


def _stream_idx(path: Path, ndim: int, dims: tuple[int, ...], records: int) -> Iterator[np.ndarray]:
    """The body of an IDX file as blocks of ``records`` records, read (and inflated) a block at a
    time; a body shorter or longer than the header says is an error naming the file."""
    rec_shape = dims[1:]
    rec_bytes = math.prod(rec_shape)
    try:
        with _idx_open(path) as f:
            _idx_header(f, path, ndim)
            for start in range(0, dims[0], records):
                k = min(records, dims[0] - start)
                raw = _read_capped(f, k * rec_bytes)
                if len(raw) != k * rec_bytes:
                    raise SubsampleError(
                        STAGE,
                        f"{path}: header says {_dims(dims)} = {math.prod(dims):,} bytes, "
                        f"file holds {start * rec_bytes + len(raw):,}",
                    )
                yield np.frombuffer(raw, np.uint8).reshape((k, *rec_shape))
            if f.read(1):
                raise SubsampleError(STAGE, f"{path}: more data than its header's {_dims(dims)}")
    except (OSError, EOFError, zlib.error) as e:
        raise SubsampleError(STAGE, f"{path}: cannot read IDX file ({type(e).__name__}: {e})") from None


def _idx_labels_for(images: Path) -> Path | None:
    m = _IDX_IMAGES.match(images.name)
    assert m is not None
    for sep in ("-", "."):
        for gz in (".gz", ""):
            cand = images.parent / f"{m['stem']}labels{sep}idx1-ubyte{gz}"
            if cand.is_file():
                return cand
    return None


def _open_idx(path: Path, image_files: list[Path], limits: SourceLimits = SourceLimits()) -> ArraySource:
    by_stem: dict[str, Path] = {}
    for f in image_files:  # both foo-idx3-ubyte and foo-idx3-ubyte.gz: read one (the raw one)
        stem = f.name.removesuffix(".gz")
        if stem not in by_stem or not f.name.endswith(".gz"):
            by_stem[stem] = f
    pairs = [(f, _idx_labels_for(f)) for f in sorted(by_stem.values())]
    has_labels = all(lab is not None for _, lab in pairs)

    # every header is read and checked before any body: a bomb is refused before allocation
    headers, total = [], 0
    for f, lab in pairs:
        dims = _read_idx_header(f, 3)
        limits.check_images(f, dims)
        total += math.prod(dims)
        limits.check_bytes(path, total, "the IDX files")
        if has_labels:
            assert lab is not None
            ldims = _read_idx_header(lab, 1)
            if ldims[0] != dims[0]:
                raise SubsampleError(STAGE, f"{lab}: {ldims[0]:,} labels for {dims[0]:,} images in {f.name}")
        headers.append(dims)

    def load():
        for (f, lab), dims in zip(pairs, headers):
            records = _block_records(dims[1] * dims[2])
            labels = _stream_idx(lab, 1, (dims[0],), records) if has_labels and lab is not None else None
            for block in _stream_idx(f, 3, dims, records):
                yield block, (next(labels) if labels is not None else None)

    files = [f for f, _ in pairs] + [lab for _, lab in pairs if lab is not None and has_labels]
    n = sum(d[0] for d in headers)
    return ArraySource(path, "idx", files, n, has_labels, None, load=load)


# --- npz: each member's .npy header first, then the member streamed --------------------------------


@dataclass(frozen=True)
class _NpyMember:
    name: str  # the zip member, e.g. images.npy
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int  # bytes of .npy header before the data


def _npy_member(zf: zipfile.ZipFile, npz: Path, key: str) -> _NpyMember | None:
    """The header of array ``key`` of an npz (None when absent), read without reading its data;
    the member's declared size must be exactly the header plus the data the header describes."""
    name = f"{key}.npy"
    try:
        info = zf.getinfo(name)
    except KeyError:
        return None
    try:
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f".npy format version {version} is not supported")
            offset = f.tell()
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise SubsampleError(STAGE, f"{npz}: {name} is not a readable .npy array ({e})") from None
    if dtype.hasobject:
        raise SubsampleError(STAGE, f"{npz}: {name} holds Python objects; only numeric arrays are read (no pickles)")
    if fortran and len(shape) > 1:
        raise SubsampleError(
            STAGE,
            f"{npz}: {name} is stored in Fortran order; "
            f"save it C-ordered: np.savez(path, {key}=np.ascontiguousarray(a))",
        )
    if info.file_size != offset + math.prod(shape) * dtype.itemsize:
        raise SubsampleError(
            STAGE,
            f"{npz}: {name} declares {info.file_size:,} bytes but its header describes "
            f"{_dims(shape) or 'a scalar'} {dtype}; the file is corrupt",
        )
    return _NpyMember(name, tuple(shape), dtype, offset)


def _stream_npy(npz: Path, m: _NpyMember, records: int) -> Iterator[np.ndarray]:
    """Member ``m`` of ``npz`` as blocks of ``records`` rows, inflated a capped piece at a time."""
    rec_bytes = math.prod(m.shape[1:]) * m.dtype.itemsize
    try:
        with zipfile.ZipFile(npz) as zf, zf.open(m.name) as f:
            _read_capped(f, m.offset)
            for start in range(0, m.shape[0], records):
                k = min(records, m.shape[0] - start)
                raw = _read_capped(f, k * rec_bytes)
                if len(raw) != k * rec_bytes:
                    raise SubsampleError(
                        STAGE,
                        f"{npz}: {m.name} ends after {start + len(raw) // max(rec_bytes, 1):,} of {m.shape[0]:,} rows",
                    )
                yield np.frombuffer(raw, m.dtype).reshape((k, *m.shape[1:]))
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise SubsampleError(STAGE, f"{npz}: cannot read {m.name} ({type(e).__name__}: {e})") from None


def _open_npz(path: Path, limits: SourceLimits = SourceLimits()) -> ArraySource:
    try:
        with zipfile.ZipFile(path) as zf:
            keys = [n.removesuffix(".npy") for n in zf.namelist() if n.endswith(".npy")]
            images = _npy_member(zf, path, "images")
            labels = _npy_member(zf, path, "labels")
    except (OSError, zipfile.BadZipFile) as e:
        raise SubsampleError(STAGE, f"{path}: not a readable .npz ({e})") from None
    if images is None:
        raise SubsampleError(
            STAGE, f"{path}: no 'images' array (has {keys}); save it with np.savez(path, images=..., labels=...)"
        )
    shape = images.shape
    ok_shape = len(shape) == 3 or (len(shape) == 4 and shape[-1] in (1, 3))
    if images.dtype != np.uint8 or not ok_shape:
        raise SubsampleError(STAGE, f"{path}: 'images' must be uint8 N×H×W×3 or N×H×W, got {images.dtype} {shape}")
    limits.check_images(path, shape)
    if labels is not None and (len(labels.shape) != 1 or labels.shape[0] != shape[0] or labels.dtype.kind not in "iu"):
        raise SubsampleError(
            STAGE, f"{path}: 'labels' must be integers, one per image; got {labels.dtype} {labels.shape}"
        )

    def load():
        records = _block_records(math.prod(shape[1:]))
        label_blocks = _stream_npy(path, labels, records) if labels is not None else None
        for block in _stream_npy(path, images, records):
            lab = None
            if label_blocks is not None:
                lab = next(label_blocks)
                if lab.dtype == np.uint64 and len(lab) and lab.max() > np.iinfo(np.int64).max:
                    raise SubsampleError(STAGE, f"{path}: 'labels' holds values above 2**63 - 1")
            yield block, lab

    return ArraySource(path, "npz", [path], shape[0], labels is not None, None, load=load)
