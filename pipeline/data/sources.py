"""Ingest's sources: what can be read (a folder or zip of images, CIFAR-10 binary or python
batches, MNIST IDX files, an npz), detected from the path and opened as a
:class:`pipeline.data.readers.Source` that yields tasks of files or array records, under
:class:`~pipeline.data.readers.SourceLimits` checked before memory is allocated. Folders, zips and
the dispatch are here; the array formats in ``pipeline.data.arrays``.

Files from outside are hostile here: zip members are read capped at their declared size, CIFAR's
python batches go through a restricted unpickler that only builds numpy arrays, IDX and npz headers
are read and checked before their bodies are streamed. The kinds and their layout are described in
``pipeline.stages.ingest`` and docs/ingest.md.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

from pipeline.data.arrays import _CIFAR_PY, _IDX_IMAGES, _open_cifar_bin, _open_cifar_python, _open_idx, _open_npz
from pipeline.data.images import Rejected
from pipeline.data.readers import ImageFilesSource, Source, SourceLimits, ZipSource, check_inside_source
from storage.errors import SubsampleError, one_line

STAGE = "ingest"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def _is_hidden(rel: str) -> bool:
    parts = rel.split("/")
    return any(p.startswith(".") and p not in (".", "..") or p == "__MACOSX" for p in parts)


def _unsafe_member(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", name)) or ".." in parts


def _open_zip(path: Path, limits: SourceLimits = SourceLimits()) -> ZipSource:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise SubsampleError(STAGE, f"{path}: not a readable zip file ({e})") from None
    members, bad, ignored = [], [], 0
    for info in sorted(infos, key=lambda i: i.filename):
        name = info.filename
        if info.is_dir():
            continue
        if _unsafe_member(name):  # never read, whatever its extension: the zip is suspect
            bad.append({"path": name, "reason": "unsafe member path: absolute or with '..'"})
        elif _is_hidden(name) or not name.lower().endswith(IMAGE_EXTENSIONS):
            ignored += 1
        else:
            members.append(name)
    if not members and not bad:
        raise SubsampleError(STAGE, f"{path}: the zip holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    by_name = {i.filename: i for i in infos}
    limits.check_bytes(
        path, sum(by_name[m].file_size for m in members), f"its {len(members):,} image members (declared sizes)"
    )
    return ZipSource(path, "zip", [path], len(members), n_ignored=ignored, listing_quarantine=bad, members=members)


def _has_array_files(d: Path) -> bool:
    return any(p.suffix.lower() == ".bin" or _CIFAR_PY.match(p.name) or _IDX_IMAGES.match(p.name) for p in d.iterdir())


def _open_image_dir(path: Path, limits: SourceLimits = SourceLimits()) -> ImageFilesSource:
    refs, files, ignored, bad = [], [], 0, []
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):  # symlinked folders are listed, never entered
        for d in [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            link = Path(dirpath) / d
            try:
                check_inside_source(path, link)
                ignored += 1  # a link to a folder inside the source: its files are read where they are
            except Rejected as e:
                bad.append({"path": link.relative_to(path).as_posix(), "reason": str(e)})
        dirnames[:] = [
            d
            for d in dirnames
            if not d.startswith(".") and d != "__MACOSX" and not os.path.islink(os.path.join(dirpath, d))
        ]
        for fn in filenames:
            if fn.startswith(".") or not fn.lower().endswith(IMAGE_EXTENSIONS):
                ignored += 1
                continue
            full = Path(dirpath) / fn
            rel = full.relative_to(path).as_posix()
            try:
                check_inside_source(path, full)
                total += full.stat().st_size
            except Rejected as e:
                bad.append({"path": rel, "reason": one_line(str(e))})
                continue
            except OSError as e:  # a dangling symlink, a file removed meanwhile
                bad.append({"path": rel, "reason": one_line(f"unreadable: {e.strerror or e}")})
                continue
            refs.append(rel)
    refs.sort()
    if not refs and not bad:
        hint = ""
        others = sorted(p for p in path.iterdir() if p.suffix.lower() in (".zip", ".npz") and p.is_file())
        nested = sorted(d for d in path.iterdir() if d.is_dir() and _has_array_files(d))
        if others or nested:
            hint = f"; pass {(others or nested)[0]} itself as SOURCE"
        raise SubsampleError(
            STAGE, f"{path}: no image files ({', '.join(IMAGE_EXTENSIONS)}) and no CIFAR-10 or IDX files found{hint}"
        )
    limits.check_bytes(path, total, f"its {len(refs):,} image files")
    files = [path / r for r in refs]
    return ImageFilesSource(
        path, "images", files, len(refs), n_ignored=ignored, listing_quarantine=bad, root=path, refs=refs
    )


def _array_files_inside(path: Path, files: list[Path]) -> list[Path]:
    """Array-source files of folder ``path``; one leaving the folder through a symlink is refused."""
    for f in files:
        try:
            check_inside_source(path, f)
        except Rejected as e:
            raise SubsampleError(STAGE, f"{path / f.name}: {e}; refusing the source") from None
    return files


def _is_cifar_test(path: Path) -> bool:
    return path.name in ("test_batch", "test_batch.bin")


def cifar_split(path: Path, files: list[Path], split: str) -> list[Path]:
    """The files of a CIFAR-10 source that belong to ``split`` (train: all but the test batch)."""
    chosen = files if split == "all" else [f for f in files if _is_cifar_test(f) == (split == "test")]
    if not chosen:
        have = ", ".join(f.name for f in files)
        other = "test" if split == "train" else "train"
        raise SubsampleError(
            STAGE,
            f"{path}: no CIFAR-10 {split} batch among {have}; pass --split {other} or --split all "
            "(run: --set ingest.split=...)",
        )
    return chosen


def open_source(source: str | os.PathLike, limits: SourceLimits | None = None, split: str = "train") -> Source:
    """Detect the kind of ``source``; raises :class:`SubsampleError` for a missing, empty,
    unrecognised or too large source (``limits``, checked from headers and declared sizes) before
    anything is written or allocated. ``split`` picks CIFAR-10's training or test batches (or
    all); other kinds have no split and take only ``train``."""
    src = _open_source(source, limits or SourceLimits(), split)
    if src.format not in ("cifar10-bin", "cifar10-python") and split != "train":
        raise SubsampleError(
            STAGE, f"{src.path}: --split {split} applies to CIFAR-10 sources only ({src.format} has no test split)"
        )
    return src


def _open_source(source: str | os.PathLike, limits: SourceLimits, split: str) -> Source:
    path = Path(source).expanduser().absolute()
    if not path.exists():
        raise SubsampleError(STAGE, f"source {path} does not exist")
    name = path.name.lower()
    if path.is_dir():
        entries = sorted(p for p in path.iterdir() if p.is_file())
        kinds = {
            "cifar10-bin": [p for p in entries if p.suffix.lower() == ".bin"],
            "cifar10-python": [p for p in entries if _CIFAR_PY.match(p.name)],
            "idx": [p for p in entries if _IDX_IMAGES.match(p.name)],
        }
        found = {k: _array_files_inside(path, v) for k, v in kinds.items() if v}
        if len(found) > 1:
            raise SubsampleError(
                STAGE,
                f"{path}: holds files of several kinds ({', '.join(found)}); pass one file or a folder of one kind",
            )
        if "cifar10-bin" in found:
            return _open_cifar_bin(path, cifar_split(path, found["cifar10-bin"], split), limits)
        if "cifar10-python" in found:
            return _open_cifar_python(path, cifar_split(path, found["cifar10-python"], split), limits)
        if "idx" in found:
            return _open_idx(path, found["idx"], limits)
        return _open_image_dir(path, limits)
    if name.endswith(".zip"):
        return _open_zip(path, limits)
    if name.endswith(".npz"):
        return _open_npz(path, limits)
    if name.endswith(".bin"):
        return _open_cifar_bin(path, cifar_split(path, [path], split), limits)
    if _IDX_IMAGES.match(path.name):
        return _open_idx(path, [path], limits)
    if _CIFAR_PY.match(path.name):
        return _open_cifar_python(path, cifar_split(path, [path], split), limits)
    if name.endswith(IMAGE_EXTENSIONS):
        limits.check_bytes(path, path.stat().st_size, "the image file")
        return ImageFilesSource(path, "images", [path], 1, root=path.parent, refs=[path.name])
    raise SubsampleError(
        STAGE,
        f"{path}: unknown source kind; expected a folder of images, a .zip of images, CIFAR-10 .bin or "
        "python batches, an MNIST-style *-images-idx3-ubyte[.gz] file, or a .npz with an 'images' array",
    )
