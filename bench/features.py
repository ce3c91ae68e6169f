"""How fast is the features pass, compared with only reading the same bytes?

    .venv/bin/python bench/features.py [--quick]

For 50,000 random 32×32 images and 10,000 random 64×64 images it prints

1. in memory: the fused numba kernel, the single-feature kernels, a prange variant, and a numpy
   pass that only reads the bytes (``images.sum(dtype=np.uint64)``), each as a time and a ratio;
2. through the zarr store: the features stage's Dask pass (threaded scheduler, the default)
   against a Dask pass over the same store that only reads the chunks, and the distributed
   LocalCluster (processes and threads) with their start-up time;
3. the peak RSS of a fresh process running the whole features stage, next to the data set size and
   the RSS of a process that only imported the same modules.

Target: the feature pass within 2× of the read-only pass. Timings are the best of a few repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kernels.features import RGB_WEIGHTS, colour_moment_sharpness_kernel, compute_features  # noqa: E402


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def prange_variant():
    from numba import njit, prange

    @njit(parallel=True, cache=True)
    def fused_prange(images, weights, out):
        for i in prange(images.shape[0]):
            colour_moment_sharpness_kernel(images[i : i + 1], weights, out[i : i + 1])

    return fused_prange


def in_memory(n: int, size: int, rng) -> None:
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    compute_features(images[:2])
    compute_features(images[:2], fused=False)
    par = prange_variant()
    out = np.empty((n, 2))
    par(images[:2], RGB_WEIGHTS, out[:2])
    t_read = best_of(lambda: images.sum(dtype=np.uint64))
    t_fused = best_of(lambda: compute_features(images))
    t_single = best_of(lambda: compute_features(images, fused=False))
    t_par = best_of(lambda: par(images, RGB_WEIGHTS, out))
    mb = images.nbytes / 1e6
    print(f"in memory, {n} images {size}x{size} ({mb:.0f} MB):")
    print(f"  numpy read-only pass (sum)     {t_read * 1e3:8.1f} ms  {mb / t_read:7.0f} MB/s")
    print(f"  fused kernel (default)         {t_fused * 1e3:8.1f} ms  ratio {t_fused / t_read:5.2f}")
    print(f"  single-feature kernels         {t_single * 1e3:8.1f} ms  ratio {t_single / t_read:5.2f}")
    print(f"  fused kernel, prange ({os.cpu_count()} cores) {t_par * 1e3:8.1f} ms  ratio {t_par / t_read:5.2f}")


def through_store(n: int, size: int, rng, home: Path) -> None:
    import dask
    import dask.array as da
    from distributed import Client, LocalCluster

    from pipeline.config import FeaturesConfig
    from pipeline.stages.features import compute_store_features
    from storage.store import write_store

    name = f"bench-{n}-{size}"
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    store = write_store(name, images)
    del images
    path = str(store.path)
    names = ("colour_moment", "sharpness")
    nbytes = n * size * size * 3
    print(
        f"through the zarr store, {n} images {size}x{size} ({nbytes / 1e6:.0f} MB, chunks of {store.images.chunks[0]}):"
    )

    def read_only(scheduler=None):
        arr = da.from_zarr(path, component="images")
        touched = arr.map_blocks(
            lambda b: np.full((1,), b.shape[0]), drop_axis=[1, 2, 3], chunks=((1,) * arr.numblocks[0],), dtype=np.int64
        )
        return dask.compute(touched.sum(), scheduler=scheduler)[0]

    cfg = FeaturesConfig()
    compute_store_features(path, names, cfg)  # warm the page cache and the kernels
    t_read = best_of(lambda: read_only("threads"))
    t_feat = best_of(lambda: compute_store_features(path, names, cfg))
    print(f"  dask read-only pass (threads)   {t_read * 1e3:8.1f} ms  {nbytes / 1e6 / t_read:7.0f} MB/s")
    print(f"  features stage pass (threads)   {t_feat * 1e3:8.1f} ms  ratio {t_feat / t_read:5.2f}")
    t_sync = best_of(lambda: compute_store_features(path, names, FeaturesConfig(workers=1)))
    print(f"  features stage pass (1 thread)  {t_sync * 1e3:8.1f} ms")

    for processes in (True, False):
        t = time.perf_counter()
        with (
            LocalCluster(
                n_workers=os.cpu_count(), threads_per_worker=1, processes=processes, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            t_start = time.perf_counter() - t
            from pipeline.stages.features import _compute_distributed, features_graph

            class _Bar:
                def update(self, k):
                    pass

            blocks = list(features_graph(path, names).to_delayed().ravel())
            _compute_distributed(blocks, client, _Bar())  # warm the workers (numba cache load)
            t_cl = best_of(
                lambda: _compute_distributed(list(features_graph(path, names).to_delayed().ravel()), client, _Bar())
            )
            t_clr = best_of(
                lambda: client.compute(
                    da.from_zarr(path, component="images")
                    .map_blocks(
                        lambda b: np.full((1,), b.shape[0]),
                        drop_axis=[1, 2, 3],
                        chunks=((1,) * store.images.nchunks,),
                        dtype=np.int64,
                    )
                    .sum()
                ).result()
            )
        kind = "processes" if processes else "threads  "
        print(
            f"  LocalCluster {kind}: start {t_start:5.2f} s, features {t_cl * 1e3:8.1f} ms, "
            f"read-only {t_clr * 1e3:8.1f} ms"
        )

    # Peak memory of the whole stage in a fresh process: VmHWM (the peak RSS of this process image;
    # ru_maxrss would include the parent's RSS at fork time) against a process that only imported
    # the same modules, and tracemalloc's peak of the allocations made during the stage.
    probe = (
        "import json, sys, tracemalloc\n"
        "from pipeline.stages.features import run_features\n"
        "from pipeline.config import FeaturesConfig\n"
        "import kernels.features, dask.array, distributed, zarr, numpy\n"
        "hwm = lambda: int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n"
        "base = hwm()\n"
        "tracemalloc.start()\n"
        "run_features(sys.argv[1], FeaturesConfig(), refresh=True, progress=False)\n"
        "print(json.dumps([base, hwm(), tracemalloc.get_traced_memory()[1]]))\n"
    )
    env = {**os.environ, "SUBSAMPLE_HOME": str(home)}
    small = write_store(name + "-tenth", store.images[: max(1, n // 10)])
    for label, probe_store in (("all", store), ("a tenth", small)):
        out = subprocess.run(
            [sys.executable, "-c", probe, probe_store.name],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            check=True,
        )
        base, peak, traced = json.loads(out.stdout.strip().splitlines()[-1])
        size_mib = probe_store.n * size * size * 3 / 2**20
        print(
            f"  features stage on {label:7s} ({size_mib:4.0f} MiB, {probe_store.images.nchunks:2d} chunks): peak RSS "
            f"{peak / 1024:4.0f} MiB = {base / 1024:.0f} after imports + {(peak - base) / 1024:.0f}; "
            f"tracemalloc peak {traced / 2**20:.1f} MiB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of the images")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SUBSAMPLE_HOME"] = tmp
        for n, size in ((50_000, 32), (10_000, 64)):
            in_memory(n // scale, size, rng)
            through_store(n // scale, size, rng, Path(tmp))


if __name__ == "__main__":
    main()
