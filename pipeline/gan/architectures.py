"""The other seed methods' and the common GAN family's architectures (registered in
``pipeline.gan.models.ARCHITECTURES``; the DCGAN baseline stays alone in ``pipeline.gan.models``).

- ``igan`` / ``igan-nclass``: IGAN (Meng et al. 2021; spec "Other seed methods"), a multi-scale
  residual generator and a residual discriminator; the N-class variant has one generator branch and
  one discriminator per class.
- ``cgan``: DCGAN conditioned on the class by concatenation (Mirza & Osindero 2014, §4.1: y one-hot
  joined to z in G and to the input of D; here as one-hot maps joined to the image channels).
- ``acgan``: cgan's G; DCGAN's D with an auxiliary classifier head (Odena et al. 2017, §3).
- ``dcgan-semi``: DCGAN with an (N+1)-class D (Salimans et al. 2016, §5; PL-GAN's optional head).
- ``began``: the auto-encoder discriminator and its decoder as generator (Berthelot et al. 2017, §3.5).
- ``sagan``: DCGAN with a self-attention block in G and D and spectral norm in both (Zhang et al.
  2019, §4-5).

:class:`CodeEncoder` is the decoding-constrained GAN's encoder (seed 004), not a registered
architecture: it is part of that training method (``pipeline.gan.methods``).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.gan.models import (
    Architecture,
    DCGANDiscriminator,
    DCGANGenerator,
    ModelSpec,
    register_architecture,
    start_size,
)


def _need_classes(spec: ModelSpec) -> int:
    if spec.n_classes < 1:
        raise ValueError(
            f"architecture {spec.arch!r} needs class labels (ModelSpec.n_classes >= 1), got {spec.n_classes}"
        )
    return spec.n_classes


def cycled_labels(n: int, n_classes: int, device: torch.device | str) -> Tensor:
    """The labels a conditional G uses when none are given: 0, 1, ..., n_classes - 1, 0, 1, ...
    (so ``G(z)``, as evaluation calls it, generates every class equally often)."""
    return torch.arange(n, device=device) % n_classes


def route_by_class(modules: nn.ModuleList, x: Tensor, y: Tensor) -> Tensor:
    """Each sample through its class's module: ``out[i] = modules[y[i]](x[i:i+1])``, batched per class."""
    outs, where = [], []
    for c in torch.unique(y).tolist():
        i = (y == c).nonzero().flatten()
        outs.append(modules[c](x[i]))
        where.append(i)
    return torch.cat(outs)[torch.argsort(torch.cat(where))]


# --- IGAN (Meng et al. 2021) ----------------------------------------------------------------------

IGAN_SLOPE = 0.02  # LeakyReLU slope of G and D (spec)
IGAN_DROPOUT = 0.2  # dropout after G's dense projections: the spec says "dropout in G", not where or
# how much; 0.2 after the projections regularises the widest layers and leaves the conv path intact


def _lrelu() -> nn.Module:
    return nn.LeakyReLU(IGAN_SLOPE, inplace=True)


class ResBlock(nn.Module):
    """SRResNet's residual block (Ledig et al. 2017, Fig. 4): x + BN(conv(LReLU(BN(conv(x))))),
    without batch norm in D (the gradient penalty is per sample)."""

    def __init__(self, c: int, batchnorm: bool = True):
        super().__init__()
        norm = (lambda: nn.BatchNorm2d(c)) if batchnorm else nn.Identity
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), norm(), _lrelu(), nn.Conv2d(c, c, 3, 1, 1), norm())

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class MultiScaleBlock(nn.Module):
    """Parallel 1×1, 3×3 and 5×5 convolutions, concatenated and fused by a 1×1 convolution, plus
    the input (IGAN's multi-scale branch; the kernel sizes are our reading of "multi-scale")."""

    def __init__(self, c: int):
        super().__init__()
        self.paths = nn.ModuleList(nn.Conv2d(c, c, k, 1, k // 2) for k in (1, 3, 5))
        self.fuse = nn.Sequential(nn.Conv2d(3 * c, c, 1), nn.BatchNorm2d(c), _lrelu())

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fuse(torch.cat([p(x) for p in self.paths], 1))


def pixel_shuffle_up(c: int, r: int) -> nn.Sequential:
    """×r upsampling by sub-pixel convolution (Shi et al. 2016): conv to c·r² channels, PixelShuffle(r)."""
    return nn.Sequential(nn.Conv2d(c, c * r * r, 3, 1, 1), nn.PixelShuffle(r), nn.BatchNorm2d(c), _lrelu())


def igan_factors(image_size: int) -> list[int]:
    """Upsampling factors (3s then 2s) from the 4×4 projection to the S/4 one: 96 -> [3, 2]
    (4 -> 12 -> 24), 64 -> [2, 2], 32 -> [2], 16 -> []."""
    if image_size % 4 or image_size < 16 or (image_size // 4) % 4:
        raise ValueError(
            f"IGAN needs an image size S with S/4 a multiple of 4 (16, 32, 48, 64, 96, ...), got {image_size}"
        )
    r, out = image_size // 16, []
    for f in (3, 2):
        while r % f == 0:
            out.append(f)
            r //= f
    if r != 1:
        raise ValueError(f"IGAN needs S/16 = 2^a·3^b (16, 32, 48, 64, 96, ...), got S = {image_size}")
    return out


class IGANGenerator(nn.Module):
    """IGAN's generator (Meng et al. 2021): z goes through two dense projections, to 4×4×c and to
    (S/4)×(S/4)×c (24×24×64 at S = 96, c = ngf = 64). The 4×4 map runs through a residual branch
    (two residual blocks, PixelShuffle upsampling to S/4), the S/4 map through a multi-scale
    branch; the two are fused by addition, then a residual block and two ×2 PixelShuffle
    upsamplings reach S×S, and a 3×3 convolution + tanh gives the image."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        c, s4 = spec.ngf, spec.image_size // 4
        factors = igan_factors(spec.image_size)
        self.z_dim, self.c, self.s4 = spec.z_dim, c, s4
        self.proj_small = nn.Linear(spec.z_dim, c * 4 * 4)
        self.proj_large = nn.Linear(spec.z_dim, c * s4 * s4)
        self.post_small = nn.Sequential(nn.BatchNorm2d(c), _lrelu(), nn.Dropout(IGAN_DROPOUT))
        self.post_large = nn.Sequential(nn.BatchNorm2d(c), _lrelu(), nn.Dropout(IGAN_DROPOUT))
        self.residual = nn.Sequential(ResBlock(c), ResBlock(c), *[pixel_shuffle_up(c, r) for r in factors])
        self.multiscale = nn.Sequential(MultiScaleBlock(c), MultiScaleBlock(c))
        self.tail = nn.Sequential(
            ResBlock(c), pixel_shuffle_up(c, 2), pixel_shuffle_up(c, 2), nn.Conv2d(c, spec.channels, 3, 1, 1), nn.Tanh()
        )

    def forward(self, z: Tensor) -> Tensor:
        """z (N, z_dim) -> images (N, C, S, S) in [-1, 1]."""
        small = self.post_small(self.proj_small(z).view(len(z), self.c, 4, 4))
        large = self.post_large(self.proj_large(z).view(len(z), self.c, self.s4, self.s4))
        return self.tail(self.residual(small) + self.multiscale(large))


class IGANDiscriminator(nn.Module):
    """IGAN's residual discriminator: a 3×3 convolution, then per halving a residual block (no
    batch norm: the gradient penalty is per sample) and a stride-2 4×4 convolution doubling the
    channels (capped at 8·ndf), down to the 4×4 (or 3×3) start size; a dense layer gives the logit."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        start, k = start_size(spec.image_size)
        ch = spec.ndf
        layers: list[nn.Module] = [nn.Conv2d(spec.channels, ch, 3, 1, 1), _lrelu()]
        for _ in range(k):
            out = min(2 * ch, 8 * spec.ndf)
            layers += [ResBlock(ch, batchnorm=False), nn.Conv2d(ch, out, 4, 2, 1), _lrelu()]
            ch = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(ch * start * start, 1)

    def forward(self, x: Tensor) -> Tensor:
        """images (N, C, S, S) -> logits (N,)."""
        return self.head(self.body(x).flatten(1)).flatten()

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x).flatten(1)
        return self.head(h).flatten(), h


class IGANNClassGenerator(nn.Module):
    """IGAN's N-class variant: one generator branch per class (each a full :class:`IGANGenerator`:
    which layers the branches might share is not given, so none are); sample i comes from branch
    y[i]. ``G(z)`` cycles through the classes."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.n_classes, self.z_dim = _need_classes(spec), spec.z_dim
        self.branches = nn.ModuleList(IGANGenerator(spec) for _ in range(self.n_classes))

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        y = cycled_labels(len(z), self.n_classes, z.device) if y is None else y
        return route_by_class(self.branches, z, y)


class IGANNClassDiscriminator(nn.Module):
    """One :class:`IGANDiscriminator` per class; image i is judged by discriminator y[i]."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.n_classes = _need_classes(spec)
        self.heads = nn.ModuleList(IGANDiscriminator(spec) for _ in range(self.n_classes))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return route_by_class(self.heads, x, y)


register_architecture(
    Architecture(
        "igan",
        "IGAN (Meng et al. 2021): multi-scale residual G (4×4 "
        "and S/4 projections, PixelShuffle, dropout), residual D, LeakyReLU 0.02",
        IGANGenerator,
        IGANDiscriminator,
    )
)
register_architecture(
    Architecture(
        "igan-nclass",
        "IGAN's N-class variant: one IGAN generator branch and one residual D per class of the store's labels",
        IGANNClassGenerator,
        IGANNClassDiscriminator,
        labels=True,
        g_conditional=True,
        d_conditional=True,
    )
)


# --- conditional DCGANs: CGAN, ACGAN; DCGAN with an (N+1)-class D ---------------------------------


class ConditionalDCGANGenerator(nn.Module):
    """DCGAN's G on [z, one-hot(y)] (Mirza & Osindero 2014, §4.1; Odena et al. 2017 feed ACGAN's
    G the same way). ``G(z)`` cycles through the classes."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.n_classes, self.z_dim = _need_classes(spec), spec.z_dim
        self.net = DCGANGenerator(replace(spec, z_dim=spec.z_dim + self.n_classes))

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        y = cycled_labels(len(z), self.n_classes, z.device) if y is None else y
        return self.net(torch.cat([z, F.one_hot(y, self.n_classes).to(z.dtype)], 1))


class ConditionalDCGANDiscriminator(nn.Module):
    """DCGAN's D on the image with N one-hot label planes appended to its channels."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.n_classes = _need_classes(spec)
        self.net = DCGANDiscriminator(replace(spec, channels=spec.channels + self.n_classes))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        planes = F.one_hot(y, self.n_classes).to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[2:])
        return self.net(torch.cat([x, planes], 1))


class HeadedDiscriminator(nn.Module):
    """DCGAN's D whose last convolution gives ``outputs`` logits (N, outputs) instead of one."""

    def __init__(self, spec: ModelSpec, outputs: int):
        super().__init__()
        d = DCGANDiscriminator(spec)
        last = d.main[-1]
        self.body = d.main[:-1]
        self.head = nn.Conv2d(last.in_channels, outputs, last.kernel_size, 1, 0, bias=False)
        nn.init.normal_(self.head.weight, 0.0, 0.02)
        if spec.spectral_norm:
            nn.utils.parametrizations.spectral_norm(self.head)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x)).flatten(1)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        return self.head(h).flatten(1), h.flatten(1)


register_architecture(
    Architecture(
        "cgan",
        "conditional DCGAN (Mirza & Osindero 2014): one-hot y joined to z in G and as label planes to D's input",
        ConditionalDCGANGenerator,
        ConditionalDCGANDiscriminator,
        labels=True,
        g_conditional=True,
        d_conditional=True,
    )
)
register_architecture(
    Architecture(
        "acgan",
        "ACGAN (Odena et al. 2017): cgan's G; DCGAN D with a source logit and N class logits",
        ConditionalDCGANGenerator,
        lambda spec: HeadedDiscriminator(spec, 1 + _need_classes(spec)),
        labels=True,
        g_conditional=True,
        d_output="source+classes",
    )
)
register_architecture(
    Architecture(
        "dcgan-semi",
        "DCGAN with an (N+1)-class D: N real classes and 'generated' "
        "(Salimans et al. 2016 §5; PL-GAN's semi-supervised D)",
        DCGANGenerator,
        lambda spec: HeadedDiscriminator(spec, _need_classes(spec) + 1),
        labels=True,
        d_output="classes+fake",
    )
)


# --- BEGAN (Berthelot et al. 2017) -----------------------------------------------------------------


def _conv_elu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1), nn.ELU(inplace=True)]


class BEGANDecoder(nn.Module):
    """Berthelot et al. 2017, Fig. 1: a dense layer to n×start×start, then per doubling two 3×3
    convolutions + ELU and nearest-neighbour upsampling, two more, and a 3×3 convolution to the
    image channels (the paper starts at 8×8; we start at ``start_size``'s 4×4 or 3×3)."""

    def __init__(self, in_dim: int, n: int, image_size: int, channels: int):
        super().__init__()
        self.start, k = start_size(image_size)
        self.n = n
        self.fc = nn.Linear(in_dim, n * self.start * self.start)
        layers: list[nn.Module] = []
        for _ in range(k):
            layers += [*_conv_elu(n, n), *_conv_elu(n, n), nn.Upsample(scale_factor=2, mode="nearest")]
        layers += [*_conv_elu(n, n), *_conv_elu(n, n), nn.Conv2d(n, channels, 3, 1, 1)]
        self.body = nn.Sequential(*layers)

    def forward(self, h: Tensor) -> Tensor:
        return self.body(self.fc(h).view(len(h), self.n, self.start, self.start))


class BEGANEncoder(nn.Module):
    """The encoder of BEGAN's D: per halving two 3×3 convolutions + ELU and a stride-2 convolution,
    channels growing linearly (n, 2n, 3n, ...); a dense layer to the embedding h."""

    def __init__(self, n: int, h_dim: int, image_size: int, channels: int):
        super().__init__()
        start, k = start_size(image_size)
        layers: list[nn.Module] = [*_conv_elu(channels, n)]
        for i in range(k):
            layers += [*_conv_elu(n * (i + 1), n * (i + 1)), *_conv_elu(n * (i + 1), n * (i + 2), stride=2)]
        layers += [*_conv_elu(n * (k + 1), n * (k + 1)), *_conv_elu(n * (k + 1), n * (k + 1))]
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(n * (k + 1) * start * start, h_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x).flatten(1))


class BEGANGenerator(nn.Module):
    """BEGAN's G: the decoder's architecture on z (N_z = N_h = z_dim), with a tanh so images are in
    [-1, 1] as the pipeline's contract says (the paper's G has no output non-linearity)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.z_dim = spec.z_dim
        self.decoder = BEGANDecoder(spec.z_dim, spec.ngf, spec.image_size, spec.channels)

    def forward(self, z: Tensor) -> Tensor:
        return torch.tanh(self.decoder(z))


class BEGANDiscriminator(nn.Module):
    """BEGAN's D, an auto-encoder: images (N, C, S, S) -> reconstructions (N, C, S, S)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.encoder = BEGANEncoder(spec.ndf, spec.z_dim, spec.image_size, spec.channels)
        self.decoder = BEGANDecoder(spec.z_dim, spec.ndf, spec.image_size, spec.channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


register_architecture(
    Architecture(
        "began",
        "BEGAN (Berthelot et al. 2017): auto-encoder D (ELU, linear "
        "channel growth, embedding h = z_dim), G = its decoder + tanh",
        BEGANGenerator,
        BEGANDiscriminator,
        d_output="reconstruction",
    )
)


# --- SAGAN (Zhang et al. 2019) ---------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Zhang et al. 2019, Eqs. 1-3: s_ij = f(x_i)ᵀ g(x_j), β_j,i = softmax_i(s_ij),
    o_j = v(Σ_i β_j,i h(x_i)), y = x + γ·o with γ initialised to 0; f, g: 1×1 convolutions to
    C/8 channels, h to C/2, v back to C (the released code's widths)."""

    def __init__(self, c: int):
        super().__init__()
        self.f = nn.Conv2d(c, max(1, c // 8), 1, bias=False)
        self.g = nn.Conv2d(c, max(1, c // 8), 1, bias=False)
        self.h = nn.Conv2d(c, max(1, c // 2), 1, bias=False)
        self.v = nn.Conv2d(max(1, c // 2), c, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        n, _, hgt, wid = x.shape
        key = self.f(x).flatten(2).transpose(1, 2)  # (N, HW, C/8): f(x_i)
        query = self.g(x).flatten(2).transpose(1, 2)  # g(x_j)
        value = self.h(x).flatten(2).transpose(1, 2)  # (N, HW, C/2): h(x_i)
        o = F.scaled_dot_product_attention(query, key, value, scale=1.0)  # (N, HW_j, C/2), no 1/√d in SAGAN
        return x + self.gamma * self.v(o.transpose(1, 2).reshape(n, -1, hgt, wid))


def _spectral_norm_all(module: nn.Module) -> None:
    for m in list(module.modules()):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and not nn.utils.parametrize.is_parametrized(m):
            nn.utils.parametrizations.spectral_norm(m)


class SAGANGenerator(nn.Module):
    """DCGAN's G with a self-attention block on its last hidden feature map (side S/2: 32×32 for
    64-pixel images) and spectral norm on every layer (Zhang et al. 2019, §5)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        layers = list(DCGANGenerator(spec).main)
        c = layers[-2].in_channels  # the last ConvTranspose2d's input: the S/2 map
        self.z_dim = spec.z_dim
        self.main = nn.Sequential(*layers[:-2], SelfAttention(c), *layers[-2:])
        _spectral_norm_all(self)

    def forward(self, z: Tensor) -> Tensor:
        return self.main(z.view(len(z), self.z_dim, 1, 1))


class SAGANDiscriminator(DCGANDiscriminator):
    """DCGAN's D with spectral norm (so no batch norm) and a self-attention block after its first
    layer (side S/2), as SAGAN puts attention at the larger feature maps."""

    def __init__(self, spec: ModelSpec):
        super().__init__(replace(spec, spectral_norm=True))
        layers = list(self.main)
        self.main = nn.Sequential(*layers[:2], SelfAttention(spec.ndf), *layers[2:])
        _spectral_norm_all(self)


register_architecture(
    Architecture(
        "sagan",
        "SAGAN (Zhang et al. 2019): DCGAN G and D with self-attention at the S/2 feature maps, spectral norm in both",
        SAGANGenerator,
        SAGANDiscriminator,
    )
)


# --- the decoding-constrained GAN's encoder (seed 004) ---------------------------------------------


class CodeEncoder(nn.Module):
    """Images -> codes of z's dimension: the contracting half of a U-Net (DCGAN D's convolution
    stack with batch norm) ending in a convolution to z_dim channels, then batch norm without
    affine parameters, so the codes have z ~ N(0, I)'s per-dimension mean and variance and G, the
    decoder, sees inputs like the ones it generates from. No skip connections: G, used as the
    decoder, receives the code alone (a decoder that relied on skips could not generate from z)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        d = DCGANDiscriminator(replace(spec, spectral_norm=False, d_batchnorm=True))
        last = d.main[-1]
        self.body = d.main[:-1]
        self.code = nn.Conv2d(last.in_channels, spec.z_dim, last.kernel_size, 1, 0, bias=False)
        nn.init.normal_(self.code.weight, 0.0, 0.02)
        self.norm = nn.BatchNorm1d(spec.z_dim, affine=False)

    def forward(self, x: Tensor) -> Tensor:
        """images (N, C, S, S) -> codes (N, z_dim)."""
        return self.norm(self.code(self.body(x)).flatten(1))
