"""The ``began`` training method (Berthelot et al. 2017): an auto-encoder discriminator and the
equilibrium term k_t. Registered in :data:`pipeline.gan.methods.METHODS`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

import pipeline.gan.distributed as distributed
from pipeline.gan.methods import GAN_ONLY_OPTIONS, TrainingMethod, register_method


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
    unsupported = GAN_ONLY_OPTIONS

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
