"""Image grids a person can read at a glance: the stages' sample and never-drawn grids.

Every grid a stage writes (training's ``grids/epoch_XXXX.png``, evaluate's ``samples.png``,
batches' ``never_drawn.png``) goes through :func:`titled_grid`: the images in a grid with 2-pixel
gutters, scaled up by a whole factor (nearest neighbour, so pixels stay sharp) until the grid is at
least :data:`MIN_WIDTH` pixels wide, under a title band that says what the picture shows (data set,
preset, strategy, B, seed, epoch), also kept as the PNG's ``Title`` text. PIL only: no matplotlib or
torch import for a picture.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any, Iterable

import numpy as np

MIN_WIDTH = 512  # pixels: the narrowest grid a stage writes
TITLE_PX = 18  # title font size (pixels)
PAD = 2  # gutter between images


def font(size: int = TITLE_PX) -> Any:
    """Pillow's bundled scalable font at ``size`` pixels (its bitmap fallback without FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed 11-px bitmap font
        return ImageFont.load_default()


def grid_array(images: np.ndarray, columns: int | None = None, pad: int = PAD, background: int = 0) -> np.ndarray:
    """uint8 ``(k, S, S, 3)`` -> one uint8 grid image (``columns`` wide, default ⌈√k⌉), ``pad``-pixel gutters."""
    images = np.asarray(images)
    k, s = len(images), images.shape[1]
    cols = columns or max(int(math.ceil(math.sqrt(k))), 1)
    rows = max(int(math.ceil(k / cols)), 1)
    grid = np.full((rows * (s + pad) + pad, cols * (s + pad) + pad, 3), background, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[pad + r * (s + pad) : pad + r * (s + pad) + s, pad + c * (s + pad) : pad + c * (s + pad) + s] = img
    return grid


def upscale_factor(width: int, min_width: int = MIN_WIDTH) -> int:
    """The smallest whole factor that makes ``width`` at least ``min_width``."""
    return max(1, -(-min_width // max(width, 1)))


def titled(body: Any, title: str, *, min_width: int = MIN_WIDTH, lines: Iterable[str] = ()) -> Any:
    """``body`` (a PIL image) scaled up by a whole factor to at least ``min_width`` pixels wide,
    under a white band holding ``title`` (wrapped to the width) and any further ``lines``."""
    from PIL import Image, ImageDraw

    k = upscale_factor(body.width, min_width)
    if k > 1:
        body = body.resize((body.width * k, body.height * k), Image.NEAREST)
    f = font()
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    char_w = max(draw.textlength("abcdefghij", font=f) / 10, 1.0)
    width = max(body.width, min_width)
    wrapped = [
        w for line in [title, *lines] for w in (textwrap.wrap(line, max(int((width - 12) / char_w), 10)) or [""])
    ]
    line_h = TITLE_PX + 5
    band = 8 + line_h * len(wrapped)
    canvas = Image.new("RGB", (width, body.height + band), "white")
    d = ImageDraw.Draw(canvas)
    for i, line in enumerate(wrapped):
        d.text((6, 4 + i * line_h), line, fill="black", font=f)
    canvas.paste(body, ((width - body.width) // 2, band))
    canvas.info["Title"] = "\n".join([title, *lines])  # kept in the PNG by save()
    return canvas


def save(picture: Any, path: Any) -> None:
    """Write ``picture`` as PNG with its title in the file's metadata (``Title`` text chunk)."""
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    if picture.info.get("Title"):
        meta.add_text("Title", picture.info["Title"])
    from storage.safe_io import atomic_path

    with atomic_path(path, what="picture") as tmp:  # inside the home, never through a link
        picture.save(tmp, format="PNG", pnginfo=meta)


def titled_grid(
    images: np.ndarray,
    title: str,
    *,
    columns: int | None = None,
    min_width: int = MIN_WIDTH,
    lines: Iterable[str] = (),
    background: int = 0,
) -> Any:
    """uint8 ``(k, S, S, 3)`` images as a titled grid (a PIL image, at least ``min_width`` wide)."""
    from PIL import Image

    body = Image.fromarray(grid_array(images, columns, background=background))
    return titled(body, title, min_width=min_width, lines=lines)


def run_title(
    dataset: str | None = None,
    preset: str | None = None,
    strategy: str | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    epoch: int | None = None,
) -> str:
    """``demo · paper-128a · constructed B=512 · seed 0 · epoch 25``: the parts that are known."""
    parts = [
        dataset,
        preset or ("custom" if dataset else None),
        f"{strategy} B={batch_size}" if strategy and batch_size else strategy,
        None if seed is None else f"seed {seed}",
        None if epoch is None else f"epoch {epoch}",
    ]
    return " · ".join(str(p) for p in parts if p)
