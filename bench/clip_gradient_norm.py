"""Why paper-128b's 1-centred gradient penalty cannot be met under weight clipping at 0.01.

    .venv/bin/python bench/clip_gradient_norm.py --dataset cifar-subset --steps 40

Trains the ``paper-128b`` recipe (Wasserstein critic, clipping 0.01, 1-centred GP λ = 10, RMSProp
5e-5 with momentum 0.9, 5 critic steps per G step, no batch norm in D) on real images of an
ingested data set, and prints the norm of D's input gradient at the penalty's interpolates
x̂ = εx + (1 − ε)G(z) (the quantity the penalty wants at 1) at initialisation and every
``--every`` D steps, with the penalty term (‖∇‖ − 1)² and the fraction of D's weights sitting at
the clip bound. For comparison the same is printed for the recipe without clipping (WGAN-GP).
Figures: one table and one JSON line per recipe.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from pipeline.gan.trainer import make_trainer, to_float, train_epoch
from pipeline.presets import resolve_train_config


def grad_norms(t, real: torch.Tensor) -> tuple[float, float]:
    """Mean ‖∇_x̂ D(x̂)‖₂ over the batch at the interpolates, and the mean penalty (‖∇‖ − 1)²."""
    z = torch.randn(len(real), t.cfg.z_dim)
    with torch.no_grad():
        fake = t.G(z)
    eps = torch.rand(len(real), 1, 1, 1)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(t.D(x_hat).sum(), x_hat)
    norm = g.flatten(1).norm(2, dim=1)
    return float(norm.mean()), float(((norm - 1) ** 2).mean())


def at_bound(t, clip: float | None) -> float:
    if clip is None:
        return 0.0
    w = torch.cat([p.detach().abs().flatten() for p in t.D.parameters()])
    return float((w >= clip * (1 - 1e-6)).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="cifar-subset")
    ap.add_argument("--steps", type=int, default=40, help="D steps in all")
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--width", type=int, default=64, help="ngf = ndf (the preset's is 64)")
    args = ap.parse_args()
    from storage.store import open_store

    store = open_store(args.dataset)
    images = torch.from_numpy(np.asarray(store.images[: min(store.n, 2048)]))
    gen = torch.Generator().manual_seed(0)
    for label, over in (("paper-128b (clip 0.01 + GP)", {}), ("without clipping (WGAN-GP)", {"clip": None})):
        torch.manual_seed(0)
        cfg = resolve_train_config(
            "paper-128b",
            {
                "ngf": args.width,
                "ndf": args.width,
                "device": "cpu",
                "track": False,
                "amp": "off",
                "kl_samples": 4,
                "sample_grid": 4,
                **over,
            },
        )
        t = make_trainer(cfg, store.size, torch.device("cpu"))
        probe = to_float(images[torch.randint(0, len(images), (args.batch_size,), generator=gen)], False)
        rows = []
        for done in range(0, args.steps + 1, args.every):
            if done:
                idx = [torch.randint(0, len(images), (args.batch_size,), generator=gen) for _ in range(args.every)]
                train_epoch(t, images, idx)
            norm, pen = grad_norms(t, probe)
            rows.append({"d_steps": done, "grad_norm": norm, "penalty": pen, "weights_at_clip": at_bound(t, cfg.clip)})
        print(f"\n{label}: ‖∇D(x̂)‖ at the interpolates (the 1-centred penalty wants 1)")
        print(f"{'D steps':>8} {'‖∇D(x̂)‖':>12} {'(‖∇‖-1)²':>10} {'|w| >= clip':>17}")
        for r in rows:
            print(f"{r['d_steps']:>8} {r['grad_norm']:>12.3e} {r['penalty']:>10.4f} {r['weights_at_clip']:>17.3f}")
        print(json.dumps({"recipe": label, "rows": rows}))


if __name__ == "__main__":
    main()
