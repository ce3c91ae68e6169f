"""The Prefect flow ``train-subsample``: ingest → features → tables → batches → train → evaluate.

Each task calls one ``pipeline`` stage function and nothing else; the stages are ordinary Python
that the ``subsample <stage>`` commands call too.

Caching: the stage artifact store is the cache, and the tasks say so with ``NO_CACHE``. Every
stage already keys its artifact by H(its parameters, its inputs' content hashes, its code version)
and, before it skips work, re-hashes the artifact's files against its manifest, so a deleted or
corrupted artifact is rebuilt. Prefect's task cache (Prefect 3.8.8) could take the same key
through a ``CachePolicy.compute_key``, but a hit there is decided by the existence of Prefect's
own result record (``ResultStore.exists``); nothing validates the artifact the record stands for.
A deleted artifact would be reported as a hit and the next stage would fail, a rebuilt artifact
(a new training run) would be shadowed by the old record's summary, and the CLI, which runs the
same stages without Prefect, would keep a second, disagreeing cache. So a task always calls its
stage; on a hit the stage returns at once (verification only) and the task finishes in a state
named ``Cached``, as Prefect's own cache hits do, with the artifact key as its message.

A :class:`~storage.errors.SubsampleError` (e.g. ``--only tables`` with no cached features) ends
the task and the flow in a ``Failed`` state whose message is that one line, not a traceback;
:func:`run` raises it again so the CLI prints it and exits with code 2.
"""
from __future__ import annotations

import logging
import re
import time
from typing import Any, Callable, Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from flows.config import STAGES, IngestOptions, RunConfig, Stage, build_config
from pipeline.config import BatchesConfig, EvaluateConfig, FeaturesConfig, TablesConfig, TrainConfig
from storage.artifacts import open_artifact
from storage.errors import MissingArtifactError, SubsampleError


def _no_empty_traceback(record: logging.LogRecord) -> bool:
    """A task that returns a Failed state is logged with ``exc_info=True`` outside any exception,
    which prints "NoneType: None" under the one-line message; drop that empty traceback."""
    if record.exc_info and record.exc_info[0] is None:
        record.exc_info = None
    return True


logging.getLogger("prefect.task_runs").addFilter(_no_empty_traceback)


# --- tasks: one per stage, each a call of the stage function -----------------------------------
# A stage finds its inputs itself, by recomputing their keys from the configs; `upstream` (the
# previous stage's summary) only draws the dependency in the UI's graph. Stage modules are imported
# inside the tasks, so loading the flow (`prefect deploy`, a worker) does not import torch.


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_task(cfg: RunConfig, upstream: Optional[dict] = None) -> dict:
    from pipeline.stages.ingest import run_ingest

    return _stage_state("ingest", cfg, lambda: run_ingest(cfg.ingest_config(), refresh=cfg.refreshes("ingest")))


@task(name="features", cache_policy=NO_CACHE)
def features_task(cfg: RunConfig, upstream: Optional[dict] = None) -> dict:
    from pipeline.stages.features import run_features

    return _stage_state(
        "features",
        cfg,
        lambda: run_features(cfg.dataset, cfg.features_config(), refresh=cfg.refreshes("features")),
    )


@task(name="tables", cache_policy=NO_CACHE)
def tables_task(cfg: RunConfig, upstream: Optional[dict] = None) -> dict:
    from pipeline.stages.tables import run_tables

    return _stage_state(
        "tables",
        cfg,
        lambda: run_tables(cfg.dataset, cfg.tables, cfg.features, refresh=cfg.refreshes("tables")),
    )


@task(name="batches", cache_policy=NO_CACHE)
def batches_task(cfg: RunConfig, upstream: Optional[dict] = None) -> dict:
    from pipeline.stages.batches import run_batches

    return _stage_state(
        "batches",
        cfg,
        lambda: run_batches(cfg.dataset, cfg.batches, cfg.tables, cfg.features, refresh=cfg.refreshes("batches")),
    )


@task(name="train", cache_policy=NO_CACHE)
def train_task(cfg: RunConfig, upstream: Optional[dict] = None) -> dict:
    from pipeline.stages.train import run_train

    def call() -> dict:
        if cfg.train_deployment and (cfg.refreshes("train") or not _train_cached(cfg)):
            return _train_on(cfg.train_deployment, cfg)
        return run_train(cfg.dataset, cfg.train, cfg.batches, cfg.tables, cfg.features, refresh=cfg.refreshes("train"))

    return _stage_state("train", cfg, call)


def _train_cached(cfg: RunConfig) -> bool:
    try:
        _cached_train_key(cfg)
        return True
    except MissingArtifactError:
        return False


def _train_on(deployment: str, cfg: RunConfig) -> dict:
    """Train on another work pool (a GPU machine): a child flow run of ``deployment`` with
    ``only=train``. It writes the artifact into the shared ``$SUBSAMPLE_HOME``, where this run then
    finds it (a verified cache hit) and reports it as built."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    from pipeline.stages.train import run_train

    t0 = time.perf_counter()
    params = {**flow_parameters(cfg), "only": "train", "refresh": "train" if cfg.refreshes("train") else None,
              "train_deployment": None}
    try:
        child = run_deployment(deployment, parameters=params, timeout=None)
    except (PrefectHTTPStatusError, ObjectNotFound) as e:  # unknown deployment, or its parameters differ
        detail = e.response.json().get("detail", str(e)) if isinstance(e, PrefectHTTPStatusError) else str(e)
        raise SubsampleError(
            "train", f"cannot start a run of deployment {deployment!r}: {detail} "
            "(deploy it from this same checkout: `make deploy`)",
        ) from None
    if not child.state or not child.state.is_completed():
        state = child.state.name if child.state else "unknown"
        raise SubsampleError("train", f"the train run {child.name!r} of {deployment} ended {state}: "
                                      f"{child.state.message if child.state else ''}")
    summary = run_train(cfg.dataset, cfg.train, cfg.batches, cfg.tables, cfg.features)
    return {**summary, "cache_hit": False, "seconds": round(time.perf_counter() - t0, 3),
            "trained_by": f"{deployment} ({child.name})"}


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(cfg: RunConfig, upstream: Optional[dict] = None) -> dict:
    from pipeline.stages.evaluate import run_evaluate

    def call() -> dict:
        # the generator this run trained; with only=evaluate, the cached one for these configs
        run_key = upstream["key"] if upstream else _cached_train_key(cfg)
        return run_evaluate(run_key, cfg.evaluate, refresh=cfg.refreshes("evaluate"))

    return _stage_state("evaluate", cfg, call)


def _cached_train_key(cfg: RunConfig) -> str:
    """The train artifact these configs name (``only=evaluate``); MissingArtifactError if absent."""
    from pipeline.stages.tables import tables_artifact
    from pipeline.stages.train import train_key
    from storage.store import open_store

    tables_art = tables_artifact(cfg.dataset, cfg.tables, cfg.features)
    key = train_key(cfg.train, cfg.batches, tables_art.content_hash, open_store(cfg.dataset).content_hash)
    if open_artifact("train", key) is None:
        raise MissingArtifactError(
            "evaluate", f"no train artifact {key} for {cfg.dataset!r} with these settings; "
            f"run `subsample run --dataset {cfg.dataset} --only train` (same --set values) first",
        )
    return key


STAGE_TASKS = {
    "ingest": ingest_task, "features": features_task, "tables": tables_task,
    "batches": batches_task, "train": train_task, "evaluate": evaluate_task,
}


def _stage_state(stage: str, cfg: RunConfig, call: Callable[[], dict]) -> State:
    """Run a stage; a cache hit finishes as ``Cached``, a SubsampleError as a one-line ``Failed``."""
    try:
        summary = call()
    except SubsampleError as e:
        return Failed(message=str(e), data=e)
    _publish(stage, cfg.dataset, summary)
    hit = bool(summary.get("cache_hit"))
    message = f"{'cache hit' if hit else 'built'}: {stage}/{summary.get('key')} in {summary.get('seconds', 0):.1f}s"
    get_run_logger().info(message)
    return Completed(name="Cached" if hit else "Completed", message=message, data=summary)


def _artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def _flat(summary: dict, prefix: str = "") -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for k, v in summary.items():
        if isinstance(v, dict) and v:
            rows += _flat(v, f"{prefix}{k}.")
        else:
            rows.append({"field": f"{prefix}{k}", "value": v if isinstance(v, (int, float, bool)) or v is None else str(v)})
    return rows


def _publish(stage: str, dataset: str, summary: dict) -> None:
    """The stage's summary (counts, times, KL statistics, metrics) as a table in the Prefect UI."""
    create_table_artifact(
        table=_flat(summary),
        key=_artifact_key(dataset, stage),
        description=f"`{stage}` of data set `{dataset}`: artifact `{summary.get('key')}`"
        f" ({'cache hit' if summary.get('cache_hit') else 'built'})",
    )


# --- the flow --------------------------------------------------------------------------------


@flow(name="train-subsample", description="ingest → features → tables → batches → train → evaluate")
def train_subsample(
    dataset: str = "demo",
    source: Optional[str] = None,
    ingest: IngestOptions = IngestOptions(),  # type: ignore[valid-type]
    features: FeaturesConfig = FeaturesConfig(),
    tables: TablesConfig = TablesConfig(),
    batches: BatchesConfig = BatchesConfig(),
    preset: Optional[str] = None,
    train: TrainConfig = TrainConfig(),
    evaluate: EvaluateConfig = EvaluateConfig(),
    only: Optional[Stage] = None,
    refresh: Optional[Stage] = None,
    dask_address: Optional[str] = None,
    train_deployment: Optional[str] = None,
    overrides: Optional[list[str]] = None,
) -> dict:
    """Train a GAN on distribution-matched batches; each stage reuses its cached artifact when its
    inputs, parameters and code are unchanged. Parameters: see :class:`flows.config.RunConfig`;
    ``overrides`` are ``section.field=value`` strings applied on top."""
    fields = dict(
        dataset=dataset, source=source, ingest=ingest, features=features, tables=tables,
        batches=batches, preset=preset, train=train, evaluate=evaluate, only=only, refresh=refresh,
        dask_address=dask_address, train_deployment=train_deployment,
    )
    try:
        cfg = build_config(fields, overrides or ())
    except SubsampleError as e:
        return Failed(message=str(e), data=e)
    started = time.perf_counter()
    summaries: dict[str, dict] = {}
    upstream: Optional[dict] = None
    for stage in cfg.stages():
        state = STAGE_TASKS[stage](cfg, upstream, return_state=True)
        if not state.is_completed():
            # the flow fails with the stage's one-line message (and its exception, for `run`)
            return Failed(message=state.message, data=state.result(raise_on_failure=False))
        upstream = summaries[stage] = state.result()
    report = flow_report(cfg, summaries, time.perf_counter() - started)
    _publish_report(report)
    return report


def flow_report(cfg: RunConfig, summaries: dict[str, dict], seconds: float) -> dict:
    """What ``subsample run --json`` prints: per stage, hit or built, seconds, artifact key."""
    return {
        "flow_run": flow_run.get_name(),
        "flow_run_id": flow_run.get_id(),
        "dataset": cfg.dataset,
        "stages": [
            {
                "stage": stage,
                "cache_hit": bool(s.get("cache_hit")),
                "seconds": round(float(s.get("seconds", 0.0)), 3),
                "key": s.get("key"),
                "path": s.get("path"),
            }
            for stage, s in summaries.items()
        ],
        "seconds": round(seconds, 3),
        **outcome(summaries),
    }


def outcome(summaries: dict[str, dict]) -> dict[str, Any]:
    """What the run produced: the MLflow run, where its image grids are, the evaluation metrics."""
    train, evaluate = summaries.get("train", {}), summaries.get("evaluate", {})
    out: dict[str, Any] = {"mlflow_run_id": train.get("mlflow_run_id") or evaluate.get("mlflow_run_id")}
    grids = [p for p in (train.get("grids"), evaluate.get("path") and f"{evaluate['path']}/samples.png") if p]
    if grids:
        out["grids"] = grids
    if evaluate.get("metrics"):
        out["metrics"] = evaluate["metrics"]
    return out


def _publish_report(report: dict) -> None:
    lines = [
        f"# train-subsample on `{report['dataset']}`",
        "",
        "| stage | cache | seconds | artifact key |",
        "|---|---|---:|---|",
        *(
            f"| {s['stage']} | {'hit' if s['cache_hit'] else 'built'} | {s['seconds']:.1f} | `{s['key']}` |"
            for s in report["stages"]
        ),
    ]
    create_markdown_artifact("\n".join(lines), key=_artifact_key(report["dataset"], "run"), description="stage cache report")


# --- entry points for the CLI -------------------------------------------------------------------


def flow_parameters(cfg: RunConfig) -> dict[str, Any]:
    """The flow's keyword arguments for a validated config (JSON types, as a deployment stores them)."""
    return cfg.model_dump(mode="json")


def run(cfg: RunConfig) -> dict:
    """Run the flow in this process (Prefect's ephemeral mode when no server is configured) and
    return its report; a stage's SubsampleError is raised again, as the stage raised it."""
    state = train_subsample(**flow_parameters(cfg), return_state=True)
    if state.is_completed():
        return state.result()
    state.result()  # raises what the stage raised (a SubsampleError, or a bug's exception)
    raise SubsampleError("run", f"flow run ended in state {state.name}: {state.message}")
