"""Which process owns an MLflow run, and what happens to the runs of owners that are gone.

Every run the project starts (or reopens for ``--resume``) is tagged ``subsample.owner`` with
:func:`process_token`: ``<pid>@<host> boot=<boot id> start=<start time>``. The process's start
time (clock ticks since boot, ``/proc/<pid>/stat``) and the kernel's boot id tell a live owner from
a reused pid and from a machine that was restarted. An owner on another host is never judged (a
home shared over NFS), as :mod:`storage.locks` judges temporary folders.

A run still ``RUNNING`` whose owner is gone (``kill -9``, an out-of-memory kill, power loss) is
marked ``KILLED`` with the tag ``subsample.ended_by`` saying why, by the first process that opens
the home's tracking store afterwards (:func:`mark_orphaned_runs`, called by
``storage.tracking.client``). A run interrupted by Ctrl-C or SIGTERM is marked by its own process
(``storage.interrupts``), with the same tag.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from storage.locks import _HOST, pid_alive

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

OWNER_TAG = "subsample.owner"
ENDED_BY_TAG = "subsample.ended_by"
_TOKEN_RE = re.compile(
    r"(?P<pid>\d+)@(?P<host>[A-Za-z0-9.-]+)(?: boot=(?P<boot>[0-9a-f-]+))?(?: start=(?P<start>\d+))?"
)


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of ``/proc/<pid>/stat``), or ""."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # fields after the command name start at field 3


def process_token(pid: int | None = None) -> str:
    """``<pid>@<host> boot=<id> start=<ticks>`` of this (or ``pid``'s) process."""
    pid = os.getpid() if pid is None else pid
    token = f"{pid}@{_HOST}"
    if boot := boot_id():
        token += f" boot={boot}"
    if start := start_ticks(pid):
        token += f" start={start}"
    return token


def token_gone(token: str) -> bool:
    """True when the process ``token`` names ran on this host and is known to be gone (not alive, a
    different process under its pid, or the machine restarted since); False when it is alive, on
    another host, or the token is unreadable."""
    m = _TOKEN_RE.fullmatch(token or "")
    if m is None or m["host"] != _HOST:
        return False
    if m["boot"] and boot_id() and m["boot"] != boot_id():
        return True
    pid = int(m["pid"])
    if not pid_alive(pid):
        return True
    return bool(m["start"]) and start_ticks(pid) not in ("", m["start"])


def mark_orphaned_runs(c: "MlflowClient", experiment_ids: list[str]) -> list[str]:
    """Mark ``KILLED`` (with :data:`ENDED_BY_TAG`) every ``RUNNING`` run of these experiments whose
    :data:`OWNER_TAG` names a process that is gone; their ids."""
    from mlflow.entities import ViewType

    if not experiment_ids:
        return []
    marked, token = [], None
    while True:
        page = c.search_runs(
            experiment_ids,
            filter_string="attributes.status = 'RUNNING'",
            run_view_type=ViewType.ALL,
            max_results=1000,
            page_token=token,
        )
        for run in page:
            owner = run.data.tags.get(OWNER_TAG, "")
            if owner and token_gone(owner):
                c.set_tag(
                    run.info.run_id,
                    ENDED_BY_TAG,
                    f"its process ({owner.split(' ')[0]}) was gone (killed, or the machine stopped); "
                    f"marked KILLED by process {os.getpid()}@{_HOST} at {time.strftime('%Y-%m-%d %H:%M:%S')}",
                )
                c.set_terminated(run.info.run_id, status="KILLED")
                marked.append(run.info.run_id)
        token = page.token
        if not token:
            return marked
