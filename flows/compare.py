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
``cpu`` (small models that learn, about 10 minutes on a 2-core CPU) or ``paper`` (the paper's epochs
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

from flows.compare_config import CompareConfig, build_compare_config
from flows.config import IngestOptions, RunConfig
from flows.train_subsample import STAGE_TASKS, handed_on
from pipeline.config import FeaturesConfig, TablesConfig
from pipeline.experiments.compare import DEFAULT_SEEDS, GridCell
from storage.errors import SubsampleError, redact_uri
from storage.paths import mlflow_tracking_uri

__all__ = ["CompareConfig", "build_compare_config", "compare_strategies", "run"]

UPSTREAM = ("ingest", "features", "tables")  # once per comparison
PER_CELL = ("batches", "train", "evaluate")


# --- tasks (plain functions of pipeline.experiments.compare and pipeline.experiments.report) ------


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


@task(name="kl-floors", cache_policy=NO_CACHE)
def floors_task(parent_run_id: str, cfg: CompareConfig, shared: dict[str, Any]) -> dict:
    """The feature KL's bootstrap and held-out floors at every sample size the cells measure at
    (training's ``kl_samples``, the evaluation's ``samples``), logged to the parent run."""
    from pipeline.experiments.kl_floors import kl_floors, log_floors

    sizes = []
    for cell in cfg.cells():
        if cell.seed == 0:
            rc = cfg.cell_run_config(cell)
            sizes += [rc.train.kl_samples, rc.evaluate.samples]
    floors = kl_floors(shared["tables"].artifact, shared["ingest"].artifact, sizes)
    log_floors(parent_run_id, floors)
    return floors


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
            "epoch_factor": cfg.scale_spec.paper_epoch_factor if cfg.design == "paper" else None,
            "configurations": cfg.design_records(params["n_images"]),
        },
    )
    try:
        diagnostics_task(parent, cfg, shared)
    except SubsampleError as e:  # the report says the diagnostics are missing; the training goes on
        compare.note(f"no batch diagnostics: {e}")
    try:
        floors_task(parent, cfg, shared)
    except (SubsampleError, ValueError) as e:  # the report says the held-out floor is missing
        compare.note(f"no held-out floors: {e}")
    if cfg.scale == "paper" and not _has_cuda():
        compare.note(
            "paper scale without a GPU: the paper's epochs and sizes "
            "take days on a CPU (a GPU work pool: docs/compare.md)"
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
