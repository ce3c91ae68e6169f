"""A comparison read in MLflow alone: its parent run carries the report's verdict (the run's
description, shown on its Overview) and the summary metrics (each configuration's mean and s.d. of
the final metrics), and its experiment a view of its runs (:mod:`storage.mlflow_views`)."""

from __future__ import annotations

import re
from typing import Any

from storage import mlflow_views, tracking

NOTE_TAG = "mlflow.note.content"  # the UI shows it as the run's description
_NOTE_MAX = 8000  # MLflow's limit on a tag value


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """``summary/<metric>/<preset> <strategy> B<B>`` (mean) and ``..._sd``, for every final metric a
    configuration has a mean of."""
    out: dict[str, float] = {}
    for conf in summary.get("configurations", []):
        where = f"{conf['preset']} {conf['strategy']} B{conf['batch_size']}"
        for name, m in (conf.get("metrics") or {}).items():
            if m.get("mean") is not None:
                out[f"summary/{name}/{where}"] = float(m["mean"])
                if m.get("sd") is not None:
                    out[f"summary/{name}_sd/{where}"] = float(m["sd"])
    return out


def verdict_note(summary: dict[str, Any], runs_link: str) -> str:
    """The report's answer and its details as markdown, then where the rest is; whole sentences only
    (a note MLflow would not store in full ends at the last sentence that fits, and says so)."""
    head = (
        f"**Comparison on {summary.get('dataset')} ({summary.get('scale')})**: "
        f"{summary.get('runs_ok')} of {summary.get('runs')} runs finished.\n\n"
    )
    tail = f"\n\nIts runs: {runs_link}\n\nThe whole report: Artifacts, report/report.html."
    body = str(summary.get("answer") or "") + "".join(f"\n\n- {d}" for d in summary.get("answer_details") or [])
    room = _NOTE_MAX - len(head) - len(tail) - 80
    if len(body) > room:
        cut = max(body.rfind(". ", 0, room), body.rfind("\n", 0, room))
        body = body[: cut + 1] + " (continued in report/report.md)"
    return head + body + tail


def record_on_parent(parent_run_id: str, summary: dict[str, Any], ui: str = mlflow_views.UI) -> str:
    """Log the summary metrics and the verdict on the parent run and store the comparison's view;
    the link to its runs."""
    c = tracking.client()
    children = tracking.child_runs(parent_run_id)
    link = mlflow_views.comparison_url(c, parent_run_id, children, ui)
    tracking.log_metrics(parent_run_id, summary_metrics(summary), step=0)
    note = verdict_note(summary, link)
    c.set_tag(parent_run_id, NOTE_TAG, re.sub(r"[ \t]+\n", "\n", note))
    return link
