"""Training methods: how a D step and a G step are taken, in a registry.

The training loop (``pipeline.gan.trainer.train_epoch``) is the same for every method: per batch,
``before_step``, a D step, and after every ``d_steps`` D steps a G step. A method says what those
steps are, may own extra modules and optimisers (checkpointed with the run, so ``--resume`` stays
exact) and adds per-epoch metrics to ``metrics.jsonl`` and MLflow.

========================  ========================================================================
``gan`` (default)         a loss from ``pipeline.gan.losses`` + the enabled penalties + clipping; the
                          DCGAN baseline and LSGAN, WGAN, WGAN-GP, SNGAN, SAGAN, CGAN, IGAN use it.
                          Options: one-sided label smoothing (``real_target``), annealed Gaussian
                          instance noise on D's inputs (``instance_noise``), IGAN's learning-rate
                          schedule (``lr_schedule="igan"``, honoured by every method)
``acgan``                 source + auxiliary-classifier losses (Odena et al. 2017, Eqs. 2-3)
``pl-gan``                PL-GAN's piecewise generator loss + feature matching, optionally a
                          semi-supervised (N+1)-class D (patent CN108665058B)
``began``                 auto-encoder D with the equilibrium term k_t (Berthelot et al. 2017)
``decoding-constrained``  ``gan`` plus, before each step, an L2 reconstruction step of G (as the
                          decoder) on the codes of an encoder trained jointly (seed paper 004)
========================  ========================================================================

A method holds the generated images of its last D step for the G step that follows, as
pytorch/examples' dcgan does; ``gan`` reproduces the original training step bit for bit.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import pipeline.gan.distributed as distributed
from pipeline.gan.losses import LOGISTIC_LOSSES, LOSSES, PENALTIES, clip_weights, make_optimizer
from pipeline.gan.models import ARCHITECTURES
from pipeline.registry import Registry
from storage.errors import SubsampleError

STAGE = "train"


# --- schedules and losses the methods use (each checked against hand-computed values) --------------


def igan_lr(step: int, end_lr: float = 2e-4, init_set: float = 3000.0, gamma: float = 10.0) -> float:
    """IGAN's dynamic learning rate (Meng et al. 2021): ``LR(t) = end_lr + 1 / (init_set + gamma·t)``
    with t the D step; decays from end_lr + 1/init_set towards end_lr."""
    return end_lr + 1.0 / (init_set + gamma * step)


def instance_noise_sigma(sigma0: float, step: int, total_steps: int) -> float:
    """Annealed instance noise (Sønderby et al. 2017, §4; IGAN): σ(t) = σ0·max(0, 1 - t/T), a linear
    decay from σ0 at the first D step to 0 at the run's last (T = epochs × batches per epoch)."""
    return sigma0 * max(0.0, 1.0 - step / max(1, total_steps))


def logistic_d_one_sided(real: Tensor, fake: Tensor, real_target: float) -> Tensor:
    """One-sided label smoothing (Salimans et al. 2016, §3.4): BCE(D(x), real_target) + BCE(D(G(z)), 0)
    on logits, i.e. real_target·softplus(-r) + (1 - real_target)·softplus(r) + softplus(f)."""
    return (real_target * F.softplus(-real) + (1 - real_target) * F.softplus(real)).mean() + F.softplus(fake).mean()


# --- the registry and the interface ----------------------------------------------------------------


class TrainingMethod:
    """A training method: D step, G step and hooks. One instance per run (``Trainer.method``).

    Extra modules go into ``self.modules``, their optimisers into ``self.optimizers`` and other
    tensors that must survive a resume into ``self.buffers``: :meth:`state_dict` covers all three.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    d_outputs: ClassVar[frozenset[str]] = frozenset({"logit"})  # Architecture.d_output values it trains
    unsupported: ClassVar[tuple[str, ...]] = ()  # TrainConfig fields that must stay at their defaults

    @classmethod
    def needs_labels(cls, cfg: Any) -> bool:
        return False

    def __init__(self, t: Any):
        arch = ARCHITECTURES[t.spec.arch]
        if arch.d_output not in self.d_outputs:
            raise SubsampleError(
                STAGE,
                f"method {self.name!r} cannot train arch {arch.name!r} (its D returns {arch.d_output}); "
                f"pick an arch whose D returns {' or '.join(sorted(self.d_outputs))}",
            )
        defaults = type(t.cfg)()
        if changed := [f for f in self.unsupported if getattr(t.cfg, f) != getattr(defaults, f)]:
            raise SubsampleError(
                STAGE, f"method {self.name!r} does not use {', '.join(changed)}; leave it at its default"
            )
        self.g_conditional, self.d_conditional = arch.g_conditional, arch.d_conditional
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.buffers: dict[str, Tensor] = {}
        self.total_steps = 1  # the run's planned D steps (epoch_start)
        self._records: dict[str, list[Tensor]] = {}
        self.fake: Tensor | None = None  # the last D step's generated images, for the G step

    # hooks
    def attach_data(self, t: Any, images: Tensor, labels: Tensor | None) -> Tensor | None:
        """Called once per run with the resident data set; returns the labels the steps receive."""
        return labels

    def epoch_start(self, t: Any, n_batches: int) -> None:
        self.total_steps = t.cfg.epochs * n_batches

    def before_step(self, t: Any, real: Tensor, y: Tensor | None) -> None:
        """Before each D step: IGAN's learning-rate schedule when ``lr_schedule="igan"``."""
        cfg = t.cfg
        if cfg.lr_schedule == "igan":
            lr = igan_lr(t.step, cfg.igan_end_lr, cfg.igan_init_set, cfg.igan_gamma)
            for group in t.opt_d.param_groups:
                group["lr"] = lr
            for group in t.opt_g.param_groups:
                group["lr"] = cfg.igan_g_lr_ratio * lr

    def d_step(self, t: Any, real: Tensor, y: Tensor | None) -> Tensor:
        """One D update; returns (loss_d, D's mean score on real, on generated), on the device."""
        raise NotImplementedError

    def g_step(self, t: Any, real: Tensor, y: Tensor | None) -> Tensor:
        """One G update (on ``self.fake``, the last D step's images); returns loss_g, on the device."""
        raise NotImplementedError

    @property
    def score_kind(self) -> str:
        """Suffix of the d_real_/d_fake_ metrics: ``prob`` (sigmoid of a logit) or ``score`` (raw)."""
        return "score"

    def epoch_metrics(self, t: Any) -> dict[str, float]:
        """The epoch's means of what :meth:`record` collected (one device sync)."""
        out = {name: float(torch.stack(vals).float().mean()) for name, vals in self._records.items() if vals}
        self._records.clear()
        return out

    def distribute(self, t: Any, wrap: Any) -> None:
        """Under DDP (``pipeline.gan.distributed.wrap``): wrap the method's trained modules with
        ``wrap`` (DistributedDataParallel) for the steps to call; ``self.modules`` keep the plain
        ones for checkpoints."""

    # helpers
    def record(self, name: str, value: Tensor) -> None:
        self._records.setdefault(name, []).append(value.detach().float())

    def generate(self, t: Any, z: Tensor, y: Tensor | None) -> Tensor:
        return t.G_train(z, y) if self.g_conditional else t.G_train(z)

    def critic(self, t: Any, y: Tensor | None) -> nn.Module:
        """D as the step calls it: with the labels bound for a conditional D, so penalties that
        call ``D(x)`` judge interpolates with their images' class."""
        return _WithLabels(t.D_train, y) if self.d_conditional else t.D_train

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "buffers": dict(self.buffers),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        device = next(iter(self.buffers.values())).device if self.buffers else None
        self.buffers.update({k: v.to(device) for k, v in state.get("buffers", {}).items()})


class _WithLabels(nn.Module):
    def __init__(self, D: nn.Module, y: Tensor):
        super().__init__()
        self.D, self.y = D, y

    def forward(self, x: Tensor) -> Tensor:
        return self.D(x, self.y)


METHODS: Registry[type[TrainingMethod]] = Registry("method", stage=STAGE)
register_method = METHODS.register


def build_method(t: Any) -> TrainingMethod:
    return METHODS[t.cfg.method](t)


# --- gan: the loss registry's losses (DCGAN, LSGAN, WGAN, WGAN-GP, SNGAN, SAGAN, CGAN, IGAN) --------


@register_method
class GanMethod(TrainingMethod):
    name = "gan"
    description = "D and G losses from pipeline.gan.losses, the enabled penalties and weight clipping"

    def __init__(self, t: Any):
        super().__init__(t)
        cfg = t.cfg
        self.loss = LOSSES[cfg.loss]
        self.penalties = [(getattr(cfg, name), fn) for name, fn in PENALTIES.items() if getattr(cfg, name)]
        if cfg.real_target < 1 and not self.loss.probabilities:
            raise SubsampleError(
                STAGE, f"real_target < 1 (one-sided label smoothing) needs a logistic loss, not {cfg.loss!r}"
            )
        self.score = torch.sigmoid if self.loss.probabilities else (lambda v: v)
        # G's objective: the loss's own, or with a logistic D the form g_loss names (minimax / non-saturating)
        self.g_objective = LOSSES[cfg.g_loss].g if cfg.g_loss and cfg.loss in LOGISTIC_LOSSES else self.loss.g

    @property
    def score_kind(self) -> str:
        return "prob" if self.loss.probabilities else "score"

    def noisy(self, t: Any, x: Tensor) -> Tensor:
        """D's input with annealed Gaussian instance noise (``instance_noise`` > 0)."""
        if not t.cfg.instance_noise:
            return x
        return x + instance_noise_sigma(t.cfg.instance_noise, t.step, self.total_steps) * distributed.randn_like(x)

    def d_loss(self, t: Any, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        if t.cfg.real_target < 1:
            return logistic_d_one_sided(real_logits, fake_logits, t.cfg.real_target)
        return self.loss.d(real_logits, fake_logits)

    def d_step(self, t: Any, real: Tensor, y: Tensor | None) -> Tensor:
        cfg = t.cfg
        z = distributed.randn(len(real), cfg.z_dim, device=t.device)
        real.requires_grad_(cfg.r1_weight > 0)
        D = self.critic(t, y)
        with t.autocast():
            fake = self.generate(t, z, y)
            real_logits, fake_logits = D(self.noisy(t, real)).float(), D(self.noisy(t, fake.detach())).float()
            loss_d = self.d_loss(t, real_logits, fake_logits)
            for weight, penalty in self.penalties:
                loss_d = loss_d + weight * penalty(D, real, fake, real_logits)
        t.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        t.opt_d.step()
        if cfg.clip is not None:
            clip_weights(t.D, cfg.clip)
        self.fake = fake
        return torch.stack(
            [loss_d.detach(), self.score(real_logits.detach()).mean(), self.score(fake_logits.detach()).mean()]
        )

    def g_step(self, t: Any, real: Tensor, y: Tensor | None) -> Tensor:
        t.D_train.requires_grad_(False)
        with t.autocast():
            loss_g = self.g_objective(self.critic(t, y)(self.noisy(t, self.fake)).float())
        t.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        t.opt_g.step()
        t.D_train.requires_grad_(True)
        return loss_g.detach()


GAN_ONLY_OPTIONS = (  # the gan method's options: the other methods refuse a change to them
    "gp_weight",
    "r1_weight",
    "l2_weight",
    "clip",
    "real_target",
    "instance_noise",
)


# --- acgan ---------------------------------------------------------------------------------------------


@register_method
class AcganMethod(TrainingMethod):
    """Odena et al. 2017, Eqs. 2-3: L_S the source loss (``loss``, logistic by default), L_C the
    log-likelihood of the right class on real and generated images. D maximises L_S + L_C, G
    maximises L_C - L_S (here G's non-saturating source loss plus the class cross-entropy on its
    images). Generated images are asked for the classes of the real batch, so the class mix follows
    the constructed batches."""

    name = "acgan"
    description = "auxiliary-classifier GAN: source loss + class cross-entropy on real and generated images"
    d_outputs = frozenset({"source+classes"})
    unsupported = GAN_ONLY_OPTIONS

    @classmethod
    def needs_labels(cls, cfg: Any) -> bool:
        return True

    def __init__(self, t: Any):
        super().__init__(t)
        self.loss = LOSSES[t.cfg.loss]
        self.score = torch.sigmoid if self.loss.probabilities else (lambda v: v)

    @property
    def score_kind(self) -> str:
        return "prob" if self.loss.probabilities else "score"

    def d_step(self, t: Any, real: Tensor, y: Tensor | None) -> Tensor:
        z = distributed.randn(len(real), t.cfg.z_dim, device=t.device)
        with t.autocast():
            fake = self.generate(t, z, y)
            out_real, out_fake = t.D_train(real).float(), t.D_train(fake.detach()).float()
            loss_d = (
                self.loss.d(out_real[:, 0], out_fake[:, 0])
                + F.cross_entropy(out_real[:, 1:], y)
                + F.cross_entropy(out_fake[:, 1:], y)
            )
        t.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        t.opt_d.step()
        self.fake = fake
        self.record("acgan_class_accuracy_real", (out_real[:, 1:].argmax(1) == y).float().mean())
        return torch.stack(
            [loss_d.detach(), self.score(out_real[:, 0].detach()).mean(), self.score(out_fake[:, 0].detach()).mean()]
        )

    def g_step(self, t: Any, real: Tensor, y: Tensor | None) -> Tensor:
        t.D_train.requires_grad_(False)
        with t.autocast():
            out = t.D_train(self.fake).float()
            loss_g = self.loss.g(out[:, 0]) + F.cross_entropy(out[:, 1:], y)
        t.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        t.opt_g.step()
        t.D_train.requires_grad_(True)
        return loss_g.detach()


# pl-gan and began: pipeline/gan/plgan.py and pipeline/gan/began.py (registered when pipeline.gan is imported)


# --- decoding-constrained -----------------------------------------------------------------------------


@register_method
class DecodingConstrainedMethod(GanMethod):
    """Decoding-constrained GAN (seed paper 004). An auto-encoder learns codes of the training
    images with z's dimension: :class:`pipeline.gan.architectures.CodeEncoder` (a U-Net's contracting
    half, codes batch-normalised to z's moments) and G itself as the decoder. Before each
    adversarial step (``gan``'s D step and G step), encoder and G take one joint L2 reconstruction
    step, min ||G(E(x)) - x||² on the real batch (weight ``recon_weight``), with their own optimiser
    (the run's kind and G's learning rate). Trained jointly rather than in a warm-up: the codes keep
    following the G that decodes them. The epoch's mean reconstruction error is ``recon_l2``."""

    name = "decoding-constrained"
    description = (
        "gan + a joint encoder/G L2 reconstruction step on the real batch's codes before each adversarial step"
    )

    def __init__(self, t: Any):
        super().__init__(t)
        from pipeline.gan.architectures import CodeEncoder

        if self.g_conditional:
            raise SubsampleError(STAGE, f"decoding-constrained needs an unconditional G, not arch {t.spec.arch!r}")
        E = CodeEncoder(t.spec).to(t.device)
        if t.cfg.channels_last:
            E = E.to(memory_format=torch.channels_last)
        self.modules["encoder"] = E
        self.encoder = E  # what the step calls (DistributedDataParallel(E) under DDP)
        self.optimizers["reconstruction"] = make_optimizer(
            t.cfg.optimizer, [*E.parameters(), *t.G.parameters()], t.cfg.lr_g, t.cfg
        )

    def distribute(self, t: Any, wrap: Any) -> None:
        self.encoder = wrap(self.modules["encoder"])

    def before_step(self, t: Any, real: Tensor, y: Tensor | None) -> None:
        super().before_step(t, real, y)
        opt = self.optimizers["reconstruction"]
        with t.autocast():
            loss = F.mse_loss(t.G_train(self.encoder(real)).float(), real.float())
        opt.zero_grad(set_to_none=True)
        (t.cfg.recon_weight * loss).backward()
        opt.step()
        self.record("recon_l2", loss)
