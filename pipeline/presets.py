"""Named training configurations, in a registry.

A preset is a set of :class:`~pipeline.config.TrainConfig` values (over its defaults, DCGAN as
published) plus the batches it was run with (strategy, B). The ``paper-*`` presets are the
experiments of Chen et al. 2021 (Acta Automatica Sinica 47(4), Section 3; spec §6). Where the paper
gives a range or no value, the choice made here is stated in the preset's docstring.

Resolution order: TrainConfig defaults < preset < overrides (command line ``--set key=value`` and
the dedicated flags), see :func:`resolve_train_config` and :func:`resolve_batches_config`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from pydantic import ValidationError

from pipeline.config import BatchesConfig, TrainConfig
from storage.errors import SubsampleError


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


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise SubsampleError("train", f"unknown preset {name!r}; `subsample presets` lists them: {', '.join(PRESETS)}")
    return PRESETS[name]


def _validation_message(e: ValidationError) -> str:
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

# --- for tests and demos ----------------------------------------------------------------------------

register_preset(Preset(
    "smoke",
    "tiny DCGAN (ngf=ndf=8), 1 epoch, constructed B=64, small grids: checks the pipeline end to end in seconds",
    "this project (not a published configuration)",
    train={"ngf": 8, "ndf": 8, "epochs": 1, "sample_grid": 16, "kl_samples": 256},
    batches={"strategy": "constructed", "batch_size": 64},
))
