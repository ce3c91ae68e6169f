"""One image through the crop/resize policy: decoded (Pillow), converted to RGB, centre-cropped
and resized to S×S; what cannot be decoded is :class:`Rejected` with a reason for the quarantine.

:class:`CropPolicy` is the policy every ingest source applies; :class:`Block` is what one ingest
task returns. The fast JPEG path and nvJPEG are in ``pipeline.data.decode``; the readers of each
source kind in ``pipeline.data.sources``; the stage in ``pipeline.stages.ingest``.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from kernels.resize import resize_lanczos, resize_lanczos_many
from storage.errors import one_line

STAGE = "ingest"
# What Pillow may decode, whatever the extension says (a PNG named .jpg is fine): never EPS
# (Ghostscript), PSD, TIFF or the other plugins a renamed file could otherwise reach.
PILLOW_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")  # JPEG covers MPO (camera) files too
RESAMPLE = Image.Resampling.LANCZOS


# --- crop / resize policy --------------------------------------------------------------------------


@dataclass(frozen=True)
class CropPolicy:
    """Centre-crop a square of side ``crop`` (clamped to the short side; None = the short side),
    then resize it to ``size``×``size`` with Lanczos. No resampling when the crop is already S×S.

    The crop box is resampled in place (Pillow's ``resize(box=...)``): the filter sees the pixels
    just outside the box as context instead of a clamped edge, and a JPEG decoded at 1/2, 1/4 or
    1/8 scale (draft mode) uses the same box scaled, fractional coordinates included.

    ``decoder``: ``fast`` (default) decodes JPEGs with libjpeg-turbo and resamples with
    :func:`kernels.resize.resize_lanczos` (Pillow's Lanczos, bit for bit, without Pillow's
    per-image overhead; ``pipeline.data.decode``); ``pillow`` is the Pillow-only path of ingest/1,
    kept for comparison (``bench/ingest_throughput.py``). ``decode_device`` ``cuda``: JPEGs are
    decoded by nvJPEG on the GPU (``pipeline.data.decode.decode_files_cuda``)."""

    size: int
    crop: int | None = None
    decoder: str = "fast"
    decode_device: str = "cpu"

    def attrs(self) -> dict[str, Any]:
        return {
            "crop": self.crop if self.crop is not None else "short-side",
            "size": self.size,
            "filter": "lanczos",
            "jpeg_draft": True,
            "alpha": "composited on white",
            **self.decoder_attrs(),
        }

    def decoder_attrs(self) -> dict[str, str]:
        """What decoded and resampled the images (the store's ``policy`` attribute records it)."""
        pillow = f"pillow {Image.__version__}"
        if self.decoder == "pillow":
            return {
                "decoder": "pillow",
                "decode_device": "cpu",
                "jpeg": f"{pillow} (draft mode 1/2-1/8)",
                "other_formats": pillow,
                "resize": f"{pillow} Image.resize LANCZOS",
            }
        jpeg = (
            "nvjpeg (torchvision.io.decode_jpeg on cuda, full resolution)"
            if self.decode_device == "cuda"
            else f"simplejpeg {simplejpeg_version()} (libjpeg-turbo; DCT scale 1/2-1/8 as Pillow's draft mode)"
        )
        return {
            "decoder": "fast",
            "decode_device": self.decode_device,
            "jpeg": jpeg,
            "other_formats": f"{pillow} (and JPEGs the fast path refuses)",
            "resize": "kernels.resize.resize_lanczos (Pillow's Lanczos-3 in fixed point, horizontal pass first)",
        }

    def side(self, w: int, h: int) -> int:
        return min(w, h) if self.crop is None else min(self.crop, w, h)

    def box(self, w: int, h: int) -> tuple[int, int, int, int]:
        """The crop box (left, top, right, bottom) in a w×h image."""
        c = self.side(w, h)
        left, top = (w - c) // 2, (h - c) // 2
        return left, top, left + c, top + c

    def draft_size(self, w: int, h: int) -> tuple[int, int]:
        """The smallest decode size whose crop still has at least S pixels a side (JPEG draft)."""
        c = self.side(w, h)
        return math.ceil(self.size * w / c), math.ceil(self.size * h / c)

    def apply(self, img: Image.Image, full_size: tuple[int, int], scale: float = 1.0) -> np.ndarray:
        """Crop and resize an RGB image. ``img`` may be a JPEG draft decoded at 1/``scale`` of
        ``full_size`` (the size the crop box is computed in)."""
        box = self.box(*full_size)
        if scale == 1 and box[2] - box[0] == self.size:
            out = img if box == (0, 0) + img.size else img.crop(box)
        elif self.decoder != "pillow":
            return resize_lanczos(np.asarray(img, dtype=np.uint8), tuple(v / scale for v in box), self.size)
        else:
            out = img.resize((self.size, self.size), RESAMPLE, box=tuple(v / scale for v in box))
        return np.asarray(out, dtype=np.uint8)

    def is_identity(self, h: int, w: int) -> bool:
        return h == w == self.size == self.side(w, h)

    def apply_array(self, images: np.ndarray) -> np.ndarray:
        """The same policy for an array block (k, H, W, 3) uint8."""
        k, h, w = images.shape[:3]
        if self.is_identity(h, w):
            return images
        box = self.box(w, h)
        if self.decoder != "pillow" and box[2] - box[0] != self.size:
            return resize_lanczos_many(images, box, self.size)
        out = np.empty((k, self.size, self.size, 3), np.uint8)
        for i, im in enumerate(images):
            out[i] = self.apply(Image.fromarray(im), (w, h))
        return out


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB: grey gives three equal channels, transparency is composited on white,
    16-bit grey is scaled (not clipped) to 8 bits, palette and CMYK are converted."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I"):  # "I;16", "I;16B", "I;16L", "I" (16-bit PNGs): scale 0..65535 → 0..255
        a = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        return Image.fromarray(((a + 128) // 257).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        return Image.fromarray(np.clip(np.asarray(img), 0, 255).round().astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


class Rejected(Exception):
    """A source file that is left out of the store, with the reason."""


def decode_image(src: str | os.PathLike | io.BytesIO, policy: CropPolicy, max_pixels: int) -> np.ndarray:
    """Decode one image file to (S, S, 3) uint8 under ``policy``. Raises on anything wrong."""
    with Image.open(src, formats=PILLOW_FORMATS) as img:
        w0, h0 = img.size
        if w0 * h0 > max_pixels:
            raise Rejected(f"too large: {w0}×{h0} = {w0 * h0:,} pixels > max_pixels {max_pixels:,}")
        scale = 1.0
        if policy.side(w0, h0) >= 2 * policy.size:  # JPEG: decode at 1/2, 1/4 or 1/8 scale (DCT)
            drafted = img.draft(None, policy.draft_size(w0, h0))
            if drafted is not None:
                scale = w0 / drafted[1][2]
        img.load()
        decoded = img.size
        try:
            ImageOps.exif_transpose(img, in_place=True)
        except Exception:  # a malformed EXIF block: keep the pixels as stored rather than lose the image
            pass
        full = (h0, w0) if img.size != decoded else (w0, h0)
        return policy.apply(to_rgb(img), full, scale)


def quarantine_reason(exc: BaseException) -> str:
    """A short reason, ``category: detail``; the category is what the summary counts."""
    msg = one_line(str(exc).split("\n")[0])[:200]
    if isinstance(exc, Rejected):
        return msg
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"decompression bomb: {msg}"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image: Pillow cannot identify the file"
    if "truncat" in msg.lower():
        return f"truncated: {msg}"
    return f"corrupt: {type(exc).__name__}: {msg}"


@dataclass
class Block:
    """What one task returns: accepted images in source order, their labels, rejected files."""

    images: np.ndarray
    labels: np.ndarray | None = None
    quarantine: list[dict] = field(default_factory=list)


def simplejpeg_version() -> str:
    import simplejpeg

    return simplejpeg.__version__
