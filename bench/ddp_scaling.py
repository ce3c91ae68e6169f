"""Data-parallel scaling on this machine: images/s of the training stage on 1 and 2 ranks (gloo on
the CPU, NCCL on GPUs) at the same global batch B, and the share of a step spent communicating.

    PYTHONPATH=. python bench/ddp_scaling.py [--ranks 1 2] [--batch-size 128] [--width 32] [--device cpu]

1. ``run_train`` on the embedded demo data (2,000 CIFAR-10 images, 32×32; ingested, featurised and
   tabled under $SUBSAMPLE_HOME when missing), DCGAN with ngf = ndf = ``--width``, constructed
   batches of B, one epoch, for each rank count: the stage's own images/s (training steps only,
   not process start-up or per-epoch metrics).
2. Per step, inside one 2-rank launch: the time of a D step + G step with DistributedDataParallel
   and synchronised batch norm, and of the same step with every collective skipped (the same
   modules and arithmetic; batch-norm sums kept local, DDP's gradient all-reduce off with
   ``no_sync``; both ranks still running side by side, so the CPU is shared the same way), in
   alternating blocks; medians. ``1 - local / ddp`` is the share of the step
   spent in communication and in waiting for the other rank.

On a CPU the ranks share the cores (each rank gets cores / ranks threads), so 2 ranks cannot beat
1 by much; the figure that matters there is the communication share. On a GPU node, pass
``--device cuda --ranks 1 2 4 8``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def ensure_demo() -> None:
    from flows.config import DEMO_SOURCE
    from pipeline.config import FeaturesConfig, IngestConfig, TablesConfig
    from pipeline.stages.features import run_features
    from pipeline.stages.ingest import run_ingest
    from pipeline.stages.tables import run_tables

    run_ingest(IngestConfig(source=str(DEMO_SOURCE), name="demo", size=32))
    run_features("demo", FeaturesConfig(), progress=False)
    run_tables("demo", TablesConfig(), FeaturesConfig())


def train_rate(ranks: int, batch_size: int, width: int, device: str, threads: int | None = None) -> dict:
    """The stage's images/s on ``ranks`` ranks; one rank runs in this process on ``threads`` threads
    (k ranks on a CPU get cores / k threads each)."""
    import torch

    from pipeline.config import BatchesConfig, FeaturesConfig, TablesConfig
    from pipeline.presets import resolve_train_config
    from pipeline.stages.train import run_train

    cfg = resolve_train_config(
        "smoke",
        {
            "ngf": width,
            "ndf": width,
            "epochs": 1,
            "track": False,
            "device": device,
            "kl_samples": 64,
            "nproc_per_node": ranks,
        },
    )
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        s = run_train(
            "demo",
            cfg,
            BatchesConfig(batch_size=batch_size),
            TablesConfig(),
            FeaturesConfig(),
            progress=False,
            refresh=True,
        )
    finally:
        torch.set_num_threads(saved)
    threads_per_rank = threads or saved if ranks == 1 else max(1, (os.cpu_count() or 1) // ranks)
    return {
        "ranks": ranks,
        "threads_per_rank": threads_per_rank,
        "images_per_second": s["images_per_second"],
        "steps": s["steps"],
        "train_seconds": s["train_seconds"],
    }


def _step_times(payload: dict) -> dict:
    """One rank: seconds per (D step + G step) with DDP, and with no collective, on B/k images."""
    import torch

    from pipeline.gan import distributed
    from pipeline.gan.trainer import make_trainer, resolve_device
    from pipeline.presets import resolve_train_config

    steps, b, width = payload["steps"], payload["batch_size"], payload["width"]
    with distributed.session(payload["device"]) as w:
        device = distributed.local_device(resolve_device(payload["device"]))
        cfg = resolve_train_config("smoke", {"ngf": width, "ndf": width, "device": payload["device"]})
        real = torch.rand(b // w.size, 3, 32, 32, device=device) * 2 - 1

        def step_seconds(t) -> tuple[float, float]:
            """(wall, CPU) seconds of a D step + G step (CPU: all of this process's threads)."""
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            t.method.d_step(t, real, None)
            t.method.g_step(t, real, None)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0, time.process_time() - c0

        t = make_trainer(cfg, 32, device)
        distributed.wrap(t)
        sync_sum = distributed.sum_over_ranks
        t_ddp, t_local = [], []
        for block in range(2 * payload["blocks"]):  # alternating blocks of steps, the first two warm-up
            distributed.barrier()
            if block % 2 == 0:
                times = [step_seconds(t) for _ in range(steps)]
                t_ddp += times if block >= 2 else []
            else:  # the same modules and arithmetic with every collective skipped: batch-norm sums
                # stay local (sum_over_ranks as identity), DDP's gradient all-reduce off (no_sync)
                distributed.sum_over_ranks = lambda x: x
                try:
                    with t.G_train.no_sync(), t.D_train.no_sync():
                        times = [step_seconds(t) for _ in range(steps)]
                finally:
                    distributed.sum_over_ranks = sync_sum
                t_local += times if block >= 2 else []
        distributed.barrier()

        def median(xs: list[float]) -> float:  # robust to the spikes of a shared machine
            return sorted(xs)[len(xs) // 2]

        return {
            "rank": w.rank,
            "ddp_s": median([x[0] for x in t_ddp]),
            "local_s": median([x[0] for x in t_local]),
            "ddp_cpu_s": median([x[1] for x in t_ddp]),
            "local_cpu_s": median([x[1] for x in t_local]),
        }


def comm_share(ranks: int, batch_size: int, width: int, device: str, steps: int) -> dict:
    import uuid

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=ranks,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        start_method="spawn",
    )
    out = elastic_launch(config, _step_times)(
        {"steps": steps, "blocks": 4, "batch_size": batch_size, "width": width, "device": device}
    )
    ddp = max(v["ddp_s"] for v in out.values())
    local = max(v["local_s"] for v in out.values())
    cpu_ddp = sum(v["ddp_cpu_s"] for v in out.values()) / ranks
    cpu_local = sum(v["local_cpu_s"] for v in out.values()) / ranks
    return {
        "ranks": ranks,
        "step_ms_ddp": round(1e3 * ddp, 1),
        "step_ms_no_collectives": round(1e3 * local, 1),
        "communication_share": round(1 - local / ddp, 3),
        "step_cpu_ms_ddp": round(1e3 * cpu_ddp, 1),
        "step_cpu_ms_no_collectives": round(1e3 * cpu_local, 1),
        "communication_cpu_share": round(1 - cpu_local / cpu_ddp, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--width", type=int, default=32, help="ngf = ndf")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--steps", type=int, default=5, help="steps per block (4 timed blocks of each kind) for the communication share"
    )
    ap.add_argument("--skip-rates", action="store_true", help="only the communication share")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats of the images/s runs")
    a = ap.parse_args()
    os.environ.setdefault("SUBSAMPLE_HOME", str(Path("artifacts").resolve()))
    ensure_demo()
    print(
        f"host: {os.cpu_count()} CPUs, device {a.device}; global B = {a.batch_size}, DCGAN ngf = ndf = {a.width}, "
        "demo data (2,000 images, 32x32)",
        flush=True,
    )
    # interleaved repeats (the machine may be shared); on a CPU one rank also on the threads a rank of
    # the largest run gets, which separates the split over processes from the thread count
    cpu = a.device == "cpu"
    runs = [(k, None) for k in a.ranks] + (
        [(1, max(1, (os.cpu_count() or 1) // max(a.ranks)))] if cpu and max(a.ranks) > 1 else []
    )
    rates = (
        []
        if a.skip_rates
        else [train_rate(k, a.batch_size, a.width, a.device, th) for _ in range(a.repeats) for k, th in runs]
    )
    base = rates[0]["images_per_second"] if rates else None
    for r in rates:
        print(json.dumps({**r, "vs_first": round(r["images_per_second"] / base, 2)}), flush=True)
    for k in a.ranks:
        if k > 1:
            print(json.dumps(comm_share(k, a.batch_size, a.width, a.device, a.steps)), flush=True)
    load = os.getloadavg()[0]
    if cpu and load > (os.cpu_count() or 1):
        print(
            f"note: load average {load:.1f} on {os.cpu_count()} CPUs during the run: other processes share the cores, "
            "so wall-clock figures (images/s, step_ms, communication_share) measure contention as much as training; "
            "a negative communication_share means the wall-clock share cannot be measured here. The CPU-time share "
            "(communication_cpu_share: CPU the collectives cost, not time spent waiting) is less sensitive.",
            flush=True,
        )


if __name__ == "__main__":
    main()
