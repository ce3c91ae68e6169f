"""Named training configurations, in a registry.

A preset is a set of :class:`~pipeline.config.TrainConfig` values (over its defaults, DCGAN as
published) plus the batches it was run with (strategy, B, top-up), optionally varied by data set
(``per_dataset``: the paper used B = 2048 on CIFAR-10 and 2000 elsewhere, 100 or 135 epochs for its
1024* runs). The ``paper-*`` presets are the experiments of Chen et al. 2021 (Acta Automatica
Sinica 47(4), Section 3); the paper itself was not available to this project, so each one quotes
the wording of docs/spec.md §6 (``paper``) and lists what the paper leaves open with the value
taken here (``open``).

Resolution order: TrainConfig defaults < preset < the preset's values for the data set's kind
(:func:`dataset_kind`, known when the data set is) < overrides (command line ``--set key=value``
and the dedicated flags), see :func:`resolve_train_config` and :func:`resolve_batches_config`; the
commands resolve whole runs with :func:`flows.config.resolve_config`, which also picks the default
preset for the machine (:data:`DEVICE_PRESETS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from pydantic import ValidationError

from pipeline.config import BatchesConfig, TrainConfig, validation_message
from pipeline.registry import Registry
from storage.errors import SubsampleError


@dataclass(frozen=True)
class Preset:
    name: str
    description: str  # one line
    source: str  # where the values come from
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig values
    batches: dict[str, Any] = field(default_factory=dict)  # BatchesConfig values (strategy, batch_size, topup)
    # data set kind (dataset_kind) -> {"train": {...}, "batches": {...}} over the values above
    per_dataset: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    paper: str = ""  # the published sentence(s) it follows (for paper-*: docs/spec.md §6's wording)
    open: tuple[str, ...] = ()  # what the publication leaves open, and the value taken here

    def values(self, dataset: Optional[str] = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """(train, batches) values for ``dataset`` (None: the defaults)."""
        extra = self.per_dataset.get(dataset_kind(dataset) or "", {})
        return {**self.train, **extra.get("train", {})}, {**self.batches, **extra.get("batches", {})}


PRESETS: Registry[Preset] = Registry("preset", stage="train")

# Data set names that are known kinds. Other names get their kind from their store's source format
# once ingested (a CIFAR-10 binary or python source: cifar10), else none (the preset's defaults).
DATASET_KINDS = {
    "cifar10": "cifar10",
    "demo": "cifar10",
    "anime-faces": "anime-faces",
    "celeba": "celeba",
    "mnist": "mnist",
}
KIND_NAMES = {"cifar10": "CIFAR-10", "anime-faces": "cartoon faces", "celeba": "CelebA", "mnist": "MNIST"}


def dataset_kind(dataset: Optional[str]) -> Optional[str]:
    """The kind a preset's ``per_dataset`` values are looked up by: the known names
    (:data:`DATASET_KINDS`; the demo holds CIFAR-10 images), else ``cifar10`` when the data set's
    store was ingested from a CIFAR-10 source, else None."""
    if not dataset:
        return None
    if dataset in DATASET_KINDS:
        return DATASET_KINDS[dataset]
    try:
        from storage.store import open_store

        fmt = str(open_store(dataset).attrs.get("source_format", ""))
    except (SubsampleError, OSError, ValueError):
        return None
    return "cifar10" if fmt.startswith("cifar10") else None


register_preset = PRESETS.register


def get_preset(name: str, stage: str = "train") -> Preset:
    """The preset ``name``; :class:`~pipeline.registry.UnknownName` under ``stage`` when there is
    none (`subsample presets` describes them)."""
    return PRESETS.get(name, stage=stage)


def resolve_train_config(
    preset: str, overrides: Mapping[str, Any] | None = None, *, dataset: Optional[str] = None
) -> TrainConfig:
    """TrainConfig defaults, then the preset's values (for ``dataset``'s kind when given), then
    ``overrides`` (validated by pydantic: an unknown field or a bad value raises
    :class:`SubsampleError` naming it)."""
    train, _ = get_preset(preset).values(dataset)
    try:
        return TrainConfig(**{**train, "preset": preset, **dict(overrides or {})})
    except ValidationError as e:
        raise SubsampleError("train", f"invalid training setting: {validation_message(e, TrainConfig)}") from None


def resolve_batches_config(
    preset: str, overrides: Mapping[str, Any] | None = None, *, dataset: Optional[str] = None
) -> BatchesConfig:
    """BatchesConfig defaults, then the preset's batches (strategy, B, top-up; for ``dataset``'s
    kind when given), then ``overrides`` (None values skipped)."""
    _, batches = get_preset(preset).values(dataset)
    try:
        return BatchesConfig(**{**batches, **{k: v for k, v in dict(overrides or {}).items() if v is not None}})
    except ValidationError as e:
        raise SubsampleError("train", f"invalid batches setting: {validation_message(e, BatchesConfig)}") from None


def preset_table() -> list[dict[str, Any]]:
    """``subsample presets``: every preset's name, description, source, its values (train and
    batches, over the TrainConfig / BatchesConfig defaults), the values per data set kind, and for
    the published ones the sentence followed and what the publication leaves open."""
    rows = []
    for p in PRESETS.values():
        row: dict[str, Any] = {
            "name": p.name,
            "description": p.description,
            "source": p.source,
            "train": dict(p.train),
            "batches": dict(p.batches),
        }
        if p.per_dataset:
            row["per_dataset"] = {k: {sec: dict(v) for sec, v in d.items()} for k, d in p.per_dataset.items()}
        if p.paper:
            row["paper"] = p.paper
        if p.open:
            row["open"] = list(p.open)
        rows.append(row)
    return rows


# --- the paper's experiments (Chen et al. 2021, Section 3; spec §6) -------------------------------
# The paper was not available to this project: `paper` quotes docs/spec.md §6 (and §3.3 for the
# top-up), which records the paper's settings; figures the spec does not record come from issue 14's
# reading of the paper and say so.

_SPEC = "Chen et al. 2021 §3, as docs/spec.md §6 words it (the paper itself was not available here)"
_CONSTRUCTED_QUOTE = (
    '"Constructed batches: B = 1024 and 2000 (2048 for CIFAR-10); 135-200 epochs; Adam with '
    "beta1 = 0.5 and learning rate 0.001-0.002 ('momentum 0.5', following DCGAN).\""
)
_COMPARED_QUOTE = (
    '"Compared strategies, all at B = 128 for 25 epochs: (a) DCGAN as published (D batch norm, Adam); '
    "(b) weight clipping with a 1-centred gradient penalty, RMSProp; (c) L2 regularisation of D's weights, "
    'RMSProp; (d) zero-centred gradient penalty on real data (R1), RMSProp. RMSProp learning rate 5e-5-1e-4."'
)
_TOPUP_QUOTE = (
    'spec §3.3: "randomly choose among the top k high-frequency cells, weight by their proportions, fill" '
    "-> topup random (a multinomial over the k most frequent cells)"
)
_G_LOSS = (
    "G loss: the non-saturating -log D(G(z)) (DCGAN's; the minimax form saturates early); the paper prints "
    "the minimax log(1 - D(G(z))) (issue 14's reading): --set g_loss=minimax trains that"
)
_RMSPROP = (
    "RMSProp momentum 0.9, the paper's momentum factor (issue 14's reading; spec §6 gives none); the "
    "squared-gradient decay is left open: torch's alpha 0.99"
)
_ADAM = {"optimizer": "adam", "beta1": 0.5, "loss": "nonsaturating"}
_PAPER_BATCHES = {"top_k": 8, "topup": "random"}  # the paper's top-up, for any constructed cell of a paper-* preset


def _paper_source(quote: str, followed: str, open_: tuple[str, ...]) -> str:
    return f"{_SPEC}: {quote} Followed: {followed}. Open in the paper, our choice: " + "; ".join(open_)


_PC_OPEN = (
    "lr within 0.001-0.002: 2e-3 for B = 2000/2048 (large batches take larger steps)",
    "epochs within 135-200: 200 (the top, so the comparison is not cut short)",
    "k of the top-up: 8",
    _G_LOSS,
)
register_preset(
    Preset(
        "paper-constructed",
        "the paper's method: constructed batches (random top-up), B=2000 (2048 on CIFAR-10), DCGAN, Adam lr 2e-3 beta1 0.5, 200 epochs",
        _paper_source(
            _CONSTRUCTED_QUOTE,
            "constructed batches with the paper's random top-up, B = 2000 and 2048 on CIFAR-10, Adam beta1 0.5",
            _PC_OPEN,
        ),
        train={**_ADAM, "lr_g": 2e-3, "lr_d": 2e-3, "epochs": 200},
        batches={"strategy": "constructed", "batch_size": 2000, **_PAPER_BATCHES},
        per_dataset={"cifar10": {"batches": {"batch_size": 2048}}},
        paper=_CONSTRUCTED_QUOTE + " " + _TOPUP_QUOTE,
        open=_PC_OPEN,
    )
)
_P1024_OPEN = (
    "lr within 0.001-0.002: 1e-3 (half of B = 2000's 2e-3, as B is halved)",
    "epochs on data sets the paper did not run at 1024 (CelebA, others): 135",
    "k of the top-up: 8",
    _G_LOSS,
)
register_preset(
    Preset(
        "paper-constructed-1024",
        "the paper's 1024* runs: constructed batches (random top-up), B=1024, DCGAN, Adam lr 1e-3 beta1 0.5, "
        "100 epochs on CIFAR-10, 135 on cartoon faces",
        _paper_source(
            _CONSTRUCTED_QUOTE,
            "B = 1024; the 1024* runs' epochs, 100 on CIFAR-10 and 135 on the cartoon faces "
            "(issue 14's reading of the paper; the spec gives the range 135-200 only)",
            _P1024_OPEN,
        ),
        train={**_ADAM, "lr_g": 1e-3, "lr_d": 1e-3, "epochs": 135},
        batches={"strategy": "constructed", "batch_size": 1024, **_PAPER_BATCHES},
        per_dataset={"cifar10": {"train": {"epochs": 100}}, "anime-faces": {"train": {"epochs": 135}}},
        paper=_CONSTRUCTED_QUOTE
        + " The 1024* runs: 100 epochs (CIFAR-10), 135 (cartoon faces) (issue 14). "
        + _TOPUP_QUOTE,
        open=_P1024_OPEN,
    )
)
_A_OPEN = ("lr, beta1 and batch norm of Radford et al. 2016 §4: Adam lr 2e-4, beta1 0.5", _G_LOSS)
register_preset(
    Preset(
        "paper-128a",
        "comparison (a): DCGAN as published, BN in D, Adam lr 2e-4 beta1 0.5, random B=128, 25 epochs",
        _paper_source(
            _COMPARED_QUOTE, "strategy (a): random batches, B = 128, 25 epochs, batch norm in D, Adam", _A_OPEN
        ),
        train={**_ADAM, "d_batchnorm": True, "lr_g": 2e-4, "lr_d": 2e-4, "epochs": 25},
        batches={"strategy": "random", "batch_size": 128, **_PAPER_BATCHES},
        paper=_COMPARED_QUOTE,
        open=_A_OPEN,
    )
)
_B_OPEN = (
    "the loss: Wasserstein critic (clipping and the 1-centred penalty are WGAN's and WGAN-GP's)",
    "clip c = 0.01 and 5 critic steps per G step (Arjovsky et al. 2017, Algorithm 1), lambda = 10 (Gulrajani et al. "
    "2017), no batch norm in D (Gulrajani et al. §4), RMSProp lr 5e-5 (the bottom of 5e-5-1e-4, WGAN's)",
    "budget: each critic step takes a batch (Algorithm 1), so 25 epochs make a fifth of the G updates of (a), (c), "
    "(d); `subsample compare --design paper` trains it 125 epochs so the G updates are equal",
    "clipping and the 1-centred penalty together: measured (bench/clip_gradient_norm.py, CIFAR-10 subset, 150 D "
    "steps), clipping at 0.01 does not keep this critic's input gradients below norm 1: with fan-ins of 48-4,096 "
    "the norm at the interpolates is 0.03 at initialisation and 1.5-2.1 from 50 steps on, with 29-46 % of D's "
    "weights held at +-0.01, so both constraints are active and pull against each other (the penalty towards norm "
    "1, the clipping on each weight). Kept as the paper states it; --set clip=null gives WGAN-GP, --set "
    "gp_weight=0 WGAN",
    _RMSPROP,
)
register_preset(
    Preset(
        "paper-128b",
        "comparison (b): Wasserstein loss, weight clipping 0.01 + 1-centred GP λ=10, RMSProp 5e-5 momentum 0.9, 5 D steps, random B=128, 25 epochs",
        _paper_source(
            _COMPARED_QUOTE,
            "strategy (b): random batches, B = 128, 25 epochs, weight clipping with a 1-centred "
            "gradient penalty, RMSProp",
            _B_OPEN,
        ),
        train={
            "loss": "wasserstein",
            "d_batchnorm": False,
            "clip": 0.01,
            "gp_weight": 10.0,
            "d_steps": 5,
            "optimizer": "rmsprop",
            "rmsprop_momentum": 0.9,
            "lr_g": 5e-5,
            "lr_d": 5e-5,
            "epochs": 25,
        },
        batches={"strategy": "random", "batch_size": 128, **_PAPER_BATCHES},
        paper=_COMPARED_QUOTE + " RMSProp momentum factor 0.9 (issue 14).",
        open=_B_OPEN,
    )
)
_C_OPEN = (
    "the L2 weight: 1e-4 (Kurach et al. 2019 sweep L2 weights from 1e-4 up)",
    "RMSProp lr 1e-4 (the top of 5e-5-1e-4), no batch norm in D (a weight penalty with BN's rescaling is moot)",
    _RMSPROP,
    _G_LOSS,
)
register_preset(
    Preset(
        "paper-128c",
        "comparison (c): L2 on D's weights (1e-4), no BN in D, RMSProp 1e-4 momentum 0.9, random B=128, 25 epochs",
        _paper_source(
            _COMPARED_QUOTE,
            "strategy (c): random batches, B = 128, 25 epochs, L2 regularisation of D's weights, RMSProp",
            _C_OPEN,
        ),
        train={
            "loss": "nonsaturating",
            "d_batchnorm": False,
            "l2_weight": 1e-4,
            "optimizer": "rmsprop",
            "rmsprop_momentum": 0.9,
            "lr_g": 1e-4,
            "lr_d": 1e-4,
            "epochs": 25,
        },
        batches={"strategy": "random", "batch_size": 128, **_PAPER_BATCHES},
        paper=_COMPARED_QUOTE + " RMSProp momentum factor 0.9 (issue 14).",
        open=_C_OPEN,
    )
)
_D_OPEN = (
    "gamma = 10 and RMSProp lr 1e-4 as in Mescheder et al. 2018 §4, no batch norm in D",
    _RMSPROP,
    _G_LOSS,
)
register_preset(
    Preset(
        "paper-128d",
        "comparison (d): R1 zero-centred penalty on real data γ=10, no BN in D, RMSProp 1e-4 momentum 0.9, random B=128, 25 epochs",
        _paper_source(
            _COMPARED_QUOTE,
            "strategy (d): random batches, B = 128, 25 epochs, zero-centred gradient penalty on "
            "real data (R1), RMSProp",
            _D_OPEN,
        ),
        train={
            "loss": "nonsaturating",
            "d_batchnorm": False,
            "r1_weight": 10.0,
            "optimizer": "rmsprop",
            "rmsprop_momentum": 0.9,
            "lr_g": 1e-4,
            "lr_d": 1e-4,
            "epochs": 25,
        },
        batches={"strategy": "random", "batch_size": 128, **_PAPER_BATCHES},
        paper=_COMPARED_QUOTE + " RMSProp momentum factor 0.9 (issue 14).",
        open=_D_OPEN,
    )
)

# --- the other seed methods and the common GAN family (pipeline.gan.methods, pipeline.gan.architectures) -----
# Model recipes: the batches keep the stage's default strategy (constructed) and take the batch size
# the cited paper trained with, so `--strategy random` gives the paper's own setting. Epochs stay at
# TrainConfig's 25 unless the source says otherwise.

_IGAN_LR0 = 2e-4 + 1 / 3000  # LR(0); the schedule sets lr_d / lr_g at every step, these are for the record
_IGAN = {
    "arch": "igan",
    "loss": "nonsaturating",
    "real_target": 0.9,
    "instance_noise": 0.1,
    "gp_weight": 5.0,
    "d_steps": 3,
    "d_batchnorm": False,
    "lr_schedule": "igan",
    "optimizer": "adam",
    "beta1": 0.5,
    "lr_d": _IGAN_LR0,
    "lr_g": 1.5 * _IGAN_LR0,
}
_IGAN_SOURCE = (
    "Meng et al. 2021 (IGAN; spec 'Other seed methods'): LR(t) = 2e-4 + 1/(3000 + 10t), G's lr 1.5x D's, one-sided "
    "label smoothing (real target 0.9), Gaussian instance noise, gradient penalty lambda=5, 3 D steps per G step (of "
    "3-5), LeakyReLU 0.02, PixelShuffle, dropout in G. Our choices where the source is silent: the 1-centred GP on "
    "interpolates, noise sigma0=0.1 annealed linearly to 0 over the run, Adam beta1 0.5, B=64, dropout 0.2"
)
register_preset(
    Preset(
        "igan",
        "IGAN: multi-scale residual G + residual D, dynamic LR, label smoothing 0.9, instance noise, GP λ=5, 3 D steps per G step",
        _IGAN_SOURCE,
        train=_IGAN,
        batches={"batch_size": 64},
    )
)
register_preset(
    Preset(
        "igan-nclass",
        "IGAN's N-class variant: one G branch and one D per class of the store's labels, IGAN's training recipe",
        _IGAN_SOURCE
        + "; one generator branch and one discriminator per class, each sample's class from the store's labels",
        train={**_IGAN, "arch": "igan-nclass"},
        batches={"batch_size": 64},
    )
)
register_preset(
    Preset(
        "pl-gan",
        "PL-GAN: G loss mixed from -log D(G(z)) towards log(1-D(G(z))) by w=exp(-10(1-t)²), + feature matching (α=β=0.5)",
        "patent CN108665058B (spec 'Other seed methods'): w(t) = exp(-10(1-t)^2), t = epoch/T_switch, alpha = beta = 0.5; "
        "our choices: T_switch = the run's epochs, D's last hidden layer as the feature layer, DCGAN with Adam 2e-4 beta1 0.5, B=64",
        train={"method": "pl-gan", "arch": "dcgan", "optimizer": "adam", "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5},
        batches={"batch_size": 64},
    )
)
register_preset(
    Preset(
        "pl-gan-semi",
        "PL-GAN with its semi-supervised (N+1)-class D: 10% of the labels, test accuracy on a held-out 10% per epoch",
        "patent CN108665058B (optional (N+1)-class discriminator); the (N+1)-class formulation of Salimans et al. 2016 §5; "
        "labelled_fraction 0.1 and the held-out 10% are our choices",
        train={
            "method": "pl-gan",
            "arch": "dcgan-semi",
            "labelled_fraction": 0.1,
            "semi_test_fraction": 0.1,
            "optimizer": "adam",
            "lr_g": 2e-4,
            "lr_d": 2e-4,
            "beta1": 0.5,
        },
        batches={"batch_size": 64},
    )
)
register_preset(
    Preset(
        "decoding-constrained",
        "DCGAN + an encoder/G auto-encoder: one joint L2 reconstruction step of G on the batch's codes before each adversarial step",
        "seed paper 004 (decoding-constrained GAN; spec 'Other seed methods'): codes of z's dimension from a U-Net-style encoder, "
        "G trained as the decoder (L2) before each adversarial step; our choices: no skip connections (G decodes the code "
        "alone), encoder trained jointly with G, codes batch-normalised to z's moments, DCGAN with Adam 2e-4 beta1 0.5, B=64",
        train={
            "method": "decoding-constrained",
            "arch": "dcgan",
            "optimizer": "adam",
            "lr_g": 2e-4,
            "lr_d": 2e-4,
            "beta1": 0.5,
        },
        batches={"batch_size": 64},
    )
)
register_preset(
    Preset(
        "lsgan",
        "LSGAN: least-squares loss (a=0, b=1, c=1) on DCGAN, Adam 2e-4 beta1 0.5",
        "Mao et al. 2017 (Least squares GAN), the 0-1 coding (a, b, c) = (0, 1, 1); Adam beta1 0.5 as in their experiments, "
        "lr 2e-4 and B=64 the DCGAN values",
        train={"loss": "lsgan", "optimizer": "adam", "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5},
        batches={"batch_size": 64},
    )
)
register_preset(
    Preset(
        "wgan",
        "WGAN: critic loss, weight clipping 0.01, RMSProp 5e-5, 5 critic steps per G step",
        "Arjovsky et al. 2017, Algorithm 1: alpha = 5e-5, c = 0.01, m = 64, n_critic = 5, RMSProp; DCGAN critic with batch norm "
        "as in their DCGAN experiments",
        train={"loss": "wasserstein", "clip": 0.01, "optimizer": "rmsprop", "lr_g": 5e-5, "lr_d": 5e-5, "d_steps": 5},
        batches={"batch_size": 64},
    )
)
register_preset(
    Preset(
        "wgan-gp",
        "WGAN-GP: critic loss + 1-centred gradient penalty λ=10, no BN in D, Adam 1e-4 (0, 0.9), 5 critic steps",
        "Gulrajani et al. 2017, Algorithm 1: lambda = 10, n_critic = 5, alpha = 1e-4, beta1 = 0, beta2 = 0.9, m = 64; no batch norm "
        "in the critic (§4)",
        train={
            "loss": "wasserstein",
            "gp_weight": 10.0,
            "d_batchnorm": False,
            "optimizer": "adam",
            "lr_g": 1e-4,
            "lr_d": 1e-4,
            "beta1": 0.0,
            "beta2": 0.9,
            "d_steps": 5,
        },
        batches={"batch_size": 64},
    )
)
register_preset(
    Preset(
        "sngan",
        "SNGAN: hinge loss, spectral norm on D (no BN), Adam 2e-4 (0.5, 0.999), 1 D step",
        "Miyato et al. 2018: spectral normalisation, hinge loss (their Eq. 17 is from Lim & Ye 2017), standard CNN, setting C "
        "(alpha = 2e-4, beta1 = 0.5, beta2 = 0.999, n_dis = 1), B=64",
        train={
            "loss": "hinge",
            "spectral_norm": True,
            "optimizer": "adam",
            "lr_g": 2e-4,
            "lr_d": 2e-4,
            "beta1": 0.5,
            "beta2": 0.999,
        },
        batches={"batch_size": 64},
    )
)
register_preset(
    Preset(
        "began",
        "BEGAN: auto-encoder D, k_t equilibrium (γ=0.5, λ_k=0.001), convergence measure M logged, Adam 1e-4, z=h=64, B=16",
        "Berthelot et al. 2017: gamma = 0.5, lambda_k = 0.001, k_0 = 0, N_z = N_h = 64, n = 64 filters, batch 16, Adam lr 1e-4 "
        "(of their 5e-5-1e-4; the lr halving on stalls is left out), beta1 0.5 our choice",
        train={
            "method": "began",
            "arch": "began",
            "z_dim": 64,
            "ngf": 64,
            "ndf": 64,
            "began_gamma": 0.5,
            "began_lambda_k": 1e-3,
            "optimizer": "adam",
            "lr_g": 1e-4,
            "lr_d": 1e-4,
            "beta1": 0.5,
        },
        batches={"batch_size": 16},
    )
)
register_preset(
    Preset(
        "sagan",
        "SAGAN for 64-pixel data: self-attention at the 32×32 maps of G and D, spectral norm in both, hinge, TTUR 1e-4/4e-4",
        "Zhang et al. 2019: self-attention (Eqs. 1-3, gamma initialised to 0), spectral norm in G and D, hinge loss, "
        "two time-scale update rule lr_g = 1e-4, lr_d = 4e-4, Adam beta1 = 0, beta2 = 0.9, batch 256; on DCGAN's layers "
        "(theirs are residual, 128 px, with conditional batch norm)",
        train={
            "arch": "sagan",
            "loss": "hinge",
            "spectral_norm": True,
            "optimizer": "adam",
            "lr_g": 1e-4,
            "lr_d": 4e-4,
            "beta1": 0.0,
            "beta2": 0.9,
        },
        batches={"batch_size": 256},
    )
)
register_preset(
    Preset(
        "cgan",
        "CGAN: DCGAN conditioned on the store's labels (one-hot y joined to z and as label planes to D's input)",
        "Mirza & Osindero 2014 §4.1 (y fed to both G and D by concatenation), on DCGAN with Adam 2e-4 beta1 0.5, B=64 "
        "(their MNIST nets are MLPs); generated images take the real batch's labels",
        train={"arch": "cgan", "loss": "nonsaturating", "optimizer": "adam", "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5},
        batches={"batch_size": 64},
    )
)
register_preset(
    Preset(
        "acgan",
        "ACGAN: class-conditional G, D with a source logit and an auxiliary classifier (source + class cross-entropy)",
        "Odena et al. 2017: L_S + L_C for D, L_C - L_S for G (Eqs. 2-3), Adam lr 2e-4 beta1 0.5, batch 100; on DCGAN's layers",
        train={"method": "acgan", "arch": "acgan", "optimizer": "adam", "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5},
        batches={"batch_size": 100},
    )
)

# --- for tests and demos ----------------------------------------------------------------------------

register_preset(
    Preset(
        "demo",
        "the demo's model: DCGAN ngf=ndf=16, constructed B=64, 10 epochs; minutes on a CPU for a few thousand images "
        "(the CPU default of `subsample train` and `subsample run`)",
        "this project (not a published configuration): `smoke` widened until the demo's samples show colour blobs "
        "rather than noise, 310 steps on the 2,000 demo images",
        train={"ngf": 16, "ndf": 16, "epochs": 10, "sample_grid": 16, "kl_samples": 256},
        batches={"strategy": "constructed", "batch_size": 64},
    )
)

register_preset(
    Preset(
        "smoke",
        "tiny DCGAN (ngf=ndf=8), 1 epoch, constructed B=64, small grids: checks the pipeline end to end in seconds",
        "this project (not a published configuration)",
        train={"ngf": 8, "ndf": 8, "epochs": 1, "sample_grid": 16, "kl_samples": 256},
        batches={"strategy": "constructed", "batch_size": 64},
    )
)

# The preset a command picks when none is given: what a user would want to run right now on this
# machine. On a CPU the paper's 200 epochs at B = 2000 take days; on a GPU they are the point.
DEVICE_PRESETS: dict[str, str] = {"cpu": "demo", "cuda": "paper-constructed"}
