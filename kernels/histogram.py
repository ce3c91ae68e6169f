"""The joint distribution table's binning and counting (spec §2), as numba kernels with numpy
references beside them.

Eq. 16 scales feature i to ``v* = v * m_i / max_i``; the bin is ``v*`` rounded half up (spec
decision; ``floor(v* + 0.5)`` computed exactly, see :func:`round_half_up`), clipped to ``0..m_i``,
so axis i has ``m_i + 1`` cells. A maximum of 0 or less (every value 0) puts everything in bin 0.
Values above the maximum (generated images binned with the training scale) land in the last bin,
negative values in bin 0. Cells are numbered in C order
over the shape ``(m_1 + 1, ..., m_F + 1)``.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def cells_kernel(values, maxima, bins, out):
    """Flat cell index of each row of ``values`` (float64 (n, F)) into ``out`` (int64 (n,))."""
    n, f = values.shape
    for i in range(n):
        cell = 0
        for j in range(f):
            m = bins[j]
            b = 0
            if maxima[j] > 0.0:
                scaled = values[i, j] * m / maxima[j]
                whole = np.floor(scaled)
                b = np.int64(whole)
                if scaled - whole >= 0.5:  # round half up, exactly (see round_half_up)
                    b += 1
                if b < 0:
                    b = 0
                elif b > m:
                    b = m
            cell = cell * (m + 1) + b
        out[i] = cell


@njit(cache=True, nogil=True)
def count_kernel(cells, counts):
    """``counts[c]`` += 1 for every ``c`` in ``cells`` (counts must start at 0)."""
    for i in range(cells.shape[0]):
        counts[cells[i]] += 1


def round_half_up(x: np.ndarray) -> np.ndarray:
    """``floor(x + 0.5)`` without the rounding error of the addition: for x = 0.5 - 2**-54 the sum
    rounds to 1.0, so the literal formula would put x in bin 1. ``x - floor(x)`` is exact for
    x >= 0, so comparing it with 0.5 rounds exactly half up."""
    whole = np.floor(x)
    return whole + (x - whole >= 0.5)


def cells_reference(values: np.ndarray, maxima: np.ndarray, bins: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    idx = []
    for j, m in enumerate(bins):
        if maxima[j] > 0:
            b = round_half_up(values[:, j] * int(m) / maxima[j])
            b = np.clip(b, 0, m).astype(np.int64)
        else:
            b = np.zeros(len(values), np.int64)
        idx.append(b)
    return np.ravel_multi_index(tuple(idx), tuple(int(m) + 1 for m in bins)).astype(np.int64)


def count_reference(cells: np.ndarray, n_cells: int) -> np.ndarray:
    return np.bincount(cells, minlength=n_cells).astype(np.int64)


def _check(values: np.ndarray, maxima: np.ndarray, bins) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = np.ascontiguousarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"values must be (n, F), got shape {values.shape}")
    maxima = np.ascontiguousarray(maxima, dtype=np.float64)
    bins = np.ascontiguousarray(bins, dtype=np.int64)
    if maxima.shape != (values.shape[1],) or bins.shape != (values.shape[1],):
        raise ValueError(
            f"need one maximum and one bin count per feature: values {values.shape}, "
            f"maxima {maxima.shape}, bins {bins.shape}"
        )
    if np.any(bins < 1):
        raise ValueError(f"bin counts must be >= 1, got {bins.tolist()}")
    if not np.all(np.isfinite(values)) or not np.all(np.isfinite(maxima)):
        raise ValueError("feature values and maxima must be finite")
    return values, maxima, bins


def bin_cells(values: np.ndarray, maxima: np.ndarray, bins) -> np.ndarray:
    """Eq. 16: flat (C-order) cell index, int64 ``(n,)``, of each row of ``values`` (n, F)."""
    values, maxima, bins = _check(values, maxima, bins)
    out = np.empty(values.shape[0], dtype=np.int64)
    cells_kernel(values, maxima, bins, out)
    return out


def count_cells(cells: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The joint table: int64 array of ``shape`` counting the flat cell indices ``cells``."""
    cells = np.ascontiguousarray(cells, dtype=np.int64)
    n_cells = int(np.prod(shape))
    if cells.size and (cells.min() < 0 or cells.max() >= n_cells):
        raise ValueError(f"cell indices must lie in 0..{n_cells - 1}")
    counts = np.zeros(n_cells, dtype=np.int64)
    count_kernel(cells, counts)
    return counts.reshape(shape)


def table_shape(bins) -> tuple[int, ...]:
    """``(m_1 + 1, ..., m_F + 1)``: bins run 0..m_i (spec §2 decision)."""
    return tuple(int(m) + 1 for m in bins)
