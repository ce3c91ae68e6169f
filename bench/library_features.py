"""What does ``subsample.batch_sampler`` cost on a Dataset, next to one plain DataLoader pass over it?

    nice -n 10 .venv/bin/python bench/library_features.py [--n 200000] [--workers 2] [--size 32]

The Dataset (:class:`SeededImages`) makes item i from ``np.random.default_rng(i)``: a size×size RGB
image (a random base colour plus noise of a random strength, so the table has many occupied cells)
returned as ``ToTensor`` returns it, a 3×S×S float32 tensor in [0, 1], with an int label: what a
torchvision Dataset hands a training loop, at a cost per item (~tens of µs) that is the Dataset's own.

Timed in one run, alternately (plain, ours, plain, ours, ``--repeats`` times; the best of each is reported):

* **plain**: ``for x, y in DataLoader(ds, batch_size=256, num_workers=W): pass`` — the pass any
  training epoch makes;
* **ours**: ``subsample.batch_sampler(ds, batch_size=256, strategy="constructed", num_workers=W)``
  — reading every item through a DataLoader with W workers, turning it back into uint8, the
  feature kernels (in the workers), the table and the sampler; i.e. everything a user waits for.

Memory: the peak of Python and numpy allocations in this process while ``batch_sampler`` runs
(tracemalloc; numpy reports its buffers to it), next to what the images themselves would take
(N × 3 × S × S as uint8 and as float32), and the peak RSS of this process and of the largest worker.
Target: ours ≤ 1.5 × plain, memory O(N) numbers (the features and the table's cells), never the images.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import subsample  # noqa: E402


class SeededImages(Dataset):
    """Item i: a ``size``×``size`` image made from seed i, as a 3×S×S float tensor in [0, 1], and a label."""

    def __init__(self, n: int, size: int = 32):
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        rng = np.random.default_rng(i)
        s = self.size
        base = rng.integers(0, 256, 3) * rng.uniform(0.2, 1.0) ** 2
        noise = rng.standard_normal((3, s, s), dtype=np.float32) * np.float32(rng.uniform(0.0, 60.0))
        img = np.clip(base[:, None, None] + noise, 0, 255).astype(np.uint8)
        return torch.from_numpy(img).float().div_(255.0), i % 10


def plain_pass(ds: Dataset, workers: int) -> float:
    t = time.perf_counter()
    for _x, _y in DataLoader(ds, batch_size=256, num_workers=workers):
        pass
    return time.perf_counter() - t


def ours(ds: Dataset, workers: int) -> tuple[float, object]:
    t = time.perf_counter()
    s = subsample.batch_sampler(ds, batch_size=256, strategy="constructed", num_workers=workers, progress=False)
    return time.perf_counter() - t, s


def traced_peak(ds: Dataset, workers: int) -> int:
    """Bytes: the peak of this process's allocations during one more, untimed, ``batch_sampler``
    (tracing slows the forked workers, which inherit it, so it is never part of a timed run)."""
    tracemalloc.start()
    subsample.batch_sampler(ds, batch_size=256, strategy="constructed", num_workers=workers, progress=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    ds = SeededImages(args.n, args.size)
    ours(SeededImages(1024, args.size), args.workers)  # lazy imports and the kernels' load, outside the timings
    plain_t, ours_t = [], []
    sampler = None
    for r in range(args.repeats):
        plain_t.append(plain_pass(ds, args.workers))
        print(f"plain pass {r}: {plain_t[-1]:.1f} s", file=sys.stderr)
        t, sampler = ours(ds, args.workers)
        ours_t.append(t)
        print(f"batch_sampler {r}: {t:.1f} s", file=sys.stderr)
    peak = traced_peak(ds, args.workers)
    print(f"traced peak {peak / 2**20:.1f} MiB", file=sys.stderr)
    n, s = args.n, args.size
    out = {
        "n": n,
        "size": s,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 1),
        "plain_seconds": [round(x, 2) for x in plain_t],
        "ours_seconds": [round(x, 2) for x in ours_t],
        "ours_over_plain": round(min(ours_t) / min(plain_t), 3),
        "plain_images_per_second": round(n / min(plain_t)),
        "ours_images_per_second": round(n / min(ours_t)),
        "traced_peak_mib": round(peak / 2**20, 1),
        "traced_peak_bytes_per_image": round(peak / n, 1),
        "images_uint8_mib": round(n * 3 * s * s / 2**20, 1),
        "images_float32_mib": round(n * 3 * s * s * 4 / 2**20, 1),
        "rss_peak_main_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_peak_largest_worker_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "batches_per_epoch": len(sampler),
        "occupied_cells": int((sampler.table.counts > 0).sum()),
        "epoch0": {k: round(v, 4) if isinstance(v, float) else v for k, v in sampler.diagnostics(0).items()},
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
