"""Ingest's fast per-image decode: file bytes → RGB → the centre crop → S×S (``--decoder fast``).

``subsample ingest`` spends its time here, so this path is chosen by measurement
(``bench/jpeg_decode.py``; the figures are in docs/ingest.md):

- **JPEG** (what CelebA and most photo sets are) is decoded by libjpeg-turbo through ``simplejpeg``
  at the smallest DCT scale 1/1, 1/2, 1/4 or 1/8 whose crop still has at least S pixels a side
  (the scale Pillow's draft mode picks, so both paths decode the same pixels), and resampled by
  :func:`kernels.resize.resize_lanczos`: Pillow's Lanczos-3, bit for bit, in a numba kernel. The
  EXIF (and XMP) orientation is applied as Pillow's ``exif_transpose`` does.
- **Everything else**, and any JPEG this path does not fully understand (CMYK/YCCK/RGB colour
  spaces, a malformed or repeated EXIF block, a decode error of any kind, a file too large to read
  whole), goes through the Pillow path (:func:`pipeline.data.images.decode_image`), resampled by the
  same kernel. A file the fast decoder refuses is therefore quarantined (or accepted) exactly as
  the Pillow path would: the Pillow path has the last word, with its reasons.

``simplejpeg`` holds the GIL while it decodes (two threads of decoding alone keep one core busy),
yet threads remain the faster scheduler for a whole ingest: the resize kernel, the file reads and
the store's compression and hashing run outside the GIL beside it, and worker processes pay a
second or two of start-up and the pickling of every image (``bench/ingest_throughput.py``).

``--decode-device cuda`` decodes each task's JPEGs as one batch on the GPU with nvJPEG
(``torchvision.io.decode_jpeg(..., device="cuda")``, full resolution: nvJPEG has no DCT scaling)
and resamples them on the GPU with the same fixed-point Lanczos in float64 (exact for these
integers, so bit-identical to the kernel on the same input); files it cannot take go through
the CPU path above.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from typing import Any

import numpy as np
from PIL import Image

from kernels.resize import fixed_coeffs, resize_lanczos
from pipeline.data.images import Block, CropPolicy, Rejected, decode_image, quarantine_reason

JPEG_MAGIC = b"\xff\xd8\xff"
FAST_COLOURSPACES = ("YCbCr", "Gray")  # what libjpeg-turbo converts to RGB as Pillow does
DRAFT_SCALES = (8, 4, 2, 1)  # libjpeg's power-of-two DCT scales, as Pillow's draft mode tries them


# --- header facts: dimensions, orientation ---------------------------------------------------------


class NotFast(Exception):
    """The fast path does not take this file; the Pillow path decides."""


_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')


def jpeg_orientation(data: bytes) -> int:
    """The orientation Pillow's ``getexif()`` would report for a JPEG: IFD0 tag 0x0112 of the
    APP1 Exif segment, else ``tiff:Orientation`` in an XMP segment, else 1. Raises
    :class:`NotFast` for anything unusual (two Exif segments, a malformed TIFF header or IFD,
    an orientation that is not one SHORT): the Pillow path handles those as it always did."""
    exif, xmp = None, None
    i, n = 2, len(data)
    while True:
        if i + 4 > n or data[i] != 0xFF:
            raise NotFast("marker structure")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xDA:  # start of scan: every APP segment Pillow reads is behind us
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2 or i + 2 + length > n:
            raise NotFast("segment length")
        if marker == 0xE1:
            seg = data[i + 4 : i + 2 + length]
            if seg.startswith(b"Exif\0\0"):
                if exif is not None:
                    raise NotFast("two Exif segments (Pillow concatenates them)")
                exif = seg[6:]
            elif seg.startswith(_XMP):
                xmp = seg.split(b"\x00", 1)[1]
        i += 2 + length
    if exif is not None:
        value = _tiff_orientation(exif)
        if value is not None:
            return value
    if xmp is not None and (m := _XMP_ORIENTATION.search(xmp)):
        return int(m[2])
    return 1


def _tiff_orientation(t: bytes) -> int | None:
    """Tag 0x0112 of IFD0 of a TIFF structure (None when absent); NotFast when malformed."""
    if len(t) < 8 or t[:2] not in (b"II", b"MM"):
        raise NotFast("Exif TIFF header")
    order = "little" if t[:2] == b"II" else "big"
    if int.from_bytes(t[2:4], order) != 42:
        raise NotFast("Exif TIFF magic")
    ifd = int.from_bytes(t[4:8], order)
    if ifd + 2 > len(t):
        raise NotFast("Exif IFD offset")
    count = int.from_bytes(t[ifd : ifd + 2], order)
    if ifd + 2 + 12 * count > len(t):
        raise NotFast("Exif IFD entries")
    for e in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if int.from_bytes(t[e : e + 2], order) == 0x0112:
            typ, n = int.from_bytes(t[e + 2 : e + 4], order), int.from_bytes(t[e + 4 : e + 8], order)
            if typ != 3 or n != 1:  # not one SHORT: let Pillow interpret it
                raise NotFast("Exif orientation type")
            return int.from_bytes(t[e + 8 : e + 10], order)
    return None


# Pillow's exif_transpose on an (H, W, 3) array: orientation -> the transposition
_ORIENT = {
    2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda a: a[::-1, ::-1],  # ROTATE_180
    4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
    5: lambda a: a.transpose(1, 0, 2),  # TRANSPOSE
    6: lambda a: np.rot90(a, -1),  # ROTATE_270 (counter-clockwise), i.e. 90° clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # TRANSVERSE
    8: lambda a: np.rot90(a, 1),  # ROTATE_90
}


def upright(img: np.ndarray, orientation: int) -> np.ndarray:
    f = _ORIENT.get(orientation)
    return img if f is None else f(img)


def bomb_check(w: int, h: int) -> None:
    """Pillow's decompression-bomb check (``Image.open`` runs it for the Pillow path): an error
    above twice ``Image.MAX_IMAGE_PIXELS``, a warning above it (ingest turns it into an error)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None:
        return
    pixels = max(1, w) * max(1, h)
    if pixels > 2 * limit:
        raise Image.DecompressionBombError(
            f"Image size ({pixels} pixels) exceeds limit of {2 * limit} pixels, could be decompression bomb DOS attack."
        )
    if pixels > limit:
        warnings.warn(
            f"Image size ({pixels} pixels) exceeds limit of {limit} pixels, could be decompression bomb DOS attack.",
            Image.DecompressionBombWarning,
            stacklevel=2,
        )


def draft_scale(policy: CropPolicy, w0: int, h0: int) -> int:
    """The DCT scale denominator Pillow's draft mode picks for ``policy`` (1 = full size): the
    largest of 8, 4, 2 with ``min(w0 // dw, h0 // dh) >= s``, (dw, dh) = ``policy.draft_size``,
    and only when the crop has at least 2·S pixels a side."""
    if policy.side(w0, h0) < 2 * policy.size:
        return 1
    dw, dh = policy.draft_size(w0, h0)
    scale = min(w0 // dw, h0 // dh)
    return next(s for s in DRAFT_SCALES if scale >= s)


def crop_resize(img: np.ndarray, policy: CropPolicy, full: tuple[int, int], scale: int) -> np.ndarray:
    """``policy`` on an upright RGB array decoded at 1/``scale`` of ``full`` = (w, h): the crop
    box is computed at full size and divided by the scale (fractional coordinates kept)."""
    box = policy.box(*full)
    if scale == 1 and box[2] - box[0] == policy.size:
        return np.ascontiguousarray(img[box[1] : box[3], box[0] : box[2]])
    return resize_lanczos(img, tuple(v / scale for v in box), policy.size)


# --- one file --------------------------------------------------------------------------------------


def read_source(src: str | os.PathLike | io.IOBase, max_bytes: int) -> bytes | None:
    """The bytes of a JPEG of at most ``max_bytes`` (a path, or a file object a reader opened),
    or of an in-memory source whatever it holds; None otherwise: the Pillow path then opens
    ``src`` itself and reads only what it needs (a hostile 200 MB PNG is never read whole)."""
    if isinstance(src, io.BytesIO):
        return src.getvalue()
    if hasattr(src, "read"):
        head = src.read(3)
        data = head + src.read(max_bytes - 2) if head == JPEG_MAGIC else b""
        src.seek(0)
        return data if head == JPEG_MAGIC and len(data) <= max_bytes else None
    fd = os.open(src, os.O_RDONLY)  # unbuffered: a buffered file object costs more than the read
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes or os.read(fd, 3) != JPEG_MAGIC:
            return None
        data = JPEG_MAGIC + os.read(fd, size)
        while len(data) <= size:  # a short read: read to the end
            more = os.read(fd, 1 << 20)
            if not more:
                break
            data += more
    finally:
        os.close(fd)
    return data


def decode_jpeg_fast(data: bytes, policy: CropPolicy, max_pixels: int) -> np.ndarray:
    """One JPEG to (S, S, 3) uint8; raises :class:`NotFast` when the Pillow path should decide,
    and the Pillow path's rejections (too large, decompression bomb) itself."""
    import simplejpeg

    h0, w0, orientation = _fast_header(data, max_pixels, Rejected)
    scale = draft_scale(policy, w0, h0)
    want = (-(-h0 // scale), -(-w0 // scale))
    try:
        img = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=want[0], min_width=want[1], strict=True)
    except ValueError as e:  # corrupt, truncated, or a warning libjpeg would let through: Pillow decides
        raise NotFast(str(e)) from None
    if img.shape[:2] != want:
        raise NotFast(f"decoded {img.shape[:2]}, expected {want}")
    full = (h0, w0) if orientation in (5, 6, 7, 8) else (w0, h0)
    return crop_resize(upright(img, orientation), policy, full, scale)


def decode_file(src: str | os.PathLike | io.BytesIO, policy: CropPolicy, max_pixels: int) -> np.ndarray:
    """One source file under ``policy``: the JPEG fast path, else the Pillow path."""
    data = read_source(src, max_file_bytes(max_pixels))
    if data is not None:
        if data.startswith(JPEG_MAGIC):
            try:
                return decode_jpeg_fast(data, policy, max_pixels)
            except NotFast:
                pass
        src = io.BytesIO(data)
    return decode_image(src, policy, max_pixels)


def max_file_bytes(max_pixels: int) -> int:
    """Files up to this size are read whole (4 bytes a pixel and 1 MiB of metadata: no sane
    image of ``max_pixels`` is larger); a larger one is left to the Pillow path."""
    return 4 * max_pixels + (1 << 20)


# --- nvJPEG on the GPU -----------------------------------------------------------------------------


def check_cuda() -> None:
    """``--decode-device cuda`` needs torch with CUDA; one line when it is not there."""
    from storage.errors import SubsampleError

    try:
        import torch
    except ImportError:
        raise SubsampleError("ingest", "--decode-device cuda needs torch with CUDA; use --decode-device cpu") from None
    if not torch.cuda.is_available():
        raise SubsampleError(
            "ingest",
            "--decode-device cuda: CUDA is not available (torch.cuda.is_available() is False); use --decode-device cpu",
        )


def resize_torch(images: Any, box: tuple[float, float, float, float], size: int) -> Any:
    """:func:`kernels.resize.resize_lanczos` for a batch of (k, H, W, 3) uint8 tensors of one
    size and box, on their device: the fixed-point weights as float64 matrices (the integer
    sums stay below 2**53, so every product and sum is exact), floor-shifted and clipped after
    each pass as the kernel does. Returns (k, size, size, 3) uint8 on the same device."""
    import torch

    k, h, w, _ = images.shape
    dev = images.device

    def dense(bounds, weights, n):
        m = np.zeros((len(bounds), n), np.float64)
        for i, (x0, c) in enumerate(bounds):
            m[i, x0 : x0 + c] = weights[i, :c]
        return torch.from_numpy(m).to(dev)

    mx = dense(*fixed_coeffs(w, box[0], box[2], size), w)
    my = dense(*fixed_coeffs(h, box[1], box[3], size), h)
    half, shift = float(1 << 21), float(1 << 22)
    x = images.to(torch.float64)
    tmp = torch.floor((torch.einsum("xw,khwc->khxc", mx, x) + half) / shift).clamp_(0, 255)
    out = torch.floor((torch.einsum("yh,khxc->kyxc", my, tmp) + half) / shift).clamp_(0, 255)
    return out.to(torch.uint8)


def decode_files_cuda(reader: Any, refs: list[str], policy: CropPolicy, max_pixels: int, device: str = "cuda") -> Block:
    """A task's files with nvJPEG: the JPEGs the fast path takes are decoded as one batch on
    ``device`` at full resolution, oriented, grouped by (size, box) and resampled there; every
    other file goes through :func:`decode_file` on the CPU. Source order is kept."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    results: list[np.ndarray | None] = [None] * len(refs)
    reasons: dict[int, str] = {}
    gpu: list[tuple[int, bytes, int, tuple[int, int]]] = []  # (index, data, orientation, upright size)
    for i, ref in enumerate(refs):
        try:
            src = reader.open(ref)
            data = read_source(src, max_file_bytes(max_pixels))
            if data is not None:
                if data.startswith(JPEG_MAGIC):
                    try:
                        gpu.append((i, data, *_gpu_eligible(data, max_pixels, Rejected)))
                        continue
                    except NotFast:
                        pass
                src = io.BytesIO(data)
            results[i] = decode_file(src, policy, max_pixels)
        except Exception as exc:
            reasons[i] = quarantine_reason(exc)
    if gpu:
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for _, d, _, _ in gpu]
        try:
            decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad file fails the batch: decode them one by one
            decoded = []
            for t in tensors:
                try:
                    decoded.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    decoded.append(None)
        groups: dict[tuple, list[tuple[int, Any]]] = {}
        for (i, data, orientation, full), img in zip(gpu, decoded):
            if img is None:  # nvJPEG refused it: the CPU path decides (and names the reason)
                try:
                    results[i] = decode_file(io.BytesIO(data), policy, max_pixels)
                except Exception as exc:
                    reasons[i] = quarantine_reason(exc)
                continue
            hwc = _upright_torch(img.permute(1, 2, 0), orientation)
            box = policy.box(*full)
            groups.setdefault((tuple(hwc.shape), box), []).append((i, hwc))
        for (_shape, box), items in groups.items():
            batch = torch.stack([t for _, t in items])
            if box[2] - box[0] == policy.size:
                out = batch[:, box[1] : box[3], box[0] : box[2]]
            else:
                out = resize_torch(batch, box, policy.size)
            for (i, _), img in zip(items, out.cpu().numpy()):
                results[i] = img
    keep = [i for i in range(len(refs)) if results[i] is not None]
    images = np.stack([results[i] for i in keep]) if keep else np.empty((0, policy.size, policy.size, 3), np.uint8)
    bad = [{"path": refs[i], "reason": reasons[i]} for i in sorted(reasons)]
    return Block(np.ascontiguousarray(images), None, bad)


def _fast_header(data: bytes, max_pixels: int, Rejected: type) -> tuple[int, int, int]:
    """``(h, w, EXIF orientation)`` of a JPEG the fast path takes; :class:`NotFast` when the
    Pillow path should decide, the Pillow path's rejections (too large, decompression bomb)."""
    import simplejpeg

    try:
        h0, w0, colourspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as e:
        raise NotFast(str(e)) from None
    if colourspace not in FAST_COLOURSPACES:
        raise NotFast(f"colour space {colourspace}")
    orientation = jpeg_orientation(data)
    bomb_check(w0, h0)
    if w0 * h0 > max_pixels:
        raise Rejected(f"too large: {w0}×{h0} = {w0 * h0:,} pixels > max_pixels {max_pixels:,}")
    return h0, w0, orientation


def _gpu_eligible(data: bytes, max_pixels: int, Rejected: type) -> tuple[int, tuple[int, int]]:
    h0, w0, orientation = _fast_header(data, max_pixels, Rejected)
    return orientation, ((h0, w0) if orientation in (5, 6, 7, 8) else (w0, h0))


def _upright_torch(img: Any, orientation: int) -> Any:
    import torch

    if orientation == 2:
        return img.flip(1)
    if orientation == 3:
        return img.flip(0).flip(1)
    if orientation == 4:
        return img.flip(0)
    if orientation == 5:
        return img.transpose(0, 1)
    if orientation == 6:
        return torch.rot90(img, -1, (0, 1))
    if orientation == 7:
        return img.flip(0).flip(1).transpose(0, 1)
    if orientation == 8:
        return torch.rot90(img, 1, (0, 1))
    return img
