"""numba kernels against their numpy references (spec §1 features, §2 binning and counting)."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from kernels.features import (
    FEATURES,
    FUSED,
    RGB_WEIGHTS,
    compute_features,
    compute_features_reference,
    register_feature,
    unregister_feature,
)
from kernels.histogram import (
    bin_cells,
    cells_reference,
    count_cells,
    count_reference,
    table_shape,
)

NAMES = ("colour_moment", "sharpness")


def both_paths(images):
    """Fused kernel, single-feature kernels and the reference; all three must agree exactly."""
    fused = compute_features(images)
    single = compute_features(images, fused=False)
    ref = compute_features_reference(images)
    np.testing.assert_array_equal(fused, ref)
    np.testing.assert_array_equal(single, ref)
    assert fused.dtype == np.float64 and fused.shape == (len(images), 2)
    return fused


@pytest.mark.parametrize(
    "shape", [(6, 32, 32), (5, 7, 5), (4, 5, 7), (3, 1, 1), (3, 2, 2), (2, 1, 9), (2, 9, 1), (2, 64, 64)]
)
def test_random_images_match_reference(shape):
    rng = np.random.default_rng(sum(shape))
    images = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    both_paths(images)


def test_sharpness_by_hand_and_summation_range():
    # 2x2 image, one channel lit: only pixel (0, 0) has both neighbours inside x, y <= w-2, h-2.
    img = np.zeros((1, 2, 2, 3), np.uint8)
    img[0, 0, 1, 0] = 10  # right neighbour of (0,0), red
    img[0, 1, 0, 1] = 20  # lower neighbour of (0,0), green
    img[0, 1, 1, 2] = 200  # (1,1) is never a base pixel nor a neighbour of (0,0): ignored
    f = both_paths(img)
    assert f[0, 1] == 0.30 * 100.0 + 0.59 * 400.0 + 0.11 * 0.0
    # Eq. 14: channel means 10/4, 20/4, 200/4
    assert f[0, 0] == 0.30 * 2.5 + 0.59 * 5.0 + 0.11 * 50.0


def test_one_by_one_and_single_row_have_zero_sharpness():
    rng = np.random.default_rng(1)
    for shape in [(4, 1, 1, 3), (4, 1, 6, 3), (4, 6, 1, 3)]:
        f = both_paths(rng.integers(0, 256, shape, dtype=np.uint8))
        assert np.all(f[:, 1] == 0.0)
    one = np.full((1, 1, 1, 3), (10, 20, 30), np.uint8)
    assert compute_features(one)[0, 0] == 0.30 * 10 + 0.59 * 20 + 0.11 * 30


def test_grey_is_three_equal_channels():
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 256, (5, 9, 11), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    f = both_paths(rgb)
    np.testing.assert_array_equal(compute_features(grey), f)
    np.testing.assert_array_equal(compute_features(grey[..., None]), f)
    # weights sum to 1: mu is the grey mean, F the grey energy gradient
    g = grey.astype(np.float64)
    np.testing.assert_allclose(f[:, 0], g.mean(axis=(1, 2)), rtol=1e-12)
    energy = ((g[:, :-1, 1:] - g[:, :-1, :-1]) ** 2 + (g[:, 1:, :-1] - g[:, :-1, :-1]) ** 2).sum(axis=(1, 2))
    np.testing.assert_allclose(f[:, 1], energy, rtol=1e-12)


def test_extreme_values_exact_in_float64():
    s = 64
    zeros = np.zeros((1, s, s, 3), np.uint8)
    full = np.full((1, s, s, 3), 255, np.uint8)
    yy, xx = np.mgrid[:s, :s]
    checker = np.repeat((((yy + xx) % 2) * 255).astype(np.uint8)[None, ..., None], 3, axis=-1)
    f = both_paths(np.concatenate([zeros, full, checker]))
    assert f[0].tolist() == [0.0, 0.0]
    assert f[1, 0] == 0.30 * 255.0 + 0.59 * 255.0 + 0.11 * 255.0 and f[1, 1] == 0.0
    # checkerboard: every base pixel has two neighbours differing by 255
    per_channel = (s - 1) * (s - 1) * 2 * 255**2  # 516,168,450, exact integer
    expected = 0.30 * per_channel + 0.59 * per_channel + 0.11 * per_channel
    assert f[2, 1] == expected and f[2, 1] > 5e8
    assert abs(f[2, 1] - per_channel) < 1e-6 * per_channel


def test_names_order_and_subsets():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    both = compute_features(images)
    np.testing.assert_array_equal(compute_features(images, ("sharpness", "colour_moment")), both[:, ::-1])
    np.testing.assert_array_equal(compute_features(images, ("sharpness",))[:, 0], both[:, 1])
    assert compute_features(images[:0]).shape == (0, 2)


def test_invalid_inputs():
    with pytest.raises(TypeError):
        compute_features(np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(ValueError):
        compute_features(np.zeros((1, 4, 4, 2), np.uint8))
    with pytest.raises(KeyError, match="unknown feature"):
        compute_features(np.zeros((1, 4, 4, 3), np.uint8), ("nope",))


def test_non_contiguous_input():
    rng = np.random.default_rng(4)
    big = rng.integers(0, 256, (6, 10, 12, 3), dtype=np.uint8)
    view = big[::2, 1:8, ::2]
    np.testing.assert_array_equal(compute_features(view), compute_features_reference(np.ascontiguousarray(view)))


@njit(cache=True, nogil=True)
def _max_red_kernel(images, out):
    for i in range(images.shape[0]):
        m = 0
        for y in range(images.shape[1]):
            for x in range(images.shape[2]):
                if images[i, y, x, 0] > m:
                    m = images[i, y, x, 0]
        out[i] = m


def test_registry_takes_a_third_feature():
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    before = compute_features(images)
    register_feature("max_red", _max_red_kernel, lambda im: im[..., 0].max(axis=(1, 2)).astype(np.float64))
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_feature("max_red", _max_red_kernel, lambda im: im)
        names = ("colour_moment", "max_red", "sharpness")
        got = compute_features(images, names)
        np.testing.assert_array_equal(got, compute_features_reference(images, names))
        np.testing.assert_array_equal(got[:, 1], images[..., 0].max(axis=(1, 2)))
        np.testing.assert_array_equal(got[:, [0, 2]], before)  # the fused pair still serves the others
    finally:
        unregister_feature("max_red")
    assert "max_red" not in FEATURES and len(FUSED) == 1
    with pytest.raises(KeyError):
        compute_features(images, ("max_red",))


def test_weights_are_the_spec_luma_weights():
    assert RGB_WEIGHTS.tolist() == [0.30, 0.59, 0.11]


# --- binning (Eq. 16) and counting ----------------------------------------------------------------


def test_bin_cells_matches_reference_random():
    rng = np.random.default_rng(6)
    values = rng.random((1000, 2)) * [255.0, 1e7]
    maxima = values.max(axis=0)
    for bins in ([8, 16], [32, 32], [1, 5]):
        got = bin_cells(values, maxima, bins)
        np.testing.assert_array_equal(got, cells_reference(values, maxima, np.array(bins)))
        assert got.max() < np.prod(table_shape(bins))


def test_round_half_up_at_exact_half_bins():
    # m = 4, max = 8: v* = v / 2, so v = 1, 3, 5, 7 lie exactly on half bins and round up.
    v = np.arange(0, 9, dtype=np.float64)
    values = np.stack([v, np.zeros_like(v)], axis=1)
    cells = bin_cells(values, np.array([8.0, 0.0]), [4, 3])
    first = cells // 4  # axis 1 has 3 + 1 cells, all values in bin 0 (max 0)
    assert first.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert (cells % 4).tolist() == [0] * 9
    np.testing.assert_array_equal(cells, cells_reference(values, np.array([8.0, 0.0]), np.array([4, 3])))


def test_out_of_range_values_clip():
    values = np.array([[-5.0, 100.0], [12.0, 0.0], [10.0, 50.0]])
    cells = bin_cells(values, np.array([10.0, 50.0]), [4, 2])
    rows, cols = np.unravel_index(cells, table_shape([4, 2]))
    assert rows.tolist() == [0, 4, 4] and cols.tolist() == [2, 0, 2]
    with pytest.raises(ValueError, match="finite"):
        bin_cells(np.array([[np.nan, 1.0]]), np.array([1.0, 1.0]), [2, 2])


def test_count_cells_matches_bincount():
    rng = np.random.default_rng(7)
    shape = table_shape([5, 6])
    cells = rng.integers(0, np.prod(shape), 500)
    counts = count_cells(cells, shape)
    assert counts.shape == shape and counts.dtype == np.int64 and counts.sum() == 500
    np.testing.assert_array_equal(counts.ravel(), count_reference(cells, int(np.prod(shape))))
    assert count_cells(np.zeros(0, np.int64), shape).sum() == 0
    with pytest.raises(ValueError):
        count_cells(np.array([np.prod(shape)]), shape)


def test_round_half_up_has_no_addition_error():
    # floor(x + 0.5) is 1 for x = 0.5 - 2**-54 because the sum rounds to 1.0; the bin must be 0.
    below_half = np.nextafter(0.5, 0.0)
    assert np.floor(below_half + 0.5) == 1.0  # the pitfall exists
    values = np.array([[below_half], [0.5], [np.nextafter(1.5, 0.0)], [1.5]])
    cells = bin_cells(values, np.array([1.0]), [1])  # scale 1: v* = v, clipped to 0..1
    assert cells.tolist() == [0, 1, 1, 1]
    values = np.array([[below_half], [0.5], [np.nextafter(1.5, 0.0)], [1.5], [2.5]])
    cells = bin_cells(values, np.array([4.0]), [4])  # v* = v * 4 / 4 = v exactly
    np.testing.assert_array_equal(cells, cells_reference(values, np.array([4.0]), np.array([4])))
    assert cells.tolist() == [0, 1, 1, 2, 3]
