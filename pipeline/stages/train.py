"""The training stage: a GAN trained on the batches stage's batches (spec §6).

``train_stage(store, tables_art, batches, cfg)`` (``run_train(dataset, cfg, batches, tables, features)``
finds the store and the table by lineage first) trains G and D (``pipeline.gan.models``) with a training method
(``pipeline.gan.methods``: by default a loss and penalties from ``pipeline.gan.losses``) on the batches
that :class:`pipeline.data.sampler.SubsampleBatchSampler`
constructs from the cached joint table: epoch e trains on exactly the batches ``subsample batches``
stores for epoch e. The steps are ``pipeline.gan.trainer``'s; what the run records as it goes (the
time estimate, per-epoch metrics, grids, the loss curve) is ``pipeline.stages.train_records``'s;
a finished run is read back by ``pipeline.stages.generators``. This module owns the run from the
cache check to the artifact; its parts are ``pipeline.stages.train_loop`` (the images, the sampler,
the epochs), ``pipeline.stages.train_work`` (the ``.work`` folder, the lock, checkpoints left),
``pipeline.stages.train_tracking`` (the MLflow run) and ``pipeline.stages.train_launch`` (the
torchrun launcher). The artifact::

    stages/train/<key>/
        generator.pt      {"state_dict", "model" (ModelSpec), "info"}: what load_generator needs
        metrics.jsonl     one JSON line per epoch: losses, D(x), D(G(z)), feature KL/JS, timing;
                          first a line for epoch 0, the untrained generator's feature KL/JS
        grids/epoch_XXXX.png   fixed-z samples after each epoch (1-based), titled, >= 512 px wide
        loss_curve.png    per-step D and G losses; feature KL and JS per epoch from epoch 0, on separate axes
        checkpoint.pt     the last checkpoint (models, optimisers, RNG states, history)
        manifest.json

with ``key = H(train params, batches params, tables artifact hash, store hash, CODE_VERSION)``
(:func:`pipeline.stages.lineage.train_key`, the one place it is computed).
Until the run finishes it lives in ``stages/train/<key>.work/`` (checkpoints, grids so far), which
survives a kill; ``--resume`` continues from its checkpoint exactly (on a CPU a killed and resumed
run gives bit-for-bit the losses of an uninterrupted one). Every run is also an MLflow run in the
experiment ``subsample/<dataset>`` (``storage.tracking``).

Ownership: a run holds the lock ``stages/train/<key>.lock`` (its pid and host written in it) from
the cache check to the finished artifact. A second run of the same key waits for it (saying so
once on stderr) and then finds the artifact cached; it never touches the live ``.work`` directory.
A ``.work`` directory whose lock is free and that holds no checkpoint (nothing to resume) is
removed by the next run in the folder; one with a checkpoint is kept for ``--resume``.

Divergence guard: besides NaN/inf, a run whose ``|loss_d|`` or ``|loss_g|`` stays above
``diverge_loss_max`` for ``diverge_steps`` consecutive D steps stops with one line naming the
last good checkpoint (``--set diverge_loss_max=null`` turns it off).

Data path: the uint8 store is read once into one tensor, on the GPU when it fits (else in pinned
host memory), each batch is gathered by index and converted to float [-1, 1] on the fly; no
DataLoader in the hot path. Per-step losses stay on the device and are read back every
``SYNC_EVERY`` steps, so the loop does not wait on the GPU at every step.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Any

import numpy as np
import torch

from pipeline.config import BatchesConfig, FeaturesConfig, TablesConfig, TrainConfig
from pipeline.gan import distributed
from pipeline.gan.trainer import Diverged, NonFiniteLoss, load_checkpoint, make_trainer, resolve_device
from pipeline.pictures import run_title
from pipeline.stages.lineage import CODE_VERSIONS, locate, store_key, train_key
from pipeline.stages.lineage import train_key_params as _key_params
from pipeline.stages.result import StageResult, cached_result
from pipeline.stages.train_launch import launch_train
from pipeline.stages.train_loop import _divergence, _train_loop, load_images, make_sampler
from pipeline.stages.train_records import _write_metrics, plot_losses
from pipeline.stages.train_tracking import StepLogger, _end_tracking, _start_tracking
from pipeline.stages.train_work import _drop_unresumable, _last_good, remove_stale_work, run_lock, work_dir
from storage.artifacts import Artifact, build_artifact, open_artifact
from storage.errors import SubsampleError
from storage.locks import file_lock
from storage.paths import stage_dir
from storage.safe_io import links_in, make_dirs, write_atomic

STAGE = "train"
CODE_VERSION = CODE_VERSIONS[STAGE]  # bumped in pipeline/stages/lineage.py, with the key recipe
ESTIMATE_STEPS = 10  # steps timed (after the first, which warms up) for the up-front time estimate
LONG_RUN_S = 180  # a run estimated to take longer says so, with the estimate, after those steps
MAX_CLASSES = 100_000  # conditional models embed one vector per class: labels are class indices, not ids


# --- the stage ------------------------------------------------------------------------------------


def class_labels(cfg: TrainConfig, store: Any, dataset: str) -> np.ndarray | None:
    """The store's labels (int64, N) when the architecture or the method uses classes, else None."""
    from pipeline.gan.methods import METHODS
    from pipeline.gan.models import ARCHITECTURES

    if not (ARCHITECTURES[cfg.arch].labels or METHODS[cfg.method].needs_labels(cfg)):
        return None
    if store.labels is None:
        raise SubsampleError(
            STAGE,
            f"arch {cfg.arch!r} / method {cfg.method!r} (preset {cfg.preset or 'custom'}) trains on class labels, "
            f"but data set {dataset} ({store.path}) has none: ingest a labelled source (CIFAR-10, IDX with its labels "
            "file, .npz with 'labels') or pick an unconditional preset",
        )
    labels = np.asarray(store.labels[:], dtype=np.int64)
    if len(labels) and labels.min() < 0:
        raise SubsampleError(STAGE, f"data set {dataset} ({store.path}) has negative labels; classes must be 0..N-1")
    if len(labels) and labels.max() >= MAX_CLASSES:
        raise SubsampleError(
            STAGE,
            f"data set {dataset} ({store.path}) has labels up to {int(labels.max()):,}; arch {cfg.arch!r} / method "
            f"{cfg.method!r} needs class indices 0..N-1 with N <= {MAX_CLASSES:,}: "
            "re-ingest the labels as class indices",
        )
    return labels


def train_stage(
    store: Any,
    tables_art: Artifact,
    batches: BatchesConfig,
    cfg: TrainConfig,
    *,
    dataset: str | None = None,
    resume: bool = False,
    refresh: bool = False,
    progress: bool = True,
) -> StageResult:
    """Train (or find cached) a GAN on the images of ``store`` (a DatasetStore), its batches
    constructed from the table ``tables_art`` as ``batches`` says. With ``nproc_per_node``/``nnodes``
    > 1 it launches that many ranks (``pipeline.gan.distributed``); a process started by torchrun
    joins its process group."""
    if distributed.needs_session():  # one rank of a torchrun launch: join the process group
        with distributed.session(cfg.device):
            return train_stage(
                store,
                tables_art,
                batches,
                distributed.joined_config(cfg),
                dataset=dataset,
                resume=resume,
                refresh=refresh,
                progress=progress,
            )
    t0 = time.perf_counter()
    dataset = dataset or store.name
    key = train_key(cfg, batches, tables_art.content_hash, store.content_hash)
    upstream = {"tables": tables_art.key, "ingest": store_key(store)}
    base = {"stage": STAGE, "dataset": dataset, "key": key}

    def result(summary: dict) -> StageResult:
        return StageResult.from_summary(summary, upstream=upstream, artifact=open_artifact(STAGE, key, verify=False))

    def hit() -> StageResult | None:
        return cached_result(STAGE, key, started=t0, upstream=upstream, **base)

    if not refresh and (cached := hit()) is not None:
        return cached
    if distributed.needs_launch(cfg):  # this process launches the ranks, holding the run's lock meanwhile
        stage_dir(STAGE).mkdir(parents=True, exist_ok=True)
        remove_stale_work()
        with file_lock(
            run_lock(key), message=f"{STAGE}: the same run ({key}) is training in another process; waiting for it"
        ):
            if not refresh and (cached := hit()) is not None:
                return cached
            return result(
                launch_train(
                    dataset,
                    cfg,
                    batches,
                    tables_art,
                    key=key,
                    work=work_dir(key),
                    resume=resume,
                    refresh=refresh,
                    progress=progress,
                    started=t0,
                    worker=_train_worker,
                )
            )
    if distributed.world() is not None:  # one rank of a data-parallel run: its launcher owns the run
        return result(
            _train_locked(
                dataset, cfg, batches, store, tables_art, key, base, t0, upstream, resume=resume, progress=progress
            )
        )
    stage_dir(STAGE).mkdir(parents=True, exist_ok=True)
    remove_stale_work()
    with file_lock(
        run_lock(key), message=f"{STAGE}: the same run ({key}) is training in another process; waiting for it"
    ):
        if not refresh and (cached := hit()) is not None:
            return cached  # the run we waited for finished it
        return result(
            _train_locked(
                dataset, cfg, batches, store, tables_art, key, base, t0, upstream, resume=resume, progress=progress
            )
        )


def run_train(
    dataset: str,
    cfg: TrainConfig,
    batches: BatchesConfig,
    tables: TablesConfig = TablesConfig(),
    features: FeaturesConfig = FeaturesConfig(),
    *,
    resume: bool = False,
    refresh: bool = False,
    progress: bool = True,
) -> dict:
    """``subsample train``: the stage on the store and table of ``dataset`` (found by lineage from
    these configs); returns the summary."""
    got = locate(STAGE, dataset, features=features, tables=tables)
    return train_stage(
        got.store, got.tables, batches, cfg, dataset=dataset, resume=resume, refresh=refresh, progress=progress
    ).to_json()


def _train_locked(dataset, cfg, batches, store, tables_art, key, base, t0, upstream, *, resume, progress) -> dict:
    """train_stage's work, holding the run's lock (or, for a rank of a data-parallel run, under its
    launcher's)."""
    from pipeline.stages.tables import load_table

    distributed.check_supported(cfg, batches.batch_size)
    main = distributed.is_main()  # rank 0 (or the only process) writes; the other ranks train
    progress = progress and main
    store.verify(STAGE, use_record=True)  # the images it trains on match the store's content hash
    if batches.batch_size > store.n:
        raise SubsampleError(
            STAGE,
            f"batch size {batches.batch_size} (preset {cfg.preset or 'custom'}"
            f"{', resolved for this data set' if cfg.preset else ''}) is larger than {dataset} ({store.n} images); "
            "pass --batch-size (`subsample presets` shows each preset's batch sizes per data set)",
        )
    table = load_table(tables_art)
    # the table's and features' settings, as recorded by the artifacts (MLflow params, generator.pt)
    tables, features = TablesConfig(**tables_art.params), FeaturesConfig(features=table.features)
    device = distributed.local_device(resolve_device(cfg.device))
    labels = class_labels(cfg, store, dataset)
    t = make_trainer(cfg, store.size, device, n_classes=0 if labels is None else int(labels.max()) + 1)
    from pipeline.floors import cached_feature_kl_floor

    t.kl_floor = cached_feature_kl_floor(table, tables_art.content_hash, cfg.kl_samples)
    distributed.wrap(t)  # SyncBatchNorm + DistributedDataParallel under DDP
    sampler = make_sampler(table, batches)
    if len(sampler) == 0:
        raise SubsampleError(STAGE, f"{dataset} has {store.n} images, fewer than one batch of {batches.batch_size}")

    work = work_dir(key)
    ckpt = work / "checkpoint.pt"
    run_file = work / "run.json"
    resumed_from = None
    if main and resume and work.exists() and (links := links_in(work)):  # planted: a run never makes links
        raise SubsampleError(
            STAGE,
            f"{work} holds a symbolic link ({links[0]} -> {os.path.realpath(links[0])}); refusing to train in it: "
            "remove the folder (its checkpoint cannot be trusted) and run again",
        )
    if distributed.broadcast_flag(resume and ckpt.exists()):  # rank 0's view: every rank resumes or none
        load_checkpoint(t, ckpt)
        resumed_from = t.epoch
    elif main and work.exists():  # left by a run that is gone (we, or our launcher, hold the lock)
        if ckpt.exists():
            print(f"{STAGE}: discarding the unfinished run in {work} (pass --resume to continue it)", file=sys.stderr)
        shutil.rmtree(work)
    if main:
        make_dirs(work, what="training work folder")
    distributed.barrier()
    run_id = None
    title = run_title(dataset, cfg.preset, batches.strategy, batches.batch_size, cfg.seed)
    try:
        run_info = json.loads(run_file.read_text()) if main and resumed_from is not None and run_file.exists() else {}
        images = load_images(store, device, progress)
        if labels is not None:
            labels = torch.from_numpy(labels).to(images.device)
        labels = t.method.attach_data(t, images, labels)

        if main:
            run_id = _start_tracking(
                cfg, batches, tables, features, dataset, key, store, tables_art, run_info.get("mlflow_run_id")
            )
            write_atomic(
                run_file, json.dumps({"key": key, "dataset": dataset, "mlflow_run_id": run_id}), what="run file"
            )
        from pipeline.fidelity import epoch_evaluator

        evaluator = epoch_evaluator(cfg, store, table, cfg.z_dim, device) if main else None
        logger = StepLogger(run_id, t.history["epochs"] if resumed_from is not None else [], cfg.kl_samples)
        _train_loop(t, table, sampler, images, batches.batch_size, work, logger, progress, labels, evaluator, title)
    except (NonFiniteLoss, Diverged) as e:
        _end_tracking(run_id, "FAILED")
        last = _last_good(ckpt, t.epoch)
        if main:
            _drop_unresumable(work)
        if isinstance(e, Diverged):
            raise SubsampleError(
                STAGE,
                f"diverged: {_divergence(e, t, cfg)} (at epoch {t.epoch + 1} step {e.step}); stopped. "
                "Lower lr_d / lr_g "
                f"(or raise --set diverge_loss_max=...); last good checkpoint: {last}",
            ) from None
        raise SubsampleError(
            STAGE, f"non-finite {e.which} loss at epoch {t.epoch + 1} step {e.step}; last good checkpoint: {last}"
        ) from None
    except BaseException:
        _end_tracking(run_id, "KILLED")
        if main:
            _drop_unresumable(work)
        raise
    w = distributed.world()
    if not main:  # rank 0 writes the artifact and ends the MLflow run
        return {**base, "rank": w.rank, "world_size": w.size, "steps": t.step}

    # the finished artifact
    info = {
        "dataset": dataset,
        "key": key,
        "mlflow_run_id": run_id,
        "z_dim": cfg.z_dim,
        "image_size": store.size,
        "tables": tables.model_dump(mode="json"),
        "features": features.model_dump(mode="json"),
        "batches": batches.model_dump(mode="json"),
        "train": cfg.model_dump(mode="json"),
        "model": t.spec.to_dict(),
    }
    last = t.history["epochs"][-1]
    train_seconds = sum(e["seconds"] for e in t.history["epochs"])
    summary = {
        **base,
        "preset": cfg.preset,
        "strategy": batches.strategy,
        "batch_size": batches.batch_size,
        "epochs": len(t.history["epochs"]),
        "steps": t.step,
        "g_steps": t.g_steps,
        "loss_d": last["loss_d"],
        "loss_g": last["loss_g"],
        "feature_kl": last["feature_kl"],
        "feature_kl_floor": t.kl_floor["mean"],
        "feature_kl_samples": cfg.kl_samples,
        "feature_js": last["feature_js"],
        "feature_kl_initial": (t.history.get("initial") or {}).get("feature_kl"),
        "images_per_second": round(t.step * batches.batch_size / train_seconds, 1) if train_seconds else None,
        "train_seconds": round(train_seconds, 3),
        "device": str(device),
        "bf16": t.bf16,
        "eval_every": evaluator.every if evaluator else 0,
        "eval_fidelity": None
        if evaluator is None
        else ("skipped: " + evaluator.fidelity_skip if evaluator.fidelity_skip else "ok"),
        "world_size": w.size if w else 1,
        "backend": w.backend if w else None,
        "resumed_from_epoch": resumed_from,
        "mlflow_run_id": run_id,
    }
    with build_artifact(
        STAGE,
        key,
        params=_key_params(cfg, batches),
        inputs={"tables": tables_art.content_hash, "store": store.content_hash},
        code_version=CODE_VERSION,
        upstream=upstream,
    ) as b:
        torch.save({"state_dict": t.G.state_dict(), "model": t.spec.to_dict(), "info": info}, b.path / "generator.pt")
        shutil.copytree(work / "grids", b.path / "grids")
        shutil.copy2(ckpt, b.path / "checkpoint.pt")
        _write_metrics(t.history, b.path / "metrics.jsonl")
        plot_losses(t.history, b.path / "loss_curve.png", title)
        final = stage_dir(STAGE) / key
        summary.update(grids=str(final / "grids"), generator=str(final / "generator.pt"))
        b.summary = summary
    shutil.rmtree(work, ignore_errors=True)
    if run_id:
        from storage import tracking

        tracking.log_artifacts(
            run_id,
            [
                (final / "grids", "grids"),
                (final / "loss_curve.png", None),
                (final / "generator.pt", None),
                (final / "metrics.jsonl", None),
                (tables_art.path / "heatmap.png", "table"),
            ],
        )
        tracking.set_tags(run_id, {"subsample.train_path": str(final)})
        tracking.end_run(run_id, "FINISHED")
    return {**summary, "path": str(final), "cache_hit": False, "seconds": round(time.perf_counter() - t0, 3)}


def _train_worker(payload: dict) -> dict:
    """One rank (a process the elastic agent started): ``train_stage`` joins the process group."""
    from storage.store import open_store

    try:
        tables_art = open_artifact("tables", payload["tables_key"])
        if tables_art is None:
            raise SubsampleError(
                STAGE, f"the table {payload['tables_key']} (stages/tables) vanished or fails its content hash"
            )
        summary = train_stage(
            open_store(payload["dataset"]),
            tables_art,
            BatchesConfig(**payload["batches"]),
            TrainConfig(**payload["train"]),
            dataset=payload["dataset"],
            resume=payload["resume"],
            refresh=payload["refresh"],
            progress=payload["progress"],
        ).to_json()
    except SubsampleError as e:
        print(str(e), file=sys.stderr)
        return {"error": str(e)}
    return {"summary": summary}
