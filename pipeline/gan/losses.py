"""GAN losses, discriminator penalties and optimisers: small pieces in registries.

A training step combines one :class:`GanLoss` (D's and G's objectives on D's logits), any of the
penalties in :data:`PENALTIES` (each switched on by a positive weight in ``TrainConfig``), the
optional weight-clipping post-step :func:`clip_weights`, and an optimiser from :data:`OPTIMIZERS`.
Every loss takes the *logits* D returns; ``sigmoid(logit)`` is the published D(x) for the logistic
losses. Conventions are those of the cited papers, so the weights mean what the papers' do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.registry import Registry


@dataclass(frozen=True)
class GanLoss:
    name: str
    description: str
    d: Callable[[Tensor, Tensor], Tensor]  # (real_logits, fake_logits) -> D's loss, minimised
    g: Callable[[Tensor], Tensor]  # fake_logits -> G's loss, minimised
    probabilities: bool  # sigmoid(logit) is D's probability that the input is real


LOSSES: Registry[GanLoss] = Registry("loss", stage="train")
register_loss = LOSSES.register


def logistic_d(real: Tensor, fake: Tensor) -> Tensor:
    """Goodfellow et al. 2014, Eq. 1, D's side: -log D(x) - log(1 - D(G(z))), as softplus of logits."""
    return F.softplus(-real).mean() + F.softplus(fake).mean()


register_loss(
    GanLoss(
        "nonsaturating",
        "logistic D; G maximises log D(G(z)) (Goodfellow et al. 2014, §3; DCGAN's loss)",
        logistic_d,
        lambda fake: F.softplus(-fake).mean(),
        probabilities=True,
    )
)
register_loss(
    GanLoss(
        "minimax",
        "logistic D; G minimises log(1 - D(G(z))) (Goodfellow et al. 2014, Eq. 1; saturates early)",
        logistic_d,
        lambda fake: -F.softplus(fake).mean(),
        probabilities=True,
    )
)
# The losses whose D is logistic: TrainConfig.g_loss picks G's objective among them.
LOGISTIC_LOSSES = ("nonsaturating", "minimax")

register_loss(
    GanLoss(
        "lsgan",
        "least squares, a=0 b=1 c=1 (Mao et al. 2017, Eq. 2): D: ½(D(x)-1)² + ½D(G(z))²; G: ½(D(G(z))-1)²",
        lambda real, fake: 0.5 * (real - 1).pow(2).mean() + 0.5 * fake.pow(2).mean(),
        lambda fake: 0.5 * (fake - 1).pow(2).mean(),
        probabilities=False,
    )
)
register_loss(
    GanLoss(
        "wasserstein",
        "critic D(G(z)) - D(x), G -D(G(z)) (Arjovsky et al. 2017); pair with clip or gp_weight",
        lambda real, fake: fake.mean() - real.mean(),
        lambda fake: -fake.mean(),
        probabilities=False,
    )
)
register_loss(
    GanLoss(
        "hinge",
        "D: relu(1 - D(x)) + relu(1 + D(G(z))), G: -D(G(z)) (Lim & Ye 2017; Miyato et al. 2018)",
        lambda real, fake: F.relu(1 - real).mean() + F.relu(1 + fake).mean(),
        lambda fake: -fake.mean(),
        probabilities=False,
    )
)


# --- penalties on D: weight * fn(D, real, fake, real_logits) is added to D's loss ------------------


def _input_grad_norm(outputs: Tensor, inputs: Tensor) -> Tensor:
    """Per-sample L2 norm of d(sum outputs)/d inputs, kept in the graph so the penalty trains D."""
    (grad,) = torch.autograd.grad(outputs.sum(), inputs, create_graph=True)
    return grad.flatten(1).norm(2, dim=1)


def gradient_penalty(D: nn.Module, real: Tensor, fake: Tensor, real_logits: Tensor | None = None) -> Tensor:
    """WGAN-GP, 1-centred (Gulrajani et al. 2017, Eq. 3): E[(||∇D(x̂)||₂ - 1)²] at
    x̂ = εx + (1 - ε)G(z), ε ~ U[0, 1] per sample (drawn from torch's global RNG)."""
    from pipeline.gan import distributed  # under DDP: this rank's rows of one global draw

    eps = distributed.rand(len(real), 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    return (_input_grad_norm(D(x_hat), x_hat) - 1).pow(2).mean()


def r1_penalty(D: nn.Module, real: Tensor, fake: Tensor, real_logits: Tensor) -> Tensor:
    """R1, zero-centred on real data (Mescheder et al. 2018, Eq. 9 without γ): ½ E[||∇D(x)||²].
    ``real`` must require grad and ``real_logits`` must be ``D(real)``."""
    return 0.5 * _input_grad_norm(real_logits, real).pow(2).mean()


def weight_l2(
    D: nn.Module, real: Tensor | None = None, fake: Tensor | None = None, real_logits: Tensor | None = None
) -> Tensor:
    """L2 regularisation of D's weights (Kurach et al. 2019, §2.2): Σ ||W||² over convolution and
    linear weights (tensors of rank >= 2; batch-norm scales and biases are not penalised)."""
    return sum(p.pow(2).sum() for p in D.parameters() if p.ndim >= 2)


# TrainConfig weight field -> penalty; a weight of 0 switches the penalty off.
PENALTIES: dict[str, Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]] = {
    "gp_weight": gradient_penalty,
    "r1_weight": r1_penalty,
    "l2_weight": weight_l2,
}


@torch.no_grad()
def clip_weights(D: nn.Module, clip: float) -> None:
    """WGAN weight clipping (Arjovsky et al. 2017, Algorithm 1, line 7): every D parameter into
    [-clip, clip], after each D step."""
    for p in D.parameters():
        p.clamp_(-clip, clip)


# --- optimisers ------------------------------------------------------------------------------------

OptimizerFactory = Callable[[Iterable[Tensor], float, Any], torch.optim.Optimizer]
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer", stage="train")


@OPTIMIZERS.register(name="adam")
def adam(params: Iterable[Tensor], lr: float, cfg: Any) -> torch.optim.Optimizer:
    """Adam with beta1, beta2 (Radford et al. §4: lr 2e-4, beta1 0.5; beta2 Adam's 0.999)."""
    return torch.optim.Adam(params, lr=lr, betas=(cfg.beta1, cfg.beta2))


@OPTIMIZERS.register(name="rmsprop")
def rmsprop(params: Iterable[Tensor], lr: float, cfg: Any) -> torch.optim.Optimizer:
    """RMSProp with rmsprop_alpha, rmsprop_momentum (Arjovsky et al. 2017; Chen et al. 2021: momentum 0.9)."""
    # torch's defaults alpha 0.99, momentum 0, eps 1e-8, as TrainConfig's; the paper-* presets set momentum 0.9
    return torch.optim.RMSprop(
        params, lr=lr, alpha=getattr(cfg, "rmsprop_alpha", 0.99), momentum=getattr(cfg, "rmsprop_momentum", 0.0)
    )


@OPTIMIZERS.register(name="sgd")
def sgd(params: Iterable[Tensor], lr: float, cfg: Any) -> torch.optim.Optimizer:
    """SGD with momentum."""
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum)


def make_optimizer(name: str, params: Iterable[Tensor], lr: float, cfg: Any) -> torch.optim.Optimizer:
    """``cfg`` supplies the optimiser's other fields (beta1, beta2, momentum, rmsprop_alpha, rmsprop_momentum)."""
    return OPTIMIZERS[name](params, lr, cfg)
