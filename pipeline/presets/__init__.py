"""Named training configurations, in a registry.

A preset is a set of :class:`~pipeline.config.TrainConfig` values (over its defaults, DCGAN as
published) plus the batches it was run with (strategy, B, top-up), optionally varied by data set
(``per_dataset``: the paper used B = 2048 on CIFAR-10 and 2000 elsewhere, 100 or 135 epochs for its
1024* runs). The ``paper-*`` presets are the experiments of Chen et al. 2021 (Acta Automatica
Sinica 47(4), Section 3), in :mod:`pipeline.presets.paper`: each one quotes the sentence of the
paper (``../shared/seeds/000_605aa03c41cbea61.txt``) it follows, in Chinese with an English
rendering (``paper``), and lists what the paper leaves open with the value taken here (``open``).

Resolution order: TrainConfig defaults < preset < the preset's values for the data set's kind
(:func:`dataset_kind`, known when the data set is) < overrides (command line ``--set key=value``
and the dedicated flags), see :func:`resolve_train_config` and :func:`resolve_batches_config`; the
commands resolve whole runs with :func:`flows.resolve.resolve_config`, which also picks the default
preset for the machine (:data:`DEVICE_PRESETS`).
"""

from __future__ import annotations

from pipeline.presets import paper as _paper  # noqa: F401  (registers the paper-* presets)
from pipeline.presets.base import (  # noqa: F401  (the package's names)
    DATASET_KINDS,
    KIND_NAMES,
    PRESETS,
    Preset,
    dataset_kind,
    get_preset,
    preset_table,
    register_preset,
    resolve_batches_config,
    resolve_train_config,
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
        "IGAN: multi-scale residual G + residual D, dynamic LR, label "
        "smoothing 0.9, instance noise, GP λ=5, 3 D steps per G step",
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
        "PL-GAN: G loss mixed from -log D(G(z)) towards log(1-D(G(z))) "
        "by w=exp(-10(1-t)²), + feature matching (α=β=0.5)",
        "patent CN108665058B (spec 'Other seed methods'): w(t) = exp(-10(1-t)^2), "
        "t = epoch/T_switch, alpha = beta = 0.5; our choices: T_switch = the run's epochs, "
        "D's last hidden layer as the feature layer, DCGAN with Adam 2e-4 beta1 0.5, B=64",
        train={"method": "pl-gan", "arch": "dcgan", "optimizer": "adam", "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5},
        batches={"batch_size": 64},
    )
)
register_preset(
    Preset(
        "pl-gan-semi",
        "PL-GAN with its semi-supervised (N+1)-class D: 10% of the labels, test accuracy on a held-out 10% per epoch",
        "patent CN108665058B (optional (N+1)-class discriminator); the (N+1)-class formulation "
        "of Salimans et al. 2016 §5; labelled_fraction 0.1 and the held-out 10% are our choices",
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
        "DCGAN + an encoder/G auto-encoder: one joint L2 reconstruction "
        "step of G on the batch's codes before each adversarial step",
        "seed paper 004 (decoding-constrained GAN; spec 'Other seed methods'): codes of z's "
        "dimension from a U-Net-style encoder, G trained as the decoder (L2) before each adversarial "
        "step; our choices: no skip connections (G decodes the code alone), encoder trained jointly "
        "with G, codes batch-normalised to z's moments, DCGAN with Adam 2e-4 beta1 0.5, B=64",
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
        "Mao et al. 2017 (Least squares GAN), the 0-1 coding (a, b, c) = (0, 1, 1); "
        "Adam beta1 0.5 as in their experiments, lr 2e-4 and B=64 the DCGAN values",
        train={"loss": "lsgan", "optimizer": "adam", "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5},
        batches={"batch_size": 64},
    )
)
register_preset(
    Preset(
        "wgan",
        "WGAN: critic loss, weight clipping 0.01, RMSProp 5e-5, 5 critic steps per G step",
        "Arjovsky et al. 2017, Algorithm 1: alpha = 5e-5, c = 0.01, m = 64, "
        "n_critic = 5, RMSProp; DCGAN critic with batch norm as in their DCGAN experiments",
        train={"loss": "wasserstein", "clip": 0.01, "optimizer": "rmsprop", "lr_g": 5e-5, "lr_d": 5e-5, "d_steps": 5},
        batches={"batch_size": 64},
    )
)
register_preset(
    Preset(
        "wgan-gp",
        "WGAN-GP: critic loss + 1-centred gradient penalty λ=10, no BN in D, Adam 1e-4 (0, 0.9), 5 critic steps",
        "Gulrajani et al. 2017, Algorithm 1: lambda = 10, n_critic = 5, "
        "alpha = 1e-4, beta1 = 0, beta2 = 0.9, m = 64; no batch norm in the critic (§4)",
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
        "Miyato et al. 2018: spectral normalisation, hinge loss (their Eq. 17 is from "
        "Lim & Ye 2017), standard CNN, setting C (alpha = 2e-4, beta1 = 0.5, beta2 = 0.999, n_dis = 1), B=64",
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
        "BEGAN: auto-encoder D, k_t equilibrium (γ=0.5, λ_k=0.001), "
        "convergence measure M logged, Adam 1e-4, z=h=64, B=16",
        "Berthelot et al. 2017: gamma = 0.5, lambda_k = 0.001, k_0 = 0, N_z = N_h = 64, n = 64 filters, "
        "batch 16, Adam lr 1e-4 (of their 5e-5-1e-4; the lr halving on stalls is left out), beta1 0.5 our choice",
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
        "SAGAN for 64-pixel data: self-attention at the 32×32 maps "
        "of G and D, spectral norm in both, hinge, TTUR 1e-4/4e-4",
        "Zhang et al. 2019: self-attention (Eqs. 1-3, gamma initialised to 0), spectral norm in G and "
        "D, hinge loss, two time-scale update rule lr_g = 1e-4, lr_d = 4e-4, Adam beta1 = 0, "
        "beta2 = 0.9, batch 256; on DCGAN's layers (theirs are residual, 128 px, with conditional batch norm)",
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
        "Odena et al. 2017: L_S + L_C for D, L_C - L_S for G "
        "(Eqs. 2-3), Adam lr 2e-4 beta1 0.5, batch 100; on DCGAN's layers",
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
