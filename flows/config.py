"""The flow's parameters: one validated :class:`RunConfig`, composed of the stage configs.

A run names its data set and source once, at the top; each stage keeps its own config section
(``ingest``, ``features``, ``tables``, ``batches``, ``train``, ``evaluate``) exactly as the stage
command takes it. ``only`` runs a single stage (its upstream must be cached), ``refresh`` forces
a stage and everything downstream of it. ``overrides`` (``section.field=value`` strings, the
CLI's ``--set``) are applied on top, so a deployment run can change one field of a section
without restating the rest (``--param overrides='["train.epochs=2"]'``).

Known data sets (:data:`DATASETS`) carry the paper's image size and crop and the environment
variable that names their source on a machine, so ``subsample run --dataset celeba`` needs no
more flags once ``SUBSAMPLE_CELEBA_SOURCE`` is set.

:func:`resolve_config` is how every command builds its run: defaults < what fits this machine
(:func:`machine_defaults`) < the data set's < the preset's < ``--set`` < the command's flags, with
every check that needs no server (names, keys, the source, the batch size against the data set)
done first, in well under a second.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from pipeline.config import (
    BatchesConfig,
    EvaluateConfig,
    FeaturesConfig,
    IngestConfig,
    StageConfig,
    TablesConfig,
    TrainConfig,
    unknown_keys_message,
    validation_message,
)
from storage.errors import SubsampleError, did_you_mean
from storage.paths import check_name

STAGES: tuple[str, ...] = ("ingest", "features", "tables", "batches", "train", "evaluate")
Stage = Literal["ingest", "features", "tables", "batches", "train", "evaluate"]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_SOURCE = REPO_ROOT / "data" / "demo"


# IngestConfig without `source` and `name`: a run states those once, as `source` and `dataset`.
# Derived from IngestConfig so a field the ingest stage adds is a flow parameter at once.
IngestOptions = create_model(
    "IngestOptions",
    __base__=StageConfig,
    __doc__="Ingest settings of a run (IngestConfig less source and name, which the run gives).",
    **{
        name: (field.annotation, field)
        for name, field in IngestConfig.model_fields.items()
        if name not in {"source", "name"}
    },
)


@dataclass(frozen=True)
class DatasetPreset:
    """What a known data set needs: the paper's training resolution, where its source is, and the
    run settings it implies (``run``: RunConfig fields, e.g. the demo's preset and table)."""

    size: int
    crop: Optional[int] = None
    default_source: Optional[Path] = None
    note: str = ""
    run: Optional[dict] = None


def source_env(dataset: str) -> str:
    """``SUBSAMPLE_<DATASET>_SOURCE``, e.g. ``SUBSAMPLE_ANIME_FACES_SOURCE``."""
    return "SUBSAMPLE_" + "".join(c if c.isalnum() else "_" for c in dataset.upper()) + "_SOURCE"


DATASETS: dict[str, DatasetPreset] = {
    # The demo: `subsample demo` = `subsample run --dataset demo`. The `demo` preset (DCGAN ngf=ndf=16,
    # constructed B=64, 10 epochs: 310 steps), a 17x17 table (16 bins: 2,000 images at B=64 leave
    # most cells of a 33x33 table rounding to zero) and the feature-space metrics of 2,000 samples
    # (Inception on a CPU would take longer than the training: --set evaluate.fidelity=true).
    "demo": DatasetPreset(
        32,
        None,
        DEMO_SOURCE,
        "2,000 CIFAR-10 images embedded in data/demo/",
        run={"preset": "demo", "tables": {"bins": [16, 16]}, "evaluate": {"samples": 2000, "fidelity": False}},
    ),
    # The paper's CelebA protocol: centre-crop 178x178 (the aligned images are 178x218), resize to 64.
    "celeba": DatasetPreset(64, 178, None, "img_align_celeba.zip or its folder"),
    "cifar10": DatasetPreset(32, None, None, "cifar-10-batches-bin/ (or -py) folder"),
    # The paper's cartoon faces at 48x48 (its Section 3 "anime faces" experiments).
    "anime-faces": DatasetPreset(48, None, None, "folder or zip of face crops"),
    # MNIST at 32x32 (DCGAN's convention: the 28x28 digits resized), grey -> three equal channels.
    "mnist": DatasetPreset(32, None, None, "train-images-idx3-ubyte (IDX) file"),
}


def dataset_defaults(dataset: str) -> dict[str, Any]:
    """The RunConfig fields a known data set implies (its ingest size and crop, and for the demo
    its preset, table and evaluation); {} otherwise."""
    preset = DATASETS.get(dataset)
    if preset is None:
        return {}
    return merge({"ingest": {"size": preset.size, "crop": preset.crop}}, preset.run or {})


def preset_defaults(name: str, dataset: Optional[str] = None, stage: str = "run") -> dict[str, Any]:
    """The train and batches values of a training preset (``pipeline.presets``), for ``dataset``'s
    kind when given (e.g. paper-constructed's B = 2048 on CIFAR-10)."""
    from pipeline.presets import get_preset

    train, batches = get_preset(name, stage).values(dataset)
    return {"train": {**train, "preset": name}, "batches": batches}


class RunConfig(BaseModel):
    """Everything one run of ``train-subsample`` needs (validated; shown as a form in the UI)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field("demo", description="data set name; its store is $SUBSAMPLE_HOME/datasets/<dataset>.zarr")
    source: Optional[str] = Field(
        None,
        description="source path; default: $SUBSAMPLE_<DATASET>_SOURCE, or the embedded data for 'demo'",
    )
    ingest: IngestOptions = Field(default_factory=IngestOptions)  # type: ignore[valid-type]
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    tables: TablesConfig = Field(default_factory=TablesConfig)
    batches: BatchesConfig = Field(default_factory=BatchesConfig)
    preset: Optional[str] = Field(
        None, description="training preset (`subsample presets`): its train and batches values, under those given here"
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    only: Optional[Stage] = Field(None, description="run this one stage; its upstream must be cached")
    refresh: Optional[Stage] = Field(None, description="rebuild this stage and everything downstream")
    dask_address: Optional[str] = Field(
        None, description="Dask scheduler for the features stage (tcp://host:8786); None = local cluster"
    )
    train_deployment: Optional[str] = Field(
        None,
        description="run the train stage as a child flow run of this deployment (e.g. train-subsample/celeba-gpu "
        "on a GPU work pool); both workers must share $SUBSAMPLE_HOME and the MLflow tracking URI",
    )

    @model_validator(mode="before")
    @classmethod
    def _defaults_under_given(cls, data: Any) -> Any:
        """Defaults, then the data set's (ingest size, crop), then the preset's (train, batches),
        then the values given: a section given as a dict keeps the fields it does not name."""
        if not isinstance(data, dict):
            return data
        base: dict[str, Any] = {}
        if isinstance(data.get("dataset"), str):
            base = merge(base, dataset_defaults(data["dataset"]))
        given = {k: (v.model_dump(exclude_unset=True) if isinstance(v, BaseModel) else v) for k, v in data.items()}
        if given.get("preset") is None:  # None = not given: the data set's preset, if it has one
            given.pop("preset", None)
        preset = given.get("preset", base.get("preset"))
        if isinstance(preset, str):
            dataset = data["dataset"] if isinstance(data.get("dataset"), str) else None
            base = merge(base, preset_defaults(preset, dataset))
        return merge(base, given)

    @field_validator("dataset")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return check_name(v)

    @model_validator(mode="after")
    def _refresh_runs(self) -> "RunConfig":
        if self.only and self.refresh and STAGES.index(self.refresh) > STAGES.index(self.only):
            raise ValueError(f"refresh={self.refresh} is downstream of only={self.only}: nothing would be refreshed")
        return self

    # --- what runs --------------------------------------------------------------------------

    def stages(self) -> tuple[str, ...]:
        """The stages this run executes, in order."""
        return (self.only,) if self.only else STAGES

    def refreshes(self, stage: str) -> bool:
        """Whether ``stage`` is forced: it is ``refresh`` or downstream of it."""
        return self.refresh is not None and STAGES.index(stage) >= STAGES.index(self.refresh)

    # --- the stage configs ------------------------------------------------------------------

    def resolved_source(self) -> str:
        """``source``, else ``$SUBSAMPLE_<DATASET>_SOURCE``, else the data set's default source.
        Resolved when ingest runs (on the worker), so a deployment can leave it to the machine."""
        if self.source:
            return self.source
        env = source_env(self.dataset)
        if os.environ.get(env):
            return os.environ[env]
        preset = DATASETS.get(self.dataset)
        if preset and preset.default_source is not None:
            return str(preset.default_source)
        what = f" ({preset.note})" if preset and preset.note else ""
        raise SubsampleError(
            "ingest",
            f"no source for data set {self.dataset!r}{what}: pass --source PATH (deployment: --param source=PATH) "
            f"or set {env}",
        )

    def ingest_config(self) -> IngestConfig:
        return IngestConfig(source=self.resolved_source(), name=self.dataset, **self.ingest.model_dump())

    def features_config(self) -> FeaturesConfig:
        if self.dask_address:
            return self.features.model_copy(update={"dask_address": self.dask_address})
        return self.features


# The sections each stage command reads: its own, and those that name its inputs (which table a
# training run's batches come from). `subsample train --set evaluate.samples=10` would change nothing.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "ingest": ("ingest",),
    "features": ("features",),
    "tables": ("features", "tables"),
    "batches": ("features", "tables", "batches"),
    "train": ("features", "tables", "batches", "train"),
    "evaluate": ("evaluate",),
}


def parse_overrides(
    overrides: list[str] | tuple[str, ...], stage: str = "run", section: Optional[str] = None
) -> dict[str, Any]:
    """``--set`` in its one grammar, for every command: ``section.field=value`` (``tables.bins=[8,8]``,
    ``train.lr_d=1e-4``) or a run-level ``field=value`` (``preset=smoke``, ``only=tables``), as a
    nested dict. On a stage command (``section``: the stage it runs) a bare key that is not a
    run-level field is that stage's (``subsample train --set lr_d=1e-4`` is ``train.lr_d=1e-4``), and
    a dotted key must name a section the stage reads (:data:`STAGE_SECTIONS`; ``train`` reads
    ``features``, ``tables``, ``batches``, ``train``), else one line says which command uses it.
    Values are JSON when they parse as JSON (numbers, lists, true/false/null), else strings."""
    out: dict[str, Any] = {}
    reads = STAGE_SECTIONS.get(section or "")
    for item in overrides:
        path, sep, raw = item.partition("=")
        path = path.strip()
        if not sep or not path:
            example = "lr_d=1e-4 or train.lr_d=1e-4" if section == "train" else "tables.bins=[8,8]"
            raise SubsampleError(stage, f"--set {item!r}: expected section.field=value, e.g. {example}")
        head = path.split(".")[0]
        if reads and head not in RunConfig.model_fields:
            path, head = f"{section}.{path}", section
        if reads and head in _section_models() and head not in reads:
            raise SubsampleError(
                stage,
                f"--set {item!r}: `subsample {section}` does not use the {head} settings (it reads "
                f"{', '.join(reads)}); `subsample run --set {item}` does",
            )
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        node = out
        keys = path.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise SubsampleError(stage, f"--set {item!r}: {key} is set twice, as a value and as a section")
        node[keys[-1]] = value
    return out


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: sections merge field by field, other values are replaced."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def build_config(fields: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A flow run's (a deployment's) parameters, plus ``section.field=value`` overrides, as a
    RunConfig: :func:`resolve_config` without the machine's layer (the parameters say what to run;
    a run the CLI started arrives resolved) and without the checks of this machine's files and
    devices (the worker resolves the source when ingest runs; a GPU deployment's runs train there)."""
    return resolve_config("run", fields, overrides, machine=False, checks=False, devices=False)


def demo_fields() -> dict[str, Any]:
    """``subsample demo`` = ``subsample run --dataset demo``: the embedded 2,000 CIFAR-10 images
    with the demo data set's settings (:data:`DATASETS`), 1-3 minutes on a 2-core CPU."""
    return {"dataset": "demo"}


# --- one resolution for every command ----------------------------------------------------------


def _stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


def cuda_available() -> bool:
    """Whether torch sees a CUDA (or ROCm) device. Without an NVIDIA or AMD device node the answer
    is no without importing torch (2-5 s), so the checks before a run stay fast on a CPU."""
    if not any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version", "/dev/kfd")):
        return False
    import torch

    return bool(torch.cuda.is_available())


def run_device(requested: Optional[str]) -> str:
    """``cpu`` or ``cuda``: where a run with ``device=requested`` (auto, cpu, cuda) trains."""
    if requested in ("cpu", "cuda"):
        return requested
    return "cuda" if cuda_available() else "cpu"


def check_devices(data: dict[str, Any], stage: str) -> None:
    """A CUDA device asked for (``train.device``, ``evaluate.device``, ``ingest.decode_device``, by
    ``--set``, a flag, a preset or a data set) that this machine lacks is one line, before any
    stage runs or any cached result is returned: a cache hit would otherwise hide it."""
    instead = {
        ("train", "device"): "train.device=auto (CUDA when there is one) or cpu",
        ("evaluate", "device"): "cpu, or leave the device out (CUDA when there is one)",
        ("ingest", "decode_device"): "ingest.decode_device=cpu",
    }
    for (section, field), hint in instead.items():
        value = effective(data, section, field)
        if isinstance(value, str) and value.startswith("cuda") and not cuda_available():
            raise SubsampleError(
                stage,
                f"{section}.{field}={value} asked for, but this machine has no CUDA device (torch sees none): "
                f"use {hint}, or run on a GPU machine",
            )


def machine_defaults(device: str) -> tuple[dict[str, Any], str]:
    """What a command runs on this machine when nothing says otherwise, and a one-line note: on a
    CPU the demo-sized preset and 2,000 evaluation samples with the feature-space metrics only
    (Inception ran at ~2 images/s on the 2-core development CPU: 10,000 samples take 1.5 hours);
    on a GPU the paper's preset and the full protocol (10,000 samples, IS/FID/KID)."""
    from pipeline.presets import DEVICE_PRESETS

    preset = DEVICE_PRESETS[device]
    if device == "cuda":
        return {"preset": preset, "evaluate": {}}, f"GPU found: preset {preset!r} (the paper's)"
    return (
        {"preset": preset, "evaluate": {"samples": 2000, "fidelity": False}},
        f"no GPU: preset {preset!r} (CPU-sized; the paper's is paper-constructed, days on a CPU; --preset P picks one)"
        "; an evaluation of 2,000 samples without IS/FID/KID (--set evaluate.fidelity=true adds them)",
    )


def evaluate_machine_defaults(device: str) -> tuple[dict[str, Any], Optional[str]]:
    """``subsample evaluate``'s defaults here: on a CPU 2,000 samples, feature-space metrics only."""
    layer, _ = machine_defaults(device)
    if device == "cuda":
        return {}, None
    return layer["evaluate"], (
        "evaluate: no GPU: 2,000 samples and the feature-space metrics only (IS/FID/KID run Inception at "
        "~2 images/s on a CPU); --samples N and --fidelity change that"
    )


def _section_models() -> dict[str, type[BaseModel]]:
    return {
        name: field.annotation
        for name, field in RunConfig.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    }


def check_keys(data: dict[str, Any], stage: str) -> None:
    """Unknown fields in ``data`` (RunConfig fields and section fields) are one line naming them,
    the nearest valid name and every valid name, before pydantic (or torch) is involved."""
    top = list(RunConfig.model_fields)
    unknown = [k for k in data if k not in RunConfig.model_fields]
    if unknown:
        owners = [s for s, model in _section_models().items() if unknown[0] in model.model_fields]
        if len(owners) == 1:  # `subsample run --set lr_d=1e-4`: a stage's field without its section
            raise SubsampleError(
                stage,
                f"unknown setting {unknown[0]!r}: a {owners[0]} setting is given as {owners[0]}.{unknown[0]}=VALUE",
            )
        raise SubsampleError(stage, unknown_keys_message(unknown, top))
    for section, model in _section_models().items():
        value = data.get(section)
        if isinstance(value, dict):
            bad = [k for k in value if k not in model.model_fields]
            if bad:
                raise SubsampleError(stage, unknown_keys_message(bad, list(model.model_fields), section))


def check_preset(name: Any, stage: str) -> None:
    from pipeline.presets import get_preset

    if isinstance(name, str):
        get_preset(name, stage)


def check_source(dataset: str, source: Optional[str], stage: str) -> None:
    """The source a run's ingest will read exists (the same resolution as
    :meth:`RunConfig.resolved_source`); an unknown data set without a source suggests the nearest
    known name and says how to give one."""
    if not source:
        env = source_env(dataset)
        source = os.environ.get(env) or None
        known = DATASETS.get(dataset)
        if source is None and known is not None and known.default_source is not None:
            source = str(known.default_source)
        if source is None:
            from storage.paths import datasets_dir  # not storage.store: zarr takes a while to import

            stores = [p.name[: -len(".zarr")] for p in datasets_dir().glob("*.zarr")] if datasets_dir().is_dir() else []
            names = sorted({*DATASETS, *stores})
            hint = "" if dataset in names else did_you_mean(dataset, names)  # a known name needs no suggestion
            what = f" ({known.note})" if known and known.note else ""
            raise SubsampleError(
                stage,
                f"no source for data set {dataset!r}{what}{hint}: pass --source PATH or set {env}; "
                f"known data sets: {', '.join(DATASETS)}",
            )
    if not Path(source).expanduser().exists():
        raise SubsampleError(
            stage, f"source {Path(source).expanduser().absolute()} of data set {dataset!r} does not exist"
        )


def data_set_size(
    dataset: str, source: Optional[str], reads_source: bool, split: str = "train"
) -> Optional[tuple[int, str]]:
    """``(n, where)``: the images in the data set's store, else (when the run ingests) an upper
    bound from the source's listing (files or records); None when neither is known cheaply."""
    from storage.store import open_store

    try:
        store = open_store(dataset)
        same_source = source and store.attrs.get("source") == str(Path(source).expanduser().absolute())
        if not reads_source or (same_source and store.attrs.get("split", "train") == split):
            return store.n, str(store.path)
    except SubsampleError:
        if not reads_source:  # the run starts from the store: say it is missing, now
            raise
    if source:  # the run (re)builds the store from this source: its listing bounds n
        from pipeline.data.sources import open_source

        try:
            src = open_source(source, split=split)
        except SubsampleError:
            return None  # ingest says what is wrong with it
        if src.format != "cifar10-python":  # its count is a guess until unpickled
            return src.n_items, str(src.path)
    return None


def check_batch_sizes(
    dataset: str, batch_sizes: list[int], source: Optional[str], reads_source: bool, stage: str, split: str = "train"
) -> None:
    """Every batch size fits the data set: an epoch has floor(n / B) batches, none when B > n."""
    size = data_set_size(dataset, source, reads_source, split)
    if size is None:
        return
    n, where = size
    too_big = sorted(b for b in batch_sizes if b > n)
    if too_big:
        raise SubsampleError(
            stage,
            f"batch size {too_big[-1]} is larger than data set {dataset!r} ({n:,} images, {where}): "
            f"an epoch would have no batch; use at most {n}",
        )


def effective(data: dict[str, Any], section: str, field: str) -> Any:
    """A section's value after the preset's and the defaults (before validation)."""
    value = (data.get(section) or {}).get(field)
    if value is not None:
        return value
    if isinstance(data.get("preset"), str) and section in ("train", "batches"):
        from pipeline.presets import PRESETS

        value = getattr(PRESETS[data["preset"]], section).get(field)
        if value is not None:
            return value
    return _section_models()[section].model_fields[field].default


def drop_none(d: dict[str, Any]) -> dict[str, Any]:
    """Nested dict without None values (flags the user did not give)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out


def as_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """A command's or a flow's fields as plain data: a section given as a config object keeps only
    the fields it was given (the data set's and the preset's values fill the rest); a top-level
    None is not given. A None inside a section is a value (``train.clip=None`` turns clipping off)."""
    return {
        k: (v.model_dump(exclude_unset=True) if isinstance(v, BaseModel) else v)
        for k, v in fields.items()
        if v is not None
    }


def resolve_config(
    stage: str,
    fields: dict[str, Any],
    sets: list[str] | tuple[str, ...] = (),
    flags: Optional[dict[str, Any]] = None,
    *,
    note: Callable[[str], None] = _stderr,
    machine: bool = True,
    checks: bool = True,
    check_batches: bool = True,
    devices: bool = True,
) -> RunConfig:
    """The one resolution of a run's configuration, for every command (``run``, ``demo``, the
    stage commands, each cell of ``compare``) and every deployment (:func:`build_config`), in one
    order: RunConfig's defaults < what fits this machine (:func:`machine_defaults`, when
    ``machine``) < the data set's (:func:`dataset_defaults`) < the preset's < ``fields`` (what the
    command was given) < ``sets`` (``--set``, :func:`parse_overrides`; on a stage command, ``stage``
    names it and a bare key is that stage's field) < ``flags`` (the command's dedicated options;
    None values mean not given). ``stage`` names the command in error messages.

    Before anything expensive (importing torch, starting a Prefect server): unknown keys, preset
    and data set names (each with the nearest valid name), and, with ``checks``, whether the
    source exists when the run ingests and whether the batch size fits the data set (its store, or
    the source's listing; ``check_batches=False`` leaves that to the caller, e.g. ``train`` before
    it picks built batches), and, with ``devices``, that a CUDA device asked for exists here."""
    sets_data = parse_overrides(sets, stage, stage if stage in STAGE_SECTIONS else None)
    flag_data = drop_none(flags or {})
    given = merge(merge(as_fields(fields), sets_data), flag_data)
    given = merge(given, {"evaluate": implied_evaluate(given.get("evaluate") or {})})
    asked = given["evaluate"]
    check_keys(given, stage)
    dataset = given.get("dataset", RunConfig.model_fields["dataset"].default)
    try:
        check_name(dataset)
    except (TypeError, ValueError) as e:
        raise SubsampleError(stage, str(e)) from None
    check_preset(given.get("preset"), stage)

    base = dataset_defaults(dataset) if isinstance(dataset, str) else {}
    why = None
    if machine and "preset" not in given and "preset" not in base:
        evaluating = given.get("only") == "evaluate"
        device = run_device(effective(given, "evaluate" if evaluating else "train", "device"))
        layer, why = machine_defaults(device)
        base = merge(layer, base)
        if evaluating:  # evaluate's own note, unless everything the machine's layer sets for it was given
            _, why = evaluate_machine_defaults(device)
            if why and all(k in asked for k in layer["evaluate"]):
                why = None
    data = merge(base, given)
    check_preset(data.get("preset"), stage)
    if devices:
        check_devices(data, stage)

    only = data.get("only")
    reads_source = only in (None, "ingest")
    if checks and reads_source:
        check_source(dataset, data.get("source"), stage)
    if checks and check_batches and only in (None, "batches", "train"):
        source = (
            data.get("source")
            or os.environ.get(source_env(dataset))
            or (
                str(DATASETS[dataset].default_source)
                if dataset in DATASETS and DATASETS[dataset].default_source
                else None
            )
        )
        check_batch_sizes(
            dataset,
            [int(effective(data, "batches", "batch_size"))],
            source,
            reads_source,
            stage,
            str(effective(data, "ingest", "split")),
        )
    flag_paths = {(s, f) for s, v in flag_data.items() if isinstance(v, dict) for f in v} | {
        (k,) for k, v in flag_data.items() if not isinstance(v, dict)
    }
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        raise SubsampleError(stage, validation_message(e, RunConfig, flags=flag_paths)) from None
    if why:  # after validation: a refused command prints its one error line only
        note(why if only == "evaluate" else f"{stage}: {why.split('; an evaluation')[0] if only == 'train' else why}")
    return cfg


def implied_evaluate(asked: dict[str, Any]) -> dict[str, Any]:
    """What an evaluation's given settings imply: an extractor or its weights named turns IS/FID/KID
    on; metric names (``fid10k_train``) carry their sample count and whether torch-fidelity runs.
    Only what was not given itself is implied."""
    implied: dict[str, Any] = {}
    if ("weights" in asked or "feature_extractor" in asked) and "fidelity" not in asked:
        implied["fidelity"] = True
    if asked.get("metrics"):
        from pipeline.metrics import parse_metric_name

        names = asked["metrics"].split(",") if isinstance(asked["metrics"], str) else list(asked["metrics"])
        parsed = [parse_metric_name(str(x).strip()) for x in names]
        counts = {n for _, n in filter(None, parsed)}
        if not counts:  # no name is right: the count they were written for, so the error lists those names
            tokens = {re.search(r"(\d+)(k?)_?", str(x)) for x in names} - {None}
            counts = {int(m[1]) * (1000 if m[2] else 1) for m in tokens} - {0}
        if "samples" not in asked and len(counts) == 1:
            implied["samples"] = counts.pop()
        if "fidelity" not in asked and any(p and p[0].family == "fidelity" for p in parsed):
            implied["fidelity"] = True
    return implied


def describe_batches(b: BatchesConfig) -> str:
    extra = (
        f", top_k {b.top_k}, fill {b.fill}" if b.strategy == "constructed" and (b.top_k, b.fill) != (8, "topk") else ""
    )
    return f"{b.strategy} B={b.batch_size} seed {b.seed}{extra}"


def train_batches(
    cfg: RunConfig, *, chose_batches: bool, chose_preset: bool, note: Callable[[str], None] = _stderr
) -> RunConfig:
    """``subsample train``'s batches, said in one line. With no batch setting and no preset given,
    the batches ``subsample batches`` last built from this data set's table (what a user who just
    built them means); otherwise the resolved ones, with a pointer to the built ones if they differ.
    The run seed follows the batches' seed (``--seed`` sets both)."""
    from pipeline.stages.batches import built_batches

    built = built_batches(cfg.dataset, cfg.tables, cfg.features)
    same = lambda a, b: a.model_dump(exclude={"epochs"}) == b.model_dump(exclude={"epochs"})  # noqa: E731
    origin = f"preset {cfg.preset}" if cfg.preset else "the defaults"
    if built and not chose_batches and not chose_preset:
        b, key = built[0]
        b = b.model_copy(update={"epochs": cfg.batches.epochs})
        note(
            f"train: batches {describe_batches(b)}, as `subsample batches` built them (stages/batches/{key}); "
            "--batch-size, --strategy, --seed choose others"
        )
        return cfg.model_copy(update={"batches": b, "train": cfg.train.model_copy(update={"seed": b.seed})})
    hint = ""
    if built and not any(same(b, cfg.batches) for b, _ in built):
        b = built[0][0]
        hint = (
            f"; `subsample batches` built {describe_batches(b)} for this table: "
            f"--strategy {b.strategy} --batch-size {b.batch_size} --seed {b.seed} trains on those"
        )
    source = "the options given" if chose_batches else origin
    note(f"train: batches {describe_batches(cfg.batches)} from {source}{hint}")
    return cfg


UNRECORDED_DATASET = "unrecorded-data-set"  # no known data set has this name: none of DATASETS' defaults apply


def resolve_evaluate_config(
    flags: dict[str, Any],
    dataset: Optional[str] = None,
    note: Callable[[str], None] = _stderr,
    *,
    sets: list[str] | tuple[str, ...] = (),
) -> EvaluateConfig:
    """``subsample evaluate``'s config, by :func:`resolve_config` for the run's data set: defaults <
    what fits this machine (on a CPU 2,000 samples, no IS/FID/KID, said in one line when it
    applies) < the data set's (the demo's: 2,000 samples) < ``--set`` < the flags given (None = not
    given). ``dataset`` None: the run records none, so no data set's defaults apply."""
    fields = {"dataset": dataset if isinstance(dataset, str) else UNRECORDED_DATASET, "only": "evaluate"}
    return resolve_config("evaluate", fields, sets, {"evaluate": flags}, note=note).evaluate
