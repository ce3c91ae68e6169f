"""The comparison's configuration: :class:`CompareConfig`, the grid and the shared settings of one
``compare-strategies`` run (validated; a form in the Prefect UI), and :func:`build_compare_config`.

It resolves the design's cells (:func:`CompareConfig.cells`) and each cell's run config
(:meth:`CompareConfig.cell_run_config`): the cell's preset for the data set, the scale's changes to
that recipe (:meth:`pipeline.experiments.compare.Scale.recipe_train`: model size and sample sizes,
the learning rate × its optimiser's factor, the paper design's epochs × the scale's factor), the
user's values, the cell's strategy, B and seed.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flows.config import IngestOptions, RunConfig, as_fields, dataset_defaults, merge, parse_overrides
from flows.resolve import build_config
from pipeline.config import FeaturesConfig, TablesConfig, validation_message
from pipeline.experiments.compare import (
    DEFAULT_SEEDS,
    PAPER_DESIGN,
    SCALES,
    STRATEGIES,
    GridCell,
    Scale,
    cell_sections,
    design_cell,
    expand_grid,
    paper_grid,
)
from storage.errors import SubsampleError
from storage.paths import check_name


class CompareConfig(BaseModel):
    """The grid and the shared settings of one comparison (validated; a form in the Prefect UI)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field("demo", description="data set name; its store is $SUBSAMPLE_HOME/datasets/<dataset>.zarr")
    source: Optional[str] = Field(
        None, description="source path; default: $SUBSAMPLE_<DATASET>_SOURCE, or the embedded data for 'demo'"
    )
    scale: Literal["smoke", "cpu", "paper"] = Field(
        "smoke",
        description="smoke: tiny models, minutes on a CPU, checks the machinery; cpu: small models that learn, "
        "about 7 minutes (factorial) or 10 (paper design) on an "
        "idle 2-core CPU; paper: the paper's settings, for a GPU",
    )
    design: Literal["factorial", "paper"] = Field(
        "factorial",
        description="factorial: strategies × batch sizes × presets; paper: exactly the paper's cells "
        "(the method at B = 2000/2048 and 1024, strategies (a)-(d) at 128), each at its preset's B and epochs",
    )
    strategies: tuple[str, ...] = Field(
        STRATEGIES,
        description="batch strategies (pipeline.stages.batches.STRATEGIES): trained (factorial) and diagnosed "
        "at every batch size of the design (both designs)",
    )
    batch_sizes: Optional[tuple[int, ...]] = Field(None, description="factorial: batch sizes B; None = the scale's")
    presets: Optional[tuple[str, ...]] = Field(
        None, description="factorial: training presets (`subsample presets`); None = the scale's"
    )
    batch_scale: Optional[float] = Field(
        None,
        gt=0,
        le=1,
        description="paper design: the paper's batch sizes × this (to fit a small data set); None = the scale's",
    )
    seeds: int = Field(
        DEFAULT_SEEDS,
        ge=3,
        description="seeds 0..seeds-1 per configuration (training and batches seed); a spread needs >= 3",
    )
    ingest: IngestOptions = Field(default_factory=IngestOptions)  # type: ignore[valid-type]
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    tables: TablesConfig = Field(default_factory=TablesConfig)
    train: dict[str, Any] = Field(
        default_factory=dict, description="TrainConfig values over every preset and the scale's (e.g. epochs, device)"
    )
    evaluate: dict[str, Any] = Field(
        default_factory=dict, description="EvaluateConfig values over the scale's (e.g. samples, weights)"
    )
    batches: dict[str, Any] = Field(
        default_factory=dict,
        description="BatchesConfig values under each cell's strategy, B and seed (e.g. top_k, fill, topup)",
    )
    diagnostic_epochs: Optional[int] = Field(
        None, ge=1, description="epochs of batches the coverage/KL tables cover; None = the scale's"
    )
    dask_address: Optional[str] = Field(None, description="Dask scheduler for the features stage; None = local")

    @model_validator(mode="before")
    @classmethod
    def _dataset_ingest(cls, data: Any) -> Any:
        """The data set's ingest convention (size, crop) under the ingest values given, resolved
        here so the config carries it explicitly (a deployment's parameters show it)."""
        if isinstance(data, dict) and isinstance(data.get("dataset"), str):
            given = data.get("ingest") or {}
            given = given.model_dump(exclude_unset=True) if isinstance(given, BaseModel) else dict(given)
            data = {**data, "ingest": merge(dataset_defaults(data["dataset"]).get("ingest", {}), given)}
        return data

    @field_validator("dataset")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("strategies")
    @classmethod
    def _known_strategies(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from pipeline.data.strategies import STRATEGIES as REGISTERED

        for s in v:
            REGISTERED.validate(s)
        if not v or len(set(v)) != len(v):
            raise ValueError(f"give distinct strategies among {', '.join(REGISTERED)} (got {list(v)})")
        return v

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, v: Optional[tuple[int, ...]]) -> Optional[tuple[int, ...]]:
        if v is not None and (not v or min(v) < 1 or len(set(v)) != len(v)):
            raise ValueError(f"give distinct positive batch sizes (got {list(v)})")
        return v

    @field_validator("presets")
    @classmethod
    def _known_presets(cls, v: Optional[tuple[str, ...]]) -> Optional[tuple[str, ...]]:
        from pipeline.presets import PRESETS

        for p in v or ():
            PRESETS.validate(p)
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError(f"give distinct presets among {', '.join(PRESETS)} (got {list(v)})")
        return v

    @model_validator(mode="after")
    def _cells_validate(self) -> "CompareConfig":
        """The paper design fixes its cells; every preset's run config must validate with these
        train/evaluate values (a typo in a field fails here, before anything trains)."""
        if self.design == "paper":
            given = [f"--{f.replace('_', '-')}" for f in ("batch_sizes", "presets") if getattr(self, f) is not None]
            if given:
                raise ValueError(
                    f"the paper design fixes its cells' presets and batch sizes; drop {' and '.join(given)} "
                    "or use --design factorial"
                )
            for cell in self.cells():
                if cell.seed == 0:
                    self.cell_run_config(cell)
            return self
        if self.batch_scale is not None:
            raise ValueError("batch_scale applies to the paper design only (--design paper)")
        for preset in self.grid_presets:
            self.cell_run_config(GridCell(self.strategies[0], self.grid_batch_sizes[0], preset, 0))
        return self

    # --- the grid --------------------------------------------------------------------------------

    @property
    def scale_spec(self) -> Scale:
        return SCALES[self.scale]

    @property
    def grid_batch_scale(self) -> float:
        return self.batch_scale or self.scale_spec.batch_scale

    @property
    def grid_batch_sizes(self) -> tuple[int, ...]:
        """Every batch size of the design (the paper's: its cells', resolved for the data set)."""
        if self.design == "paper":
            return tuple(sorted({c.batch_size for c in self.cells()}))
        return self.batch_sizes or self.scale_spec.batch_sizes

    @property
    def grid_presets(self) -> tuple[str, ...]:
        if self.design == "paper":
            return tuple(dict.fromkeys(c.preset for c in PAPER_DESIGN))
        return self.presets or self.scale_spec.presets

    @property
    def grid_seeds(self) -> tuple[int, ...]:
        return tuple(range(self.seeds))

    @property
    def grid_diagnostic_epochs(self) -> int:
        return self.diagnostic_epochs or self.scale_spec.diagnostic_epochs

    def cells(self) -> list[GridCell]:
        if self.design == "paper":
            return paper_grid(self.dataset, self.grid_seeds, self.grid_batch_scale)
        return expand_grid(self.strategies, self.grid_batch_sizes, self.grid_presets, self.grid_seeds)

    def base_run_config(self) -> RunConfig:
        """The shared upstream: ingest, features, tables (as ``train-subsample`` runs them)."""
        return build_config(self._shared_fields())

    def cell_run_config(self, cell: GridCell) -> RunConfig:
        """The cell's run: its preset (for the data set), the scale's changes to that recipe
        (:meth:`Scale.recipe_train`: its learning rate × its optimiser's factor, the paper design's
        epochs × the scale's factor), the given values, the cell's batches and seed. In the paper
        design a cell that the paper compares at equal epochs with 1-D-step cells but that takes
        ``d_steps`` D steps (a batch each) per G step, (b), trains ``epochs × d_steps`` epochs, so its
        G updates equal theirs."""
        from pipeline.presets import resolve_train_config

        recipe = resolve_train_config(cell.preset, dataset=self.dataset)
        scale_train = self.scale_spec.recipe_train(recipe, self.design, self.train)
        sections = cell_sections(
            cell,
            self.scale_spec,
            self.train,
            self.evaluate,
            self.grid_diagnostic_epochs,
            self.batches,
            scale_train=scale_train,
        )
        rc = build_config({**self._shared_fields(), **sections})
        dc = design_cell(cell.preset, cell.strategy) if self.design == "paper" else None
        if dc is not None and dc.equal_g_updates and rc.train.d_steps > 1:
            sections["train"] = {**sections["train"], "epochs": rc.train.epochs * rc.train.d_steps}
            rc = build_config({**self._shared_fields(), **sections})
        return rc

    def diagnostics_configs(self) -> list[Any]:
        """The BatchesConfig of every strategy × batch size × seed of the design, with the first
        preset's batch settings (top-k, fill, top-up): the batches the report's Tables 1-2 show."""
        preset = self.grid_presets[0]
        return [
            self.cell_run_config(GridCell(s, b, preset, seed)).batches
            for b in self.grid_batch_sizes
            for s in self.strategies
            for seed in self.grid_seeds
        ]

    def design_records(self, n_images: int) -> list[dict[str, Any]]:
        """Each configuration as it trains: B, epochs, D steps per G step, batches per epoch and G
        updates (``epochs × floor(n / B) // d_steps``, or the max_steps cap), its optimiser and
        learning rates, and for the paper design what it reproduces, its budget and its row of the
        paper's tables."""
        from pipeline.experiments.paper import paper_row_label
        from pipeline.presets import dataset_kind

        out, seen = [], set()
        for cell in self.cells():
            if cell.configuration in seen:
                continue
            seen.add(cell.configuration)
            t = self.cell_run_config(cell).train
            m = n_images // cell.batch_size
            d_steps_total = t.epochs * m if t.max_steps is None else min(t.epochs * m, t.max_steps)
            dc = design_cell(cell.preset, cell.strategy) if self.design == "paper" else None
            out.append(
                {
                    "configuration": cell.configuration,
                    "preset": cell.preset,
                    "strategy": cell.strategy,
                    "batch_size": cell.batch_size,
                    "epochs": t.epochs,
                    "d_steps": t.d_steps,
                    "batches_per_epoch": m,
                    "g_updates": d_steps_total // t.d_steps,
                    "images_seen": d_steps_total * cell.batch_size,
                    "optimizer": t.optimizer,
                    "lr_g": t.lr_g,
                    "lr_d": t.lr_d,
                    "reproduces": dc.reproduces if dc else None,
                    "group": dc.group if dc else None,
                    "paper_row": paper_row_label(dc.paper_row, dataset_kind(self.dataset)) if dc else None,
                    "equal_g_updates": bool(dc and dc.equal_g_updates and t.d_steps > 1),
                }
            )
        return out

    def _shared_fields(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "source": self.source,
            "ingest": self.ingest,
            "features": self.features,
            "tables": self.tables,
            "dask_address": self.dask_address,
        }

    def mlflow_params(self) -> dict[str, Any]:
        """The parent run's params: the resolved grid and the settings."""
        return {
            "grid": {
                "strategies": list(self.strategies),
                "batch_sizes": list(self.grid_batch_sizes),
                "presets": list(self.grid_presets),
                "seeds": self.seeds,
                "diagnostic_epochs": self.grid_diagnostic_epochs,
                "cells": len(self.cells()),
            },
            "design": self.design,
            "batch_scale": self.grid_batch_scale if self.design == "paper" else None,
            "scale": self.scale,
            "dataset": self.dataset,
            "scale_train": self.scale_spec.train,
            "scale_lr_factors": self.scale_spec.lr_factors,
            "scale_paper_epoch_factor": self.scale_spec.paper_epoch_factor if self.design == "paper" else None,
            "scale_evaluate": self.scale_spec.evaluate,
            "train": self.train,
            "evaluate": self.evaluate,
            "batches": self.batches,
            "tables": self.tables.model_dump(mode="json"),
            "features": self.features.model_dump(mode="json"),
        }


def build_compare_config(fields: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> CompareConfig:
    """Validate ``fields`` plus ``--set`` overrides in the grammar of every command
    (:func:`flows.config.parse_overrides`: ``train.epochs=2``, ``evaluate.samples=1000``,
    ``tables.bins=[16,16]``, ``batch_scale=0.5``) into a CompareConfig; each cell's run resolves
    through :func:`flows.resolve.resolve_config` like ``subsample run``'s. A validation error becomes
    a one-line :class:`SubsampleError` naming the field."""
    data = merge(as_fields(fields), parse_overrides(overrides, "compare"))
    try:
        return CompareConfig.model_validate(data)
    except ValidationError as e:
        raise SubsampleError("compare", f"invalid comparison: {validation_message(e, CompareConfig)}") from None
    except SubsampleError as e:  # a cell's run config (raised by build_config)
        raise SubsampleError("compare", e.message) from None
