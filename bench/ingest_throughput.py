"""Ingest throughput on CelebA-like JPEGs: images/s with 1 and 2 workers, threads and processes.

Writes N synthetic 178×218 JPEGs (smooth colour fields plus noise, quality 90, ~14 KB each like
CelebA's aligned faces) to a temporary folder, then ingests them with CelebA's convention
(``--crop 178 --size 64``) under each Dask scheduler with 1 and 2 workers, and prints images/s (best of
``--repeat``) and the 2-worker / 1-worker ratio. Every run rebuilds (``refresh=True``) into a temporary
``$SUBSAMPLE_HOME``; all runs must give the same content hash.

    .venv/bin/python bench/ingest_throughput.py [--n 3000] [--size 64] [--files-per-task 256]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def write_jpegs(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:218, 0:178].astype(np.float32)
    for i in range(n):
        a = rng.uniform(0.01, 0.08, 6)
        img = np.stack(
            [
                128 + 100 * np.sin(a[0] * xx + a[1] * yy + i),
                128 + 100 * np.cos(a[2] * xx - a[3] * yy),
                128 + 60 * np.sin(a[4] * xx + a[5] * yy * 0.5),
            ],
            -1,
        )
        img += rng.normal(0, 8, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.jpg", quality=90)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the processes scheduler's workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="synthetic JPEGs")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--crop", type=int, default=178)
    ap.add_argument("--files-per-task", type=int, default=256)
    ap.add_argument("--schedulers", nargs="+", default=["threads", "processes"])
    ap.add_argument("--repeat", type=int, default=2, help="best of this many runs (the machine is shared)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    os.environ["SUBSAMPLE_HOME"] = str(tmp / "home")
    from pipeline.config import IngestConfig
    from pipeline.ingest import run_ingest

    try:
        src = tmp / "jpegs"
        src.mkdir()
        write_jpegs(src, args.n)
        mb = sum(p.stat().st_size for p in src.iterdir()) / 1e6
        print(f"{args.n} JPEGs 178×218, {mb:.1f} MB; ingest --crop {args.crop} --size {args.size}, "
              f"files_per_task {args.files_per_task}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
              "(other jobs on the machine lower the 2-worker figures most)")
        hashes = set()
        for scheduler in args.schedulers:
            ips = {}
            for workers in (1, 2):
                cfg = IngestConfig(source=str(src), name="bench", size=args.size, crop=args.crop, workers=workers,
                                   scheduler=scheduler, files_per_task=args.files_per_task)
                runs = []
                for _ in range(args.repeat):
                    before = cpu_seconds()
                    r = run_ingest(cfg, refresh=True, progress=False)
                    runs.append((r, cpu_seconds() - before))
                s, cpu = min(runs, key=lambda rc: rc[0]["seconds"])
                assert s["n_images"] == args.n and not s["quarantine"]
                hashes.update(r["content_hash"] for r, _ in runs)
                ips[workers] = s["n_images"] / s["seconds"]
                print(f"{scheduler:>9}  workers={workers}  {ips[workers]:7.0f} images/s  ({s['seconds']:.2f} s wall, "
                      f"{cpu:.2f} s CPU: {cpu / s['seconds']:.2f} cores busy)", flush=True)
            print(f"{scheduler:>9}  2 workers / 1 worker = {ips[2] / ips[1]:.2f}×  (load average now {os.getloadavg()[0]:.1f})", flush=True)
        assert len(hashes) == 1, "the store depends on the scheduler or worker count"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
