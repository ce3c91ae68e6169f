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

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.gan import distributed
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


def pl_switch_weight(t: float) -> float:
    """PL-GAN (CN108665058B): w(t) = exp(-10 (1 - t)²), t = epoch / T_switch clamped to [0, 1]:
    w(0) = e^-10 ≈ 4.5e-5, w(0.5) = e^-2.5 ≈ 0.082, w(1) = 1."""
    t = min(max(t, 0.0), 1.0)
    return math.exp(-10.0 * (1.0 - t) ** 2)


def pl_adversarial_g(fake_logits: Tensor, w: float) -> Tensor:
    """PL-GAN's piecewise generator loss: (1 - w)·[-log D(G(z))] + w·[log(1 - D(G(z)))]. w weights
    the minimax (saturating) term log(1 - D(G(z))), 1 - w the non-saturating -log D(G(z)); both are
    minimised by G, and they are ``pipeline.gan.losses``' ``nonsaturating`` and ``minimax`` G losses."""
    return (1 - w) * LOSSES["nonsaturating"].g(fake_logits) + w * LOSSES["minimax"].g(fake_logits)


def feature_matching(real_features: Tensor, fake_features: Tensor, mean: Any = None) -> Tensor:
    """Feature matching (Salimans et al. 2016, §3.1): ||E f(x) - E f(G(z))||₂², f a D feature layer,
    expectations estimated by batch means (``mean``: the batch mean over dim 0; under DDP the
    global batch's, :func:`pipeline.gan.distributed.global_batch_mean`)."""
    mean = mean or (lambda v: v.mean(0))
    return (mean(real_features) - mean(fake_features)).pow(2).sum()


def began_k_update(k: Tensor, loss_real: Tensor, loss_fake: Tensor, gamma: float, lambda_k: float) -> Tensor:
    """BEGAN's equilibrium control (Berthelot et al. 2017, Eq. 4 / §3.4):
    k_{t+1} = clip(k_t + λ_k (γ L(x) - L(G(z))), 0, 1)."""
    return (k + lambda_k * (gamma * loss_real - loss_fake)).clamp(0.0, 1.0)


def began_convergence(loss_real: Tensor, loss_fake: Tensor, gamma: float) -> Tensor:
    """BEGAN's convergence measure (§3.4.1): M = L(x) + |γ L(x) - L(G(z))|."""
    return loss_real + (gamma * loss_real - loss_fake).abs()


def began_recon_l1(D: nn.Module, v: Tensor) -> Tensor:
    """L(v) = |v - D(v)| (η = 1), the auto-encoder's mean absolute reconstruction error."""
    return (D(v).float() - v.float()).abs().mean()


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


_NOT_GAN = ("gp_weight", "r1_weight", "l2_weight", "clip", "real_target", "instance_noise")


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
    unsupported = _NOT_GAN

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


# --- pl-gan ---------------------------------------------------------------------------------------------


@register_method
class PlGanMethod(TrainingMethod):
    """PL-GAN (patent CN108665058B). D: the logistic loss. G: α·[(1 - w)(-log D(G(z))) +
    w·log(1 - D(G(z)))] + β·||E D_f(x) - E D_f(G(z))||², w = :func:`pl_switch_weight` of
    t = epoch / T_switch (epoch counted from 0, so the first epoch is purely non-saturating), D_f
    D's last hidden layer.

    Semi-supervised (arch ``dcgan-semi``, ``labelled_fraction`` > 0): D has N + 1 outputs, the N
    classes and "generated" (Salimans et al. 2016, §5). Its real-vs-generated logit is
    ``logsumexp(l_1..l_N) - l_{N+1}``, on which the logistic loss above is the unsupervised part;
    the supervised part is the (N+1)-way cross-entropy on the labelled images of the batch. A
    held-out ``semi_test_fraction`` of the store (chosen with the run seed) never gives its labels
    to training; D's accuracy on it is logged per epoch as ``semi_test_accuracy``. Of the other
    images a ``labelled_fraction`` keeps its label.
    """

    name = "pl-gan"
    description = "PL-GAN: piecewise G loss exp(-10(1-t)²)-mixed towards log(1-D(G(z))) + feature matching; optional (N+1)-class D"
    d_outputs = frozenset({"logit", "classes+fake"})
    unsupported = _NOT_GAN

    @classmethod
    def needs_labels(cls, cfg: Any) -> bool:
        return cfg.labelled_fraction > 0

    def __init__(self, t: Any):
        super().__init__(t)
        self.semi = ARCHITECTURES[t.spec.arch].d_output == "classes+fake"
        if self.semi != (t.cfg.labelled_fraction > 0):
            raise SubsampleError(
                STAGE,
                "pl-gan: the semi-supervised D needs both arch=dcgan-semi and labelled_fraction > 0 "
                f"(got arch={t.spec.arch}, labelled_fraction={t.cfg.labelled_fraction})",
            )
        if not hasattr(t.D, "forward_features"):
            raise SubsampleError(
                STAGE, f"pl-gan needs a D with a feature layer (forward_features); arch {t.spec.arch!r} has none"
            )
        self.n_classes = t.spec.n_classes
        self.w = pl_switch_weight(0.0)
        self.test_images: Tensor | None = None
        self.test_labels: Tensor | None = None

    @property
    def score_kind(self) -> str:
        return "prob"

    def realness(self, out: Tensor) -> Tensor:
        """D's real-vs-generated logit: the output itself, or logsumexp(classes) - l_generated."""
        return torch.logsumexp(out[:, : self.n_classes], 1) - out[:, self.n_classes] if self.semi else out

    def attach_data(self, t: Any, images: Tensor, labels: Tensor | None) -> Tensor | None:
        if not self.semi:
            return labels
        n = len(images)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(t.cfg.seed)).to(images.device)
        n_test = min(max(1, round(t.cfg.semi_test_fraction * n)), n - 1)
        test, rest = perm[:n_test], perm[n_test:]
        kept = rest[: max(1, round(t.cfg.labelled_fraction * len(rest)))]
        self.test_images, self.test_labels = images[test], labels[test]
        train_labels = torch.full_like(labels, -1)  # -1: unlabelled (ignored by the cross-entropy)
        train_labels[kept] = labels[kept]
        return train_labels

    def epoch_start(self, t: Any, n_batches: int) -> None:
        super().epoch_start(t, n_batches)
        self.w = pl_switch_weight(t.epoch / (t.cfg.pl_switch_epochs or t.cfg.epochs))

    def d_step(self, t: Any, real: Tensor, y: Tensor | None) -> Tensor:
        z = distributed.randn(len(real), t.cfg.z_dim, device=t.device)
        with t.autocast():
            fake = t.G_train(z)
            out_real, out_fake = t.D_train(real).float(), t.D_train(fake.detach()).float()
            s_real, s_fake = self.realness(out_real), self.realness(out_fake)
            loss_d = LOSSES["nonsaturating"].d(s_real, s_fake)
            if self.semi:  # mean cross-entropy over the batch's labelled images (0 when there are none)
                labelled = (y >= 0).sum().clamp(min=1)
                if distributed.world() is not None:  # the global batch's labelled images, per rank's share
                    labelled = distributed.sum_over_ranks((y >= 0).sum().float()).clamp(min=1) / distributed.size()
                loss_d = loss_d + F.cross_entropy(out_real, y, ignore_index=-1, reduction="sum") / labelled
        t.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        t.opt_d.step()
        self.fake = fake
        return torch.stack(
            [loss_d.detach(), torch.sigmoid(s_real.detach()).mean(), torch.sigmoid(s_fake.detach()).mean()]
        )

    def g_step(self, t: Any, real: Tensor, y: Tensor | None) -> Tensor:
        cfg, D = t.cfg, t.D
        D.requires_grad_(False)
        with t.autocast():
            with torch.no_grad():
                _, h_real = D.forward_features(real.detach())
            out_fake, h_fake = D.forward_features(self.fake)
            loss_g = cfg.pl_alpha * pl_adversarial_g(
                self.realness(out_fake.float()), self.w
            ) + cfg.pl_beta * feature_matching(h_real.float(), h_fake.float(), distributed.global_batch_mean)
        t.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        t.opt_g.step()
        D.requires_grad_(True)
        return loss_g.detach()

    @torch.no_grad()
    def test_accuracy(self, t: Any) -> float:
        """D's class accuracy (argmax over the N real classes) on the held-out labelled images."""
        was = t.D.training
        t.D.eval()
        try:
            correct = 0
            for xs, ys in zip(self.test_images.split(500), self.test_labels.split(500)):
                real = xs.to(t.device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
                correct += int((t.D(real)[:, : self.n_classes].argmax(1) == ys.to(t.device)).sum())
            return correct / len(self.test_labels)
        finally:
            t.D.train(was)

    def epoch_metrics(self, t: Any) -> dict[str, float]:
        out = {**super().epoch_metrics(t), "pl_w": self.w}
        if self.semi:
            out["semi_test_accuracy"] = self.test_accuracy(t)
        return out


# --- began -------------------------------------------------------------------------------------------


@register_method
class BeganMethod(TrainingMethod):
    """BEGAN (Berthelot et al. 2017, Eq. 4): L_D = L(x) - k_t·L(G(z)), L_G = L(G(z)), with
    k_{t+1} = clip(k_t + λ_k(γ L(x) - L(G(z))), 0, 1) after each G step (k_0 = 0), L the
    auto-encoder's L1 reconstruction error. The d_real_/d_fake_ metrics are L(x) and L(G(z))
    (``_recon``); ``began_k`` is k at the epoch's end, ``began_M`` the epoch's mean of the
    convergence measure M = L(x) + |γ L(x) - L(G(z))|."""

    name = "began"
    description = (
        "boundary-equilibrium GAN: auto-encoder D, L1 reconstruction losses, k_t control, convergence measure M"
    )
    d_outputs = frozenset({"reconstruction"})
    unsupported = _NOT_GAN

    def __init__(self, t: Any):
        super().__init__(t)
        self.buffers["k"] = torch.zeros((), device=t.device)
        self.loss_real: Tensor | None = None

    @property
    def score_kind(self) -> str:
        return "recon"

    def d_step(self, t: Any, real: Tensor, y: Tensor | None) -> Tensor:
        z = distributed.randn(len(real), t.cfg.z_dim, device=t.device)
        with t.autocast():
            fake = t.G_train(z)
            loss_real, loss_fake = began_recon_l1(t.D_train, real), began_recon_l1(t.D_train, fake.detach())
            loss_d = loss_real - self.buffers["k"] * loss_fake
        t.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        t.opt_d.step()
        self.fake, self.loss_real = fake, loss_real.detach()
        return torch.stack([loss_d.detach(), loss_real.detach(), loss_fake.detach()])

    def g_step(self, t: Any, real: Tensor, y: Tensor | None) -> Tensor:
        cfg = t.cfg
        t.D_train.requires_grad_(False)
        with t.autocast():
            loss_g = began_recon_l1(t.D_train, self.fake)
        t.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        t.opt_g.step()
        t.D_train.requires_grad_(True)
        lg = loss_g.detach()
        if distributed.world() is not None:  # k_t follows the global batch's L(x) and L(G(z))
            self.loss_real, lg = distributed.mean_over_ranks(torch.stack([self.loss_real, lg])).unbind()
        self.buffers["k"] = began_k_update(self.buffers["k"], self.loss_real, lg, cfg.began_gamma, cfg.began_lambda_k)
        self.record("began_M", began_convergence(self.loss_real, lg, cfg.began_gamma))
        return lg

    def epoch_metrics(self, t: Any) -> dict[str, float]:
        return {**super().epoch_metrics(t), "began_k": float(self.buffers["k"])}


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
