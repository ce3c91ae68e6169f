"""Data-parallel scaling on this machine: images/s of the training stage on 1 and 2 ranks (gloo on
the CPU, NCCL on GPUs) at the same global batch B, and the share of a step spent communicating.

    PYTHONPATH=. python bench/ddp_scaling.py [--ranks 1 2] [--batch-size 128] [--width 32] [--device cpu]

1. ``run_train`` on the embedded demo data (2,000 CIFAR-10 images, 32×32; ingested, featurised and
   tabled under $SUBSAMPLE_HOME when missing), DCGAN with ngf = ndf = ``--width``, constructed
   batches of B, one epoch, for each rank count: the stage's own images/s (training steps only,
   not process start-up or per-epoch metrics).
2. Per step, inside one 2-rank launch: the time of a D step + G step with DistributedDataParallel
   and synchronised batch norm, and of the same step on the same rank's B/2 images with no
   collective at all (plain modules, both ranks still running side by side, so the CPU is shared
   the same way). ``1 - local / ddp`` is the share of the step spent in communication and in
   waiting for the other rank.

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
    from pipeline.features import run_features
    from pipeline.ingest import run_ingest
    from pipeline.tables import run_tables

    run_ingest(IngestConfig(source=str(DEMO_SOURCE), name="demo", size=32))
    run_features("demo", FeaturesConfig(), progress=False)
    run_tables("demo", TablesConfig(), FeaturesConfig())


def train_rate(ranks: int, batch_size: int, width: int, device: str) -> dict:
    from pipeline.config import BatchesConfig, FeaturesConfig, TablesConfig
    from pipeline.presets import resolve_train_config
    from pipeline.train import run_train

    cfg = resolve_train_config("smoke", {"ngf": width, "ndf": width, "epochs": 1, "track": False, "device": device,
                                         "kl_samples": 64, "nproc_per_node": ranks})
    s = run_train("demo", cfg, BatchesConfig(batch_size=batch_size), TablesConfig(), FeaturesConfig(), progress=False, refresh=True)
    return {"ranks": ranks, "images_per_second": s["images_per_second"], "steps": s["steps"], "train_seconds": s["train_seconds"]}


def _step_times(payload: dict) -> dict:
    """One rank: seconds per (D step + G step) with DDP, and with no collective, on B/k images."""
    import torch

    from pipeline import distributed
    from pipeline.presets import resolve_train_config
    from pipeline.train import make_trainer, resolve_device

    steps, b, width = payload["steps"], payload["batch_size"], payload["width"]
    with distributed.session(payload["device"]) as w:
        device = distributed.local_device(resolve_device(payload["device"]))
        cfg = resolve_train_config("smoke", {"ngf": width, "ndf": width, "device": payload["device"]})
        real = torch.rand(b // w.size, 3, 32, 32, device=device) * 2 - 1

        def timed(t) -> float:
            for i in range(steps + 2):  # two warm-up steps
                if i == 2:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                t.method.d_step(t, real, None)
                t.method.g_step(t, real, None)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return (time.perf_counter() - t0) / steps

        ddp = make_trainer(cfg, 32, device)
        distributed.wrap(ddp)
        distributed.barrier()
        t_ddp = timed(ddp)
        distributed.barrier()
        local = make_trainer(cfg, 32, device)
        saved, distributed._WORLD = distributed._WORLD, None  # no collective: z, batch norm and gradients stay local
        try:
            t_local = timed(local)
        finally:
            distributed._WORLD = saved
        distributed.barrier()
        return {"rank": w.rank, "ddp_s": t_ddp, "local_s": t_local}


def comm_share(ranks: int, batch_size: int, width: int, device: str, steps: int) -> dict:
    import uuid

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=ranks, run_id=str(uuid.uuid4()), rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0, start_method="spawn")
    out = elastic_launch(config, _step_times)({"steps": steps, "batch_size": batch_size, "width": width, "device": device})
    ddp = max(v["ddp_s"] for v in out.values())
    local = max(v["local_s"] for v in out.values())
    return {"ranks": ranks, "step_ms_ddp": round(1e3 * ddp, 1), "step_ms_no_collectives": round(1e3 * local, 1),
            "communication_share": round(1 - local / ddp, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--width", type=int, default=32, help="ngf = ndf")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=10, help="timed steps for the communication share")
    a = ap.parse_args()
    os.environ.setdefault("SUBSAMPLE_HOME", str(Path("artifacts").resolve()))
    ensure_demo()
    print(f"host: {os.cpu_count()} CPUs, device {a.device}; global B = {a.batch_size}, DCGAN ngf = ndf = {a.width}, "
          "demo data (2,000 images, 32x32)", flush=True)
    rates = [train_rate(k, a.batch_size, a.width, a.device) for k in a.ranks]
    base = rates[0]["images_per_second"]
    for r in rates:
        print(json.dumps({**r, "speed-up": round(r["images_per_second"] / base, 2)}), flush=True)
    for k in a.ranks:
        if k > 1:
            print(json.dumps(comm_share(k, a.batch_size, a.width, a.device, a.steps)), flush=True)


if __name__ == "__main__":
    main()
