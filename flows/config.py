"""The flow's parameters: one validated :class:`RunConfig`, composed of the stage configs.

A run names its data set and source once, at the top; each stage keeps its own config section
(``ingest``, ``features``, ``tables``, ``batches``, ``train``, ``evaluate``) exactly as the stage
command takes it. ``only`` runs a single stage (its upstream must be cached), ``refresh`` forces
a stage and everything downstream of it. ``overrides`` (``section.field=value`` strings, the
CLI's ``--set``, parsed by :func:`parse_overrides`) are applied on top, so a deployment run can
change one field of a section without restating the rest (``--param overrides='["train.epochs=2"]'``).

Known data sets (:data:`DATASETS`) carry the paper's image size and crop and the environment
variable that names their source on a machine, so ``subsample run --dataset celeba`` needs no
more flags once ``SUBSAMPLE_CELEBA_SOURCE`` is set.

This module holds the model and the dict helpers that compose it; :mod:`flows.resolve` resolves a
command's run from them (:func:`flows.resolve.resolve_config`), after the checks of
:mod:`flows.checks` and with the defaults of :mod:`flows.machine`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from pipeline.config import (
    BatchesConfig,
    EvaluateConfig,
    FeaturesConfig,
    IngestConfig,
    StageConfig,
    TablesConfig,
    TrainConfig,
)
from storage.errors import SubsampleError
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


def demo_fields() -> dict[str, Any]:
    """``subsample demo`` = ``subsample run --dataset demo``: the embedded 2,000 CIFAR-10 images
    with the demo data set's settings (:data:`DATASETS`), 1-3 minutes on a 2-core CPU."""
    return {"dataset": "demo"}


def _section_models() -> dict[str, type[BaseModel]]:
    return {
        name: field.annotation
        for name, field in RunConfig.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    }


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
