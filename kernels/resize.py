"""Lanczos-3 resampling of uint8 RGB images: Pillow's ``Image.resize(size, LANCZOS, box=...)``,
bit for bit, as a numba kernel that releases the GIL.

Pillow's algorithm (``libImaging/Resample.c``, unchanged since Pillow 4.3): a separable filter,
horizontal pass first, then vertical. For each output coordinate ``i`` of an axis whose box is
``[lo, hi)`` of an input of ``n`` samples resized to ``m``: ``scale = (hi - lo) / m``, the filter
is stretched by ``max(scale, 1)`` (so a downscale is antialiased), its support is ``3·max(scale, 1)``
samples either side of ``lo + (i + 0.5)·scale``, the taps are clipped to ``[0, n)`` (pixels just
outside the box are context, not a clamped edge) and normalised to sum 1. The weights are
rounded to 22-bit fixed point; each pass accumulates integers, rounds half up and clips to
0..255, so the intermediate image is uint8 too. :func:`resize_reference` does exactly that with
dense numpy matrices, :func:`resize_lanczos` with a banded ``@njit`` kernel; tests compare both
with Pillow. :func:`resize_float` is the same filter in float64 without intermediate rounding:
the reference that ``bench/jpeg_decode.py`` measures every decode path's PSNR against.

Why not Pillow itself: ``Image.fromarray`` → ``resize`` → ``np.asarray`` costs ~160 µs per
CelebA image at 64 px (half of it object overhead); the kernel takes ~25 µs, and a block of
images with one geometry shares its coefficients (``bench/jpeg_decode.py``).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numba import njit

SUPPORT = 3.0  # Lanczos-3
PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images


def _lanczos(x: float) -> float:
    """Pillow's ``lanczos_filter``: sinc(x)·sinc(x/3) on [-3, 3), in the same float operations."""
    if -3.0 <= x < 3.0:
        return _sinc(x) * _sinc(x / 3)
    return 0.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


@lru_cache(maxsize=512)
def lanczos_coeffs(in_size: int, lo: float, hi: float, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` for one axis: ``(bounds, weights)``, bounds ``(m, 2)`` int64
    (first tap, number of taps), weights ``(m, ksize)`` float64 normalised per row (zeros past the
    taps). ``lo``/``hi`` are rounded to float32 first, as Pillow passes the box as C floats.
    Cached: a data set of one image size asks for the same few geometries again and again."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    lo32, hi32 = np.float32(lo), np.float32(hi)
    lo = float(lo32)
    scale = float(hi32 - lo32) / out_size  # C: (double)(in1 - in0) / outSize, the difference in float
    filterscale = max(scale, 1.0)
    support = SUPPORT * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    bounds = np.zeros((out_size, 2), np.int64)
    weights = np.zeros((out_size, ksize), np.float64)
    ss = 1.0 / filterscale
    for xx in range(out_size):
        center = lo + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # C's (int) truncates toward zero, as int() does
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [_lanczos((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        ww = _csum(k)
        if ww != 0.0:
            k = [w / ww for w in k]
        weights[xx, :xmax] = k
        bounds[xx] = xmin, xmax
    bounds.flags.writeable = False
    weights.flags.writeable = False
    return bounds, weights


def _csum(values: list[float]) -> float:
    """Left-to-right double sum, as the C loop adds the weights."""
    total = 0.0
    for v in values:
        total += v
    return total


@lru_cache(maxsize=512)
def fixed_coeffs(in_size: int, lo: float, hi: float, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(bounds, weights)`` with the weights in Pillow's 22-bit fixed point (int64, rounded half
    away from zero as ``normalize_coeffs_8bpc`` does)."""
    bounds, w = lanczos_coeffs(in_size, lo, hi, out_size)
    scaled = w * (1 << PRECISION_BITS)
    fixed = np.where(scaled < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled)).astype(np.int64)
    fixed.flags.writeable = False
    return bounds, fixed


def _check(img: np.ndarray, box: tuple[float, float, float, float], size: int) -> None:
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    left, top, right, bottom = box
    if not (0 <= left < right <= w and 0 <= top < bottom <= h) or size < 1:
        raise ValueError(f"box {box} is not inside a {w}x{h} image, or size {size} < 1")


# --- the kernel ------------------------------------------------------------------------------------
# Both passes accumulate int32, as Pillow does: |sum of weights| <= 1.3 for Lanczos-3, so a sum is
# below 255 * 1.3 * 2**22 + 2**21 < 2**31 (_plan checks it). The horizontal pass runs on the
# transposed rows, so that, like the vertical pass, it adds whole contiguous rows of samples
# scaled by one weight: both inner loops vectorise (~3x faster than a tap-by-tap loop).


@njit(cache=True, nogil=True)
def _resize_kernel(src, xb, xk, yb, yk, y_first, rows, out):
    """One (H, W, 3) uint8 image -> ``out`` (m, m, 3) uint8; rows ``y_first .. y_first + rows``
    of ``src`` are the ones the vertical pass reads (``yb`` is relative to ``y_first``)."""
    half = np.int32(1 << (PRECISION_BITS - 1))
    w = src.shape[1]
    m_x = xb.shape[0]
    n = rows * 3
    src_t = np.empty((w, n), np.int32)  # src_t[x, r*3 + c] = src[y_first + r, x, c]
    for r in range(rows):
        for x in range(w):
            for c in range(3):
                src_t[x, r * 3 + c] = src[y_first + r, x, c]
    tmp_t = np.empty((m_x, n), np.int32)
    acc = np.empty(n, np.int32)
    for xx in range(m_x):
        x0 = xb[xx, 0]
        acc[:] = half
        for k in range(xb[xx, 1]):
            wk = xk[xx, k]
            line = src_t[x0 + k]
            for j in range(n):
                acc[j] += line[j] * wk
        for j in range(n):
            tmp_t[xx, j] = min(max(acc[j] >> PRECISION_BITS, 0), 255)
    tmp = np.empty((rows, m_x * 3), np.int32)  # the uint8 intermediate image, back in row order
    for xx in range(m_x):
        for r in range(rows):
            for c in range(3):
                tmp[r, xx * 3 + c] = tmp_t[xx, r * 3 + c]
    m_y = out.shape[0]
    dst = out.reshape(m_y, m_x * 3)
    acc2 = np.empty(m_x * 3, np.int32)
    for yy in range(m_y):
        y0 = yb[yy, 0]
        acc2[:] = half
        for k in range(yb[yy, 1]):
            wk = yk[yy, k]
            line = tmp[y0 + k]
            for j in range(m_x * 3):
                acc2[j] += line[j] * wk
        for j in range(m_x * 3):
            dst[yy, j] = min(max(acc2[j] >> PRECISION_BITS, 0), 255)


@njit(cache=True, nogil=True)
def _resize_many_kernel(images, xb, xk, yb, yk, y_first, rows, out):
    for i in range(images.shape[0]):
        _resize_kernel(images[i], xb, xk, yb, yk, y_first, rows, out[i])


@lru_cache(maxsize=512)
def _plan(h: int, w: int, box: tuple[float, float, float, float], size: int):
    """Coefficients of both passes as the kernel takes them (int32), for one geometry."""
    xb, xk = fixed_coeffs(w, box[0], box[2], size)
    yb, yk = fixed_coeffs(h, box[1], box[3], size)
    for k in (xk, yk):
        if 255 * int(np.abs(k).sum(axis=1).max()) + (1 << PRECISION_BITS) >= 2**31:  # never for Lanczos-3
            raise OverflowError("resize weights could overflow int32 accumulators")
    y_first = int(yb[0, 0])
    y_last = int(yb[-1, 0] + yb[-1, 1])
    yb_rel = yb.copy()
    yb_rel[:, 0] -= y_first
    return xb, xk.astype(np.int32), yb_rel, yk.astype(np.int32), y_first, y_last - y_first


def _box(box) -> tuple[float, float, float, float]:
    return tuple(float(v) for v in box)  # hashable and one cache entry for 3 and 3.0


def resize_lanczos(img: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """``img`` (H, W, 3) uint8, the region ``box`` = (left, top, right, bottom) resampled to
    (size, size, 3) uint8: ``Image.fromarray(img).resize((size, size), LANCZOS, box=box)`` as
    Pillow computes it when it takes the horizontal pass first (every Pillow before 13, and
    Pillow 13 for most geometries, CelebA's included; see the module docstring)."""
    _check(img, box, size)
    plan = _plan(img.shape[0], img.shape[1], _box(box), size)
    out = np.empty((size, size, 3), np.uint8)
    _resize_kernel(np.ascontiguousarray(img), *plan, out)
    return out


def resize_lanczos_many(
    images: np.ndarray, box: tuple[float, float, float, float], size: int, out: np.ndarray | None = None
) -> np.ndarray:
    """The same for a block (k, H, W, 3) of images of one size and one box, in one kernel call."""
    if images.ndim != 4:
        raise ValueError(f"expected (k, H, W, 3) images, got {images.shape}")
    if len(images):
        _check(images[0], box, size)
    plan = _plan(images.shape[1], images.shape[2], _box(box), size)
    out = np.empty((len(images), size, size, 3), np.uint8) if out is None else out
    _resize_many_kernel(np.ascontiguousarray(images), *plan, out)
    return out


# --- numpy references ------------------------------------------------------------------------------


def _dense(bounds: np.ndarray, weights: np.ndarray, in_size: int) -> np.ndarray:
    m = np.zeros((len(bounds), in_size), weights.dtype)
    for i, (x0, n) in enumerate(bounds):
        m[i, x0 : x0 + n] = weights[i, :n]
    return m


def resize_reference(img: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """:func:`resize_lanczos` as two dense integer matrix products (the kernel's reference)."""
    _check(img, box, size)
    h, w = img.shape[:2]
    mx = _dense(*fixed_coeffs(w, box[0], box[2], size), w)
    my = _dense(*fixed_coeffs(h, box[1], box[3], size), h)
    half = 1 << (PRECISION_BITS - 1)
    x = img.astype(np.int64)
    tmp = np.clip((np.einsum("xw,hwc->hxc", mx, x) + half) >> PRECISION_BITS, 0, 255)
    return np.clip((np.einsum("yh,hxc->yxc", my, tmp) + half) >> PRECISION_BITS, 0, 255).astype(np.uint8)


def resize_float(img: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """The same Lanczos-3 filter in float64 with no rounding or clipping between or after the
    passes: (size, size, 3) float64. The quality reference for downscaling."""
    h, w = img.shape[:2]
    mx = _dense(*lanczos_coeffs(w, box[0], box[2], size), w)
    my = _dense(*lanczos_coeffs(h, box[1], box[3], size), h)
    return np.einsum("yh,xw,hwc->yxc", my, mx, img.astype(np.float64), optimize=True)
