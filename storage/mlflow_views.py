"""Links into the MLflow UI (3.17) that open on what a user came for, in model-training mode.

What the UI can be told, found in its source (``mlflow/server/js``, 3.17.2):

- The mode (GenAI or model training) comes from ``?workflowType=`` in the link, else from the
  browser's remembered choice (``localStorage`` ``mlflow.workflowType``), else GenAI. The
  experiment's kind tag (``mlflow.experimentKind``) does not decide it, so every link printed here
  carries ``workflowType=machine_learning``: a run's link as well as a runs table's.
- A runs table opens with a view stored in the experiment (tag ``mlflow.sharedViewState.<key>``,
  opened by ``?viewStateShareKey=<key>``): its columns and its search facets (``searchFilter``,
  ordering, grouping). The UI ignores the view when the link itself has a search facet, and never
  takes expanded rows from it; it fetches the parent of every child run that matches a filter and
  folds the children under it. So a comparison gets a view of its own: filtered to its children
  (tag ``mlflow.parentRunId``) and grouped by preset, which lists them one row each, groups open.
- The assistant panel opens by itself on a browser's first visit to a UI on localhost (nothing
  on the server turns it off); closed once, it stays closed. ``mlflow ui``'s job runner (huey
  consumer processes for GenAI jobs) is off with ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``
  (``make mlflow-ui`` sets it).

Which columns: the strategy, B, seed and preset params, then the final metrics and their floors
(what as many real images score), then the last values of the per-epoch curves; the names come
from the runs themselves (metric names carry their sample counts, e.g. ``eval/feature_kl500_train``).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

UI = "http://127.0.0.1:5000"
MODE = "workflowType=machine_learning"
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
PARENT_RUN_TAG = "mlflow.parentRunId"
PARAMS = ("batches.strategy", "batches.batch_size", "batches.seed", "train.preset")
_CREATED_MS = 1_767_225_600_000  # fixed (2026-01-01): a view's tag changes only when its columns do

# final metrics first (FID, KID, IS, feature KL, each followed by its floor), then the per-epoch curves
_FINAL = (r"eval/fid\d+k?_train", r"eval/kid\d+k?_train", r"eval/is\d+k?", r"eval/feature_kl\d+k?_train")
_CURVES = (r"feature_kl\d+k?", r"loss_d", r"loss_g")


def metric_columns(keys: Iterable[str]) -> list[str]:
    """The metric keys a runs table shows, in order: each final metric and its ``_floor``, then the
    per-epoch curves (their last values) and theirs."""
    keys = set(keys)
    out: list[str] = []
    for pattern in _FINAL + _CURVES:
        for key in sorted(k for k in keys if re.fullmatch(pattern, k)):
            out += [key] + [k for k in (f"{key}_floor",) if k in keys]
    return out


def view_state(metrics: Iterable[str], search_filter: str = "", group_by: str = "") -> dict[str, Any]:
    """A runs-table view state (the UI's column keys: ``params.`name```, ``metrics.`name```);
    ``group_by`` a param: rows grouped by its value, the groups open (a group row shows averages)."""
    columns = [f"params.`{p}`" for p in PARAMS] + [f"metrics.`{m}`" for m in metrics]
    state: dict[str, Any] = {
        "selectedColumns": columns,
        "columnOrder": columns,
        "runsHiddenMode": "SHOW_ALL",
        "orderByKey": "attributes.start_time",
        "orderByAsc": search_filter != "",  # a comparison in the order it ran; the experiment newest first
    }
    if search_filter:
        state["searchFilter"] = search_filter
    if group_by:
        state["groupBy"] = {"aggregateFunction": "average", "groupByKeys": [{"mode": "param", "groupByData": group_by}]}
    return state


def view_tag(name: str, state: dict[str, Any]) -> str:
    """The tag value as the UI saves a view: ``{name, createdAt, updatedAt, state}``, ``state`` the
    view state's JSON; it is also listed under the runs table's Views menu."""
    return json.dumps({"name": name, "createdAt": _CREATED_MS, "updatedAt": _CREATED_MS, "state": json.dumps(state)})


def experiment_url(experiment_id: str, ui: str = UI) -> str:
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?{MODE}"


def view_url(experiment_id: str, key: str, ui: str = UI) -> str:
    return f"{experiment_url(experiment_id, ui)}&viewStateShareKey={key}"


def run_url(experiment_id: str, run_id: str, ui: str = UI) -> str:
    """A run's page (its Overview: params, the description, metrics' last values), in model-training mode."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{MODE}"


def metrics_url(experiment_id: str, run_id: str, ui: str = UI) -> str:
    """A run's charts (Model metrics tab)."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics?{MODE}"


def comparison_key(parent_run_id: str) -> str:
    return f"compare-{parent_run_id}"


def set_comparison_view(c: "MlflowClient", parent_run_id: str, children: list) -> str:
    """Store the comparison's view in its experiment (its children, flat; strategy, B, seed, preset
    and the metric columns its children have) and return its key."""
    parent = c.get_run(parent_run_id)
    keys = {k for run in children for k in run.data.metrics}
    # grouped by preset: the UI would otherwise fold the children under their (fetched) parent's row
    state = view_state(metric_columns(keys), f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'", "train.preset")
    key = comparison_key(parent_run_id)
    name = f"comparison {parent.info.run_name or parent_run_id}: its {len(children)} runs"
    value = view_tag(name, state)
    exp = c.get_experiment(parent.info.experiment_id)
    if exp.tags.get(SHARED_VIEW_PREFIX + key) != value:
        c.set_experiment_tag(parent.info.experiment_id, SHARED_VIEW_PREFIX + key, value)
    return key


def comparison_url(c: "MlflowClient", parent_run_id: str, children: list, ui: str = UI) -> str:
    """The link to a comparison: its children as rows, their settings and metrics as columns."""
    key = set_comparison_view(c, parent_run_id, children)
    return view_url(c.get_run(parent_run_id).info.experiment_id, key, ui)


def refresh_experiment_view(c: "MlflowClient", experiment_id: str, key: str, name: str) -> None:
    """The experiment's own view (every run, newest first) with the metric columns its runs have."""
    keys: set[str] = set()
    for run in c.search_runs([experiment_id], max_results=1000):
        keys |= set(run.data.metrics)
    value = view_tag(name, view_state(metric_columns(keys)))
    if c.get_experiment(experiment_id).tags.get(SHARED_VIEW_PREFIX + key) != value:
        c.set_experiment_tag(experiment_id, SHARED_VIEW_PREFIX + key, value)


def comparison_lines(
    c: "MlflowClient", experiment_id: str, ui: str = UI, parent_tag: str = "subsample.compare"
) -> list[str]:
    """One line per comparison (parent run) of the experiment, newest first: its name, start, and
    the link to its runs."""
    from datetime import datetime

    lines = []
    for parent in c.search_runs([experiment_id], filter_string=f"tags.`{parent_tag}` = 'parent'", max_results=100):
        children = c.search_runs(
            [experiment_id], filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent.info.run_id}'", max_results=1000
        )
        when = datetime.fromtimestamp(parent.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
        url = comparison_url(c, parent.info.run_id, list(children), ui)
        lines.append(f"  comparison {parent.info.run_name} ({when}, {len(children)} runs): {url}")
    return lines
