"""The ``pl-gan`` training method (patent CN108665058B, seed paper 003): a piecewise generator
loss that moves from the non-saturating to the minimax term, plus feature matching, optionally with
a semi-supervised (N+1)-class discriminator. Registered in :data:`pipeline.gan.methods.METHODS`."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import pipeline.gan.distributed as distributed
from pipeline.gan.losses import LOSSES
from pipeline.gan.methods import GAN_ONLY_OPTIONS, STAGE, TrainingMethod, register_method
from pipeline.gan.models import ARCHITECTURES
from storage.errors import SubsampleError


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
    description = (
        "PL-GAN: piecewise G loss exp(-10(1-t)²)-mixed towards log(1-D(G(z))) + feature matching; "
        "optional (N+1)-class D"
    )
    d_outputs = frozenset({"logit", "classes+fake"})
    unsupported = GAN_ONLY_OPTIONS

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
