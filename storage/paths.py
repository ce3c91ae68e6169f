"""Where artifacts live. One root, ``$SUBSAMPLE_HOME`` (default ``./artifacts``)::

    $SUBSAMPLE_HOME/
        datasets/<name>.zarr          dataset stores, by name (written by ingest)
        stages/<stage>/<key>/         stage artifacts, by content-addressed key
        mlflow.db                     MLflow tracking database (SQLite)
        mlflow-artifacts/             MLflow artifact root
"""
from __future__ import annotations

import os
import re
from pathlib import Path

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def home() -> Path:
    return Path(os.environ.get("SUBSAMPLE_HOME", "artifacts")).absolute()


def check_name(name: str) -> str:
    """Dataset names become directory names: keep them to a safe alphabet."""
    if not _NAME_RE.match(name) or name.endswith(".zarr"):
        raise ValueError(
            f"invalid data set name {name!r}: use letters, digits, '.', '_' or '-' "
            "(start with a letter or digit, no .zarr suffix)"
        )
    return name


def datasets_dir() -> Path:
    return home() / "datasets"


def dataset_path(name: str) -> Path:
    return datasets_dir() / f"{check_name(name)}.zarr"


def stage_dir(stage: str) -> Path:
    return home() / "stages" / stage


def mlflow_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` wins; otherwise a SQLite database under the artifact root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    home().mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home() / 'mlflow.db'}"


def mlflow_artifact_root() -> str:
    return (home() / "mlflow-artifacts").as_uri()
