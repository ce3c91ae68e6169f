"""One GAN run's state and its steps: models, optimisers, the training method, one epoch of D and
G steps, samples from the fixed z, and checkpoints that resume a run exactly.

The train stage (``pipeline.stages.train``) owns everything around this: where the images and
batches come from, the artifact, the lock, MLflow, the per-epoch metrics and pictures. This module
knows nothing of stores or tables: ``cfg`` is the run's resolved training config (any object with
the :class:`pipeline.config.TrainConfig` fields), images are a uint8 tensor, batches index tensors.
"""

from __future__ import annotations

import math
import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.gan import distributed
from pipeline.gan.losses import make_optimizer
from pipeline.gan.methods import build_method
from pipeline.gan.models import ModelSpec, build_discriminator, build_generator
from storage.errors import SubsampleError

STAGE = "train"
SYNC_EVERY = 50  # steps between reading losses back from the device (and the NaN check)
GEN_CHUNK = 500  # images generated at once for grids and the feature KL


def to_float(batch: Tensor, channels_last: bool) -> Tensor:
    """uint8 (B, S, S, 3) -> float (B, 3, S, S) in [-1, 1]. The NHWC data permuted to NCHW is
    already channels-last in memory, so that format costs nothing."""
    x = batch.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return x if channels_last else x.contiguous()


def to_uint8(images: Tensor) -> np.ndarray:
    """float (N, 3, S, S) in [-1, 1] -> uint8 (N, S, S, 3) numpy, as the feature kernels want."""
    x = ((images.float() + 1) * 127.5).round().clamp_(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


@dataclass
class Trainer:
    """Models, optimisers and counters of one run, and the fixed z of its samples."""

    cfg: Any  # the resolved pipeline.config.TrainConfig
    spec: ModelSpec
    device: torch.device
    G: nn.Module
    D: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    G_train: nn.Module  # G or torch.compile(G): what the loop calls
    D_train: nn.Module
    z_fixed: Tensor  # (max(sample_grid, kl_samples), z_dim), from the run seed
    bf16: bool
    epoch: int = 0  # the next epoch to run (the sampler's epoch)
    step: int = 0  # D steps so far
    g_steps: int = 0
    history: dict = field(default_factory=lambda: {"epochs": [], "loss_d": [], "loss_g": [], "g_steps_at": []})
    method: Any = None  # the pipeline.gan.methods.TrainingMethod taking the steps (make_trainer sets it)
    steps_over_bound: int = 0  # consecutive D steps with a loss above cfg.diverge_loss_max (divergence guard)
    last_over_bound: tuple | None = None  # (which, step, value) of the latest such step
    clock: Any = None  # a RunClock: the up-front time estimate (timing only, no effect on training)
    kl_floor: dict | None = None  # the feature KL's floor at kl_samples (pipeline.floors), when known

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SubsampleError(STAGE, "device=cuda requested but CUDA is not available; use --set device=auto or cpu")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def make_trainer(cfg: Any, image_size: int, device: torch.device, n_classes: int = 0) -> Trainer:
    """Models, optimisers and the training method; ``n_classes`` for architectures and methods
    that use the store's labels."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    spec = ModelSpec(
        arch=cfg.arch,
        image_size=image_size,
        z_dim=cfg.z_dim,
        ngf=cfg.ngf,
        ndf=cfg.ndf,
        spectral_norm=cfg.spectral_norm,
        d_batchnorm=cfg.d_batchnorm,
        n_classes=n_classes,
    )
    try:
        G, D = build_generator(spec).to(device), build_discriminator(spec).to(device)
    except ValueError as e:
        raise SubsampleError(STAGE, str(e)) from None
    if cfg.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    opt_g = make_optimizer(cfg.optimizer, G.parameters(), cfg.lr_g, cfg)
    opt_d = make_optimizer(cfg.optimizer, D.parameters(), cfg.lr_d, cfg)
    G_train, D_train = G, D
    if cfg.compile:
        G_train = torch.compile(G)
        if not (cfg.gp_weight or cfg.r1_weight):  # compiled graphs do not support double backward
            D_train = torch.compile(D)
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # fixed z, independent of the training RNG
    z_fixed = torch.randn(max(cfg.sample_grid, cfg.kl_samples), cfg.z_dim, generator=gen).to(device)
    bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    t = Trainer(cfg, spec, device, G, D, opt_g, opt_d, G_train, D_train, z_fixed, bf16)
    t.method = build_method(t)  # checks the method fits the architecture, builds its extra modules
    return t


class NonFiniteLoss(Exception):
    def __init__(self, which: str, step: int):
        super().__init__(which, step)
        self.which, self.step = which, step


class Diverged(Exception):
    """A loss stayed above ``diverge_loss_max`` for ``diverge_steps`` consecutive D steps."""

    def __init__(self, which: str, step: int, value: float):
        super().__init__(which, step, value)
        self.which, self.step, self.value = which, step, value


def train_epoch(
    t: Trainer, images: Tensor, batches: list[Tensor], bar: Any = None, labels: Tensor | None = None
) -> dict:
    """One pass over the epoch's batches: a D step per batch, a G step after every ``d_steps`` D
    steps, as the run's training method takes them (``pipeline.gan.methods``). ``labels`` (N,) is
    indexed like ``images`` when the method or architecture uses classes. Returns the epoch's
    per-step losses (host floats); raises :class:`NonFiniteLoss`."""
    cfg, method = t.cfg, t.method
    d_rec: list[Tensor] = []  # (loss_d, D's score on real, on generated) per D step, on the device
    g_rec: list[Tensor] = []  # loss_g per G step
    out: dict[str, list] = {"d": [], "g": [], "g_steps_at": []}
    method.epoch_start(t, len(batches))
    for idx in batches:
        if cfg.max_steps is not None and t.step >= cfg.max_steps:
            break
        real = to_float(images[idx].to(t.device, non_blocking=True), cfg.channels_last)
        y = None if labels is None else labels[idx].to(t.device, non_blocking=True)
        method.before_step(t, real, y)  # learning-rate schedule; decoding-constrained's reconstruction
        d_rec.append(method.d_step(t, real, y))
        t.step += 1
        if t.clock is not None:
            t.clock.tick(t.step)
        if t.step % cfg.d_steps == 0:  # G step on the last D step's generated images (as pytorch/examples dcgan)
            g_rec.append(method.g_step(t, real, y))
            t.g_steps += 1
            out["g_steps_at"].append(t.step)
        if len(d_rec) >= SYNC_EVERY:
            _flush(t, d_rec, g_rec, out, bar)
        if bar is not None:
            bar.update(1)
    _flush(t, d_rec, g_rec, out, bar)
    return out


def _flush(t: Trainer, d_rec: list, g_rec: list, out: dict, bar: Any) -> None:
    """Read the recorded losses back from the device and check them (one sync per call)."""
    # under DDP the ranks' per-share means, averaged: the global batch's losses, on every rank
    d = distributed.mean_over_ranks(torch.stack(d_rec)).tolist() if d_rec else []
    g = distributed.mean_over_ranks(torch.stack(g_rec)).tolist() if g_rec else []
    first_step = t.step - len(d) + 1
    for i, row in enumerate(d):
        if not math.isfinite(row[0]):
            raise NonFiniteLoss("D", first_step + i)
    g_at = out["g_steps_at"][len(out["g"]) :]
    for v, at in zip(g, g_at):
        if not math.isfinite(v):
            raise NonFiniteLoss("G", at)
    _check_divergence(t, d, dict(zip(g_at, g)), first_step)
    out["d"] += d
    out["g"] += g
    d_rec.clear()
    g_rec.clear()
    if bar is not None and d:
        bar.set_postfix(loss_d=f"{d[-1][0]:.3f}", loss_g=f"{g[-1]:.3f}" if g else "-", refresh=False)


def _check_divergence(t: Trainer, d: list, g_by_step: dict[int, float], first_step: int) -> None:
    """Count consecutive D steps whose D loss (or the G loss of a G step taken there) is above
    ``cfg.diverge_loss_max`` in magnitude; raise :class:`Diverged` at ``cfg.diverge_steps``."""
    bound = t.cfg.diverge_loss_max
    if bound is None:
        return
    for i, row in enumerate(d):
        step = first_step + i
        which, value = ("D", row[0]) if abs(row[0]) > bound else ("G", g_by_step.get(step, 0.0))
        if abs(value) > bound:
            t.steps_over_bound += 1
            t.last_over_bound = (which, step, value)
            if t.steps_over_bound >= t.cfg.diverge_steps:
                raise Diverged(which, step, value)
        else:
            t.steps_over_bound = 0


@torch.no_grad()
def check_weights(t: Trainer) -> None:
    """Raise :class:`Diverged` when a weight of G or D is above ``cfg.diverge_loss_max`` in
    magnitude (or not finite): what an absurd learning rate does even where the losses, bounded
    by a saturated discriminator, look tame. One pass over the parameters, once an epoch."""
    bound = t.cfg.diverge_loss_max
    if bound is None:
        return
    for name, net in (("G", t.G), ("D", t.D)):
        peaks = [p.detach().abs().max() for p in net.parameters() if p.numel()]
        peak = float(torch.stack(peaks).max()) if peaks else 0.0
        if not math.isfinite(peak) or peak > bound:
            raise Diverged(f"{name} weights", t.step, peak)


def check_divergence_at_end(t: Trainer) -> None:
    """A run that ends while its losses are above ``cfg.diverge_loss_max`` diverged, however few
    steps it had (fewer than ``diverge_steps`` in all, or its last steps): raise :class:`Diverged`
    before its final checkpoint is written."""
    if t.cfg.diverge_loss_max is not None and t.steps_over_bound > 0 and t.last_over_bound is not None:
        raise Diverged(*t.last_over_bound)


@torch.no_grad()
def generate(G: nn.Module, z: Tensor) -> Tensor:
    """G's images for ``z`` in eval mode (batch-norm running statistics), float32, in chunks."""
    was_training = G.training
    G.eval()
    try:
        return torch.cat([G(c).float() for c in z.split(GEN_CHUNK)])
    finally:
        G.train(was_training)


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    kind, keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(s["python"])


def save_checkpoint(t: Trainer, path: Path, rng_ranks: list | None = None) -> None:
    """Everything a resume needs, written atomically (temporary file + os.replace); under DDP
    ``rng_ranks`` holds every rank's RNG state (:func:`pipeline.gan.distributed.gather_rng`)."""
    payload = {
        "G": t.G.state_dict(),
        "D": t.D.state_dict(),
        "opt_g": t.opt_g.state_dict(),
        "opt_d": t.opt_d.state_dict(),
        "method": t.method.state_dict(),
        "epoch": t.epoch,
        "step": t.step,
        "g_steps": t.g_steps,
        "history": t.history,
        "rng": rng_state(),
        "config": t.cfg.model_dump(mode="json"),
        **({"rng_ranks": rng_ranks} if rng_ranks else {}),
    }
    from storage.safe_io import atomic_path

    with atomic_path(path, what="checkpoint") as tmp:  # inside the home, never through a link
        torch.save(payload, tmp)


def load_checkpoint(t: Trainer, path: Path) -> None:
    try:
        ck = torch.load(path, map_location=t.device, weights_only=True)
    except Exception as e:
        raise SubsampleError(
            STAGE, f"cannot read checkpoint {path} ({e}); re-run with --refresh to start over"
        ) from None
    t.G.load_state_dict(ck["G"])
    t.D.load_state_dict(ck["D"])
    t.opt_g.load_state_dict(ck["opt_g"])
    t.opt_d.load_state_dict(ck["opt_d"])
    t.method.load_state_dict(ck["method"])
    t.epoch, t.step, t.g_steps, t.history = ck["epoch"], ck["step"], ck["g_steps"], ck["history"]
    rng = distributed.own_rng(ck)  # this rank's RNG state under DDP
    rng["torch"] = rng["torch"].cpu()
    rng["cuda"] = [s.cpu() for s in rng["cuda"]]
    rng["numpy"][1] = rng["numpy"][1].cpu()
    set_rng_state(rng)
