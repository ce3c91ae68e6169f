"""The features stage: per-image features (spec §1) of every image in a data set store.

``subsample features NAME`` runs the numba kernels of :mod:`kernels.features` over the store's
chunks with Dask and writes a ``features`` artifact::

    stages/features/<key>/features.zarr     float64 (N, F); attrs: names
    stages/features/<key>/manifest.json

with ``key = H(feature names, store content hash, CODE_VERSION)``, so the features of the same
images are computed once whatever the data set is called.

Scheduling: by default Dask's threaded scheduler (the kernels release the GIL, so threads run
them in parallel, and it starts instantly); ``scheduler="local-cluster"`` starts a
``distributed.LocalCluster`` of worker processes, and ``dask_address`` uses an existing
scheduler. The graph carries the store's *path* (``da.from_zarr(path)``), not its data, so remote
workers read the chunks themselves; they need the same path. Only a few chunks are in memory at
once (one per worker), never the whole image array.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import zarr

from kernels.features import compute_features
from pipeline.config import FeaturesConfig
from pipeline.stages.lineage import CODE_VERSIONS, features_key, find, locate, store_key
from pipeline.stages.result import StageResult, built_result, cached_result
from storage.artifacts import Artifact, build_artifact
from storage.errors import SubsampleError
from storage.store import DatasetStore

STAGE = "features"
CODE_VERSION = CODE_VERSIONS[STAGE]  # bumped in pipeline/stages/lineage.py, with the key recipe
FEATURES_FILE = "features.zarr"
SCHEDULER_CONNECT_TIMEOUT = "10s"


def features_artifact(dataset: str, cfg: FeaturesConfig = FeaturesConfig(), *, needed_by: str = STAGE) -> Artifact:
    """The cached features artifact of ``dataset``; raises :class:`MissingArtifactError` (stage
    ``needed_by``) naming it and the command that builds it when it is missing or corrupt."""
    return find(STAGE, dataset, features=cfg, needed_by=needed_by)


def load_features(artifact: Artifact) -> tuple[np.ndarray, tuple[str, ...]]:
    """``(values float64 (N, F), feature names)`` of a features artifact."""
    arr = zarr.open_array(str(artifact.path / FEATURES_FILE), mode="r")
    return np.asarray(arr[:], dtype=np.float64), tuple(arr.attrs["names"])


def _features_block(block: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    return compute_features(block, names)


def features_graph(store_path: str, names: tuple[str, ...]):
    """The dask array (N, F) float64 of features of the store at ``store_path``, one task per chunk."""
    import dask.array as da

    images = da.from_zarr(str(store_path), component="images")
    images = images.rechunk({1: -1, 2: -1, 3: -1})  # a kernel needs whole images (no-op for our stores)
    return images.map_blocks(
        _features_block,
        names,
        dtype=np.float64,
        drop_axis=[1, 2, 3],
        new_axis=[1],
        chunks=(images.chunks[0], (len(names),)),
        name=f"features-{'-'.join(names)}",
    )


@contextmanager
def _progress_bar(total: int, enabled: bool) -> Iterator:
    from tqdm import tqdm

    with tqdm(total=total, unit="img", desc=STAGE, file=sys.stderr, disable=not enabled) as bar:
        yield bar


def _compute_threads(blocks: list, workers: int, bar) -> list[np.ndarray]:
    import dask
    from dask.callbacks import Callback

    prefix = blocks[0].key[0] if blocks else None

    class _Progress(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            if isinstance(key, tuple) and key[0] == prefix:
                bar.update(len(result))

    with _Progress():
        return list(dask.compute(*blocks, scheduler="threads", num_workers=workers))


def _compute_distributed(blocks: list, client, bar) -> list[np.ndarray]:
    from distributed import as_completed

    futures = client.compute(blocks)
    index = {f.key: i for i, f in enumerate(futures)}
    results: list = [None] * len(futures)
    for fut, value in as_completed(futures, with_results=True):
        results[index[fut.key]] = value
        bar.update(len(value))
    return results


@contextmanager
def dask_client(cfg: FeaturesConfig) -> Iterator:
    """A ``distributed.Client`` for ``cfg`` (closed on exit), or None for the threaded scheduler."""
    if cfg.dask_address is None and cfg.scheduler == "threads":
        yield None
        return
    from distributed import Client, LocalCluster

    if cfg.dask_address is not None:
        try:
            client = Client(cfg.dask_address, timeout=SCHEDULER_CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as e:
            raise SubsampleError(STAGE, f"cannot reach the Dask scheduler at {cfg.dask_address}: {e}") from e
        with client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=cfg.workers or os.cpu_count() or 1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def compute_store_features(
    store_path: str, names: tuple[str, ...], cfg: FeaturesConfig, *, progress: bool = False
) -> np.ndarray:
    """Features (N, F) float64 of every image of the store at ``store_path``, streamed chunk by chunk."""
    arr = features_graph(store_path, names)
    blocks = list(arr.to_delayed().ravel())
    with _progress_bar(arr.shape[0], progress) as bar, dask_client(cfg) as client:
        if client is None:
            parts = _compute_threads(blocks, cfg.workers or os.cpu_count() or 1, bar)
        else:
            parts = _compute_distributed(blocks, client, bar)
    if not parts:
        return np.empty((0, len(names)), np.float64)
    return np.concatenate(parts).astype(np.float64, copy=False)


def _write_features(path, values: np.ndarray, names: tuple[str, ...]) -> None:
    arr = zarr.create_array(
        store=str(path),
        shape=values.shape,
        chunks=(min(max(len(values), 1), 1 << 18), values.shape[1]),
        dtype="float64",
        dimension_names=("n", "feature"),
        attributes={"names": list(names)},
    )
    arr[:] = values


def features_stage(
    store: DatasetStore,
    cfg: FeaturesConfig = FeaturesConfig(),
    *,
    dataset: str | None = None,
    refresh: bool = False,
    progress: bool = True,
) -> StageResult:
    """Compute (or find cached) the features of every image of ``store`` (``dataset``: the name it
    was asked by, default the store's)."""
    t0 = time.perf_counter()
    dataset = dataset or store.name
    names = tuple(cfg.features)
    from kernels.features import FEATURES
    from pipeline.registry import UnknownName

    for name in names:
        if name not in FEATURES:
            raise UnknownName(STAGE, "feature", name, FEATURES)
    if store.n == 0:
        raise SubsampleError(STAGE, f"data set store {store.path} has no images; re-run ingest")
    key = features_key(store, cfg)
    upstream = {"ingest": store_key(store)}

    if not refresh and (hit := cached_result(STAGE, key, started=t0, upstream=upstream, dataset=dataset)) is not None:
        return hit
    store.verify(STAGE, use_record=True)  # the features must be of the images the content hash names

    with build_artifact(
        STAGE,
        key,
        params=cfg.key_params(),
        inputs={"store": store.content_hash},
        code_version=CODE_VERSION,
        upstream=upstream,
    ) as b:
        t1 = time.perf_counter()
        values = compute_store_features(str(store.path), names, cfg, progress=progress)
        compute_s = time.perf_counter() - t1
        if values.shape != (store.n, len(names)):
            raise SubsampleError(STAGE, f"computed {values.shape} features for {store.n} images in {store.path}")
        _write_features(b.path / FEATURES_FILE, values, names)
        summary: dict = {
            "stage": STAGE,
            "dataset": dataset,
            "key": key,
            "path": str(b.final_path),
            "cache_hit": False,
            "seconds": 0.0,
            "n_images": store.n,
            "image_size": store.size,
            "features": list(names),
            "scheduler": cfg.dask_address or cfg.scheduler,
            "images_per_second": round(store.n / compute_s, 1) if compute_s > 0 else None,
            "feature_stats": {
                name: {
                    "min": float(values[:, j].min()),
                    "mean": float(values[:, j].mean()),
                    "max": float(values[:, j].max()),
                }
                for j, name in enumerate(names)
            },
        }
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        b.summary = summary
    return built_result(STAGE, key, summary, started=t0, upstream=upstream)


def run_features(
    dataset: str, cfg: FeaturesConfig = FeaturesConfig(), *, refresh: bool = False, progress: bool = True
) -> dict:
    """``subsample features``: the stage on the store of ``dataset``; returns the summary."""
    store = locate(STAGE, dataset).store
    assert store is not None
    return features_stage(store, cfg, dataset=dataset, refresh=refresh, progress=progress).to_json()
