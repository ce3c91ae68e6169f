"""Features of a Dataset, an array or a folder, computed in-process with the project's kernels.

* a **Dataset** is read through a ``DataLoader`` (``num_workers`` processes, ``chunk`` items per
  task). Each worker reads its items, turns them into uint8 images (:mod:`subsample.images`) and
  runs :func:`kernels.features.compute_features` on them, so only ``chunk × F`` floats per task
  travel back to this process: the images are never held here, and the kernels run beside the
  Dataset's own decoding instead of after it.
* a **uint8 array** N×H×W×3 (numpy, a memmap, a tensor) is read ``chunk`` images at a time here.
* a **path** is opened as ``subsample ingest`` opens it (:func:`pipeline.data.sources.open_source`):
  a folder of image files is decoded by ingest's own tasks (the same decoder, crop/resize policy
  and quarantine) in DataLoader workers; a CIFAR-10, IDX or npz source is streamed by ingest's
  array tasks here. The same images at the same size give the store's features exactly.

Memory is O(N): the features (N × F float64) and, for a folder, its file names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from kernels.features import compute_features
from pipeline.data.images import CropPolicy
from storage.errors import SubsampleError, brief
from subsample.images import (
    STAGE,
    NotAnImage,
    float_block_to_uint8,
    guess_value_range,
    is_float_image,
    prepare,
    size_message,
)
from subsample.images import first_element as _first
from subsample.images import to_uint8 as _to_uint8

PROBE_ITEMS = 8  # items read here before the workers start: kind, size and value range checked early


@dataclass
class Extracted:
    """What the sampler keeps of the images: their features, and for a folder the files they are."""

    values: np.ndarray  # float64 (n, F)
    names: tuple[str, ...]
    files: list[str] | None = None  # a folder: the images' paths relative to it, in index order
    quarantine: list[dict] = field(default_factory=list)  # a folder: files left out, with the reason
    value_range: tuple[float, float] | None = None  # float Dataset items: the range they were read in


def policy_for(size: int | None, crop: int | None) -> CropPolicy | None:
    if size is None:
        if crop is not None:
            raise SubsampleError(STAGE, f"crop={crop} needs a size (crop then resize to size×size)")
        return None
    if not isinstance(size, int) or not 1 <= size <= 1024 or (crop is not None and crop < 1):
        raise SubsampleError(STAGE, f"size must be an int in 1..1024 and crop a positive int, got {size}, {crop}")
    return CropPolicy(size=size, crop=crop)


def default_workers(num_workers: int | None) -> int:
    return min(4, os.cpu_count() or 1) if num_workers is None else int(num_workers)


def _bar(total: int, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="subsample features", disable=not progress)


def _warm(names: Sequence[str]) -> None:
    # compile (or load) the kernels once here: forked workers inherit them instead of compiling each
    compute_features(np.zeros((1, 2, 2, 3), np.uint8), names)


class _Tasks:
    """A map-style dataset of ``n`` tasks, task k computed by ``fn(k)`` in a DataLoader worker."""

    def __init__(self, fn: Callable[[int], dict], n: int):
        self.fn, self.n = fn, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> dict:
        return self.fn(k)


def _identity(x: Any) -> Any:
    return x


def _run_tasks(fn: Callable[[int], dict], n_tasks: int, workers: int, bar) -> list[dict]:
    """Results of tasks 0..n-1 in order, computed by ``workers`` DataLoader workers (0: here)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(_Tasks(fn, n_tasks), batch_size=None, shuffle=False, num_workers=workers, collate_fn=_identity)
    out = []
    for result in loader:
        if result.get("error"):
            raise SubsampleError(STAGE, result["error"])
        bar.update(result["n"])
        out.append(result)
    return out


# --- a Dataset --------------------------------------------------------------------------------


def _dataset_task(
    k: int,
    *,
    dataset: Any,
    n: int,
    chunk: int,
    names: tuple[str, ...],
    policy: CropPolicy | None,
    value_range: tuple[float, float] | None,
    expect_hw: tuple[int, int] | None,
) -> dict:
    start, stop = k * chunk, min(n, (k + 1) * chunk)
    items = []
    for i in range(start, stop):
        try:
            items.append(dataset[i])
        except Exception as e:  # the Dataset's own failure (a corrupt file, a bad transform)
            return {"n": 0, "error": f"item {i} of the Dataset could not be read: {brief(e)}"}
    try:  # float tensors of one shape (ToTensor's): converted as one block
        block = float_block_to_uint8([_first(it) for it in items], value_range)
    except NotAnImage as e:
        return {"n": 0, "error": _not_an_image(start + getattr(e, "position", 0), str(e))}
    if block is not None:
        if policy is None and expect_hw is not None and block.shape[1:3] != tuple(expect_hw):
            return {"n": 0, "error": size_message(start, f"{block.shape[1]}×{block.shape[2]}", expect_hw)}
        images = policy.apply_array(block) if policy is not None else block
        return {"n": stop - start, "values": compute_features(images, names)}
    images = []
    for i, item in enumerate(items, start):
        try:
            images.append(prepare(item, policy=policy, value_range=value_range, expect_hw=expect_hw))
        except NotAnImage as e:
            return {"n": 0, "error": _not_an_image(i, str(e))}
        except ValueError as e:
            return {"n": 0, "error": size_message(i, str(e), expect_hw or (0, 0))}
    return {"n": stop - start, "values": compute_features(np.stack(images), names)}


def _not_an_image(index: int, what: str) -> str:
    from subsample.images import ACCEPTED

    return f"item {index} of the Dataset is not an image ({what}): {ACCEPTED}"


def _probe(dataset: Any, n: int, value_range, policy) -> tuple[tuple[int, int] | None, tuple[float, float] | None]:
    """Read a few items here: a Dataset of non-images fails before any worker starts, the first
    image's size is the one every image must have without a ``size``, and float items' value range
    is [-1, 1] when any probed item has a negative value."""
    seen_float, negative = False, False
    first_hw = None
    for i in sorted({int(i) for i in np.linspace(0, n - 1, min(n, PROBE_ITEMS))}):
        try:
            img = _first(dataset[i])
            arr = _to_uint8(img, value_range or (-1.0, 1.0) if is_float_image(img) else None)
        except NotAnImage as e:
            raise SubsampleError(STAGE, _not_an_image(i, str(e))) from None
        except Exception as e:
            raise SubsampleError(STAGE, f"item {i} of the Dataset could not be read: {brief(e)}") from None
        if is_float_image(img):
            seen_float = True
            negative |= guess_value_range(img)[0] < 0
        if first_hw is None:
            first_hw = arr.shape[:2]
        elif policy is None and arr.shape[:2] != first_hw:
            raise SubsampleError(STAGE, size_message(i, f"{arr.shape[0]}×{arr.shape[1]}", first_hw))
    if value_range is None and seen_float:
        value_range = (-1.0, 1.0) if negative else (0.0, 1.0)
    return first_hw, value_range


def dataset_features(
    dataset: Any,
    names: tuple[str, ...],
    *,
    policy: CropPolicy | None,
    value_range: tuple[float, float] | None,
    num_workers: int,
    chunk: int,
    progress: bool,
) -> Extracted:
    n = len(dataset)
    first_hw, value_range = _probe(dataset, n, value_range, policy)
    _warm(names)
    task = partial(
        _dataset_task,
        dataset=dataset,
        n=n,
        chunk=chunk,
        names=names,
        policy=policy,
        value_range=value_range,
        expect_hw=None if policy is not None else first_hw,
    )
    with _bar(n, progress) as bar:
        parts = _run_tasks(task, -(-n // chunk), num_workers, bar)
    return Extracted(np.concatenate([p["values"] for p in parts]), names, value_range=value_range)


# --- an array ---------------------------------------------------------------------------------


def check_array(data: Any) -> np.ndarray:
    arr = data.detach().cpu().numpy() if hasattr(data, "detach") else np.asarray(data)
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[3] not in (1, 3)):
        raise SubsampleError(
            STAGE,
            f"an array of images must be uint8 N×H×W×3 (or N×H×W grey), got {arr.dtype} of shape {arr.shape}; "
            "wrap float or channels-first images in a Dataset",
        )
    return arr


def array_features(
    arr: np.ndarray, names: tuple[str, ...], *, policy: CropPolicy | None, chunk: int, progress: bool
) -> Extracted:
    n = len(arr)
    out = np.empty((n, len(names)), np.float64)
    with _bar(n, progress) as bar:
        for s in range(0, n, chunk):
            block = np.asarray(arr[s : s + chunk])
            if block.ndim == 3:
                block = block[..., None]
            if block.shape[-1] == 1:
                block = np.repeat(block, 3, axis=-1)
            if policy is not None:
                block = policy.apply_array(block)
            out[s : s + len(block)] = compute_features(block, names)
            bar.update(len(block))
    return Extracted(out, names)


# --- a path: ingest's sources -------------------------------------------------------------------


def open_path(path: Path, size: int | None, crop: int | None) -> tuple[Any, Any]:
    """``(source, ingest config)`` for a path, as ``subsample ingest`` opens it."""
    from pydantic import ValidationError

    from pipeline.config import IngestConfig, validation_message
    from pipeline.data.sources import open_source

    src = open_source(path)
    try:
        cfg = IngestConfig(source=str(path), name="library", size=size or 1, crop=crop)
    except ValidationError as e:
        raise SubsampleError(STAGE, validation_message(e)) from None
    return src, cfg


def _header_size(reader: Any, ref: str) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(reader.open(ref)) as im:
            return im.size
    except Exception:
        return None  # ingest's decoder quarantines it, with the reason


def _files_task(k: int, *, tasks: list, names: tuple[str, ...], offsets: list[int], side: int | None) -> dict:
    fn, args = tasks[k]
    if side is not None:  # no size given: every image must already be side × side
        reader, refs = args[0], args[1]
        for j, ref in enumerate(refs):
            hw = _header_size(reader, ref)
            if hw is not None and hw != (side, side):
                return {"n": 0, "error": size_message(offsets[k] + j, f"{hw[1]}×{hw[0]} ({ref})", (side, side), "file")}
    block = fn(*args)
    bad = {b["path"] for b in block.quarantine}
    refs = [r for r in args[1] if r not in bad]
    return {
        "n": len(args[1]),
        "values": compute_features(block.images, names) if len(block.images) else np.empty((0, len(names))),
        "files": refs,
        "quarantine": block.quarantine,
    }


def path_features(
    path: Path,
    names: tuple[str, ...],
    *,
    size: int | None,
    crop: int | None,
    num_workers: int,
    progress: bool,
    src_cfg: tuple[Any, Any] | None = None,
) -> Extracted:
    from pipeline.data.readers import ArraySource, ImageFilesSource

    src, cfg = src_cfg or open_path(path, size, crop)
    side = None
    if size is None:
        side = _native_side(src)
        cfg = cfg.model_copy(update={"size": side})
    policy = CropPolicy(cfg.size, cfg.crop, cfg.decoder, cfg.decode_device)
    _warm(names)
    if isinstance(src, ImageFilesSource):
        tasks = list(src.tasks(policy, cfg, "library"))
        offsets = list(range(0, src.n_items, cfg.files_per_task))
        task = partial(_files_task, tasks=tasks, names=names, offsets=offsets, side=side if size is None else None)
        with _bar(src.n_items, progress) as bar:
            parts = _run_tasks(task, len(tasks), num_workers, bar)
        files = [f for p in parts for f in p["files"]]
        quarantine = list(src.listing_quarantine) + [q for p in parts for q in p["quarantine"]]
        return Extracted(np.concatenate([p["values"] for p in parts]), names, files, quarantine)
    if not isinstance(src, ArraySource):
        raise SubsampleError(STAGE, f"{path}: a {src.format} source; pass a folder of images, an array or a Dataset")
    values = []
    with _bar(src.n_items, progress) as bar:
        for fn, args in src.tasks(policy, cfg, "library"):
            block = fn(*args)
            values.append(compute_features(block.images, names))
            bar.update(len(block.images))
    return Extracted(np.concatenate(values), names)


def _native_side(src: Any) -> int:
    """Without a size: the source's images as they are, which must be square (the first one's side)."""
    from pipeline.data.readers import ArraySource, FolderReader

    if isinstance(src, ArraySource):
        images, _ = next(iter(src.load()))
        h, w = images.shape[1:3]
    else:
        hw = _header_size(FolderReader(str(src.root)), src.refs[0])
        if hw is None:
            raise SubsampleError(STAGE, f"{src.root / src.refs[0]}: not a readable image; give size=S")
        w, h = hw
    if h != w:
        raise SubsampleError(
            STAGE, f"{src.path}: its images are {h}×{w}, not square: give size=S (centre crop, Lanczos resize to S×S)"
        )
    return int(h)
