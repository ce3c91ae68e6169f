"""CelebA-shaped test JPEGs for the ingest benchmarks (no CelebA here).

Each image is 178×218 (CelebA's aligned crops), built from a real photograph, a CIFAR-10 image of
the embedded demo set (``data/demo``), upscaled bicubically, plus a texture with a natural image's
1/f amplitude spectrum (so the JPEG has the high-frequency content a 32 px upscale lacks) and mild
grain, saved at quality 90 with 4:2:0 chroma subsampling (Pillow's default, as CelebA's files).
Mean size ~11 KB against CelebA's ~7 KB (1.44 GB / 202,599): if anything harder to decode.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo" / "cifar10-demo.bin"
W, H = 178, 218


def cifar_photos() -> np.ndarray:
    """The demo set's 2,000 CIFAR-10 images, uint8 (N, 32, 32, 3)."""
    rec = np.fromfile(DEMO, np.uint8).reshape(-1, 3073)
    return rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def pink_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Unit-variance noise with amplitude ∝ 1/f (power ∝ 1/f², natural images' spectrum)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    spec = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f
    spec[0, 0] = 0
    x = np.fft.irfft2(spec, s=(h, w))
    return x / x.std()


def photo(i: int, rng: np.random.Generator, photos: np.ndarray) -> np.ndarray:
    """Image ``i``: uint8 (218, 178, 3)."""
    up = np.asarray(Image.fromarray(photos[i % len(photos)]).resize((W, H), Image.Resampling.BICUBIC), np.float32)
    tex = pink_noise(rng, H, W)[..., None] * rng.uniform(0.6, 1.0, 3)
    return np.clip(up + 10 * tex + rng.normal(0, 1.5, up.shape), 0, 255).astype(np.uint8)


def jpeg_bytes(n: int, seed: int = 0, quality: int = 90) -> list[bytes]:
    rng = np.random.default_rng(seed)
    photos = cifar_photos()
    out = []
    for i in range(n):
        b = io.BytesIO()
        Image.fromarray(photo(i, rng, photos)).save(b, "JPEG", quality=quality)
        out.append(b.getvalue())
    return out


def write_jpegs(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` files ``000000.jpg``... A few hundred distinct images are enough for throughput:
    beyond 512 the files repeat (with fresh names), which keeps generating 20,000 of them fast."""
    distinct = jpeg_bytes(min(n, 512), seed)
    for i in range(n):
        (folder / f"{i:06d}.jpg").write_bytes(distinct[i % len(distinct)])
