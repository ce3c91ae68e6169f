"""The Prefect flow ``train-subsample``: ingest → features → tables → batches → train → evaluate.

Each task calls one ``pipeline`` stage function, handing it the artifacts the earlier stages
returned (``pipeline.stages.result.StageResult``); the stages are ordinary Python that the
``subsample <stage>`` commands call too, after finding their inputs by lineage
(``pipeline.stages.lineage``).

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

from flows.config import IngestOptions, RunConfig, Stage
from flows.resolve import build_config
from pipeline.config import BatchesConfig, EvaluateConfig, FeaturesConfig, TablesConfig, TrainConfig
from storage.errors import MissingArtifactError, SubsampleError
from storage.safe_io import fault


def _no_empty_traceback(record: logging.LogRecord) -> bool:
    """A task that returns a Failed state is logged with ``exc_info=True`` outside any exception,
    which prints "NoneType: None" under the one-line message; drop that empty traceback."""
    if record.exc_info and record.exc_info[0] is None:
        record.exc_info = None
    return True


logging.getLogger("prefect.task_runs").addFilter(_no_empty_traceback)


# --- tasks: one per stage, each a call of the stage function -----------------------------------
# A task is handed the results of the earlier tasks whose artifacts its stage consumes (`upstream`,
# by stage; this also draws the dependencies in the UI's graph) and passes those artifacts to its
# stage. A stage whose inputs were not handed to it (`only=...`) finds them by lineage, from the
# configs. Stage modules are imported inside the tasks, so loading the flow (`prefect deploy`, a
# worker) does not import torch.

Upstream = Optional[dict[str, Any]]  # stage -> pipeline.stages.result.StageResult


def _inputs(stage: str, cfg: RunConfig, upstream: Upstream) -> Any:
    """The artifacts ``stage`` consumes: those the earlier tasks returned, the others by lineage."""
    from pipeline.stages.lineage import locate

    given = {s: r.artifact for s, r in (upstream or {}).items()}
    return locate(
        stage, cfg.dataset, features=cfg.features, tables=cfg.tables, batches=cfg.batches, train=cfg.train, given=given
    )


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_task(cfg: RunConfig, upstream: Upstream = None) -> Any:
    from pipeline.stages.ingest import ingest_stage

    return _stage_state("ingest", cfg, lambda: ingest_stage(cfg.ingest_config(), refresh=cfg.refreshes("ingest")))


@task(name="features", cache_policy=NO_CACHE)
def features_task(cfg: RunConfig, upstream: Upstream = None) -> Any:
    from pipeline.stages.features import features_stage

    def call() -> Any:
        got = _inputs("features", cfg, upstream)
        return features_stage(got.store, cfg.features_config(), dataset=cfg.dataset, refresh=cfg.refreshes("features"))

    return _stage_state("features", cfg, call)


@task(name="tables", cache_policy=NO_CACHE)
def tables_task(cfg: RunConfig, upstream: Upstream = None) -> Any:
    from pipeline.stages.tables import tables_stage

    def call() -> Any:
        got = _inputs("tables", cfg, upstream)
        return tables_stage(got.features, cfg.tables, dataset=cfg.dataset, refresh=cfg.refreshes("tables"))

    return _stage_state("tables", cfg, call)


@task(name="batches", cache_policy=NO_CACHE)
def batches_task(cfg: RunConfig, upstream: Upstream = None) -> Any:
    from pipeline.stages.batches import batches_stage

    def call() -> Any:
        got = _inputs("batches", cfg, upstream)
        return batches_stage(got.tables, got.store, cfg.batches, dataset=cfg.dataset, refresh=cfg.refreshes("batches"))

    return _stage_state("batches", cfg, call)


@task(name="train", cache_policy=NO_CACHE)
def train_task(cfg: RunConfig, upstream: Upstream = None) -> Any:
    from pipeline.stages.train import train_stage

    def call() -> Any:
        got = _inputs("train", cfg, upstream)
        if cfg.train_deployment and (cfg.refreshes("train") or not _train_cached(cfg, got)):
            return _train_on(cfg.train_deployment, cfg, got)
        return train_stage(
            got.store, got.tables, cfg.batches, cfg.train, dataset=cfg.dataset, refresh=cfg.refreshes("train")
        )

    return _stage_state("train", cfg, call)


def _train_cached(cfg: RunConfig, got: Any) -> bool:
    from pipeline.stages.lineage import find_train

    try:
        find_train(got.store, got.tables, cfg.train, cfg.batches, dataset=cfg.dataset, needed_by="train")
        return True
    except MissingArtifactError:
        return False


def _train_on(deployment: str, cfg: RunConfig, got: Any) -> Any:
    """Train on another work pool (a GPU machine): a child flow run of ``deployment`` with
    ``only=train``. It writes the artifact into the shared ``$SUBSAMPLE_HOME``, where this run then
    finds it (a verified cache hit) and reports it as built."""
    import dataclasses

    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    from pipeline.stages.train import train_stage

    t0 = time.perf_counter()
    params = {
        **flow_parameters(cfg),
        "only": "train",
        "refresh": "train" if cfg.refreshes("train") else None,
        "train_deployment": None,
    }
    try:
        child = run_deployment(deployment, parameters=params, timeout=None)
    except (PrefectHTTPStatusError, ObjectNotFound) as e:  # unknown deployment, or its parameters differ
        detail = e.response.json().get("detail", str(e)) if isinstance(e, PrefectHTTPStatusError) else str(e)
        raise SubsampleError(
            "train",
            f"cannot start a run of deployment {deployment!r}: {detail} "
            "(deploy it from this same checkout: `make deploy`)",
        ) from None
    if not child.state or not child.state.is_completed():
        state = child.state.name if child.state else "unknown"
        raise SubsampleError(
            "train",
            f"the train run {child.name!r} of {deployment} ended {state}: {child.state.message if child.state else ''}",
        )
    result = train_stage(got.store, got.tables, cfg.batches, cfg.train, dataset=cfg.dataset)
    return dataclasses.replace(
        result,
        cache_hit=False,
        seconds=round(time.perf_counter() - t0, 3),
        details={**result.details, "trained_by": f"{deployment} ({child.name})"},
    )


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(cfg: RunConfig, upstream: Upstream = None) -> Any:
    from pipeline.stages.evaluate import evaluate_stage

    def call() -> Any:
        # the generator this run trained; with only=evaluate, the one these configs name (lineage)
        return evaluate_stage(_inputs("evaluate", cfg, upstream).train, cfg.evaluate, refresh=cfg.refreshes("evaluate"))

    return _stage_state("evaluate", cfg, call)


STAGE_TASKS = {
    "ingest": ingest_task,
    "features": features_task,
    "tables": tables_task,
    "batches": batches_task,
    "train": train_task,
    "evaluate": evaluate_task,
}


def _stage_state(stage: str, cfg: RunConfig, call: Callable[[], Any]) -> State:
    """Run a stage; a cache hit finishes as ``Cached``, a SubsampleError as a one-line ``Failed``.
    The state's data is the stage's :class:`~pipeline.stages.result.StageResult`."""
    try:
        result = call()
    except SubsampleError as e:
        return Failed(message=str(e), data=e)
    except Exception as e:  # a file-system fault (disk full, read-only home, ulimit -f): one line, no traceback
        err = fault(e, stage)
        if err is None:
            raise
        return Failed(message=str(err), data=err)
    _publish(stage, cfg.dataset, result.to_json())
    message = f"{'cache hit' if result.cache_hit else 'built'}: {stage}/{result.key} in {result.seconds:.1f}s"
    get_run_logger().info(message)
    return Completed(name="Cached" if result.cache_hit else "Completed", message=message, data=result)


def _artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def _flat(summary: dict, prefix: str = "") -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for k, v in summary.items():
        if isinstance(v, dict) and v:
            rows += _flat(v, f"{prefix}{k}.")
        else:
            rows.append(
                {"field": f"{prefix}{k}", "value": v if isinstance(v, (int, float, bool)) or v is None else str(v)}
            )
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
        dataset=dataset,
        source=source,
        ingest=ingest,
        features=features,
        tables=tables,
        batches=batches,
        preset=preset,
        train=train,
        evaluate=evaluate,
        only=only,
        refresh=refresh,
        dask_address=dask_address,
        train_deployment=train_deployment,
    )
    try:
        cfg = build_config(fields, overrides or ())
    except SubsampleError as e:
        return Failed(message=str(e), data=e)
    started = time.perf_counter()
    results: dict[str, Any] = {}  # stage -> StageResult
    for stage in cfg.stages():
        state = STAGE_TASKS[stage](cfg, handed_on(stage, results), return_state=True)
        if not state.is_completed():
            # the flow fails with the stage's one-line message (and its exception, for `run`)
            return Failed(message=state.message, data=state.result(raise_on_failure=False))
        results[stage] = state.result()
    summaries = {stage: r.to_json() for stage, r in results.items()}
    report = flow_report(cfg, summaries, time.perf_counter() - started)
    _publish_report(report)
    return report


def handed_on(stage: str, results: dict[str, Any]) -> dict[str, Any]:
    """The earlier results whose artifacts ``stage`` consumes (``pipeline.stages.lineage.CONSUMES``)."""
    from pipeline.stages.lineage import CONSUMES

    return {s: results[s] for s in CONSUMES[stage] if s in results}


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
    create_markdown_artifact(
        "\n".join(lines), key=_artifact_key(report["dataset"], "run"), description="stage cache report"
    )


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
