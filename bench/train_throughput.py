"""Training throughput of DCGAN-32 (images/s), where a step's time goes, and a plain-loop baseline.

    .venv/bin/python bench/train_throughput.py                      # B = 128 and 2048, device auto
    .venv/bin/python bench/train_throughput.py --sizes 128 --steps 20 --device cuda

For each batch size B it measures, on synthetic uint8 32×32 images (the data path does not care
what the pixels are):

1. ``ours``: ``pipeline.gan.trainer.train_epoch`` as the training stage runs it (uint8 data set resident
   on the device, batches gathered by index and converted on the fly, losses read back every
   ``SYNC_EVERY`` steps, bf16 autocast and channels-last as configured);
2. ``gather+convert``: the data part alone (index the uint8 tensor, permute, to float [-1, 1]);
3. ``model``: one D step and one G step on an already-converted batch (forward, backward, step);
4. ``baseline``: the pytorch/examples dcgan loop fed by a ``DataLoader`` over a ``TensorDataset``
   of float images in host memory (shuffle, default collate, ``.item()`` per step as the example
   does), with the *same* models, precision and memory format, so the ratio isolates the data
   path and the loop's synchronisation.

The four are timed in interleaved rounds after a warm-up (oneDNN and the allocator settle over
the first steps; on a shared machine the load changes under a long run), and each figure is the
median over rounds. "outside" is gather+convert divided by ours' time per step. CUDA is
synchronised before reading the clock. Figures are printed as a table and one JSON line per B.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from pipeline.gan.losses import LOSSES
from pipeline.gan.trainer import make_trainer, resolve_device, to_float, train_epoch
from pipeline.presets import resolve_train_config


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, steps: int) -> float:
    """Seconds per step of ``fn(steps)`` (which runs ``steps`` steps)."""
    sync(device)
    t0 = time.perf_counter()
    fn(steps)
    sync(device)
    return (time.perf_counter() - t0) / steps


def bench_size(args, b: int, device: torch.device) -> dict:
    """The figures for batch size ``b``. ``args`` also carries ``size`` (image side, default 32),
    ``compile`` (torch.compile G and D, default off) and ``parts`` (which of ours, gather,
    model, baseline to time; default all): bench/gpu_check.py times DCGAN-64 through here."""
    size, compile_, parts_wanted = (
        getattr(args, "size", 32),
        getattr(args, "compile", False),
        getattr(args, "parts", None),
    )
    cfg = resolve_train_config(
        "paper-128a",
        {
            "ngf": args.ngf,
            "ndf": args.ndf,
            "device": device.type,
            "track": False,
            "amp": args.amp,
            "channels_last": args.channels_last == "on",
            "compile": compile_,
        },
    )
    n = max(args.n, 2 * b)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=gen).to(device)

    def index_batches(k: int) -> list[torch.Tensor]:
        return list(torch.randint(0, n, (k, b), generator=gen).to(device))

    # 1. ours: the training stage's epoch loop
    t = make_trainer(cfg, size, device)

    def ours(k: int) -> None:
        train_epoch(t, images, index_batches(k))

    # 2. the data part alone
    def gather(k: int) -> None:
        for idx in index_batches(k):
            to_float(images[idx], cfg.channels_last)

    # 3. the model part alone, on one converted batch
    real = to_float(images[index_batches(1)[0]], cfg.channels_last)
    tm = make_trainer(cfg, size, device)
    loss = LOSSES[cfg.loss]

    def model(k: int) -> None:
        for _ in range(k):
            z = torch.randn(b, cfg.z_dim, device=device)
            with tm.autocast():
                fake = tm.G_train(z)
                loss_d = loss.d(tm.D_train(real).float(), tm.D_train(fake.detach()).float())
            tm.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            tm.opt_d.step()
            with tm.autocast():
                loss_g = loss.g(tm.D_train(fake).float())
            tm.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            tm.opt_g.step()

    # 4. baseline: pytorch/examples dcgan loop over a DataLoader(TensorDataset) of float images
    tb = make_trainer(cfg, size, device)
    host = images[: max(4 * b, min(n, 16 * b))].cpu().permute(0, 3, 1, 2).float().div(127.5).sub(1).contiguous()
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)
    loader = DataLoader(
        TensorDataset(host),
        batch_size=b,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    memfmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    netG, netD, optG, optD = tb.G_train, tb.D_train, tb.opt_g, tb.opt_d  # compiled when cfg.compile

    def baseline(k: int) -> None:
        done = 0
        while done < k:
            for (x,) in loader:
                x = x.to(device, non_blocking=True).to(memory_format=memfmt)
                ones, zeros = torch.ones(b, device=device), torch.zeros(b, device=device)
                netD.zero_grad()
                with tb.autocast():
                    out = netD(x).float()
                err_real = F.binary_cross_entropy_with_logits(out, ones)
                err_real.backward()
                _ = torch.sigmoid(out).mean().item()
                z = torch.randn(b, cfg.z_dim, device=device)
                with tb.autocast():
                    fake = netG(z)
                    out = netD(fake.detach()).float()
                err_fake = F.binary_cross_entropy_with_logits(out, zeros)
                err_fake.backward()
                optD.step()
                netG.zero_grad()
                with tb.autocast():
                    out = netD(fake).float()
                err_g = F.binary_cross_entropy_with_logits(out, ones)
                err_g.backward()
                optG.step()
                _ = (err_real + err_fake).item(), err_g.item()
                done += 1
                if done == k:
                    break

    parts = {"ours": ours, "gather": gather, "model": model, "baseline": baseline}
    if parts_wanted:
        parts = {k: v for k, v in parts.items() if k in parts_wanted}
    for fn in parts.values():
        fn(args.warmup)
    rounds: dict[str, list[float]] = {k: [] for k in parts}
    for _ in range(args.rounds):
        for name, fn in parts.items():
            rounds[name].append(timed(fn, device, args.steps))
    med = {k: statistics.median(v) for k, v in rounds.items()}
    out = {
        "device": str(device),
        "batch_size": b,
        "image_size": size,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "ngf": args.ngf,
        "ndf": args.ndf,
        "bf16": t.bf16,
        "channels_last": cfg.channels_last,
        "compile": cfg.compile,
        "threads": torch.get_num_threads(),
        "rounds_ms": {k: [round(x * 1e3, 1) for x in v] for k, v in rounds.items()},
    }
    if "ours" in med:
        out.update(ours_images_per_second=round(b / med["ours"], 1), ours_ms_per_step=round(med["ours"] * 1e3, 2))
    if "gather" in med:
        out["gather_convert_ms_per_step"] = round(med["gather"] * 1e3, 3)
        if "ours" in med:
            out["outside_share"] = round(med["gather"] / med["ours"], 4)
    if "model" in med:
        out["model_ms_per_step"] = round(med["model"] * 1e3, 2)
    if "baseline" in med:
        out["baseline_images_per_second"] = round(b / med["baseline"], 1)
        if "ours" in med:
            out["ours_over_baseline"] = round(med["baseline"] / med["ours"], 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 2048])
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed steps per round (default: 5 on CPU at B<=256, 1 above; 20 on CUDA)",
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians")
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed steps of each part first (default: 5 at B<=256, 1 above; 10 on CUDA)",
    )
    p.add_argument("--n", type=int, default=8192, help="images in the synthetic data set")
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"])
    p.add_argument("--channels-last", default="on", choices=["on", "off"])
    p.add_argument(
        "--workers", type=int, default=None, help="baseline DataLoader workers (default 0 on CPU, 4 on CUDA)"
    )
    args = p.parse_args()
    device = resolve_device(args.device)
    rows = []
    for b in args.sizes:
        a = argparse.Namespace(**vars(args))
        cuda, small = device.type == "cuda", b <= 256
        a.warmup = a.warmup if a.warmup is not None else (10 if cuda else 5 if small else 1)
        a.steps = a.steps if a.steps is not None else (20 if cuda else 5 if small else 1)
        rows.append(bench_size(a, b, device))
        print(json.dumps(rows[-1]), flush=True)
    print(
        f"\nDCGAN-32 ngf={args.ngf} ndf={args.ndf} on {device} ({torch.get_num_threads()} threads); "
        f"medians of {args.rounds} rounds"
    )
    print(
        f"{'B':>6} {'ours img/s':>11} {'ms/step':>9} {'gather ms':>10} "
        f"{'model ms':>9} {'outside':>8} {'baseline img/s':>15} {'ratio':>6}"
    )
    for r in rows:
        print(
            f"{r['batch_size']:>6} {r['ours_images_per_second']:>11} {r['ours_ms_per_step']:>9} "
            f"{r['gather_convert_ms_per_step']:>10} {r['model_ms_per_step']:>9} {r['outside_share']:>8.2%} "
            f"{r['baseline_images_per_second']:>15} {r['ours_over_baseline']:>6}"
        )


if __name__ == "__main__":
    main()
