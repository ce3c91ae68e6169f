"""A moved or copied ``$SUBSAMPLE_HOME``: MLflow's stored artifact locations follow the home.

MLflow stores each experiment's artifact location, and each run's artifact URI, as absolute
``file://`` URIs (``file:///old/home/mlflow-artifacts/subsample/demo/<run>/artifacts``). After
``mv`` (or ``cp -r``) of the home, MLflow would go on writing a run's grids, curves and generator
under the *old* path, re-creating it. So when a process first opens the home's tracking database
(``storage.tracking.client``, under the database's lock), :func:`relocate_artifact_locations`
rewrites every location under some ``.../mlflow-artifacts`` that is not the current home's to the
same place under the current ``mlflow-artifacts/``: experiments, runs and logged models. Files
already under the current home are untouched (they moved with it); nothing is ever written to the
old path. This only applies to the home's own database (not to a ``MLFLOW_TRACKING_URI`` the user
set), and only to ``file:`` locations.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

MARK = "/mlflow-artifacts"
# (table, location column, id column) of MLflow 3's schema that store artifact locations
TABLES = (
    ("experiments", "artifact_location", "experiment_id"),
    ("runs", "artifact_uri", "run_uuid"),
    ("logged_models", "artifact_location", "model_id"),
)


def _old_root(location: str, root: str) -> str | None:
    """The ``file:...mlflow-artifacts`` prefix of ``location`` when it is not ``root``, else None."""
    if not location or not location.startswith("file:"):
        return None
    i = location.find(MARK + "/")
    if i < 0:
        if not location.endswith(MARK):
            return None
        i = len(location) - len(MARK)
    prefix = location[: i + len(MARK)]
    return None if prefix == root else prefix


def relocate_artifact_locations(db: Path, root: str) -> int:
    """Rewrite the artifact locations in MLflow's SQLite database ``db`` that lie under another
    ``mlflow-artifacts`` folder to lie under ``root`` (the current home's, a ``file:`` URI); the
    number of rows changed."""
    changed = 0
    con = sqlite3.connect(str(db), timeout=60)
    try:
        with con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            for table, column, key in TABLES:
                if table not in tables:
                    continue
                rows = con.execute(f"SELECT {key}, {column} FROM {table}").fetchall()  # noqa: S608 - fixed names
                for row_id, location in rows:
                    old = _old_root(location, root)
                    if old is not None:
                        con.execute(
                            f"UPDATE {table} SET {column} = ? WHERE {key} = ?",  # noqa: S608
                            (root + location[len(old) :], row_id),
                        )
                        changed += 1
    finally:
        con.close()
    return changed
