"""Where artifacts live. One root, ``$SUBSAMPLE_HOME`` (default ``./artifacts``)::

    $SUBSAMPLE_HOME/
        datasets/<name>.zarr          dataset stores, by name (written by ingest)
        stages/<stage>/<key>/         stage artifacts, by content-addressed key
        mlflow.db                     MLflow tracking database (SQLite)
        mlflow-artifacts/             MLflow artifact root
        weights/                      downloaded feature-extractor weights

Every path the project writes goes through :func:`inside_home`: it is resolved (symlinks
followed) and refused unless it lies under the resolved home, so neither a name from a file (a key
inside ``generator.pt``, a run id from the command line) nor a symlink planted in the home can
send a write elsewhere. The only writes elsewhere are the ones a user configures explicitly:
``PREFECT_HOME`` (Prefect's own database) and ``MLFLOW_TRACKING_URI`` when set.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from storage.errors import SubsampleError

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# a path component the project builds from a key, a stage name or a run id
_COMPONENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TRAIN_KEY_RE = re.compile(r"[0-9a-f]{16}")
_RUN_ID_RE = re.compile(r"[0-9a-f]{32}")


def home() -> Path:
    return Path(os.environ.get("SUBSAMPLE_HOME", "artifacts")).absolute()


def inside_home(path: str | os.PathLike, *, what: str = "path") -> Path:
    """``path`` resolved (symlinks followed, ``..`` removed), or :class:`SubsampleError` when it
    does not lie under the resolved ``$SUBSAMPLE_HOME``. Every path the project writes passes here."""
    root = home().resolve()
    p = Path(path)
    resolved = (p if p.is_absolute() else root / p).resolve()
    if resolved != root and root not in resolved.parents:
        raise SubsampleError(
            "paths",
            f"{what} {str(p)!r} resolves to {resolved}, outside $SUBSAMPLE_HOME ({root}); refusing to write there",
        )
    return resolved


def check_name(name: str) -> str:
    """Dataset names become directory names: keep them to a safe alphabet (the whole string:
    a trailing newline or any other control character is refused)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name.endswith(".zarr"):
        raise ValueError(
            f"invalid data set name {name!r}: use letters, digits, '.', '_' or '-' "
            "(start with a letter or digit, no .zarr suffix)"
        )
    return name


def check_component(value: str, what: str) -> str:
    """A key, stage name or id that becomes one path component: the safe alphabet, no separators,
    no ``..``; raises ValueError naming ``what``."""
    if not isinstance(value, str) or not _COMPONENT_RE.fullmatch(value) or ".." in value:
        raise ValueError(f"invalid {what} {value!r}: expected letters, digits, '.', '_' or '-' only")
    return value


def is_train_key(value: str) -> bool:
    """A train artifact key: 16 lowercase hex digits (:data:`storage.artifacts.KEY_LENGTH`)."""
    return isinstance(value, str) and _TRAIN_KEY_RE.fullmatch(value) is not None


def is_run_id(value: str) -> bool:
    """An MLflow run id: 32 lowercase hex digits."""
    return isinstance(value, str) and _RUN_ID_RE.fullmatch(value) is not None


def datasets_dir() -> Path:
    return inside_home(home() / "datasets", what="datasets folder")


def dataset_path(name: str) -> Path:
    return inside_home(datasets_dir() / f"{check_name(name)}.zarr", what="data set store")


def stage_dir(stage: str) -> Path:
    return inside_home(home() / "stages" / check_component(stage, "stage name"), what="stage folder")


def scratch_dir() -> Path:
    """Temporary files the project needs outside an artifact (made and removed by the caller)."""
    return inside_home(home() / "tmp", what="scratch folder")


def mlflow_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` wins (its user and password moved into MLflow's own variables first:
    :func:`storage.credentials.move_credentials_to_env`); otherwise a SQLite database under the
    artifact root."""
    from storage.credentials import move_credentials_to_env

    move_credentials_to_env()
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    home().mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{inside_home(home() / 'mlflow.db', what='MLflow database')}"


def mlflow_artifact_root() -> str:
    return inside_home(home() / "mlflow-artifacts", what="MLflow artifact root").as_uri()
