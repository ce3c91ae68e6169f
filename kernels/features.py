"""Per-image features (spec §1), as numba kernels with numpy references beside them.

Images are uint8 ``(N, H, W, 3)`` blocks, values 0..255, RGB. Every feature is an entry of a
registry (:func:`register_feature`): a small ``@njit`` kernel ``kernel(images, out)`` that writes one
float64 per image into ``out`` (shape ``(N,)``), and a plain numpy ``reference(images) -> (N,)``
that the tests compare it with. A *fused* kernel (:func:`register_fused`) may compute several
registered features in one pass over the pixels; :func:`compute_features` uses it when all of its
features are requested, and the single-feature kernels otherwise. Adding a third feature is one
``register_feature`` call; nothing else changes.

Exactness: pixel sums and squared differences are accumulated as integers (exact), converted to
float64 once per image and channel, and combined with the weights in the spec's order,
``w_R * a_R + w_G * a_G + w_B * a_B``. The references accumulate in float64, which is also exact
for these integer partial sums (all below 2**53), so kernel and reference agree bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from numba import njit

# Luma weights (R, G, B) of the colour moment and the sharpness (spec Eqs. 14 and 15).
RGB_WEIGHTS = np.array([0.30, 0.59, 0.11], dtype=np.float64)

# Sharpness accumulates squared differences per column in int32: one column gains at most
# 2 * 255**2 = 130,050 per row, so it cannot overflow below this many rows.
MAX_HEIGHT = (2**31 - 1) // (2 * 255**2)

DEFAULT_FEATURES = ("colour_moment", "sharpness")


# --- kernels ------------------------------------------------------------------------------------
# Each kernel sees an image as rows of W*3 interleaved channel values; element k of a row belongs
# to channel k % 3. Accumulating per row position (instead of per channel) keeps the inner loops
# contiguous and lets LLVM vectorise them; the per-channel totals are formed once per image.


@njit(cache=True, nogil=True)
def colour_moment_kernel(images, weights, out):
    """Eq. 14: ``mu = sum_c w_c * mean_{x,y} I_c(x, y)``."""
    n, h, w, _ = images.shape
    row_len = w * 3
    rows = images.reshape(n, h, row_len)
    acc = np.empty(row_len, np.int64)
    hw = h * w
    for i in range(n):
        acc[:] = 0
        for y in range(h):
            row = rows[i, y]
            for k in range(row_len):
                acc[k] += row[k]
        s0 = 0
        s1 = 0
        s2 = 0
        for k in range(0, row_len, 3):
            s0 += acc[k]
            s1 += acc[k + 1]
            s2 += acc[k + 2]
        out[i] = weights[0] * (s0 / hw) + weights[1] * (s1 / hw) + weights[2] * (s2 / hw)


@njit(cache=True, nogil=True)
def sharpness_kernel(images, weights, out):
    """Eq. 15, standard energy-gradient form (spec decision), summed over x = 0..w-2, y = 0..h-2:
    ``F = sum_c w_c * sum_{x,y} [(I_c(x+1,y) - I_c(x,y))^2 + (I_c(x,y+1) - I_c(x,y))^2]``."""
    n, h, w, _ = images.shape
    row_len = w * 3
    grad_len = (w - 1) * 3
    rows = images.reshape(n, h, row_len)
    acc = np.empty(max(grad_len, 1), np.int32)
    for i in range(n):
        acc[:] = 0
        for y in range(h - 1):
            row = rows[i, y]
            below = rows[i, y + 1]
            for k in range(grad_len):
                v = np.int32(row[k])
                dx = np.int32(row[k + 3]) - v
                dy = np.int32(below[k]) - v
                acc[k] += dx * dx + dy * dy
        g0 = 0
        g1 = 0
        g2 = 0
        for k in range(0, grad_len, 3):
            g0 += acc[k]
            g1 += acc[k + 1]
            g2 += acc[k + 2]
        out[i] = weights[0] * np.float64(g0) + weights[1] * np.float64(g1) + weights[2] * np.float64(g2)


@njit(cache=True, nogil=True)
def colour_moment_sharpness_kernel(images, weights, out):
    """Eqs. 14 and 15 in one pass over the pixels: ``out[:, 0]`` = mu, ``out[:, 1]`` = F."""
    n, h, w, _ = images.shape
    row_len = w * 3
    grad_len = (w - 1) * 3
    rows = images.reshape(n, h, row_len)
    acc_sum = np.empty(row_len, np.int64)
    acc_grad = np.empty(max(grad_len, 1), np.int32)
    hw = h * w
    for i in range(n):
        acc_sum[:] = 0
        acc_grad[:] = 0
        for y in range(h - 1):
            row = rows[i, y]
            below = rows[i, y + 1]
            for k in range(grad_len):
                v = np.int32(row[k])
                dx = np.int32(row[k + 3]) - v
                dy = np.int32(below[k]) - v
                acc_grad[k] += dx * dx + dy * dy
            for k in range(row_len):
                acc_sum[k] += row[k]
        last = rows[i, h - 1]
        for k in range(row_len):
            acc_sum[k] += last[k]
        s0 = 0
        s1 = 0
        s2 = 0
        for k in range(0, row_len, 3):
            s0 += acc_sum[k]
            s1 += acc_sum[k + 1]
            s2 += acc_sum[k + 2]
        g0 = 0
        g1 = 0
        g2 = 0
        for k in range(0, grad_len, 3):
            g0 += acc_grad[k]
            g1 += acc_grad[k + 1]
            g2 += acc_grad[k + 2]
        out[i, 0] = weights[0] * (s0 / hw) + weights[1] * (s1 / hw) + weights[2] * (s2 / hw)
        out[i, 1] = weights[0] * np.float64(g0) + weights[1] * np.float64(g1) + weights[2] * np.float64(g2)


# --- numpy references ---------------------------------------------------------------------------


def colour_moment_reference(images: np.ndarray) -> np.ndarray:
    """Eq. 14 in plain numpy (float64 throughout)."""
    means = images.astype(np.float64).mean(axis=(1, 2))
    w = RGB_WEIGHTS
    return w[0] * means[:, 0] + w[1] * means[:, 1] + w[2] * means[:, 2]


def sharpness_reference(images: np.ndarray) -> np.ndarray:
    """Eq. 15 (standard '+' form), x = 0..w-2 and y = 0..h-2, in plain numpy (float64)."""
    x = images.astype(np.float64)
    base = x[:, :-1, :-1, :]
    dx = x[:, :-1, 1:, :] - base
    dy = x[:, 1:, :-1, :] - base
    energy = (dx * dx + dy * dy).sum(axis=(1, 2))
    w = RGB_WEIGHTS
    return w[0] * energy[:, 0] + w[1] * energy[:, 1] + w[2] * energy[:, 2]


# --- registry -----------------------------------------------------------------------------------

Kernel = Callable[[np.ndarray, np.ndarray], None]
Reference = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Feature:
    """One registered feature: ``kernel(images, out)`` fills ``out`` (float64 ``(N,)``);
    ``reference(images)`` returns the same values computed with plain numpy."""

    name: str
    kernel: Kernel
    reference: Reference
    description: str = ""


@dataclass(frozen=True)
class FusedKernel:
    """``kernel(images, out)`` fills ``out`` (float64 ``(N, len(names))``) with the registered
    features ``names``, in that order, in one pass."""

    names: tuple[str, ...]
    kernel: Kernel


FEATURES: dict[str, Feature] = {}
FUSED: list[FusedKernel] = []


def register_feature(name: str, kernel: Kernel, reference: Reference, *, description: str = "") -> Feature:
    """Add a feature to the registry. ``kernel(images, out)`` takes a C-contiguous uint8
    ``(N, H, W, 3)`` block and a float64 ``(N,)`` output."""
    if name in FEATURES:
        raise ValueError(f"feature {name!r} is already registered")
    feature = Feature(name, kernel, reference, description)
    FEATURES[name] = feature
    return feature


def unregister_feature(name: str) -> None:
    """Remove a feature and every fused kernel that computes it."""
    del FEATURES[name]
    FUSED[:] = [f for f in FUSED if name not in f.names]


def register_fused(names: Sequence[str], kernel: Kernel) -> FusedKernel:
    missing = [n for n in names if n not in FEATURES]
    if missing:
        raise ValueError(f"register the features {missing} before a fused kernel over them")
    fused = FusedKernel(tuple(names), kernel)
    FUSED.append(fused)
    return fused


def feature(name: str, reference: Reference, *, description: str = "") -> Callable[[Kernel], Kernel]:
    """Decorator form of :func:`register_feature`."""

    def wrap(kernel: Kernel) -> Kernel:
        register_feature(name, kernel, reference, description=description)
        return kernel

    return wrap


def _weighted(kernel):
    # The registered kernels take (images, out); the built-in ones also take the channel weights.
    def run(images: np.ndarray, out: np.ndarray) -> None:
        kernel(images, RGB_WEIGHTS, out)

    run.__name__ = kernel.__name__
    run.__doc__ = kernel.__doc__
    return run


register_feature(
    "colour_moment",
    _weighted(colour_moment_kernel),
    colour_moment_reference,
    description="Eq. 14: luma-weighted mean of the channel means, 0..255",
)
register_feature(
    "sharpness",
    _weighted(sharpness_kernel),
    sharpness_reference,
    description="Eq. 15: luma-weighted energy gradient over x = 0..w-2, y = 0..h-2",
)
register_fused(("colour_moment", "sharpness"), _weighted(colour_moment_sharpness_kernel))


# --- wrappers -----------------------------------------------------------------------------------


def as_image_block(images: np.ndarray) -> np.ndarray:
    """Validate and normalise a block of images to C-contiguous uint8 ``(N, H, W, 3)``. A grey
    block ``(N, H, W)`` or ``(N, H, W, 1)`` is treated as three equal channels (spec §1)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 (values 0..255), got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W, 3) RGB or (N, H, W) grey, got shape {images.shape}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    if images.shape[1] < 1 or images.shape[2] < 1:
        raise ValueError(f"images must be at least 1x1, got shape {images.shape}")
    if images.shape[1] > MAX_HEIGHT:
        raise ValueError(f"images taller than {MAX_HEIGHT} rows are not supported (int32 accumulators)")
    return np.ascontiguousarray(images)


def _check_names(names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(names)
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise KeyError(f"unknown feature(s) {unknown}; registered: {sorted(FEATURES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"feature names repeat: {names}")
    return names


def compute_features(images: np.ndarray, names: Sequence[str] = DEFAULT_FEATURES, *, fused: bool = True) -> np.ndarray:
    """Features of a block of images: float64 ``(N, len(names))``, columns in ``names`` order.

    Uses a fused kernel for any group of requested features that has one (``fused=False`` forces
    the single-feature kernels; the results are identical)."""
    names = _check_names(names)
    images = as_image_block(images)
    n = images.shape[0]
    out = np.empty((n, len(names)), dtype=np.float64)
    if n == 0:
        return out
    todo = set(names)
    if fused:
        for fk in FUSED:
            if set(fk.names) <= todo:
                block = np.empty((n, len(fk.names)), dtype=np.float64)
                fk.kernel(images, block)
                for j, name in enumerate(fk.names):
                    out[:, names.index(name)] = block[:, j]
                todo -= set(fk.names)
    for name in names:
        if name in todo:
            col = np.empty(n, dtype=np.float64)
            FEATURES[name].kernel(images, col)
            out[:, names.index(name)] = col
    return out


def compute_features_reference(images: np.ndarray, names: Sequence[str] = DEFAULT_FEATURES) -> np.ndarray:
    """:func:`compute_features` with the numpy references (slow; for tests)."""
    names = _check_names(names)
    images = as_image_block(images)
    out = np.empty((images.shape[0], len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        out[:, j] = FEATURES[name].reference(images)
    return out
