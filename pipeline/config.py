"""Typed configuration for every stage, with defaults in one place.

Each stage config splits its fields into those that determine the artifact (they go into the
artifact key, see :meth:`StageConfig.key_params`) and execution-only fields (where to run, how many
workers), listed in ``_execution_fields``, that never change the result.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    _execution_fields: ClassVar[frozenset[str]] = frozenset()

    def key_params(self) -> dict[str, Any]:
        """The parameters that determine the artifact (JSON types only)."""
        return self.model_dump(mode="json", exclude=set(self._execution_fields))


class IngestConfig(StageConfig):
    """``subsample ingest SOURCE --name NAME --size S``."""

    source: str = Field(description="folder, zip, CIFAR-10 (binary or python) folder/file, IDX file, or .npz")
    name: str = Field(description="data set name; the store is $SUBSAMPLE_HOME/datasets/<name>.zarr")
    size: int = Field(32, ge=1, le=1024, description="output side S: images are S×S×3 uint8")
    crop: int | None = Field(
        None, ge=1, description="centre-crop side before resizing (CelebA convention: 178); None = largest centred square"
    )
    workers: int = Field(2, ge=1, description="parallel decode workers (Dask)")
    files_per_task: int = Field(256, ge=1, description="files decoded per Dask task")
    max_pixels: int = Field(64_000_000, ge=1, description="larger source images are quarantined (decompression bombs)")

    _execution_fields: ClassVar[frozenset[str]] = frozenset({"workers", "files_per_task"})


class FeaturesConfig(StageConfig):
    """``subsample features NAME``: per-image features (spec §1)."""

    features: tuple[str, ...] = Field(("colour_moment", "sharpness"), description="registered feature names, in table order")
    dask_address: str | None = Field(None, description="existing Dask scheduler address; None = local cluster")
    workers: int | None = Field(None, ge=1, description="local cluster workers (default: all cores)")

    _execution_fields: ClassVar[frozenset[str]] = frozenset({"dask_address", "workers"})


class TablesConfig(StageConfig):
    """``subsample tables NAME --bins M1 M2``: joint histogram table (spec §2)."""

    bins: tuple[int, ...] = Field((32, 32), description="m_i per feature; the table has (m_i + 1) cells per axis")

    @field_validator("bins")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(m < 1 for m in v):
            raise ValueError("bins must be positive integers, one per feature")
        return v


Strategy = Literal["random", "constructed", "dealt"]


class BatchesConfig(StageConfig):
    """``subsample batches NAME --batch-size B --strategy S --epochs E --seed K`` (spec §3)."""

    batch_size: int = Field(1024, ge=1)
    strategy: Strategy = "constructed"
    epochs: int = Field(1, ge=1)
    seed: int = 0
    top_k: int = Field(8, ge=1, description="constructed: shortfall filled from the k most frequent cells")
    fill: Literal["topk", "coverage"] = Field(
        "topk", description="constructed: 'coverage' first fills with not-yet-drawn images of cells whose T2 = 0"
    )
