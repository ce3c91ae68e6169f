"""The preset registry: :class:`Preset`, :data:`PRESETS`, the data set kinds a preset's values vary
by, and the resolution of a preset's values into stage configs (see :mod:`pipeline.presets`)."""

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
