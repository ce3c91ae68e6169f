"""kernels/resize.py: the Lanczos kernel against its numpy reference and against Pillow."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kernels.resize import lanczos_coeffs, resize_float, resize_lanczos, resize_lanczos_many, resize_reference


def random_case(rng):
    h, w = (int(v) for v in rng.integers(1, 90, 2))
    size = int(rng.integers(1, 80))
    left, top = rng.uniform(0, w - 0.5), rng.uniform(0, h - 0.5)
    right = rng.uniform(left + 0.25, w) if rng.random() < 0.5 else w
    bottom = rng.uniform(top + 0.25, h) if rng.random() < 0.5 else h
    if rng.random() < 0.5:  # integer boxes, as ingest's centre crops
        left, top = int(left), int(top)
        right, bottom = max(int(right), left + 1), max(int(bottom), top + 1)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (left, top, right, bottom), size


def pillow_horizontal_first(a, box, size):
    """Pillow's Lanczos taken pass by pass, horizontal first (one-axis resizes are unambiguous)."""
    h = a.shape[0]
    left, top, right, bottom = box
    rows = Image.fromarray(a).resize((size, h), Image.Resampling.LANCZOS, box=(left, 0, right, h))
    return np.asarray(rows.resize((size, size), Image.Resampling.LANCZOS, box=(0, top, size, bottom)))


def test_kernel_equals_its_numpy_reference_and_pillow_pass_by_pass_bit_for_bit():
    rng = np.random.default_rng(0)
    for _ in range(150):  # up- and downscaling, fractional boxes, 1-pixel images and outputs
        a, box, size = random_case(rng)
        got = resize_lanczos(a, box, size)
        assert np.array_equal(got, resize_reference(a, box, size)), (a.shape, box, size)
        assert np.array_equal(got, pillow_horizontal_first(a, box, size)), (a.shape, box, size)


def test_kernel_equals_pillow_resize_on_celeba_geometry_and_is_close_everywhere():
    # CelebA at 64 px: 178×218 decoded at 1/2 is 89×109, the crop box (0, 10, 89, 99)
    rng = np.random.default_rng(1)
    for h, w, box, size in [
        (109, 89, (0, 10, 89, 99), 64),
        (218, 178, (0, 20, 178, 198), 64),
        (218, 178, (0, 20, 178, 198), 128),
    ]:
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        one_call = np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.LANCZOS, box=box))
        assert np.array_equal(resize_lanczos(a, box, size), one_call)
    # Pillow 13 takes the vertical pass first for some geometries: then only the rounding of
    # the uint8 intermediate differs. On smooth (photo-like) content that is at most 2 levels.
    yy, xx = np.mgrid[0:60, 0:47]
    smooth = np.stack([128 + 100 * np.sin(xx / 5 + yy / 9), 128 + 90 * np.cos(yy / 7), 30 + xx * 2 + yy], -1).astype(
        np.uint8
    )
    for size in range(5, 70, 4):
        one_call = np.asarray(
            Image.fromarray(smooth).resize((size, size), Image.Resampling.LANCZOS, box=(0, 6, 47, 53))
        )
        assert np.abs(resize_lanczos(smooth, (0, 6, 47, 53), size).astype(int) - one_call).max() <= 2


def test_coefficients_are_pillows_normalised_lanczos3():
    bounds, w = lanczos_coeffs(178, 0.0, 178.0, 64)
    assert np.allclose(w.sum(axis=1), 1.0)
    assert bounds[0, 0] == 0 and (bounds[:, 0] + bounds[:, 1]).max() == 178  # taps clipped to the image
    support = 3 * 178 / 64  # downscale: the filter is stretched to 3 * scale samples a side
    assert 2 * int(support) <= bounds[:, 1].max() <= 2 * int(np.ceil(support)) + 1
    b_up, _ = lanczos_coeffs(10, 0.0, 10.0, 40)
    assert b_up[:, 1].max() <= 7  # upscale: 6 (7) taps


def test_many_equals_one_by_one_and_float_reference_is_close():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (5, 30, 20, 3), dtype=np.uint8)
    many = resize_lanczos_many(a, (0, 5, 20, 25), 7)
    assert np.array_equal(many, np.stack([resize_lanczos(x, (0, 5, 20, 25), 7) for x in a]))
    ref = resize_float(a[0], (0, 5, 20, 25), 7)  # no intermediate rounding or clipping
    assert np.abs(np.clip(ref, 0, 255) - resize_lanczos(a[0], (0, 5, 20, 25), 7)).mean() < 2.0


def test_bad_inputs_are_refused():
    a = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="not inside"):
        resize_lanczos(a, (0, 0, 11, 10), 4)
    with pytest.raises(ValueError, match="uint8"):
        resize_lanczos(a.astype(np.float32), (0, 0, 10, 10), 4)
