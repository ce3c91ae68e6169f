"""``subsample.write_image_folder(source, folder)``: any source ``subsample ingest`` reads (the
demo's CIFAR-10 binary, an IDX or npz file, a folder) written as a torchvision ``ImageFolder``:
``folder/<class>/<index>.png``, one folder per label (the source's class names when it has them,
``images`` when it has no labels), lossless PNGs at the source's size (or ``size``, ingest's crop
and resize policy). Used by ``examples/dcgan_any_loop.py --export-demo DIR``."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from storage.errors import SubsampleError
from subsample.images import STAGE


def _class_dir(label: int | None, names: list[str] | None) -> str:
    if label is None:
        return "images"
    name = names[label] if names and 0 <= label < len(names) else f"class{label}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or f"class{label}"


def write_image_folder(source: str | os.PathLike, folder: str | os.PathLike, *, size: int | None = None) -> int:
    """Write ``source``'s images under ``folder`` (which must not exist, or be empty) as PNGs in
    class folders, in the source's order; returns how many were written."""
    from PIL import Image

    from subsample.extract import _native_side, open_path

    out = Path(folder).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SubsampleError(STAGE, f"{out} exists and is not an empty folder; name a new one")
    src, cfg = open_path(Path(source).expanduser().absolute(), size, None)
    if size is None:
        cfg = cfg.model_copy(update={"size": _native_side(src)})
    from pipeline.data.images import CropPolicy

    policy = CropPolicy(cfg.size, cfg.crop, cfg.decoder, cfg.decode_device)
    names = getattr(src, "class_names", None)
    written = 0
    width = len(str(max(src.n_items - 1, 1)))
    for fn, args in src.tasks(policy, cfg, "export"):
        block = fn(*args)
        labels = block.labels if block.labels is not None else [None] * len(block.images)
        for image, label in zip(block.images, labels):
            d = out / _class_dir(None if label is None else int(label), names)
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(image, np.uint8)).save(d / f"{written:0{width}d}.png")
            written += 1
    return written
