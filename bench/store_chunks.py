"""Chunk and shard sizes for the dataset store's ``images`` array (uint8 N×S×S×3, chunked along N).

For 32 px and 64 px images and several chunk sizes, with and without zarr sharding, measures:

* write:  appending the images in storage-aligned blocks (what ``StoreBuilder`` does), MB/s
* read:   a full sequential read block by block (what ``verify`` and the features stage do), MB/s
* gather: random mini-batches by index (``images.oindex[sorted idx]``, what a training loader
          does), images/s, for batch sizes 64 and 1024

Each figure is the best of ``--repeat`` runs (other jobs share the machine).

The images are the embedded demo CIFAR-10 images (``data/demo``), upsampled for 64 px and varied
per copy (flip, channel roll, a constant added mod 256) so zstd cannot match whole repeated images.

    .venv/bin/python bench/store_chunks.py [--n32 20000] [--n64 6000] [--batches 20]

Prints one line per configuration and a JSON line per measurement with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def demo_images() -> np.ndarray:
    rec = np.fromfile(ROOT / "data" / "demo" / "cifar10-demo.bin", dtype=np.uint8).reshape(-1, 3073)
    return np.ascontiguousarray(rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def make_images(n: int, size: int) -> np.ndarray:
    base = demo_images()
    if size != 32:
        base = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in base])
    out = np.empty((n, size, size, 3), np.uint8)
    for k, start in enumerate(range(0, n, len(base))):
        copy = base[:, :, ::-1] if k % 2 else base
        copy = np.roll(copy, k % 3, axis=3)
        copy = (copy.astype(np.uint16) + (k * 37) % 256).astype(np.uint8)
        take = min(len(base), n - start)
        out[start : start + take] = copy[:take]
    return out


def configs(size: int) -> list[dict]:
    per_image = size * size * 3
    out = []
    for mib in (0.25, 1, 2, 4, 16):
        out.append({"chunk_mib": mib, "chunk": max(1, int(mib * MiB) // per_image), "shard": None})
    # sharded: one file per ~16 MiB, inner chunks small enough that a random gather reads little
    shard = 16 * MiB // per_image
    for inner in (1, max(1, MiB // 4 // per_image)):
        out.append({"chunk_mib": round(inner * per_image / MiB, 3), "chunk": inner, "shard": shard // inner * inner})
    return out


def measure(images: np.ndarray, cfg: dict, tmp: Path, batches: int, rng: np.random.Generator) -> dict:
    n, size = len(images), images.shape[1]
    path = tmp / "store.zarr"
    shutil.rmtree(path, ignore_errors=True)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    kw = {"chunks": (cfg["chunk"], size, size, 3)}
    if cfg["shard"]:
        kw["shards"] = (cfg["shard"], size, size, 3)
    arr = group.create_array("images", shape=images.shape, dtype="uint8", **kw)
    block = cfg["shard"] or cfg["chunk"]
    block = block * max(1, (4 * MiB) // (block * size * size * 3))  # append ~4 MiB at a time, aligned
    mb = images.nbytes / 1e6

    t = time.perf_counter()
    for s in range(0, n, block):
        arr[s : s + block] = images[s : s + block]
    write_s = time.perf_counter() - t
    disk = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    files = sum(1 for p in path.rglob("*") if p.is_file())

    arr = zarr.open_group(str(path), mode="r")["images"]
    t = time.perf_counter()
    for s in range(0, n, block):
        arr[s : s + block]
    read_s = time.perf_counter() - t

    gather = {}
    for bs in (64, 1024):
        idx = [np.sort(rng.choice(n, bs, replace=False)) for _ in range(batches)]
        t = time.perf_counter()
        for i in idx:
            got = arr.oindex[i]
        gather[bs] = bs * batches / (time.perf_counter() - t)
        assert np.array_equal(got, images[i])
    return {
        **cfg,
        "size": size,
        "n": n,
        "write_MBps": mb / write_s,
        "read_MBps": mb / read_s,
        "gather64_ips": gather[64],
        "gather1024_ips": gather[1024],
        "disk_ratio": disk / images.nbytes,
        "files": files,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n32", type=int, default=20000, help="32 px images")
    ap.add_argument("--n64", type=int, default=6000, help="64 px images")
    ap.add_argument("--batches", type=int, default=20, help="random batches per gather measurement")
    ap.add_argument("--repeat", type=int, default=2, help="best of this many runs per figure (the machine is shared)")
    ap.add_argument("--json", action="store_true", help="also print one JSON line per measurement")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="store-chunks-"))
    try:
        print(
            f"{'S':>3} {'chunk':>12} {'shard':>6} {'write MB/s':>10} {'read MB/s':>9} "
            f"{'gather64 img/s':>14} {'gather1024 img/s':>16} {'disk':>5} {'files':>5}"
        )
        for size, n in ((32, args.n32), (64, args.n64)):
            images = make_images(n, size)
            for cfg in configs(size):
                runs = [measure(images, cfg, tmp, args.batches, rng) for _ in range(args.repeat)]
                r = {k: max(run[k] for run in runs) if k.endswith(("MBps", "ips")) else v for k, v in runs[0].items()}
                chunk = f"{r['chunk']} ({r['chunk_mib']:g} MiB)"
                print(
                    f"{size:>3} {chunk:>12} {r['shard'] or '-':>6} {r['write_MBps']:>10.0f} {r['read_MBps']:>9.0f} "
                    f"{r['gather64_ips']:>14.0f} {r['gather1024_ips']:>16.0f} {r['disk_ratio']:>5.2f} {r['files']:>5}",
                    flush=True,
                )
                if args.json:
                    print(json.dumps(r), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
