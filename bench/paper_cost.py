"""What the paper-scale comparison costs: FLOPs per image, images seen, hours at a given throughput.

    .venv/bin/python bench/paper_cost.py                       # FLOPs and the design's totals, all data sets
    .venv/bin/python bench/paper_cost.py --measure-cpu         # + measured images/s of each cell on this CPU
    .venv/bin/python bench/paper_cost.py --tflops 20 50 100    # GPU hours at these sustained TFLOP/s

For every cell of ``subsample compare --design paper`` on the paper's data sets (CIFAR-10 50,000
at 32 px, the cartoon faces 51,223 at 48 px, CelebA 202,599 at 64 px):

1. the FLOPs one training image costs (``torch.utils.flop_counter`` over one D step and one G step
   of the cell's preset, at the data set's resolution, divided by B; a G step every ``d_steps`` D
   steps; penalties' double backward included);
2. the images D sees over the run (``design.json``'s ``images_seen``: epochs × floor(n/B) × B);
3. their product, and the hours at each ``--tflops`` (sustained FLOP/s: an assumption, not a
   measurement; DCGAN's small convolutions use a GPU far below its peak) and, with
   ``--measure-cpu``, at the images/s measured here on this CPU.

Evaluation (10,000 samples through Inception-v3, its FLOPs counted the same way) is added per run.
Prints a table per data set and one JSON line per cell.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry


class Flops(TorchDispatchMode):
    """FLOPs of the aten ops run inside (FlopCounterMode's formulas, without its module hooks, which
    refuse the double backward of a gradient penalty)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in flop_registry:
            self.total += flop_registry[packet](*args, **kwargs, out_val=out)
        return out


DATASETS = {"cifar10": (50_000, 32), "anime-faces": (51_223, 48), "celeba": (202_599, 64)}
EVAL_SAMPLES = 10_000


def inception_flops() -> float:
    """FLOPs of one 299×299 Inception-v3 forward pass (torchvision's architecture, no weights needed)."""
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=False, init_weights=False).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(torch.zeros(1, 3, 299, 299))
    return float(fc.get_total_flops())


def step_flops(preset: str, size: int, b: int = 8) -> tuple[float, float, object]:
    """(D-step FLOPs per image, G-step FLOPs per image, cfg) of ``preset`` at ``size`` px."""
    from pipeline.gan.trainer import make_trainer
    from pipeline.presets import resolve_train_config

    cfg = resolve_train_config(
        preset,
        {"device": "cpu", "track": False, "amp": "off", "kl_samples": 4, "sample_grid": 4, "channels_last": False},
    )
    t = make_trainer(cfg, size, torch.device("cpu"))
    real = torch.rand(b, 3, size, size) * 2 - 1
    with Flops() as fd:
        t.method.d_step(t, real.clone(), None)
    with Flops() as fg:
        t.method.g_step(t, real.clone(), None)
    return fd.total / b, fg.total / b, cfg


def cpu_images_per_second(preset: str, size: int, b: int, steps: int) -> tuple[float, float]:
    """(images per wall second, images per CPU second of this process) of the preset's training
    loop on this CPU. The second is what a shared, loaded machine still measures fairly; an idle
    machine with T threads runs at most T times it."""
    from pipeline.gan.trainer import make_trainer, train_epoch
    from pipeline.presets import resolve_train_config

    cfg = resolve_train_config(preset, {"device": "cpu", "track": False, "kl_samples": 4, "sample_grid": 4})
    t = make_trainer(cfg, size, torch.device("cpu"))
    images = torch.randint(0, 256, (b * 2, size, size, 3), dtype=torch.uint8)
    idx = [torch.randint(0, len(images), (b,)) for _ in range(steps + 1)]
    train_epoch(t, images, idx[:1])  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    train_epoch(t, images, idx[1:])
    return steps * b / (time.perf_counter() - t0), steps * b / (time.process_time() - c0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--tflops",
        type=float,
        nargs="+",
        default=[10.0, 30.0, 100.0],
        help="assumed sustained TFLOP/s of the GPU for the hours columns",
    )
    ap.add_argument("--measure-cpu", action="store_true", help="measure images/s of each cell here (slow at B = 2048)")
    ap.add_argument("--cpu-steps", type=int, default=2)
    ap.add_argument(
        "--cpu-batch", type=int, default=128, help="batch size of the CPU measurement (capped at the cell's)"
    )
    args = ap.parse_args()
    from flows.compare import build_compare_config

    inception = inception_flops()
    print(f"Inception-v3 forward: {inception / 1e9:.1f} GFLOP per image")
    for name in args.datasets:
        n, size = DATASETS[name]
        cfg = build_compare_config({"dataset": name, "scale": "paper", "design": "paper", "seeds": args.seeds})
        rows, flops_cache = [], {}
        for rec in cfg.design_records(n):
            if rec["preset"] not in flops_cache:
                flops_cache[rec["preset"]] = step_flops(rec["preset"], size)
            d, g, tc = flops_cache[rec["preset"]]
            per_image = d + g / rec["d_steps"]
            train = per_image * rec["images_seen"]
            evaluate = inception * EVAL_SAMPLES
            row = {
                "dataset": name,
                "configuration": rec["configuration"],
                "B": rec["batch_size"],
                "epochs": rec["epochs"],
                "g_updates": rec["g_updates"],
                "images_seen": rec["images_seen"],
                "gflop_per_image": per_image / 1e9,
                "train_pflop": train / 1e15,
                "eval_pflop": evaluate / 1e15,
            }
            if args.measure_cpu:
                b = min(
                    rec["batch_size"], args.cpu_batch
                )  # images/s barely depends on B on a CPU (bench/train_throughput.py)
                ips, per_cpu_s = cpu_images_per_second(rec["preset"], size, b, args.cpu_steps)
                row.update(
                    cpu_images_per_second=round(ips, 1),
                    cpu_images_per_cpu_second=round(per_cpu_s, 1),
                    cpu_hours=rec["images_seen"] / ips / 3600,
                    cpu_core_hours=rec["images_seen"] / per_cpu_s / 3600,
                )
            rows.append(row)
            print(json.dumps(row), flush=True)
        seeds = args.seeds
        total = sum(r["train_pflop"] + r["eval_pflop"] for r in rows) * seeds
        print(f"\n{name}: n = {n:,} at {size} px, paper design × {seeds} seeds ({len(rows) * seeds} runs)")
        head = (
            f"{'configuration':<42} {'B':>5} {'epochs':>6} {'G upd.':>7} {'images':>12} {'GFLOP/img':>9} {'PFLOP':>7}"
        )
        if args.measure_cpu:
            head += f" {'img/s':>7} {'img/CPU-s':>9} {'CPU-core h':>10}"
        print(head)
        for r in rows:
            line = (
                f"{r['configuration']:<42} {r['B']:>5} {r['epochs']:>6} {r['g_updates']:>7} {r['images_seen']:>12,} "
                f"{r['gflop_per_image']:>9.3f} {r['train_pflop']:>7.2f}"
            )
            if args.measure_cpu:
                line += (
                    f" {r['cpu_images_per_second']:>7} {r['cpu_images_per_cpu_second']:>9} {r['cpu_core_hours']:>10.0f}"
                )
            print(line)
        print(
            f"all runs (training + 10k-sample evaluations): {total:.1f} PFLOP; GPU hours at "
            + ", ".join(f"{tf:g} TFLOP/s sustained: {total * 1e15 / (tf * 1e12) / 3600:.1f} h" for tf in args.tflops)
        )
        if args.measure_cpu:
            print(
                f"on this CPU: {sum(r['cpu_core_hours'] for r in rows) * seeds:,.0f} CPU-core hours of training "
                f"({sum(r['cpu_hours'] for r in rows) * seeds:,.0f} h at the wall-clock rates measured now)"
            )


if __name__ == "__main__":
    main()
