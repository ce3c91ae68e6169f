"""Fixtures and helpers shared by the tests.

Flow-level tests (``test_flow.py``, ``test_compare.py``), module-scoped: each test file gets one
Prefect test harness (a temporary server, ~15 s to start), one tiny CIFAR-10 source and one
SUBSAMPLE_HOME for all its tests. Training tests build their home once with :func:`stage_home`.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from flows.config import DEMO_SOURCE

TINY_CIFAR_IMAGES = 192  # three batches of 64
CIFAR_RECORD = 1 + 32 * 32 * 3  # CIFAR-10 binary: label byte + 3,072 pixel bytes


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="module")
def tiny_cifar_source(tmp_path_factory) -> Path:
    """A CIFAR-10 binary folder holding the first 192 images of the embedded demo data."""
    folder = tmp_path_factory.mktemp("tiny-cifar")
    data = (DEMO_SOURCE / "cifar10-demo.bin").read_bytes()[: TINY_CIFAR_IMAGES * CIFAR_RECORD]
    (folder / "data_batch_1.bin").write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def flow_home(tmp_path_factory, prefect_harness) -> Path:
    """A private SUBSAMPLE_HOME (and MLflow database in it) for one test module."""
    path = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("SUBSAMPLE_HOME", str(path))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path / 'mlflow.db'}")
    yield path
    mp.undo()


@contextmanager
def stage_home(
    tmp_path_factory, prefix: str, name: str, images: np.ndarray, labels: np.ndarray | None = None, tables=None
) -> Iterator[Path]:
    """A fresh SUBSAMPLE_HOME (MLflow in it) holding data set ``name`` (``images``, ``labels``),
    its features and its table (``tables``: a TablesConfig), set for as long as the block runs:
    what the training, methods and DDP tests each build once per module."""
    from pipeline.config import FeaturesConfig, TablesConfig
    from pipeline.stages.features import run_features
    from pipeline.stages.tables import run_tables
    from storage.store import write_store

    home = tmp_path_factory.mktemp(prefix)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SUBSAMPLE_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        write_store(name, images, labels) if labels is not None else write_store(name, images)
        run_features(name, FeaturesConfig(), progress=False)
        run_tables(name, tables or TablesConfig(), FeaturesConfig())
        yield home


# --- tiny images the tests share ----------------------------------------------------------------


def patterns(n: int = 256, s: int = 32, seed: int = 0) -> np.ndarray:
    """Structured toy images: a bright disc or vertical stripes of a random colour on a dark ground."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:s, :s]
    out = np.zeros((n, s, s, 3), np.uint8)
    for i in range(n):
        if i % 2:
            cy, cx = rng.integers(8, s - 8, 2)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= int(rng.integers(4, 9)) ** 2
        else:
            mask = (xx // int(rng.integers(3, 8))) % 2 == 0
        out[i][mask] = rng.integers(60, 256, 3)
        out[i][~mask] = rng.integers(0, 40)
    return out


def blob_images(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """A bright square at a random place on a flat random colour."""
    """Smooth mid-grey images with a random colour and a random bright square (values 60..200,
    so added noise is rarely clipped)."""
    rng = np.random.default_rng(seed)
    img = np.empty((n, size, size, 3), np.float64)
    img[:] = rng.uniform(60, 140, (n, 1, 1, 3))
    for i in range(n):
        y, x = rng.integers(0, size - 6, 2)
        img[i, y : y + 6, x : x + 6] += rng.uniform(20, 60, 3)
    return np.clip(img, 0, 255).astype(np.uint8)
