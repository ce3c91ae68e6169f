"""The Prefect flow ``compare-strategies``: the paper's comparison (spec §6) as one flow.

It trains every cell of the comparison's design × seeds as a ``train-subsample`` run, with that
flow's own stage tasks: ingest, features and tables once (content-addressed, so every cell shares
them), then batches → train → evaluate per cell. ``design="factorial"`` trains ``strategies ×
batch sizes × presets``; ``design="paper"`` exactly the paper's cells
(:data:`pipeline.experiments.compare.PAPER_DESIGN`), each at its preset's batch size and epochs for the data
set. Before training, the batches of every strategy at every batch size of the design are
diagnosed and logged to the parent run (``batch_diagnostics.json``), with the design's resolved
budgets (``design.json``). All training runs are MLflow
runs nested under one parent run, and the report (:mod:`pipeline.experiments.report`) is built from what
MLflow recorded for the parent's children, written to ``$SUBSAMPLE_HOME/reports/<parent run id>/``
and logged to the parent run.

A cell whose stage fails with a :class:`~storage.errors.SubsampleError` (a diverging training run:
"non-finite D loss ...") is recorded as failed and the grid goes on; the report lists it. Any
other exception stops the flow (the same bug would fail every cell), with the parent run marked
``FAILED`` and a report of the cells done so far.

``scale`` picks the grid defaults and the settings laid over every preset
(:data:`pipeline.experiments.compare.SCALES`): ``smoke`` (tiny models, minutes on a CPU: checks the machinery),
``cpu`` (small models that learn, about 7 minutes on an idle 2-core CPU) or ``paper`` (the paper's epochs
and sizes, for a GPU machine).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Literal, Optional

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Failed
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flows.config import IngestOptions, RunConfig, as_fields, build_config, dataset_defaults, merge, parse_overrides
from flows.train_subsample import STAGE_TASKS, handed_on
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
from storage.errors import SubsampleError, redact_uri
from storage.paths import check_name, mlflow_tracking_uri

UPSTREAM = ("ingest", "features", "tables")  # once per comparison
PER_CELL = ("batches", "train", "evaluate")


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
        "about 7 minutes on an idle 2-core CPU; paper: the paper's settings, for a GPU",
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
        """The cell's run: its preset (for the data set), the scale's and the given values, the
        cell's batches and seed. In the paper design a cell that the paper compares at equal epochs
        with 1-D-step cells but that takes ``d_steps`` D steps (a batch each) per G step, (b), trains
        ``epochs × d_steps`` epochs, so its G updates equal theirs."""
        sections = cell_sections(
            cell, self.scale_spec, self.train, self.evaluate, self.grid_diagnostic_epochs, self.batches
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
        updates (``epochs × floor(n / B) // d_steps``, or the max_steps cap), and for the paper
        design what it reproduces and its budget."""
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
                    "reproduces": dc.reproduces if dc else None,
                    "group": dc.group if dc else None,
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
    through :func:`flows.config.resolve_config` like ``subsample run``'s. A validation error becomes
    a one-line :class:`SubsampleError` naming the field."""
    data = merge(as_fields(fields), parse_overrides(overrides, "compare"))
    try:
        return CompareConfig.model_validate(data)
    except ValidationError as e:
        raise SubsampleError("compare", f"invalid comparison: {validation_message(e, CompareConfig)}") from None
    except SubsampleError as e:  # a cell's run config (raised by build_config)
        raise SubsampleError("compare", e.message) from None


# --- tasks (plain functions of pipeline.experiments.compare and pipeline.experiments.report) ------------------------------


@task(name="record", cache_policy=NO_CACHE)
def record_task(
    parent_run_id: str, cell: GridCell, summaries: dict, error: Optional[str], train_key: Optional[str]
) -> dict:
    from pipeline.experiments.compare import record_cell

    return record_cell(parent_run_id, cell, summaries, error=error, train_key=train_key)


@task(name="report", cache_policy=NO_CACHE)
def report_task(parent_run_id: str) -> dict:
    from pipeline.experiments.report import build_report

    return build_report(parent_run_id)


def _train_key(rc: RunConfig, shared: dict[str, Any]) -> Optional[str]:
    """The train key of a cell whose training failed (to find its FAILED child run): the train
    stage's, for the shared upstream results (``pipeline.stages.lineage.train_key_for``)."""
    from pipeline.stages.lineage import train_key_for

    try:
        return train_key_for(
            rc.dataset, rc.train, rc.batches, rc.tables, rc.features, given={s: r.artifact for s, r in shared.items()}
        )
    except SubsampleError:
        return None


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _check_batch_sizes(cfg: CompareConfig) -> None:
    from storage.store import open_store

    n = open_store(cfg.dataset).n
    too_big = [b for b in cfg.grid_batch_sizes if b > n]
    if too_big:
        fix = (
            f"pass --set batch_scale=X (the paper's batch sizes × X; largest now {max(too_big)})"
            if cfg.design == "paper"
            else f"pass --batch-sizes no larger than {n}"
        )
        raise SubsampleError(
            "compare",
            f"batch size(s) {', '.join(map(str, too_big))} exceed the {n} images of {cfg.dataset!r}; {fix}",
        )


@task(name="batch-diagnostics", cache_policy=NO_CACHE)
def diagnostics_task(parent_run_id: str, cfg: CompareConfig, shared: dict[str, Any]) -> list[dict]:
    """Every strategy's batches at every batch size and seed of the design (cached batches
    artifacts), built on the table and store the comparison's upstream tasks handed on, logged to
    the parent run as ``batch_diagnostics.json``."""
    from pipeline.experiments.compare import DIAGNOSTICS_ARTIFACT, batch_diagnostics, log_json

    rows = batch_diagnostics(shared["tables"].artifact, shared["ingest"].artifact, cfg.diagnostics_configs())
    log_json(parent_run_id, DIAGNOSTICS_ARTIFACT, rows)
    return rows


# --- the flow ------------------------------------------------------------------------------------


@flow(
    name="compare-strategies",
    description="the paper's cells or strategies × batch sizes × presets, × seeds; nested MLflow runs, a report",
)
def compare_strategies(
    dataset: str = "demo",
    source: Optional[str] = None,
    scale: Literal["smoke", "cpu", "paper"] = "smoke",
    design: Literal["factorial", "paper"] = "factorial",
    strategies: Optional[list[str]] = None,
    batch_sizes: Optional[list[int]] = None,
    presets: Optional[list[str]] = None,
    batch_scale: Optional[float] = None,
    seeds: int = DEFAULT_SEEDS,
    ingest: IngestOptions = IngestOptions(),  # type: ignore[valid-type]
    features: FeaturesConfig = FeaturesConfig(),
    tables: TablesConfig = TablesConfig(),
    train: Optional[dict[str, Any]] = None,
    evaluate: Optional[dict[str, Any]] = None,
    batches: Optional[dict[str, Any]] = None,
    diagnostic_epochs: Optional[int] = None,
    dask_address: Optional[str] = None,
    overrides: Optional[list[str]] = None,
) -> dict:
    """Train the grid (each cell a train-subsample run sharing the cached upstream stages) under
    one MLflow parent run and write the report. Parameters: see :class:`CompareConfig`;
    ``overrides`` are ``section.field=value`` strings applied on top."""
    from pipeline.experiments import compare
    from storage import tracking

    fields = dict(
        dataset=dataset,
        source=source,
        scale=scale,
        design=design,
        strategies=strategies,
        batch_sizes=batch_sizes,
        presets=presets,
        batch_scale=batch_scale,
        seeds=seeds,
        ingest=ingest,
        features=features,
        tables=tables,
        train=train,
        evaluate=evaluate,
        batches=batches,
        diagnostic_epochs=diagnostic_epochs,
        dask_address=dask_address,
    )
    try:
        cfg = build_compare_config(fields, overrides or ())
    except SubsampleError as e:
        return Failed(message=str(e), data=e)
    started = time.perf_counter()

    base = cfg.base_run_config()
    shared: dict[str, Any] = {}  # stage -> StageResult of the upstream stages every cell shares
    for stage in UPSTREAM:
        state = STAGE_TASKS[stage](base, handed_on(stage, shared), return_state=True)
        if not state.is_completed():
            return Failed(message=state.message, data=state.result(raise_on_failure=False))
        shared[stage] = state.result()
    try:
        _check_batch_sizes(cfg)
    except SubsampleError as e:
        return Failed(message=str(e), data=e)

    from storage.store import open_store

    cells = cfg.cells()
    params = {**cfg.mlflow_params(), "n_images": open_store(cfg.dataset).n}
    run_name = f"compare-{cfg.dataset}-{cfg.scale}" + ("-paper-design" if cfg.design == "paper" else "")
    parent = compare.start_parent(cfg.dataset, run_name, params, cells)
    compare.note(f"{len(cells)} runs under MLflow parent run {parent}")
    compare.log_json(
        parent,
        compare.DESIGN_ARTIFACT,
        {
            "design": cfg.design,
            "n_images": params["n_images"],
            "batch_scale": cfg.grid_batch_scale if cfg.design == "paper" else None,
            "configurations": cfg.design_records(params["n_images"]),
        },
    )
    try:
        diagnostics_task(parent, cfg, shared)
    except SubsampleError as e:  # the report says the diagnostics are missing; the training goes on
        compare.note(f"no batch diagnostics: {e}")
    if cfg.scale == "paper" and not _has_cuda():
        compare.note(
            "paper scale without a GPU: the paper's epochs and sizes take days on a CPU (a GPU work pool: docs/compare.md)"
        )
    rows: list[dict] = []
    status = "KILLED"
    try:
        with tracking.nested_under(parent):
            for i, cell in enumerate(cells, start=1):
                rc = cfg.cell_run_config(cell)
                summaries: dict[str, dict] = {}
                error: Optional[str] = None
                results = dict(shared)
                for stage in PER_CELL:
                    state = STAGE_TASKS[stage].with_options(task_run_name=f"{stage} [{cell.label}]")(
                        rc, handed_on(stage, results), return_state=True
                    )
                    if not state.is_completed():
                        exc = state.result(raise_on_failure=False)
                        if not isinstance(exc, SubsampleError):
                            raise exc if isinstance(exc, BaseException) else RuntimeError(state.message)
                        error = str(exc)
                        break
                    results[stage] = state.result()
                    summaries[stage] = results[stage].to_json()
                train_key = None if "train" in summaries or error is None else _train_key(rc, shared)
                rows.append(
                    record_task.with_options(task_run_name=f"record [{cell.label}]")(
                        parent, cell, summaries, error, train_key
                    )
                )
                compare.note(f"[{i}/{len(cells)}] {cell.label}: {'failed: ' + error if error else 'ok'}")
        status = "FINISHED"
    except Exception:
        status = "FAILED"
        raise
    finally:
        done = {(r["strategy"], r["batch_size"], r["preset"], r["seed"]) for r in rows}
        left = [
            {**asdict(c), "configuration": c.configuration, "status": "not run"}
            for c in cells
            if (c.strategy, c.batch_size, c.preset, c.seed) not in done
        ]
        compare.finish_parent(parent, rows + left, status)
        if status != "FINISHED":  # what was done so far, for the record
            try:
                report_task(parent)
            except Exception as e:  # the original error matters more
                compare.note(f"no report of the partial run: {e}")
    report = report_task(parent)
    return {
        "flow_run": flow_run.get_name(),
        "flow_run_id": flow_run.get_id(),
        "dataset": cfg.dataset,
        "scale": cfg.scale,
        "design": cfg.design,
        "parent_run_id": parent,
        "cells": len(rows),
        "cells_failed": sum(r["status"] == "failed" for r in rows),
        "cells_trained_now": sum(not r["train_cache_hit"] for r in rows if r["status"] == "ok"),
        "report_html": report["html"],
        "report_md": report["md"],
        "report_dir": report["dir"],
        "mlflow_tracking_uri": redact_uri(mlflow_tracking_uri()),  # printed: never a password
        "seconds": round(time.perf_counter() - started, 3),
    }


def run(cfg: CompareConfig) -> dict:
    """Run the flow in this process (Prefect's ephemeral mode when no server is configured) and
    return its summary; a stage's SubsampleError is raised again."""
    params = cfg.model_dump(mode="json")
    state = compare_strategies(**params, return_state=True)
    if state.is_completed():
        return state.result()
    state.result()
    raise SubsampleError("compare", f"flow run ended in state {state.name}: {state.message}")
