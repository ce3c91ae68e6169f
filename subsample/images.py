"""One item of someone else's Dataset as the uint8 H×W×3 image the feature kernels read.

Accepted (``docs/library.md``): a PIL image (any mode; converted to RGB as ingest converts it:
grey to three equal channels, alpha composited on white); a uint8 numpy array H×W×3, H×W×1 or
H×W; a uint8 tensor 3×H×W or 1×H×W (torchvision's ``PILToTensor``, ``read_image``); a float tensor
or array 3×H×W or 1×H×W with values in [0, 1] (``ToTensor``) or [-1, 1] (``Normalize(0.5, 0.5)``
after it), mapped back to 0..255 by rounding. An item may also be a tuple or list whose first
element is one of these (``(image, label)``). Then, with a ``size``, ingest's crop/resize policy
(:class:`pipeline.data.images.CropPolicy`: centre crop, Lanczos to S×S); without one, the image as
it is, and every image must have the first one's size.

Everything here runs in DataLoader workers and returns an error *message* rather than raising:
an exception raised in a worker reaches the user as a multi-line traceback, a message becomes one
:class:`~storage.errors.SubsampleError` line in the main process.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from pipeline.data.images import CropPolicy, to_rgb

STAGE = "batch_sampler"
VALUE_RANGES = ((0.0, 1.0), (-1.0, 1.0))
RANGE_SLACK = 1e-3  # float images a rounding error outside their range are still theirs
ACCEPTED = (
    "items must be a PIL image, an H×W×3 uint8 array or a 3×H×W float tensor in [0, 1] or [-1, 1], "
    "or a tuple whose first element is one"
)


class NotAnImage(Exception):
    """An item the conversion cannot read; the message says what it was."""


def first_element(item: Any) -> Any:
    """The image of an item: the item itself, or the first element of a tuple or list."""
    if isinstance(item, (tuple, list)):
        if not item:
            raise NotAnImage("an empty tuple")
        return item[0]
    return item


def _describe(x: Any) -> str:
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is not None:
        return f"a {type(x).__name__} of shape {tuple(shape)} and dtype {dtype}"
    return f"a {type(x).__name__}"


def is_float_image(img: Any) -> bool:
    """A float tensor or array: its value range must be known to map it to 0..255."""
    dtype = getattr(img, "dtype", None)
    if dtype is None or isinstance(img, Image.Image):
        return False
    return bool(getattr(dtype, "is_floating_point", False)) or (
        isinstance(dtype, np.dtype) and np.issubdtype(dtype, np.floating)
    )


def guess_value_range(img: Any) -> tuple[float, float]:
    """[-1, 1] when a float image has a negative value, else [0, 1]."""
    return VALUE_RANGES[1] if float(np.asarray(img).min()) < 0 else VALUE_RANGES[0]


def to_uint8(img: Any, value_range: tuple[float, float] | None) -> np.ndarray:
    """The image ``img`` (already taken out of its tuple) as uint8 H×W×3, or :class:`NotAnImage`."""
    if isinstance(img, Image.Image):
        return np.asarray(to_rgb(img), dtype=np.uint8)
    if type(img).__module__.startswith("torch") and hasattr(img, "detach"):
        arr = img.detach().cpu().numpy()
        channels_first = True
    elif isinstance(img, np.ndarray):
        arr = img
        channels_first = is_float_image(arr)
    else:
        raise NotAnImage(_describe(img))
    if arr.dtype == np.uint8 and not channels_first:
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3):
            raise NotAnImage(_describe(img))
    elif arr.dtype == np.uint8 or is_float_image(arr):
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[0] not in (1, 3):
            raise NotAnImage(_describe(img))
        arr = np.moveaxis(arr, 0, -1)
        if arr.dtype != np.uint8:
            arr = _float_to_uint8(arr, value_range or guess_value_range(arr))
    else:
        raise NotAnImage(_describe(img))
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise NotAnImage(_describe(img))
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _float_to_uint8(arr: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    lo, hi = value_range
    x = arr.astype(np.float64)
    if not np.isfinite(x).all():
        raise NotAnImage("a float image with NaN or infinite values")
    mn, mx = float(x.min()), float(x.max())
    if mn < lo - RANGE_SLACK or mx > hi + RANGE_SLACK:
        raise NotAnImage(
            f"a float image with values in [{mn:.3g}, {mx:.3g}], outside the value range [{lo:g}, {hi:g}] "
            "(undo any Normalize other than (0.5, 0.5), or pass value_range=(lo, hi))"
        )
    return np.clip(np.rint((x - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def float_block_to_uint8(imgs: list, value_range: tuple[float, float] | None) -> np.ndarray | None:
    """Float tensors or arrays of one shape (3 or 1)×H×W, converted together: uint8 k×H×W×3, the
    same bytes as :func:`to_uint8` one by one (float32 arithmetic is exact enough: an integer
    level is off by < 1e-4 before rounding). None when the block is not that (then item by item);
    :class:`NotAnImage` with the block position of the first image outside its value range."""
    if not imgs or not all(is_float_image(x) for x in imgs):
        return None
    shape = tuple(imgs[0].shape)
    if len(shape) != 3 or shape[0] not in (1, 3) or any(tuple(x.shape) != shape for x in imgs):
        return None
    if type(imgs[0]).__module__.startswith("torch"):
        import torch

        x = torch.stack([t.detach().cpu() for t in imgs]).numpy()
    else:
        x = np.stack(imgs)
    x = x.astype(np.float32, copy=False)
    lo, hi = value_range or guess_value_range(x)
    flat = x.reshape(len(x), -1)
    mn, mx = flat.min(axis=1), flat.max(axis=1)
    bad = ~(np.isfinite(mn) & np.isfinite(mx) & (mn >= lo - RANGE_SLACK) & (mx <= hi + RANGE_SLACK))
    if bad.any():
        j = int(np.argmax(bad))
        try:
            _float_to_uint8(np.asarray(x[j]), (lo, hi))
        except NotAnImage as e:
            e.position = j  # type: ignore[attr-defined]
            raise
    y = np.clip(np.rint((x - np.float32(lo)) * np.float32(255.0 / (hi - lo))), 0, 255).astype(np.uint8)
    y = np.ascontiguousarray(y.transpose(0, 2, 3, 1))
    return np.repeat(y, 3, axis=3) if shape[0] == 1 else y


def prepare(
    item: Any,
    *,
    policy: CropPolicy | None,
    value_range: tuple[float, float] | None,
    expect_hw: tuple[int, int] | None,
) -> np.ndarray:
    """An item as the image whose features are computed: uint8 S×S×3 under ``policy``, or H×W×3
    as it is (then it must be ``expect_hw``). Raises :class:`NotAnImage` or ``ValueError`` (sizes)."""
    img = to_uint8(first_element(item), value_range)
    if policy is not None:
        return policy.apply_array(img[None])[0]
    if expect_hw is not None and img.shape[:2] != tuple(expect_hw):
        raise ValueError(f"{img.shape[0]}×{img.shape[1]}")
    return img


def size_message(index: int, got: str, first: tuple[int, int], what: str = "item") -> str:
    return (
        f"{what} {index} is {got} but the first image is {first[0]}×{first[1]}: images of mixed sizes need "
        "size=S (centre crop and Lanczos resize to S×S, the policy of `subsample ingest --size S`)"
    )
