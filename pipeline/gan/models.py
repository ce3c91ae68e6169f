"""Generator and discriminator architectures, in a registry.

``dcgan`` is the DCGAN of Radford, Metz & Chintala, *Unsupervised representation learning with deep
convolutional generative adversarial networks* (ICLR 2016), laid out as in pytorch/examples
``dcgan/main.py``: G is a stack of stride-2 ``ConvTranspose2d`` + ``BatchNorm2d`` + ``ReLU`` ending in
``Tanh``; D mirrors it with stride-2 ``Conv2d`` + ``BatchNorm2d`` + ``LeakyReLU(0.2)`` (no batch norm
on the first layer). What we change, and why:

- **image sizes**: the reference is written for 64×64 (a 4×4 start and four doublings). Here an
  S×S image starts at ``start = S / 2^k`` with ``start`` 4 (32, 64, 128) or 3 (48, 96: the paper's
  cartoon faces are 48×48, IGAN's are 96×96), and ``k`` doublings; channel widths keep the
  reference's rule (``ngf * 2^(k-1)`` at the start, halving at each doubling).
- **D returns logits** ``(N,)``: the reference's final ``Sigmoid`` moves into the loss
  (``pipeline.gan.losses``), which is numerically safer and lets non-logistic losses share the network.
- **optional spectral norm** on every D convolution (Miyato et al. 2018), and then no batch norm
  in D; **optional D without batch norm** for gradient-penalty losses (Gulrajani et al. 2017, §4:
  batch norm breaks the per-sample gradient penalty).
- **G takes z as (N, z_dim)** (the reference feeds (N, nz, 1, 1)).

Weights are initialised as published: convolutions N(0, 0.02), batch-norm weights N(1, 0.02) and
biases 0 (:func:`dcgan_init`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from pipeline.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a generator from its state dict (saved with it)."""

    arch: str = "dcgan"
    image_size: int = 32
    z_dim: int = 100
    ngf: int = 64
    ndf: int = 64
    channels: int = 3
    spectral_norm: bool = False
    d_batchnorm: bool = True
    n_classes: int = 0  # classes of the store's labels, for architectures that use them (0: none)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Architecture:
    name: str
    description: str
    generator: Callable[[ModelSpec], nn.Module]
    discriminator: Callable[[ModelSpec], nn.Module]
    labels: bool = False  # needs the store's class labels (ModelSpec.n_classes > 0)
    g_conditional: bool = False  # G(z, y) takes labels y (G(z) alone cycles through the classes)
    d_conditional: bool = False  # D(x, y) takes labels y
    # what D returns, so a training method can tell whether it can train it (pipeline.gan.methods):
    # "logit" (N,); "source+classes" (N, 1 + n_classes); "classes+fake" (N, n_classes + 1);
    # "reconstruction" (N, C, S, S)
    d_output: str = "logit"


ARCHITECTURES: Registry[Architecture] = Registry("architecture", stage="train")
register_architecture = ARCHITECTURES.register


def build_generator(spec: ModelSpec) -> nn.Module:
    return _architecture(spec.arch).generator(spec)


def build_discriminator(spec: ModelSpec) -> nn.Module:
    return _architecture(spec.arch).discriminator(spec)


def _architecture(name: str) -> Architecture:
    return ARCHITECTURES[name]  # UnknownName for a name none is registered under


def start_size(image_size: int) -> tuple[int, int]:
    """``(start, k)`` with ``image_size = start * 2^k``, start 4 or 3, k >= 2: 32 -> (4, 3),
    48 -> (3, 4), 64 -> (4, 4), 96 -> (3, 5)."""
    start, k = image_size, 0
    while start > 4 and start % 2 == 0:
        start //= 2
        k += 1
    if start not in (3, 4) or k < 2:
        raise ValueError(
            "DCGAN needs an image size of 3·2^k or 4·2^k with k >= 2 "
            f"(12, 16, 24, 32, 48, 64, 96, ...), got {image_size}"
        )
    return start, k


def dcgan_init(m: nn.Module) -> None:
    """Radford et al. §4: all weights from N(0, 0.02); batch norm scale N(1, 0.02), shift 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        start, k = start_size(spec.image_size)
        self.z_dim = spec.z_dim
        ch = spec.ngf * 2 ** (k - 1)
        layers: list[nn.Module] = [
            # z (N, z_dim, 1, 1) -> (N, ch, start, start)
            nn.ConvTranspose2d(spec.z_dim, ch, start, 1, 0, bias=False),
            nn.BatchNorm2d(ch),
            nn.ReLU(True),
        ]
        for _ in range(k - 1):  # each doubles the side and halves the channels
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, spec.channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, z_dim) -> images (N, C, S, S) in [-1, 1]."""
        return self.main(z.view(len(z), self.z_dim, 1, 1))


class DCGANDiscriminator(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        start, k = start_size(spec.image_size)
        batchnorm = spec.d_batchnorm and not spec.spectral_norm
        ch = spec.ndf
        layers: list[nn.Module] = [nn.Conv2d(spec.channels, ch, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        for _ in range(k - 1):  # each halves the side and doubles the channels
            layers.append(nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False))
            if batchnorm:
                layers.append(nn.BatchNorm2d(ch * 2))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            ch *= 2
        layers.append(nn.Conv2d(ch, 1, start, 1, 0, bias=False))  # (N, 1, 1, 1) logits; no Sigmoid
        self.main = nn.Sequential(*layers)
        self.apply(dcgan_init)
        if spec.spectral_norm:  # after the init: the normalisation divides the initialised weight
            for i, m in enumerate(self.main):
                if isinstance(m, nn.Conv2d):
                    self.main[i] = nn.utils.parametrizations.spectral_norm(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """images (N, C, S, S) -> logits (N,)."""
        return self.main(x).flatten()

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N,), features (N, F)): the last hidden layer's activations, for feature matching."""
        h = self.main[:-1](x)
        return self.main[-1](h).flatten(), h.flatten(1)


register_architecture(
    Architecture(
        "dcgan",
        "DCGAN (Radford et al. 2016) as in pytorch/examples, for S = 3·2^k or 4·2^k; D returns logits",
        DCGANGenerator,
        DCGANDiscriminator,
    )
)
