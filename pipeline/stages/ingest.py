"""Ingest: source files → the data set store ``$SUBSAMPLE_HOME/datasets/<name>.zarr``.

``subsample ingest SOURCE --name NAME --size S [--crop C]`` reads one of these sources (the kind is
detected from the path):

=================  ==============================================================================
``images``         a folder of .jpg/.jpeg/.png/.webp/.bmp files (recursive, sorted by relative
                   path), or one image file
``zip``            a zip of images (CelebA's ``img_align_celeba.zip``), members read in place
``cifar10-bin``    CIFAR-10 binary batches: ``*.bin`` files in a folder, or one ``.bin`` file
                   (records of 1 label byte + 3,072 planar RGB bytes); ``batches.meta.txt`` names
                   the classes
``cifar10-python`` CIFAR-10 python batches (``data_batch_*``, ``test_batch``), unpickled with a
                   restricted unpickler that only builds numpy arrays and plain containers

CIFAR-10 folders hold the training batches and the test batch: ``--split train`` (the default)
reads the training batches (every file but ``test_batch[.bin]``), ``test`` the test batch, ``all``
both; the split is recorded in the store's attributes. A single batch file given as the source
must belong to the split asked for.
``idx``            MNIST / Fashion-MNIST ``*-images-idx3-ubyte[.gz]`` (+ ``*-labels-idx1-ubyte``
                   next to it), or a folder of them
``npz``            a ``.npz`` with ``images`` (N×H×W×3 or N×H×W uint8) and optional ``labels``
=================  ==============================================================================

Every image goes through one policy (:class:`CropPolicy`): convert to RGB (grey → three equal
channels, alpha composited on white, palette/CMYK/16-bit converted, EXIF orientation applied),
centre-crop a square (side ``--crop`` or the short side) and resize it to S×S with Lanczos. With
``--decoder fast`` (the default) JPEGs are decoded by libjpeg-turbo and every image is resampled by
Pillow's Lanczos as a numba kernel (``pipeline/data/decode.py``, ``kernels/resize.py``); ``--decoder
pillow`` is the Pillow-only path of ingest/1.

Files are decoded in parallel by Dask (``files_per_task`` files per task, a bounded window of tasks
in flight) and appended to the store in sorted order, so memory stays bounded and the result does
not depend on the number of workers. A file Pillow cannot decode (corrupt, truncated, zero bytes,
not an image, too many pixels) is quarantined: left out and listed in ``quarantine.json``.

The store's ``key`` attribute is ``H(parameters, source fingerprint, CODE_VERSION)``, the
fingerprint being a hash of the source files' relative paths, sizes and mtimes (cheap: CelebA's
bytes are not hashed). An unchanged re-run finds the store, verifies its content hash and does no
work.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import sys
import threading
import time
import uuid
import warnings
from collections import Counter
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any, Iterable, Iterator

import dask
from PIL import Image
from tqdm import tqdm

from pipeline.config import IngestConfig
from pipeline.data.images import Block, CropPolicy
from pipeline.data.readers import SourceLimits, Task, _worker_init
from pipeline.data.sources import open_source
from pipeline.stages.result import StageResult
from storage.artifacts import artifact_key
from storage.errors import SubsampleError
from storage.paths import check_name, dataset_path
from storage.store import QUARANTINE_FILE, DatasetStore, StoreBuilder, open_store

CODE_VERSION = "ingest/2"  # 2: the fast decoder (libjpeg-turbo + the Lanczos kernel) and decoder fields in the key
STAGE = "ingest"

log = logging.getLogger("subsample.ingest")


# --- running ------------------------------------------------------------------------------------------


def ingest_key(cfg: IngestConfig, fingerprint: str) -> str:
    """The store's key: parameters (not the name; the source as an absolute path), the source
    fingerprint and the code version. Execution-only fields (workers, scheduler) are not in it."""
    params = cfg.key_params()
    params.pop("name")
    if params.get("split") == "train":  # the default: stores built before splits existed keep their key
        params.pop("split")
    params["source"] = str(Path(cfg.source).expanduser().absolute())
    return artifact_key(STAGE, params, {"source": fingerprint}, CODE_VERSION)


def _batched(it: Iterable, n: int) -> Iterator[list]:
    batch: list = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def run_tasks_in_order(tasks: Iterable[Task], *, workers: int, scheduler: str) -> Iterator[Block]:
    """Run tasks with Dask's local scheduler, a window of ``2 × workers`` tasks per ``compute``,
    yielding results in task order. A producer thread computes the next window while the caller
    writes the last one, and waits while one finished window is unconsumed: at most three windows
    of decoded images are in memory, whatever the data set size. Close the generator (or exhaust
    it) to stop the producer."""
    done = object()
    results: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        pool: Executor
        if scheduler == "processes":
            ctx = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(
                workers, mp_context=ctx, initializer=_worker_init, initargs=(Image.MAX_IMAGE_PIXELS,)
            )
        else:
            pool = ThreadPoolExecutor(workers, thread_name_prefix="ingest")
        try:
            with pool:
                for window in _batched(tasks, 2 * workers):
                    delayed = [dask.delayed(fn, pure=False)(*args) for fn, args in window]
                    put(dask.compute(*delayed, scheduler=scheduler, pool=pool, num_workers=workers))
                    if stop.is_set():  # before pulling (reading, unpickling) the next window
                        return
            put(done)
        except BaseException as e:  # handed to the caller's thread
            put(e)

    producer = threading.Thread(target=produce, name="ingest-producer", daemon=True)
    producer.start()
    try:
        while True:
            item = results.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield from item
    finally:
        stop.set()
        producer.join()


def _cached_store(name: str, key: str) -> DatasetStore | None:
    try:
        store = open_store(name)
    except SubsampleError:
        return None
    if store.attrs.get("key") != key:
        return None
    try:
        store.verify()
    except SubsampleError as e:
        log.warning("%s; rebuilding", e)
        return None
    return store


def _summary(store: DatasetStore, *, cache_hit: bool, seconds: float) -> dict[str, Any]:
    attrs = store.attrs
    quarantine = store.quarantine
    return {
        "stage": STAGE,
        "dataset": store.name,
        "key": attrs["key"],
        "path": str(store.path),
        "cache_hit": cache_hit,
        "seconds": round(seconds, 3),
        "n_images": store.n,
        "n_quarantined": len(quarantine),
        "quarantine": quarantine,
        "source": attrs["source"],
        "source_format": attrs["source_format"],
        "size": store.size,
        "crop": attrs["policy"]["crop"],
        **({"split": attrs["split"]} if "split" in attrs else {}),
        "labels": store.labels is not None,
        "content_hash": store.content_hash,
        "images_per_second": attrs["ingest"]["images_per_second"],
    }


def rate(n: int, seconds: float) -> float | None:
    """``n / seconds`` to three significant digits: 0.0333 for one image in 30 s, never a
    rounded-away 0.0 for a small ingest; None when no time was measured."""
    if seconds <= 0:
        return None
    return float(f"{n / seconds:.3g}")


def _quarantine_message(quarantine: list[dict], where: str) -> str:
    kinds = Counter(q["reason"].split(":")[0] for q in quarantine)
    detail = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
    return f"{len(quarantine)} file(s) quarantined ({detail}), {where}"


def run_ingest(cfg: IngestConfig, *, refresh: bool = False, progress: bool = True) -> dict[str, Any]:
    """``subsample ingest``: :func:`ingest_stage`'s summary."""
    return ingest_stage(cfg, refresh=refresh, progress=progress).to_json()


def ingest_stage(cfg: IngestConfig, *, refresh: bool = False, progress: bool = True) -> StageResult:
    """Build (or find) the store ``datasets/<cfg.name>.zarr`` from ``cfg.source``; the result's
    artifact is the :class:`DatasetStore`. A missing/empty source, or one without a single valid
    image, raises :class:`SubsampleError` and writes nothing."""
    t0 = time.perf_counter()
    try:
        final = dataset_path(check_name(cfg.name))
    except ValueError as e:
        raise SubsampleError(STAGE, str(e)) from None
    source = open_source(cfg.source, SourceLimits.of(cfg), cfg.split)
    fingerprint = source.fingerprint()
    key = ingest_key(cfg, fingerprint)
    if not refresh:
        store = _cached_store(cfg.name, key)
        if store is not None:
            return StageResult.from_summary(
                _summary(store, cache_hit=True, seconds=time.perf_counter() - t0), artifact=store
            )

    policy = CropPolicy(cfg.size, cfg.crop, cfg.decoder, cfg.decode_device)
    scheduler = cfg.scheduler
    if cfg.decode_device == "cuda":
        if cfg.decoder != "fast":
            raise SubsampleError(
                STAGE, "--decode-device cuda needs --decoder fast (the Pillow path decodes on the CPU)"
            )
        from pipeline.data.decode import check_cuda

        check_cuda()
        scheduler = "threads"  # one CUDA context, shared by the worker threads
    attrs = {
        "source": str(source.path),
        "source_format": source.format,
        "source_fingerprint": fingerprint,
        "key": key,
        "policy": policy.attrs(),
        **(
            {
                "split": cfg.split,
                "split_files": sorted(f.name for f in source.files if f.suffix != ".txt" and f.name != "batches.meta"),
            }
            if source.format.startswith("cifar10")
            else {}
        ),
        **({"class_names": source.class_names} if source.class_names else {}),
    }
    quarantine = list(source.listing_quarantine)
    token = uuid.uuid4().hex
    builder: StoreBuilder | None = None
    with ExitStack() as stack:
        # Pillow warns (rather than raises) between MAX_IMAGE_PIXELS and twice that: make it an
        # error, so those files are quarantined too. Worker threads share these filters.
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        bar = stack.enter_context(
            tqdm(total=source.n_items, desc=f"ingest {cfg.name}", unit="img", disable=not progress, file=sys.stderr)
        )
        blocks = stack.enter_context(
            closing(run_tasks_in_order(source.tasks(policy, cfg, token), workers=cfg.workers, scheduler=scheduler))
        )
        n_accepted = 0  # builder.n counts only whole chunks until finish() flushes the last one
        for block in blocks:
            quarantine += block.quarantine
            n_accepted += len(block.images)
            if len(block.images) and builder is None:  # created lazily: nothing is written for no valid image
                builder = stack.enter_context(
                    StoreBuilder(
                        cfg.name, size=cfg.size, n_max=source.n_items, has_labels=source.has_labels, attrs=attrs
                    )
                )
            if builder is not None:
                builder.append(block.images, block.labels)
            bar.update(len(block.images) + len(block.quarantine))
        bar.close()
        quarantine.sort(key=lambda q: q["path"])
        if builder is None:
            what = _quarantine_message(
                quarantine, "e.g. " + "; ".join(f"{q['path']}: {q['reason']}" for q in quarantine[:3])
            )
            raise SubsampleError(STAGE, f"{source.path}: no valid image; {what}; nothing written")
        build_seconds = time.perf_counter() - t0
        store = builder.finish(
            quarantine,
            extra_attrs={
                "ingest": {
                    "seconds": round(build_seconds, 3),
                    "images_per_second": rate(builder.n_appended, build_seconds),  # .n counts flushed chunks only
                    "workers": cfg.workers,
                    "scheduler": scheduler,
                    "n_ignored": source.n_ignored,
                }
            },
        )
    if quarantine:
        log.warning("ingest: %s", _quarantine_message(quarantine, f"see {final / QUARANTINE_FILE}"))
    return StageResult.from_summary(_summary(store, cache_hit=False, seconds=time.perf_counter() - t0), artifact=store)
