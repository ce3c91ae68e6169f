"""Which JPEG decoder and which resize for ingest: CPU time per image, thread scaling, quality.

    .venv/bin/python bench/jpeg_decode.py [--n 400] [--size 64] [--crop 178]

On CelebA-shaped JPEGs (``bench/celeba_like.py``: 178×218, real photographs upscaled plus 1/f
texture, quality 90) it times one decode + centre crop (``--crop``) + resize to ``--size`` per
candidate, in memory (no file reads, no store):

- CPU µs per image on one thread (``time.process_time``, so other jobs on a shared machine do
  not count), best of ``--repeat`` interleaved rounds;
- the 2-thread speed-up: the same work split over two threads; ~2× only when the decoder and the
  resize release the GIL (a process pool scales either way);
- quality: PSNR (dB, over all images) against a float64 reference: a full-resolution decode
  (libjpeg's accurate integer DCT) and the Lanczos-3 filter of ``kernels.resize.resize_float``
  on the crop box with no rounding. ``= pillow`` says whether the pixels equal today's path's.

Candidates that need a package that is not installed (OpenCV, PyTurboJPEG and its libturbojpeg)
are listed as skipped with the reason. Prints a table and one JSON line per candidate.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import threading
import time
from typing import Callable

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from celeba_like import jpeg_bytes  # noqa: E402

from kernels.resize import resize_float, resize_lanczos  # noqa: E402
from pipeline.data.images import CropPolicy, decode_image  # noqa: E402

Decoder = Callable[[bytes], np.ndarray]


def candidates(size: int, crop: int) -> dict[str, Decoder | str]:
    """name -> decode(bytes) -> (size, size, 3) uint8, or a string saying why it is skipped."""
    import simplejpeg

    from pipeline.data.decode import decode_jpeg_fast

    fast = CropPolicy(size, crop, "fast")
    old = CropPolicy(size, crop, "pillow")
    box = old.box(178, 218)
    out: dict[str, Decoder | str] = {
        "pillow draft + pillow lanczos (ingest/1)": lambda d: decode_image(io.BytesIO(d), old, 1 << 40),
        "pillow draft + lanczos kernel": lambda d: decode_image(io.BytesIO(d), fast, 1 << 40),
        "simplejpeg 1/2 + lanczos kernel (ingest/2)": lambda d: decode_jpeg_fast(d, fast, 1 << 40),
    }

    def sj(min_w: int, min_h: int, scale: float) -> Decoder:
        b = tuple(v / scale for v in box)
        return lambda d: resize_lanczos(simplejpeg.decode_jpeg(d, min_height=min_h, min_width=min_w), b, size)

    # the smallest libjpeg-turbo scale M/8 whose crop keeps >= S px (3/8 for 178 -> 64)
    m = next(m for m in range(1, 9) if math.ceil(crop * m / 8) >= size)
    out[f"simplejpeg {m}/8 + lanczos kernel"] = sj(math.ceil(178 * m / 8), math.ceil(218 * m / 8), 8 / m)
    out["simplejpeg full + lanczos kernel"] = sj(178, 218, 1)
    try:
        import torch
        from torchvision.io import decode_jpeg

        torch.set_num_threads(1)

        def tv(d: bytes) -> np.ndarray:
            t = decode_jpeg(torch.frombuffer(bytearray(d), dtype=torch.uint8))
            return resize_lanczos(t.permute(1, 2, 0).numpy(), box, size)

        out["torchvision decode_jpeg (cpu, full) + lanczos kernel"] = tv
    except ImportError as e:
        out["torchvision decode_jpeg (cpu, full) + lanczos kernel"] = f"skipped: {e}"
    try:
        import cv2

        cv2.setNumThreads(1)
        half = tuple(v / 2 for v in box)

        def cv_reduced(d: bytes) -> np.ndarray:
            return cv2.cvtColor(cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_REDUCED_COLOR_2), cv2.COLOR_BGR2RGB)

        def cv_area(d: bytes) -> np.ndarray:
            a = cv_reduced(d)
            c = a[int(half[1]) : int(half[3]), int(half[0]) : int(half[2])]
            return cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA)

        out["opencv reduced 1/2 + INTER_AREA"] = cv_area
        out["opencv reduced 1/2 + lanczos kernel"] = lambda d: resize_lanczos(cv_reduced(d), half, size)
    except ImportError:
        out["opencv reduced 1/2 + INTER_AREA"] = "skipped: opencv-python-headless not installed (150 MB wheel)"
    try:
        from turbojpeg import TurboJPEG

        tj = TurboJPEG()
        out["pyturbojpeg 1/2 + lanczos kernel"] = lambda d: resize_lanczos(
            tj.decode(d, pixel_format=0, scaling_factor=(1, 2)), tuple(v / 2 for v in box), size
        )
    except Exception as e:  # ImportError, or its RuntimeError when libturbojpeg.so is not on the system
        out["pyturbojpeg 1/2 + lanczos kernel"] = f"skipped: {type(e).__name__}: {str(e)[:80]}"
    return out


def cpu_us(fn: Decoder, data: list[bytes]) -> float:
    t0 = time.process_time()
    for d in data:
        fn(d)
    return (time.process_time() - t0) / len(data) * 1e6


def two_threads(fn: Decoder, data: list[bytes]) -> tuple[float, float]:
    """(speed-up of 2 threads over 1 on the same images, cores busy with 2 threads)."""

    def run(part: list[bytes]) -> None:
        for d in part:
            fn(d)

    t0 = time.perf_counter()
    run(data)
    one = time.perf_counter() - t0
    halves = [data[0::2], data[1::2]]
    threads = [threading.Thread(target=run, args=(h,)) for h in halves]
    t0, c0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    two = time.perf_counter() - t0
    return one / two, (time.process_time() - c0) / two


def psnr(got: np.ndarray, ref: np.ndarray) -> float:
    mse = float(np.mean((got.astype(np.float64) - ref) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255**2 / mse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--crop", type=int, default=178)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    data = jpeg_bytes(args.n, seed=1)
    policy = CropPolicy(args.size, args.crop)
    box = policy.box(178, 218)
    ref = np.stack([resize_float(np.asarray(Image.open(io.BytesIO(d)).convert("RGB")), box, args.size) for d in data])
    cands = candidates(args.size, args.crop)
    live = {k: v for k, v in cands.items() if callable(v)}
    outs = {k: np.stack([fn(d) for d in data]) for k, fn in live.items()}  # also warms numba and caches
    baseline = outs["pillow draft + pillow lanczos (ingest/1)"]
    times: dict[str, list[float]] = {k: [] for k in live}
    for _ in range(args.repeat):
        for k, fn in live.items():
            times[k].append(cpu_us(fn, data))
    print(
        f"{args.n} CelebA-like JPEGs ({np.mean([len(d) for d in data]) / 1e3:.1f} KB mean), "
        f"crop {args.crop} -> {args.size} px; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (the 2-thread figures need two idle cores)"
    )
    rows = []
    print(
        f"{'candidate':<52} {'CPU µs/img':>10} {'img/s/core':>10} {'2 threads':>9} "
        f"{'cores':>6} {'PSNR dB':>8} {'= pillow':>8}"
    )
    for k, v in cands.items():
        if not callable(v):
            print(f"{k:<52} {v}")
            continue
        us = min(times[k])
        speedup, cores = two_threads(v, data)
        p = psnr(outs[k], ref)
        same = bool(np.array_equal(outs[k], baseline))
        row = {
            "candidate": k,
            "cpu_us_per_image": round(us, 1),
            "images_per_second_per_core": round(1e6 / us),
            "two_thread_speedup": round(speedup, 2),
            "two_thread_cores_busy": round(cores, 2),
            "psnr_db": round(p, 2),
            "max_abs_diff_vs_pillow": int(np.abs(outs[k].astype(int) - baseline).max()),
            "equals_pillow_path": same,
        }
        print(f"{k:<52} {us:>10.1f} {1e6 / us:>10.0f} {speedup:>8.2f}x {cores:>6.2f} {p:>8.2f} {str(same):>8}")
        rows.append(row)
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
