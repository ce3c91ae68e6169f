"""MLflow tracking: where runs are recorded and the few calls the stages make.

The tracking store is :func:`storage.paths.mlflow_tracking_uri` (SQLite ``$SUBSAMPLE_HOME/mlflow.db``
unless ``MLFLOW_TRACKING_URI`` is set) and artifacts go under :func:`storage.paths.mlflow_artifact_root`.
One experiment per data set, ``subsample/<dataset>``, created as a model-training experiment
(MLflow 3's ``mlflow.experimentKind`` tag, :data:`EXPERIMENT_KIND`: without it the UI may open the
experiment in its GenAI mode, on traces) with a shared view of its runs table showing the metrics
that matter (:func:`runs_table_url`). Everything goes through an explicit
``MlflowClient`` (no ``mlflow.start_run`` global state), so a stage can log to a run it reopens
after a restart. The first use of a fresh SQLite store creates its tables (measured ~1.3 s on the
2-core development machine; ~0.5 s to open it afterwards, plus ~1.1 s to import mlflow). Two
processes opening a fresh database at once would both run MLflow's schema migration and one would
fail, so the first open in a process holds a lock file next to the database (``mlflow.db.lock``).

A tracking server that cannot be reached (or refuses) is one line naming the URI with any password
redacted (:func:`storage.paths.redact_uri`), never a traceback carrying it.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping
from urllib.parse import unquote, urlparse

from storage import interrupts
from storage.errors import SubsampleError, redact_uri
from storage.locks import file_lock
from storage.owners import ENDED_BY_TAG, OWNER_TAG, mark_orphaned_runs, process_token
from storage.paths import mlflow_artifact_root, mlflow_tracking_uri
from storage.safe_io import check_artifact_copies, check_sqlite_files, quiet_fault_tracebacks

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

TRAIN_KEY_TAG = "subsample.train_key"
DATASET_TAG = "subsample.dataset"
PARENT_RUN_TAG = "mlflow.parentRunId"  # what mlflow.start_run(nested=True) sets; the UI nests runs by it
COPIED_FROM_TAG = "subsample.copied_from"
# MLflow 3.17's UI reads the experiment's kind from this tag (mlflow/server/js: ExperimentKind
# CUSTOM_MODEL_DEVELOPMENT = "custom_model_development", set through setExperimentTag with key
# "mlflow.experimentKind"); model development opens on the runs table.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# A runs-table view stored in the experiment (the UI's "share view": tag mlflow.sharedViewState.<key>,
# JSON of its view state, opened by ?viewStateShareKey=<key>). The UI's own default shows no
# metric column and cannot be changed by the server; this view can, and the link opens it.
VIEW_KEY = "subsample-runs"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
VIEW_PARAMS = ("batches.strategy", "batches.batch_size", "batches.seed", "train.preset")
VIEW_METRICS = (
    "eval/fid10k_train",
    "eval/feature_kl10k_train",
    "eval/feature_kl2k_train",
    "feature_kl",
    "loss_d",
    "loss_g",
    "eval/fid2k_train",
)
_PARAM_BATCH = 100  # MLflow's limit of params per log_batch call
_METRIC_BATCH = 1000
_PARAM_MAX_CHARS = 6000


_OPENED: set[str] = set()  # tracking URIs whose store this process has opened (schema created)
_RUNNING: dict[str, str] = {}  # runs this process started or reopened and has not ended -> tracking URI
_ON_INTERRUPT: list[int] = []  # the interrupts callback token, once registered
# MLflow's HTTP client waits 120 s per request and retries 7 times with backoff (about 4 minutes
# before an unreachable server's error); these apply unless the user set them
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}
CONNECT_TIMEOUT_S = 5.0  # the first contact with a tracking server: a TCP connection within this


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:"):
        return None
    path = unquote(urlparse(uri).path)
    return Path(path) if path and path != "/:memory:" else None


def client() -> "MlflowClient":
    """A client of the tracking store; the first call in a process opens the store under the
    database's lock, so concurrent processes never run the schema migration twice."""
    from mlflow import MlflowClient

    uri = mlflow_tracking_uri()
    if uri in _OPENED:
        return MlflowClient(tracking_uri=uri)
    db = _sqlite_path(uri)
    own = db is not None and not os.environ.get("MLFLOW_TRACKING_URI")  # the home's own database
    quiet_fault_tracebacks()  # a full or read-only disk is said once, in one line, by the command
    with contact("open the MLflow tracking store"):
        if db is not None:
            check_sqlite_files(db)
            with file_lock(db.with_name(db.name + ".lock")):
                c = MlflowClient(tracking_uri=uri)  # opens the store: creates (or checks) the schema
                if own:  # a moved or copied home: artifact locations follow it
                    from storage.relocate import relocate_artifact_locations

                    relocate_artifact_locations(db, mlflow_artifact_root())
        else:
            if uri.startswith(("http://", "https://")):
                for k, v in HTTP_DEFAULTS.items():
                    os.environ.setdefault(k, v)
                _reachable(uri)
            c = MlflowClient(tracking_uri=uri)
        if own:
            ids = [e.experiment_id for e in c.search_experiments(filter_string="name LIKE 'subsample/%'")]
            mark_orphaned_runs(c, ids)  # runs left RUNNING by a process that is gone
    _OPENED.add(uri)
    return c


def _reachable(uri: str) -> None:
    """A TCP connection to the tracking server within :data:`CONNECT_TIMEOUT_S`, or one line."""
    import socket

    parsed = urlparse(uri)
    try:
        host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError as e:
        raise SubsampleError("mlflow", f"invalid tracking URI {redact_uri(uri)} ({e})") from None
    try:
        socket.create_connection((host or "", port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise SubsampleError(
            "mlflow",
            f"cannot reach the tracking server {redact_uri(uri)} ({e.strerror or type(e).__name__}, "
            f"after at most {CONNECT_TIMEOUT_S:g} s); check MLFLOW_TRACKING_URI (unset it for the local "
            "$SUBSAMPLE_HOME/mlflow.db) or pass --set track=false",
        ) from None


def _running(run_id: str) -> None:
    """Record a run this process owns until it ends: marked KILLED if the process is interrupted."""
    _RUNNING[run_id] = mlflow_tracking_uri()
    if not _ON_INTERRUPT:
        _ON_INTERRUPT.append(interrupts.on_interrupt(kill_running))


def kill_running(reason: str) -> str | None:
    """Mark every run this process owns KILLED, tagged :data:`ENDED_BY_TAG` with ``reason``; a note
    for the interruption's one line."""
    if not _RUNNING:
        return None
    c = client()
    done = []
    for run_id in list(_RUNNING):
        c.set_tag(run_id, ENDED_BY_TAG, reason)
        c.set_terminated(run_id, status="KILLED")
        _RUNNING.pop(run_id, None)
        done.append(run_id)
    return f"MLflow run{'s' if len(done) > 1 else ''} {', '.join(done)} marked KILLED"


@contextmanager
def contact(what: str, stage: str = "mlflow") -> Iterator[None]:
    """Turn a failure to reach or use the tracking store into one :class:`SubsampleError` line
    naming the (redacted) URI and what to do."""
    try:
        yield
    except SubsampleError:
        raise
    except Exception as e:  # MlflowException, requests' connection errors, sqlite errors, ...
        detail = str(getattr(e, "message", None) or e).split("\n")[0][:300]
        raise SubsampleError(
            stage,
            f"could not {what} at {redact_uri(mlflow_tracking_uri())} ({type(e).__name__}: {redact_uri(detail)}); "
            "check MLFLOW_TRACKING_URI (unset it for the local $SUBSAMPLE_HOME/mlflow.db) or pass --set track=false",
        ) from None


def experiment_name(dataset: str) -> str:
    return f"subsample/{dataset}"


def runs_view_state() -> dict[str, Any]:
    """The runs-table view stored in each experiment: strategy, B, seed, preset, epochs and the
    training and evaluation metrics as columns (the UI's column keys: ``params.`name```)."""
    columns = [f"params.`{p}`" for p in VIEW_PARAMS] + [f"metrics.`{m}`" for m in VIEW_METRICS]
    return {
        "selectedColumns": columns,
        "columnOrder": columns,
        "runsHiddenMode": "SHOW_ALL",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
    }


VIEW_NAME = "subsample: strategy, B, seed, metrics"
_VIEW_CREATED_MS = 1_767_225_600_000  # fixed (2026-01-01), so the tag's value never changes


def experiment_tags() -> dict[str, str]:
    """The kind tag and the runs view, as the UI saves a view: an envelope ``{name, createdAt,
    updatedAt, state}`` whose ``state`` is the view state's JSON (mlflow/server/js: saved views,
    tag prefix ``mlflow.sharedViewState.``); it is listed under the runs table's Views menu."""
    import json

    view = {
        "name": VIEW_NAME,
        "createdAt": _VIEW_CREATED_MS,
        "updatedAt": _VIEW_CREATED_MS,
        "state": json.dumps(runs_view_state()),
    }
    return {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, VIEW_TAG: json.dumps(view)}


def experiment_id(dataset: str, c: "MlflowClient | None" = None) -> str:
    """The data set's experiment, created on first use with its artifact location under
    ``mlflow_artifact_root()/subsample/<dataset>`` and :func:`experiment_tags` (an experiment made
    before those tags existed gets them here)."""
    from mlflow.exceptions import MlflowException

    c = c or client()
    name = experiment_name(dataset)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        try:
            return c.create_experiment(
                name, artifact_location=f"{mlflow_artifact_root()}/{name}", tags=experiment_tags()
            )
        except MlflowException:  # created concurrently by another process
            exp = c.get_experiment_by_name(name)
            if exp is None:
                raise
    for k, v in experiment_tags().items():
        if exp.tags.get(k) != v:
            c.set_experiment_tag(exp.experiment_id, k, v)
    return exp.experiment_id


def experiment_url(experiment: str, ui: str = "http://127.0.0.1:5000") -> str:
    """The MLflow UI link to an experiment in its model-training mode. MLflow 3.17's UI takes the
    mode from its sidebar switch (GenAI / Model training, remembered by the browser, GenAI until
    switched) or from ``workflowType`` in the link, not from the experiment's kind tag."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment}/runs?workflowType=machine_learning"


def runs_table_url(experiment: str, ui: str = "http://127.0.0.1:5000") -> str:
    """The MLflow UI link that opens an experiment's runs table with :func:`runs_view_state`'s columns."""
    return f"{experiment_url(experiment, ui)}&viewStateShareKey={VIEW_KEY}"


def print_runs_table_urls(ui: str = "http://127.0.0.1:5000") -> list[str]:
    """One line per ``subsample/*`` experiment in the tracking store, its name and runs-table link,
    then one per comparison in it with the link to its runs (``make mlflow-ui`` prints them before
    starting the UI; :mod:`storage.mlflow_views`). Each view's columns are the metrics its runs have."""
    from storage import mlflow_views

    c = client()
    lines = []
    for exp in c.search_experiments(filter_string="name LIKE 'subsample/%'"):
        experiment_id(exp.name[len("subsample/") :], c)  # older experiments get the tags
        mlflow_views.refresh_experiment_view(c, exp.experiment_id, VIEW_KEY, VIEW_NAME)
        lines.append(f"{exp.name}: {runs_table_url(exp.experiment_id, ui)}")
        lines += mlflow_views.comparison_lines(c, exp.experiment_id, ui)
    for line in lines:
        print(line)
    return lines


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts -> ``{"a.b": "value"}`` with string values, as MLflow params want."""
    out: dict[str, str] = {}
    for k, v in params.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            s = str(list(v) if isinstance(v, tuple) else v)
            out[f"{prefix}{k}"] = s[:_PARAM_MAX_CHARS]
    return out


_PARENT: ContextVar[str | None] = ContextVar("subsample_mlflow_parent_run", default=None)


@contextmanager
def nested_under(parent_run_id: str | None) -> Iterator[None]:
    """Runs that :func:`start_run` creates inside this block (by any stage, e.g. ``run_train``)
    are children of ``parent_run_id`` (tag ``mlflow.parentRunId``, as ``mlflow.start_run(nested=True)``
    sets it), so the MLflow UI shows them nested under it and compares them side by side."""
    token = _PARENT.set(parent_run_id)
    try:
        yield
    finally:
        _PARENT.reset(token)


def start_run(
    dataset: str,
    *,
    run_name: str,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    parent_run_id: str | None = None,
) -> str:
    """Create a run in the data set's experiment with tags and (flattened) params; its id. The run
    is nested under ``parent_run_id``, or under the enclosing :func:`nested_under` block's run."""
    from mlflow.entities import Param

    c = client()
    parent = parent_run_id or _PARENT.get()
    all_tags = {
        DATASET_TAG: dataset,
        **tags,
        **({PARENT_RUN_TAG: parent} if parent else {}),
        OWNER_TAG: process_token(),
    }
    with contact("start an MLflow run"):
        run = c.create_run(experiment_id(dataset, c), run_name=run_name, tags=all_tags)
        run_id = run.info.run_id
        _running(run_id)
        flat = [Param(k, v) for k, v in flatten(params).items()]
        for i in range(0, len(flat), _PARAM_BATCH):
            c.log_batch(run_id, params=flat[i : i + _PARAM_BATCH])
    return run_id


def child_runs(parent_run_id: str) -> list:
    """The runs nested under ``parent_run_id`` (any status), oldest first."""
    from mlflow.entities import ViewType

    c = client()
    parent = c.get_run(parent_run_id)
    runs, token = [], None
    while True:
        page = c.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'",
            run_view_type=ViewType.ALL,
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def copy_run(
    run_id: str,
    *,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    exclude_metric_prefixes: tuple[str, ...] = (),
) -> str:
    """A new run with ``run_id``'s params, tags, status and full metric histories (less metrics
    whose names start with ``exclude_metric_prefixes``; artifacts are not copied), tagged
    ``subsample.copied_from``; nested under ``parent_run_id`` if given. Used when a cached result
    belongs in a second comparison: a run has only one parent."""
    from mlflow.entities import Metric, Param

    c = client()
    src = c.get_run(run_id)
    keep = {k: v for k, v in src.data.tags.items() if not k.startswith("mlflow.")}
    new_tags = {
        **keep,
        COPIED_FROM_TAG: run_id,
        **({PARENT_RUN_TAG: parent_run_id} if parent_run_id else {}),
        **(tags or {}),
    }
    run = c.create_run(src.info.experiment_id, run_name=src.info.run_name, tags=new_tags)
    new_id = run.info.run_id
    params = [Param(k, v) for k, v in src.data.params.items()]
    for i in range(0, len(params), _PARAM_BATCH):
        c.log_batch(new_id, params=params[i : i + _PARAM_BATCH])
    metrics = [
        Metric(m.key, m.value, m.timestamp, m.step)
        for key in src.data.metrics
        if not key.startswith(exclude_metric_prefixes)
        for m in c.get_metric_history(run_id, key)
    ]
    for i in range(0, len(metrics), _METRIC_BATCH):
        c.log_batch(new_id, metrics=metrics[i : i + _METRIC_BATCH])
    if src.info.status != "RUNNING":
        c.set_terminated(new_id, status=src.info.status)
    return new_id


def reopen_run(run_id: str) -> None:
    """Mark a run that was interrupted (and is being resumed) as running again."""
    with contact(f"reopen MLflow run {run_id}"):
        c = client()
        c.set_tag(run_id, OWNER_TAG, process_token())
        c.update_run(run_id, status="RUNNING")
        _running(run_id)


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int) -> None:
    """Log finite numeric metrics at ``step`` in one call (non-finite values are skipped)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    ms = [
        Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)
    ]
    c = client()
    for i in range(0, len(ms), _METRIC_BATCH):
        c.log_batch(run_id, metrics=ms[i : i + _METRIC_BATCH])


def logged_steps(run_id: str) -> dict[str, set[int]]:
    """The steps at which each metric of the run has been logged (a resumed run skips those, so
    no point of a curve is logged twice)."""
    c = client()
    return {key: {int(m.step) for m in c.get_metric_history(run_id, key)} for key in c.get_run(run_id).data.metrics}


def log_artifacts(run_id: str, paths: Iterable[tuple[Path, str | None]]) -> None:
    """Copy files or directories into the run: ``(local path, artifact sub-path or None)``."""
    c = client()
    paths = [(Path(p), d) for p, d in paths]
    check_artifact_copies(c.get_run(run_id).info.artifact_uri, paths)  # never through a link out of the home
    for path, dest in paths:
        if path.is_dir():
            c.log_artifacts(run_id, str(path), artifact_path=dest)
        elif path.exists():
            c.log_artifact(run_id, str(path), artifact_path=dest)


def set_tags(run_id: str, tags: Mapping[str, str]) -> None:
    c = client()
    for k, v in tags.items():
        c.set_tag(run_id, k, str(v))


def end_run(run_id: str, status: str = "FINISHED") -> None:
    """``FINISHED``, ``FAILED`` or ``KILLED``."""
    client().set_terminated(run_id, status=status)
    _RUNNING.pop(run_id, None)


def run_tag(run_id: str, tag: str) -> str | None:
    """A tag of a run, or None when the run or the tag does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_run(run_id).data.tags.get(tag)
    except MlflowException:
        return None


if __name__ == "__main__":  # `python -m storage.tracking [UI URL]`: the runs-table links
    import sys

    print_runs_table_urls(*sys.argv[1:2])
