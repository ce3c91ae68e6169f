"""Typed configuration for every stage, with defaults in one place.

Each stage config splits its fields into those that determine the artifact (they go into the
artifact key, see :meth:`StageConfig.key_params`) and execution-only fields (where to run, how many
workers), listed in ``_execution_fields``, that never change the result.
"""

from __future__ import annotations

from typing import Any, ClassVar, Collection, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    _execution_fields: ClassVar[frozenset[str]] = frozenset()
    # Fields added after artifacts were keyed, whose default reproduces the earlier behaviour: left
    # out of the key while at their default, so the artifacts made before they existed stay valid.
    _key_omits_default: ClassVar[frozenset[str]] = frozenset()

    def key_params(self) -> dict[str, Any]:
        """The parameters that determine the artifact (JSON types only)."""
        params = self.model_dump(mode="json", exclude=set(self._execution_fields))
        for name in self._key_omits_default:
            if getattr(self, name) == type(self).model_fields[name].default:
                params.pop(name, None)
        return params


class IngestConfig(StageConfig):
    """``subsample ingest SOURCE --name NAME --size S``."""

    source: str = Field(description="folder, zip, CIFAR-10 (binary or python) folder/file, IDX file, or .npz")
    name: str = Field(description="data set name; the store is $SUBSAMPLE_HOME/datasets/<name>.zarr")
    size: int = Field(32, ge=1, le=1024, description="output side S: images are S×S×3 uint8")
    crop: int | None = Field(
        None,
        ge=1,
        description="centre-crop side before resizing (CelebA convention: 178); None = largest centred square",
    )
    workers: int = Field(2, ge=1, description="parallel decode workers (Dask)")
    scheduler: Literal["threads", "processes"] = Field(
        "threads",
        description="Dask local scheduler for decoding: threads (default: no start-up cost, and faster in "
        "bench/ingest_throughput.py even though simplejpeg holds the GIL) or processes",
    )
    files_per_task: int = Field(256, ge=1, description="files decoded per Dask task")
    max_pixels: int = Field(
        64_000_000,
        ge=1,
        description="larger source images are quarantined; "
        "an array source (IDX, npz) whose images are larger is refused",
    )
    max_bytes: int = Field(
        64 << 30,
        ge=1,
        description="the most bytes a source may hold: image files and zip members (their sizes), arrays (N×H×W×C, "
        "from their headers), checked before anything is read; larger sources are refused (decompression bombs)",
    )
    split: Literal["train", "test", "all"] = Field(
        "train",
        description="CIFAR-10 sources: the training batches (data_batch_*), the test batch (test_batch) or all; "
        "recorded in the store's attributes. Other sources: train only",
    )
    decoder: Literal["fast", "pillow"] = Field(
        "fast",
        description="fast: JPEGs by libjpeg-turbo (simplejpeg) and Pillow's Lanczos as a numba kernel, other formats "
        "by Pillow; pillow: Pillow only (ingest/1's path, slower; kept for comparison)",
    )
    decode_device: Literal["cpu", "cuda"] = Field(
        "cpu", description="cuda: decode JPEGs with nvJPEG on the GPU (torchvision.io.decode_jpeg), fast decoder only"
    )

    # max_bytes only refuses a source whole; it never changes a store that is built
    _execution_fields: ClassVar[frozenset[str]] = frozenset({"workers", "scheduler", "files_per_task", "max_bytes"})

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        from storage.paths import check_name

        return check_name(v)


class FeaturesConfig(StageConfig):
    """``subsample features NAME``: per-image features (spec §1)."""

    features: tuple[str, ...] = Field(
        ("colour_moment", "sharpness"), description="registered feature names, in table order"
    )
    dask_address: str | None = Field(
        None,
        description="existing Dask scheduler address (tcp://host:8786); the store path must be readable on its workers",
    )
    scheduler: Literal["threads", "local-cluster"] = Field(
        "threads",
        description="without --dask-address: Dask's threaded scheduler (default: no start-up cost, the numba "
        "kernels release the GIL; measured in bench/features.py) or a distributed LocalCluster of worker processes",
    )
    workers: int | None = Field(None, ge=1, description="local threads or cluster workers (default: all cores)")

    _execution_fields: ClassVar[frozenset[str]] = frozenset({"dask_address", "scheduler", "workers"})

    @field_validator("features")
    @classmethod
    def _registered(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        """Registered in kernels.features (a plain dict: kernels sit below the registry type),
        with every registry's unknown-name message."""
        from kernels.features import FEATURES
        from pipeline.registry import unknown_message

        for name in v:
            if name not in FEATURES:
                raise ValueError(unknown_message("feature", name, FEATURES))
        return v


MAX_TABLE_CELLS = 1 << 24  # 16.8 M cells (128 MiB of int64 counts): far above any useful table, far below a crash


class TablesConfig(StageConfig):
    """``subsample tables NAME --bins M1 M2``: joint histogram table (spec §2).

    Default bins (32, 32), chosen by measurement (bench/bins.py, CIFAR-10 subset, 5,592 images):
    with 32 × 32 bins 2.1 % of the images sit in cells that round to zero in T2 = round(B · T1) at
    B = 2048 and 4.5 % at B = 1024 (48 × 48: 4.9 % and 9.2 %), while constructed batches still cut
    the batch-vs-data-set KL of random batches 3.4× (0.092 -> 0.027 at B = 2048). For small
    batches (B = 128) use far fewer bins (8-16): at 32 × 32, 40 % of the images are in zero cells.
    """

    bins: tuple[int, ...] = Field(
        (32, 32),
        description="m_i per feature; the table has (m_i + 1) cells per axis. Default 32 32: the largest "
        "m that keeps <= 5 % of CIFAR images in cells rounding to zero at B >= 1024 (bench/bins.py)",
    )

    @field_validator("bins")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(m < 1 for m in v):
            raise ValueError("bins must be positive integers, one per feature")
        cells = 1
        for m in v:
            cells *= m + 1
        if cells > MAX_TABLE_CELLS:
            raise ValueError(
                f"bins {' '.join(map(str, v))} give a table of {cells:,} cells, more than {MAX_TABLE_CELLS:,} "
                f"(int64 counts: {cells * 8 / 2**30:,.1f} GiB); use fewer bins (default 32 32)"
            )
        return v


# The batch strategies and the constructed strategy's modes. pipeline.data.strategies registers
# exactly these (its import checks it) and the configs' Literals are made from them, so a name is
# written once; they live here because the configs sit below the strategies.
STRATEGY_NAMES = ("random", "constructed", "dealt")
FILL_MODES = ("topk", "coverage")
TOPUP_MODES = ("topk", "random")
Strategy = Literal[STRATEGY_NAMES]  # type: ignore[valid-type]
FillMode = Literal[FILL_MODES]  # type: ignore[valid-type]
TopupMode = Literal[TOPUP_MODES]  # type: ignore[valid-type]


class BatchesConfig(StageConfig):
    """``subsample batches NAME --batch-size B --strategy S --epochs E --seed K`` (spec §3)."""

    batch_size: int = Field(1024, ge=1)
    strategy: Strategy = "constructed"
    epochs: int = Field(1, ge=1, description="epochs of batches stored (epoch e is seeded from (seed, e))")
    seed: int = Field(0, ge=0)
    top_k: int = Field(8, ge=1, description="constructed: shortfall filled from the k most frequent cells")
    fill: FillMode = Field(
        "topk", description="constructed: 'coverage' first fills with not-yet-drawn images of cells whose T2 = 0"
    )
    topup: TopupMode = Field(
        "topk",
        description="constructed: how the shortfall B - sum(T2) is spread over the k most frequent cells: 'topk' "
        "in proportion, exactly (largest remainder; every batch the same, KL spread 0), 'random' a multinomial "
        "draw per batch with probabilities proportional to the cells' frequencies (the paper's reading, spec §3.3)",
    )

    _key_omits_default: ClassVar[frozenset[str]] = frozenset({"topup"})

    def key_params(self) -> dict[str, Any]:
        """``top_k``, ``fill`` and ``topup`` only shape constructed batches: other strategies leave
        them out of the key, so changing them reuses the artifact."""
        params = super().key_params()
        if self.strategy != "constructed":
            for name in ("top_k", "fill", "topup"):
                params.pop(name, None)
        return params


# --- train --------------------------------------------------------------------------------------


class TrainConfig(StageConfig):
    """``subsample train NAME --preset P [--set key=value ...]`` (spec §6).

    Defaults are DCGAN as published (Radford et al. 2016); presets (``pipeline.presets``) override
    them and the command line overrides presets (``pipeline.presets.resolve_train_config``). The
    batches (strategy, B, seed) come from a :class:`BatchesConfig`. Execution-only fields (where
    and how fast it runs, how often it checkpoints, whether it logs to MLflow) are not in the key:
    the same run on a CPU and a GPU is the same artifact."""

    preset: str | None = Field(None, description="preset the values came from (informational)")
    # models (pipeline.gan.models)
    arch: str = Field("dcgan", description="registered architecture (pipeline.gan.models.ARCHITECTURES)")
    ngf: int = Field(64, ge=1, description="G width: channels of G's last hidden layer")
    ndf: int = Field(64, ge=1, description="D width: channels of D's first layer")
    z_dim: int = Field(100, ge=1)
    spectral_norm: bool = Field(False, description="spectral norm on D's convolutions (then no batch norm in D)")
    d_batchnorm: bool = Field(True, description="batch norm in D (off for gradient penalties)")
    # losses (pipeline.gan.losses)
    loss: str = Field("nonsaturating", description="registered loss (pipeline.gan.losses.LOSSES)")
    g_loss: str | None = Field(
        None,
        description="gan method, logistic losses: G's objective, 'nonsaturating' -log D(G(z)) or 'minimax' "
        "log(1 - D(G(z))) (Goodfellow et al. 2014 Eq. 1, as Chen et al. print it); None = the loss's own. "
        "Ignored by the other losses, which have one G objective each",
    )
    gp_weight: float = Field(0.0, ge=0, description="1-centred gradient penalty on interpolates (WGAN-GP λ)")
    r1_weight: float = Field(0.0, ge=0, description="R1 zero-centred penalty on real data (γ)")
    l2_weight: float = Field(0.0, ge=0, description="L2 penalty on D's weights")
    clip: float | None = Field(None, gt=0, description="WGAN weight clipping of D's parameters to [-clip, clip]")
    d_steps: int = Field(1, ge=1, description="D steps (batches) per G step")
    # training method (pipeline.gan.methods) and its options
    method: str = Field(
        "gan", description="registered training method (pipeline.gan.methods.METHODS): what a D step and a G step do"
    )
    real_target: float = Field(
        1.0,
        gt=0,
        le=1,
        description="gan: D's target for real images; < 1 is one-sided label smoothing (logistic losses)",
    )
    instance_noise: float = Field(
        0.0, ge=0, description="gan: σ0 of Gaussian noise on D's inputs, annealed linearly to 0 over the run's D steps"
    )
    lr_schedule: Literal["constant", "igan"] = Field(
        "constant",
        description="igan: lr_d(t) = igan_end_lr + 1/(igan_init_set + igan_gamma·t), "
        "lr_g = igan_g_lr_ratio·lr_d, t = D step",
    )
    igan_end_lr: float = Field(2e-4, gt=0)
    igan_init_set: float = Field(3000.0, gt=0)
    igan_gamma: float = Field(10.0, ge=0)
    igan_g_lr_ratio: float = Field(1.5, gt=0)
    pl_switch_epochs: int | None = Field(
        None, ge=1, description="pl-gan: T_switch in w(t) = exp(-10(1-t)²), t = epoch/T_switch; None = epochs"
    )
    pl_alpha: float = Field(0.5, ge=0, description="pl-gan: weight of the piecewise adversarial term")
    pl_beta: float = Field(0.5, ge=0, description="pl-gan: weight of the feature-matching term")
    labelled_fraction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="pl-gan with arch dcgan-semi: fraction of the training images whose labels D learns",
    )
    semi_test_fraction: float = Field(
        0.1, gt=0, lt=1, description="pl-gan semi-supervised: held-out labelled images for the test accuracy"
    )
    began_gamma: float = Field(0.5, gt=0, le=1, description="began: diversity ratio γ = E L(G(z)) / E L(x)")
    began_lambda_k: float = Field(1e-3, ge=0, description="began: learning rate λ_k of k_t")
    recon_weight: float = Field(1.0, gt=0, description="decoding-constrained: weight of the L2 reconstruction step")
    # optimisers
    optimizer: str = Field(
        "adam", description="registered optimiser (pipeline.gan.losses.OPTIMIZERS): adam, rmsprop, sgd"
    )
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1, description="Adam")
    beta2: float = Field(0.999, ge=0, lt=1, description="Adam")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD")
    rmsprop_alpha: float = Field(
        0.99,
        gt=0,
        lt=1,
        description="RMSProp: decay of the squared-gradient average (torch's alpha, TensorFlow's decay/rho)",
    )
    rmsprop_momentum: float = Field(0.0, ge=0, lt=1, description="RMSProp: momentum factor (Chen et al. 2021 give 0.9)")
    # schedule and outputs
    epochs: int = Field(25, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many D steps in all (smoke runs)")
    seed: int = Field(0, ge=0, description="model init, z draws, penalties' randomness")
    sample_grid: int = Field(64, ge=1, description="fixed-z samples in each epoch's grid")
    kl_samples: int = Field(2048, ge=1, description="fixed-z samples for the per-epoch feature KL")
    # divergence guard (execution only: a run it stops has no artifact)
    diverge_loss_max: float | None = Field(
        1e6,
        gt=0,
        description="stop when |loss_d| or |loss_g| exceeds this for diverge_steps consecutive D steps; None = off "
        "(every registered loss stays orders of magnitude below 1e6 on a healthy run)",
    )
    diverge_steps: int = Field(50, ge=1, description="consecutive D steps above diverge_loss_max that stop the run")
    # execution only
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints (one is always written at the end)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "bf16", "off"] = Field("auto", description="auto: bf16 autocast on CUDA, off on CPU")
    channels_last: bool = Field(True, description="channels-last memory format (models and data)")
    compile: bool = Field(False, description="torch.compile G and D (D only without gradient penalties)")
    track: bool = Field(True, description="log the run to MLflow")
    # data-parallel training (pipeline.gan.distributed, docs/distributed.md): execution only, the
    # global batch B is split over the ranks and the result does not depend on their number
    nproc_per_node: int = Field(
        1, ge=1, description="ranks (GPUs, or CPU processes) on this node; > 1 launches torchrun's elastic agent"
    )
    nnodes: int = Field(
        1, ge=1, description="nodes of the run; each runs `subsample train ... --nnodes M` with the same rendezvous"
    )
    node_rank: int | None = Field(
        None,
        ge=0,
        description="this node's rank with a static rendezvous (torchrun --node-rank); None: c10d assigns it",
    )
    rdzv_endpoint: str | None = Field(None, description="HOST:PORT of the rendezvous (node 0) when nnodes > 1")
    sync_batchnorm: bool = Field(
        True,
        description="under DDP, batch norm over the global batch; "
        "false: per-rank statistics (result depends on the rank count)",
    )
    # per-epoch fidelity curves (execution only: they read G, never change it;
    # see pipeline.stages.evaluate.EpochEvaluator)
    eval_every: int | None = Field(
        None,
        ge=0,
        description="epochs between IS/FID/KID + feature-KL evaluations of G during training, logged as MLflow step "
        "metrics (step = epoch); 0 = off; None = auto: on (about 20 points a run) when training on CUDA and the "
        "extractor's weights are on disk, off otherwise",
    )
    eval_samples: int = Field(
        10_000, ge=10, description="generated images per evaluation during training (names: fid10k_train)"
    )
    eval_feature_extractor: str = Field(
        "inception-v3-compat", description="torch-fidelity feature extractor of those evaluations"
    )
    eval_weights: str | None = Field(
        None, description="local extractor weights file (as `subsample evaluate --weights`)"
    )

    # Why the eval_* fields are execution-only: the evaluation generates from its own seeded CPU
    # generator with G in eval mode under no_grad, and torch-fidelity draws from its own RNGs, so
    # the training RNG streams and the weights are those of a run without it (tested bit for bit
    # on the CPU); switching curves on or off must not retrain or fork the cache.
    _execution_fields: ClassVar[frozenset[str]] = frozenset(
        {
            "preset",
            "checkpoint_every",
            "device",
            "amp",
            "channels_last",
            "compile",
            "track",
            "diverge_loss_max",
            "diverge_steps",
            "eval_every",
            "eval_samples",
            "eval_feature_extractor",
            "eval_weights",
            "nproc_per_node",
            "nnodes",
            "node_rank",
            "rdzv_endpoint",
            "sync_batchnorm",
        }
    )
    _key_omits_default: ClassVar[frozenset[str]] = frozenset({"g_loss", "rmsprop_alpha", "rmsprop_momentum"})

    def key_params(self) -> dict[str, Any]:
        """The world size is execution only, except with per-rank batch norm statistics
        (``sync_batchnorm=false`` on several ranks): then the rank count changes the result."""
        params = super().key_params()
        if not self.sync_batchnorm and self.nproc_per_node * self.nnodes > 1:
            params["per_rank_batchnorm_world_size"] = self.nproc_per_node * self.nnodes
        return params

    @field_validator("arch", "loss", "method", "optimizer", "g_loss")
    @classmethod
    def _registered(cls, v: str | None, info: ValidationInfo) -> str | None:
        """Each of these names a registry entry, checked by the registry so the message is every
        registry's (imported lazily: the registries import torch). ``g_loss`` names one of the
        logistic losses."""
        from pipeline.gan.losses import LOGISTIC_LOSSES, LOSSES, OPTIMIZERS
        from pipeline.gan.methods import METHODS
        from pipeline.gan.models import ARCHITECTURES
        from pipeline.registry import unknown_message

        if info.field_name == "g_loss":
            if v is not None and v not in LOGISTIC_LOSSES:
                raise ValueError(unknown_message("logistic loss", v, LOGISTIC_LOSSES))
            return v
        registry = {"arch": ARCHITECTURES, "loss": LOSSES, "method": METHODS, "optimizer": OPTIMIZERS}[info.field_name]
        return registry.validate(v)


# --- evaluate -----------------------------------------------------------------------------------


class EvaluateConfig(StageConfig):
    """``subsample evaluate RUN --samples N``: IS / FID / KID (torch-fidelity) and the feature-space
    KL, JS and sharpness of N generated images against the training set (spec §5)."""

    samples: int = Field(10_000, ge=2, description="generated images N (metric names carry it: fid10k_train)")
    seed: int = Field(0, description="seed of the latent codes z, so an evaluation is reproducible")
    fidelity: bool = Field(
        True, description="compute IS / FID / KID with torch-fidelity (needs the extractor's weights)"
    )
    metrics: tuple[str, ...] | None = Field(
        None,
        description="the metrics to compute, by protocol name for N = samples (fid10k_train, kid10k_train, is10k, "
        "feature_kl10k_train, ...: pipeline.metrics.METRICS, docs/evaluate.md); a comma-separated string is split. "
        "None = all of them",
    )
    feature_extractor: str = Field(
        "inception-v3-compat", description="torch-fidelity feature extractor (registered name)"
    )
    feature_layer_isc: str | None = Field(
        None, description="None = the extractor's default (Inception: logits_unbiased)"
    )
    feature_layer_fid: str | None = Field(None, description="None = the extractor's default (Inception: 2048)")
    feature_layer_kid: str | None = Field(None, description="None = the extractor's default (Inception: 2048)")
    isc_splits: int = Field(10, ge=1)
    kid_subsets: int = Field(100, ge=1)
    kid_subset_size: int = Field(1000, ge=2, description="clipped to min(N, training set size)")
    grid: int = Field(64, ge=0, description="generated samples in the artifact's image grid")
    weights: str | None = Field(
        None,
        description="local feature-extractor weights file; None = torch-fidelity's download (torch hub cache). "
        "Its sha256 goes into the artifact key's inputs, not its path",
    )
    batch_size: int = Field(250, ge=1, description="generation and feature-extraction batch")
    device: str | None = Field(
        None, description="generator and feature extractor device; None = cuda when available, else cpu"
    )
    download_timeout_s: float = Field(20.0, gt=0, description="socket timeout when fetching extractor weights")

    _execution_fields: ClassVar[frozenset[str]] = frozenset({"weights", "batch_size", "device", "download_timeout_s"})
    _key_omits_default: ClassVar[frozenset[str]] = frozenset({"metrics"})  # None (all): the key before it existed

    @field_validator("metrics", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return tuple(x.strip() for x in v.split(",") if x.strip()) if isinstance(v, str) else v

    @field_validator("metrics")
    @classmethod
    def _registered_metrics(cls, v: tuple[str, ...] | None, info: ValidationInfo) -> tuple[str, ...] | None:
        """Names of :func:`pipeline.metrics.metrics_for` the sample count (the registry's message
        for any other), in registration order without repeats, so the key does not depend on how
        they were listed. Metrics computed by torch-fidelity need ``fidelity`` on."""
        from pipeline.metrics import metrics_for

        if v is None or "samples" not in info.data:  # an invalid sample count is reported on its own
            return v
        if not v:
            raise ValueError("name at least one metric, or leave metrics unset for all of them")
        registry = metrics_for(info.data["samples"])
        for name in v:
            registry.validate(name)
        torch_fidelity = [name for name in v if registry[name].family == "fidelity"]
        if torch_fidelity and not info.data.get("fidelity", True):
            verb = "needs" if len(torch_fidelity) == 1 else "need"
            raise ValueError(f"{', '.join(torch_fidelity)} {verb} IS/FID/KID on (fidelity=true, --fidelity)")
        return tuple(name for name in registry if name in v)


# --- one line for a configuration error ---------------------------------------------------------


def unknown_keys_message(keys: list[str], fields, section: str = "") -> str:
    """``unknown setting 'lr_dd' (did you mean 'lr_d'?); valid settings: arch, ngf, ...``: what an
    unknown ``--set`` key is told, with every valid key of its section."""
    from storage.errors import did_you_mean

    prefix = f"{section}." if section else ""
    first = keys[0]
    more = f" (and {', '.join(repr(prefix + k) for k in keys[1:])})" if len(keys) > 1 else ""
    return (
        f"unknown setting {prefix + first!r}{did_you_mean(first, fields, what=prefix)}{more}; "
        f"valid{' ' + section if section else ''} settings: {', '.join(fields)}"
    )


def _model_at(model: type[BaseModel] | None, loc: tuple) -> type[BaseModel] | None:
    """The config model a field path leads to inside ``model`` (``('train',)`` -> TrainConfig)."""
    for part in loc:
        field = model.model_fields.get(str(part)) if model is not None else None
        annotation = field.annotation if field is not None else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model


def validation_message(
    e: Any, model: type[BaseModel] | None = None, *, flags: bool | Collection[tuple[str, ...]] = False
) -> str:
    """A pydantic ``ValidationError`` as one line, the one rendering every command uses: each
    problem as ``path.to.field: message``, or ``--field-name: message`` where the value came from a
    command's option (``flags``: True for every field, or the fields' paths, e.g. ``("ingest",
    "max_pixels")`` for ``--max-pixels``); unknown fields of ``model`` (or of its sections) as
    :func:`unknown_keys_message` says them, with the nearest valid name."""
    problems, unknown = [], {}
    for err in e.errors():
        loc = tuple(err["loc"])
        target = _model_at(model, loc[:-1]) if loc else None
        if err["type"] == "extra_forbidden" and target is not None:
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
            continue
        if loc and (flags is True or (flags and loc[:2] in flags)):
            field = loc if flags is True else loc[1:]
            problems.append(f"--{'-'.join(map(str, field)).replace('_', '-')}: {err['msg']}")
        else:
            problems.append(f"{'.'.join(map(str, loc)) or 'config'}: {err['msg']}")
    for section, keys in unknown.items():
        fields = list(_model_at(model, section).model_fields)
        problems.insert(0, unknown_keys_message(keys, fields, ".".join(map(str, section))))
    return "; ".join(problems)
