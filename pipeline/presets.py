"""Named training configurations, in a registry.

A preset is a set of :class:`~pipeline.config.TrainConfig` values (over its defaults, DCGAN as
published) plus the batches it was run with (strategy, B). The ``paper-*`` presets are the
experiments of Chen et al. 2021 (Acta Automatica Sinica 47(4), Section 3; spec §6). Where the paper
gives a range or no value, the choice made here is stated in the preset's docstring.

Resolution order: TrainConfig defaults < preset < overrides (command line ``--set key=value`` and
the dedicated flags), see :func:`resolve_train_config` and :func:`resolve_batches_config`; the
commands resolve whole runs with :func:`flows.config.resolve_config`, which also picks the default
preset for the machine (:data:`DEVICE_PRESETS`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from pydantic import ValidationError

from pipeline.config import BatchesConfig, TrainConfig
from storage.errors import SubsampleError, did_you_mean


@dataclass(frozen=True)
class Preset:
    name: str
    description: str  # one line
    source: str  # where the values come from
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig values
    batches: dict[str, Any] = field(default_factory=dict)  # BatchesConfig values (strategy, batch_size)


PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: str, stage: str = "train") -> Preset:
    if name not in PRESETS:
        raise SubsampleError(
            stage, f"unknown preset {name!r}{did_you_mean(name, PRESETS)}; `subsample presets` describes them: {', '.join(PRESETS)}"
        )
    return PRESETS[name]


def unknown_keys_message(keys: list[str], fields, section: str = "") -> str:
    """``unknown setting 'lr_dd' (did you mean 'lr_d'?); valid: arch, ngf, ...``: what an unknown
    ``--set`` key is told, with every valid key of its section."""
    prefix = f"{section}." if section else ""
    first = keys[0]
    more = f" (and {', '.join(repr(prefix + k) for k in keys[1:])})" if len(keys) > 1 else ""
    return (
        f"unknown setting {prefix + first!r}{did_you_mean(first, fields, what=prefix)}{more}; "
        f"valid{' ' + section if section else ''} settings: {', '.join(fields)}"
    )


def _validation_message(e: ValidationError) -> str:
    extra = [err for err in e.errors() if err["type"] == "extra_forbidden"]
    if extra:
        return unknown_keys_message([str(err["loc"][-1]) for err in extra], list(TrainConfig.model_fields))
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}" for err in e.errors())


def resolve_train_config(preset: str, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """TrainConfig defaults, then the preset's values, then ``overrides`` (validated by pydantic:
    an unknown field or a bad value raises :class:`SubsampleError` naming it)."""
    p = get_preset(preset)
    try:
        return TrainConfig(**{**p.train, "preset": preset, **dict(overrides or {})})
    except ValidationError as e:
        raise SubsampleError("train", f"invalid training setting: {_validation_message(e)}") from None


def resolve_batches_config(preset: str, overrides: Mapping[str, Any] | None = None) -> BatchesConfig:
    """BatchesConfig defaults, then the preset's batches (strategy, B), then ``overrides``."""
    p = get_preset(preset)
    try:
        return BatchesConfig(**{**p.batches, **{k: v for k, v in dict(overrides or {}).items() if v is not None}})
    except ValidationError as e:
        raise SubsampleError("train", f"invalid batches setting: {_validation_message(e)}") from None


def preset_table() -> list[dict[str, str]]:
    """``subsample presets``: name, description, source of every preset."""
    return [{"name": p.name, "description": p.description, "source": p.source} for p in PRESETS.values()]


# --- the paper's experiments (Chen et al. 2021, Section 3; spec §6) -------------------------------

register_preset(Preset(
    "paper-constructed",
    "the paper's method: constructed batches, B=2000, DCGAN, Adam lr 2e-3 beta1 0.5, 200 epochs",
    "Chen et al. 2021 §3 (spec §6): B = 1024/2000 (2048 for CIFAR-10), 135-200 epochs, Adam beta1 0.5, "
    "lr 0.001-0.002; we take B=2000, lr 2e-3 (the top of the range: large batches take larger steps) "
    "and 200 epochs (the top of the range, so the comparison is not cut short)",
    train={"optimizer": "adam", "lr_g": 2e-3, "lr_d": 2e-3, "beta1": 0.5, "epochs": 200},
    batches={"strategy": "constructed", "batch_size": 2000},
))
register_preset(Preset(
    "paper-128a",
    "comparison (a): DCGAN as published, BN in D, Adam lr 2e-4 beta1 0.5, random B=128, 25 epochs",
    "Chen et al. 2021 §3 (spec §6) strategy (a); values of Radford et al. 2016 §4",
    train={"d_batchnorm": True, "loss": "nonsaturating", "optimizer": "adam", "lr_g": 2e-4, "lr_d": 2e-4,
           "beta1": 0.5, "epochs": 25},
    batches={"strategy": "random", "batch_size": 128},
))
register_preset(Preset(
    "paper-128b",
    "comparison (b): Wasserstein loss, weight clipping 0.01 + 1-centred GP λ=10, RMSProp 5e-5, 5 D steps, random B=128, 25 epochs",
    "Chen et al. 2021 §3 (spec §6) strategy (b); clip 0.01, RMSProp 5e-5 and 5 critic steps from Arjovsky et al. "
    "2017 Algorithm 1, λ=10 from Gulrajani et al. 2017; no BN in D (Gulrajani et al. §4)",
    train={"loss": "wasserstein", "d_batchnorm": False, "clip": 0.01, "gp_weight": 10.0, "d_steps": 5,
           "optimizer": "rmsprop", "lr_g": 5e-5, "lr_d": 5e-5, "epochs": 25},
    batches={"strategy": "random", "batch_size": 128},
))
register_preset(Preset(
    "paper-128c",
    "comparison (c): L2 on D's weights (1e-4), no BN in D, RMSProp 1e-4, random B=128, 25 epochs",
    "Chen et al. 2021 §3 (spec §6) strategy (c); the paper gives no weight: 1e-4 is our choice (Kurach et al. 2019 "
    "sweep L2 weights from 1e-4 up); RMSProp lr 1e-4, the top of the paper's 5e-5-1e-4",
    train={"loss": "nonsaturating", "d_batchnorm": False, "l2_weight": 1e-4, "optimizer": "rmsprop",
           "lr_g": 1e-4, "lr_d": 1e-4, "epochs": 25},
    batches={"strategy": "random", "batch_size": 128},
))
register_preset(Preset(
    "paper-128d",
    "comparison (d): R1 zero-centred penalty on real data γ=10, no BN in D, RMSProp 1e-4, random B=128, 25 epochs",
    "Chen et al. 2021 §3 (spec §6) strategy (d); γ=10 and RMSProp lr 1e-4 as in Mescheder et al. 2018 §4",
    train={"loss": "nonsaturating", "d_batchnorm": False, "r1_weight": 10.0, "optimizer": "rmsprop",
           "lr_g": 1e-4, "lr_d": 1e-4, "epochs": 25},
    batches={"strategy": "random", "batch_size": 128},
))

# --- the other seed methods and the common GAN family (pipeline.methods, pipeline.architectures) -----
# Model recipes: the batches keep the stage's default strategy (constructed) and take the batch size
# the cited paper trained with, so `--strategy random` gives the paper's own setting. Epochs stay at
# TrainConfig's 25 unless the source says otherwise.

_IGAN_LR0 = 2e-4 + 1 / 3000  # LR(0); the schedule sets lr_d / lr_g at every step, these are for the record
_IGAN = {"arch": "igan", "loss": "nonsaturating", "real_target": 0.9, "instance_noise": 0.1, "gp_weight": 5.0,
         "d_steps": 3, "d_batchnorm": False, "lr_schedule": "igan", "optimizer": "adam", "beta1": 0.5,
         "lr_d": _IGAN_LR0, "lr_g": 1.5 * _IGAN_LR0}
_IGAN_SOURCE = (
    "Meng et al. 2021 (IGAN; spec 'Other seed methods'): LR(t) = 2e-4 + 1/(3000 + 10t), G's lr 1.5x D's, one-sided "
    "label smoothing (real target 0.9), Gaussian instance noise, gradient penalty lambda=5, 3 D steps per G step (of "
    "3-5), LeakyReLU 0.02, PixelShuffle, dropout in G. Our choices where the source is silent: the 1-centred GP on "
    "interpolates, noise sigma0=0.1 annealed linearly to 0 over the run, Adam beta1 0.5, B=64, dropout 0.2"
)
register_preset(Preset(
    "igan",
    "IGAN: multi-scale residual G + residual D, dynamic LR, label smoothing 0.9, instance noise, GP λ=5, 3 D steps per G step",
    _IGAN_SOURCE,
    train=_IGAN,
    batches={"batch_size": 64},
))
register_preset(Preset(
    "igan-nclass",
    "IGAN's N-class variant: one G branch and one D per class of the store's labels, IGAN's training recipe",
    _IGAN_SOURCE + "; one generator branch and one discriminator per class, each sample's class from the store's labels",
    train={**_IGAN, "arch": "igan-nclass"},
    batches={"batch_size": 64},
))
register_preset(Preset(
    "pl-gan",
    "PL-GAN: G loss mixed from -log D(G(z)) towards log(1-D(G(z))) by w=exp(-10(1-t)²), + feature matching (α=β=0.5)",
    "patent CN108665058B (spec 'Other seed methods'): w(t) = exp(-10(1-t)^2), t = epoch/T_switch, alpha = beta = 0.5; "
    "our choices: T_switch = the run's epochs, D's last hidden layer as the feature layer, DCGAN with Adam 2e-4 beta1 0.5, B=64",
    train={"method": "pl-gan", "arch": "dcgan", "optimizer": "adam", "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5},
    batches={"batch_size": 64},
))
register_preset(Preset(
    "pl-gan-semi",
    "PL-GAN with its semi-supervised (N+1)-class D: 10% of the labels, test accuracy on a held-out 10% per epoch",
    "patent CN108665058B (optional (N+1)-class discriminator); the (N+1)-class formulation of Salimans et al. 2016 §5; "
    "labelled_fraction 0.1 and the held-out 10% are our choices",
    train={"method": "pl-gan", "arch": "dcgan-semi", "labelled_fraction": 0.1, "semi_test_fraction": 0.1,
           "optimizer": "adam", "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5},
    batches={"batch_size": 64},
))
register_preset(Preset(
    "decoding-constrained",
    "DCGAN + an encoder/G auto-encoder: one joint L2 reconstruction step of G on the batch's codes before each adversarial step",
    "seed paper 004 (decoding-constrained GAN; spec 'Other seed methods'): codes of z's dimension from a U-Net-style encoder, "
    "G trained as the decoder (L2) before each adversarial step; our choices: no skip connections (G decodes the code "
    "alone), encoder trained jointly with G, codes batch-normalised to z's moments, DCGAN with Adam 2e-4 beta1 0.5, B=64",
    train={"method": "decoding-constrained", "arch": "dcgan", "optimizer": "adam", "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5},
    batches={"batch_size": 64},
))
register_preset(Preset(
    "lsgan",
    "LSGAN: least-squares loss (a=0, b=1, c=1) on DCGAN, Adam 2e-4 beta1 0.5",
    "Mao et al. 2017 (Least squares GAN), the 0-1 coding (a, b, c) = (0, 1, 1); Adam beta1 0.5 as in their experiments, "
    "lr 2e-4 and B=64 the DCGAN values",
    train={"loss": "lsgan", "optimizer": "adam", "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5},
    batches={"batch_size": 64},
))
register_preset(Preset(
    "wgan",
    "WGAN: critic loss, weight clipping 0.01, RMSProp 5e-5, 5 critic steps per G step",
    "Arjovsky et al. 2017, Algorithm 1: alpha = 5e-5, c = 0.01, m = 64, n_critic = 5, RMSProp; DCGAN critic with batch norm "
    "as in their DCGAN experiments",
    train={"loss": "wasserstein", "clip": 0.01, "optimizer": "rmsprop", "lr_g": 5e-5, "lr_d": 5e-5, "d_steps": 5},
    batches={"batch_size": 64},
))
register_preset(Preset(
    "wgan-gp",
    "WGAN-GP: critic loss + 1-centred gradient penalty λ=10, no BN in D, Adam 1e-4 (0, 0.9), 5 critic steps",
    "Gulrajani et al. 2017, Algorithm 1: lambda = 10, n_critic = 5, alpha = 1e-4, beta1 = 0, beta2 = 0.9, m = 64; no batch norm "
    "in the critic (§4)",
    train={"loss": "wasserstein", "gp_weight": 10.0, "d_batchnorm": False, "optimizer": "adam", "lr_g": 1e-4, "lr_d": 1e-4,
           "beta1": 0.0, "beta2": 0.9, "d_steps": 5},
    batches={"batch_size": 64},
))
register_preset(Preset(
    "sngan",
    "SNGAN: hinge loss, spectral norm on D (no BN), Adam 2e-4 (0.5, 0.999), 1 D step",
    "Miyato et al. 2018: spectral normalisation, hinge loss (their Eq. 17 is from Lim & Ye 2017), standard CNN, setting C "
    "(alpha = 2e-4, beta1 = 0.5, beta2 = 0.999, n_dis = 1), B=64",
    train={"loss": "hinge", "spectral_norm": True, "optimizer": "adam", "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5,
           "beta2": 0.999},
    batches={"batch_size": 64},
))
register_preset(Preset(
    "began",
    "BEGAN: auto-encoder D, k_t equilibrium (γ=0.5, λ_k=0.001), convergence measure M logged, Adam 1e-4, z=h=64, B=16",
    "Berthelot et al. 2017: gamma = 0.5, lambda_k = 0.001, k_0 = 0, N_z = N_h = 64, n = 64 filters, batch 16, Adam lr 1e-4 "
    "(of their 5e-5-1e-4; the lr halving on stalls is left out), beta1 0.5 our choice",
    train={"method": "began", "arch": "began", "z_dim": 64, "ngf": 64, "ndf": 64, "began_gamma": 0.5, "began_lambda_k": 1e-3,
           "optimizer": "adam", "lr_g": 1e-4, "lr_d": 1e-4, "beta1": 0.5},
    batches={"batch_size": 16},
))
register_preset(Preset(
    "sagan",
    "SAGAN for 64-pixel data: self-attention at the 32×32 maps of G and D, spectral norm in both, hinge, TTUR 1e-4/4e-4",
    "Zhang et al. 2019: self-attention (Eqs. 1-3, gamma initialised to 0), spectral norm in G and D, hinge loss, "
    "two time-scale update rule lr_g = 1e-4, lr_d = 4e-4, Adam beta1 = 0, beta2 = 0.9, batch 256; on DCGAN's layers "
    "(theirs are residual, 128 px, with conditional batch norm)",
    train={"arch": "sagan", "loss": "hinge", "spectral_norm": True, "optimizer": "adam", "lr_g": 1e-4, "lr_d": 4e-4,
           "beta1": 0.0, "beta2": 0.9},
    batches={"batch_size": 256},
))
register_preset(Preset(
    "cgan",
    "CGAN: DCGAN conditioned on the store's labels (one-hot y joined to z and as label planes to D's input)",
    "Mirza & Osindero 2014 §4.1 (y fed to both G and D by concatenation), on DCGAN with Adam 2e-4 beta1 0.5, B=64 "
    "(their MNIST nets are MLPs); generated images take the real batch's labels",
    train={"arch": "cgan", "loss": "nonsaturating", "optimizer": "adam", "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5},
    batches={"batch_size": 64},
))
register_preset(Preset(
    "acgan",
    "ACGAN: class-conditional G, D with a source logit and an auxiliary classifier (source + class cross-entropy)",
    "Odena et al. 2017: L_S + L_C for D, L_C - L_S for G (Eqs. 2-3), Adam lr 2e-4 beta1 0.5, batch 100; on DCGAN's layers",
    train={"method": "acgan", "arch": "acgan", "optimizer": "adam", "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5},
    batches={"batch_size": 100},
))

# --- for tests and demos ----------------------------------------------------------------------------

register_preset(Preset(
    "demo",
    "the demo's model: DCGAN ngf=ndf=16, constructed B=64, 10 epochs; minutes on a CPU for a few thousand images "
    "(the CPU default of `subsample train` and `subsample run`)",
    "this project (not a published configuration): `smoke` widened until the demo's samples show colour blobs "
    "rather than noise, 310 steps on the 2,000 demo images",
    train={"ngf": 16, "ndf": 16, "epochs": 10, "sample_grid": 16, "kl_samples": 256},
    batches={"strategy": "constructed", "batch_size": 64},
))

register_preset(Preset(
    "smoke",
    "tiny DCGAN (ngf=ndf=8), 1 epoch, constructed B=64, small grids: checks the pipeline end to end in seconds",
    "this project (not a published configuration)",
    train={"ngf": 8, "ndf": 8, "epochs": 1, "sample_grid": 16, "kl_samples": 256},
    batches={"strategy": "constructed", "batch_size": 64},
))

# The preset a command picks when none is given: what a user would want to run right now on this
# machine. On a CPU the paper's 200 epochs at B = 2000 take days; on a GPU they are the point.
DEVICE_PRESETS: dict[str, str] = {"cpu": "demo", "cuda": "paper-constructed"}
