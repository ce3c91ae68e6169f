"""The training stage: a GAN trained on the batches stage's batches (spec §6).

``train_stage(store, tables_art, batches, cfg)`` (``run_train(dataset, cfg, batches, tables, features)``
finds the store and the table by lineage first) trains G and D (``pipeline.gan.models``) with a training method
(``pipeline.gan.methods``: by default a loss and penalties from ``pipeline.gan.losses``) on the batches that :class:`pipeline.data.sampler.SubsampleBatchSampler`
constructs from the cached joint table: epoch e trains on exactly the batches ``subsample batches``
stores for epoch e. The steps are ``pipeline.gan.trainer``'s; what the run records as it goes (the
time estimate, per-epoch metrics, grids, the loss curve) is ``pipeline.stages.train_records``'s;
a finished run is read back by ``pipeline.stages.generators``. The artifact::

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
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pipeline.config import BatchesConfig, FeaturesConfig, TablesConfig, TrainConfig
from pipeline.gan import distributed
from pipeline.gan.trainer import (
    Diverged,
    NonFiniteLoss,
    Trainer,
    check_divergence_at_end,
    check_weights,
    generate,
    load_checkpoint,
    make_trainer,
    resolve_device,
    rng_state,
    save_checkpoint,
    train_epoch,
)
from pipeline.pictures import run_title
from pipeline.stages.lineage import CODE_VERSIONS, locate, store_key, train_key
from pipeline.stages.lineage import train_key_params as _key_params
from pipeline.stages.result import StageResult, cached_result
from pipeline.stages.train_records import (
    RunClock,
    _fmt,
    _write_metrics,
    epoch_metrics,
    initial_metrics,
    mlflow_epoch_metrics,
    plot_losses,
    run_name,
    save_grid,
)
from storage.artifacts import Artifact, build_artifact, open_artifact
from storage.errors import SubsampleError, one_line
from storage.locks import LockBusy, file_lock, lock_is_free
from storage.paths import inside_home, stage_dir
from storage.safe_io import fault, links_in, make_dirs, write_atomic

STAGE = "train"
CODE_VERSION = CODE_VERSIONS[STAGE]  # bumped in pipeline/stages/lineage.py, with the key recipe
ESTIMATE_STEPS = 10  # steps timed (after the first, which warms up) for the up-front time estimate
LONG_RUN_S = 180  # a run estimated to take longer says so, with the estimate, after those steps
MAX_CLASSES = 100_000  # conditional models embed one vector per class: labels are class indices, not ids


# --- data --------------------------------------------------------------------------------------


def load_images(store: Any, device: torch.device, progress: bool = True) -> Tensor:
    """The whole store as one uint8 tensor (N, S, S, 3), read chunk by chunk: on the GPU when it
    takes under half the free memory, else in (pinned, for CUDA) host memory."""
    from tqdm import tqdm

    n, s = store.n, store.size
    nbytes = n * s * s * 3
    on_device = device.type == "cuda" and nbytes < 0.5 * torch.cuda.mem_get_info(device)[0]
    where = device if on_device or device.type != "cuda" else torch.device("cpu")
    out = torch.empty((n, s, s, 3), dtype=torch.uint8, device=where, pin_memory=device.type == "cuda" and not on_device)
    step = int(store.images.chunks[0])
    for start in tqdm(
        range(0, n, step), desc="load images", unit="chunk", disable=not progress, file=sys.stderr, leave=False
    ):
        out[start : start + step] = torch.from_numpy(np.asarray(store.images[start : start + step]))
    return out


def make_sampler(table: Any, batches: BatchesConfig) -> Any:
    """The batches stage's sampler, constructing each epoch from the table (spec §3)."""
    from pipeline.data.sampler import SubsampleBatchSampler

    return SubsampleBatchSampler(
        table,
        batch_size=batches.batch_size,
        strategy=batches.strategy,
        seed=batches.seed,
        top_k=batches.top_k,
        fill=batches.fill,
        num_replicas=distributed.size(),
        rank=distributed.rank(),
    )


def epoch_indices(sampler: Any, epoch: int, device: torch.device) -> list[Tensor]:
    """Epoch ``epoch``'s batches as index tensors on ``device`` (one host-to-device copy)."""
    sampler.set_epoch(epoch)
    idx = [torch.as_tensor(b, dtype=torch.int64) for b in sampler]
    if not idx:
        return []
    return list(torch.cat(idx).to(device).split([len(b) for b in idx]))


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
            f"{cfg.method!r} needs class indices 0..N-1 with N <= {MAX_CLASSES:,}: re-ingest the labels as class indices",
        )
    return labels


def work_dir(key: str) -> Path:
    return inside_home(stage_dir(STAGE) / f"{key}.work", what="training work folder")


def run_lock(key: str) -> Path:
    """The lock a run of ``key`` holds while it trains (its owner's pid and host inside)."""
    return inside_home(stage_dir(STAGE) / f"{key}.lock", what="training lock")


def remove_stale_work() -> list[Path]:
    """Remove ``*.work`` folders of runs that are gone (their lock is free) and that hold no
    checkpoint (nothing ``--resume`` could continue); those with a checkpoint are kept."""
    removed = []
    root = stage_dir(STAGE)
    for work in root.glob("*.work") if root.is_dir() else ():
        key = work.name[: -len(".work")]
        if (work / "checkpoint.pt").exists() or not lock_is_free(run_lock(key)):
            continue
        try:
            with file_lock(run_lock(key), wait=False):  # taken, so no run starts on it meanwhile
                if not (work / "checkpoint.pt").exists():
                    shutil.rmtree(work, ignore_errors=True)
                    removed.append(work)
        except LockBusy:  # a run of that key is starting: it is not stale
            continue
    return removed


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
                f"diverged: {_divergence(e, t, cfg)} (at epoch {t.epoch + 1} step {e.step}); stopped. Lower lr_d / lr_g "
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


def _drop_unresumable(work: Path) -> None:
    """A failed run's work folder is kept only when it holds a checkpoint to ``--resume`` from."""
    if not (work / "checkpoint.pt").exists():
        shutil.rmtree(work, ignore_errors=True)


class StepLogger:
    """Per-epoch MLflow metrics that are never logged twice at one step. A resumed run first
    learns which (metric, step) points its MLflow run already holds, logs the checkpointed epochs
    that are missing (killed between the checkpoint and the log) and skips the points of epochs
    it runs again (killed after the log, before the next checkpoint: the re-run's values, equal on
    a CPU, are not added as a second point)."""

    def __init__(self, run_id: str | None, history_epochs: list[dict], kl_samples: int = 0):
        self.run_id = run_id
        self.kl_samples = kl_samples  # the per-epoch feature KL's sample size, in its MLflow name
        self.seen: dict[str, set[int]] = {}
        if run_id and history_epochs:
            from storage import tracking

            self.seen = tracking.logged_steps(run_id)
            for m in history_epochs:
                self.log(m)

    def log(self, m: dict) -> None:
        if not self.run_id:
            return
        from storage import tracking

        step = m["epoch"]
        named = mlflow_epoch_metrics(m, self.kl_samples)
        fresh = {k: v for k, v in named.items() if step not in self.seen.get(k, ())}
        if fresh:
            tracking.log_metrics(self.run_id, fresh, step=step)
        for k in fresh:
            self.seen.setdefault(k, set()).add(step)


def _train_loop(
    t: Trainer,
    table: Any,
    sampler: Any,
    images: Tensor,
    batch_size: int,
    work: Path,
    logger: StepLogger | str | None,
    progress: bool,
    labels: Tensor | None = None,
    evaluator: Any = None,
    title: str = "",
) -> None:
    """Epochs until ``cfg.epochs`` (or ``max_steps``): train, per-epoch metrics (and the
    evaluator's, when due), the sample grid, the checkpoint, metrics.jsonl, MLflow."""
    from tqdm import tqdm

    if not isinstance(logger, StepLogger):  # a run id (or None): a fresh run
        logger = StepLogger(logger, [], t.cfg.kl_samples)
    cfg = t.cfg
    per_epoch = len(sampler)
    total = (cfg.epochs - t.epoch) * per_epoch
    if cfg.max_steps is not None:
        total = min(total, max(cfg.max_steps - t.step, 0))
    t.clock = RunClock(total, per_epoch, cfg.epochs - t.epoch, batch_size, t.device) if total > 1 else None
    if t.epoch == 0 and not t.history.get("initial"):  # a fresh run: record the untrained generator
        t.history["initial"] = initial_metrics(t, table)
        logger.log({"epoch": 0, **{k: t.history["initial"][k] for k in ("feature_kl", "feature_js")}})
        if progress:
            print(f"{STAGE}: epoch 0 (untrained) feature_kl {t.history['initial']['feature_kl']:.4f}", file=sys.stderr)
    while t.epoch < cfg.epochs and (cfg.max_steps is None or t.step < cfg.max_steps):
        epoch = t.epoch
        batches = epoch_indices(sampler, epoch, images.device)
        with tqdm(
            total=len(batches),
            desc=f"train epoch {epoch + 1}/{cfg.epochs}",
            unit="step",
            disable=not progress,
            file=sys.stderr,
            leave=False,
        ) as bar:
            t0 = time.perf_counter()
            losses = train_epoch(t, images, batches, bar, labels)
            seconds = time.perf_counter() - t0
        check_weights(t)
        if epoch + 1 >= cfg.epochs or (cfg.max_steps is not None and t.step >= cfg.max_steps):
            check_divergence_at_end(t)  # the last epoch: a run shorter than the guard's window too
        if not distributed.is_main():  # the other ranks count, and send their RNG state to checkpoints
            t.method._records.clear()  # rank 0 reports the method's per-epoch metrics
            t.epoch = epoch + 1
            if distributed.broadcast_flag(False):  # rank 0's decision
                distributed.gather_rng(rng_state())
            continue
        m = epoch_metrics(t, epoch, losses, seconds, batch_size, table)
        done = epoch + 1 >= cfg.epochs or (cfg.max_steps is not None and t.step >= cfg.max_steps)
        if evaluator is not None and evaluator.due(epoch + 1, done):
            t0 = time.perf_counter()
            m.update(evaluator(t.G))
            m["eval_seconds"] = round(time.perf_counter() - t0, 3)
        save_grid(
            generate(t.G, t.z_fixed[: cfg.sample_grid]),
            work / "grids" / f"epoch_{epoch + 1:04d}.png",
            f"{title} · epoch {epoch + 1}" if title else "",
        )
        t.history["epochs"].append(m)
        t.history["loss_d"] += [row[0] for row in losses["d"]]
        t.history["loss_g"] += losses["g"]
        t.history["g_steps_at"] += losses["g_steps_at"]
        t.epoch = epoch + 1
        done = t.epoch >= cfg.epochs or (cfg.max_steps is not None and t.step >= cfg.max_steps)
        # a checkpoint taken while the losses are above the divergence bound would not be a good
        # one to resume from: keep the previous one (the last epoch always saves: the artifact needs it);
        # rank 0 decides for every rank (gathering the ranks' RNG states is collective)
        if distributed.broadcast_flag((t.epoch % cfg.checkpoint_every == 0 and t.steps_over_bound == 0) or done):
            rng_ranks = distributed.gather_rng(rng_state())  # every rank's, under DDP
            save_checkpoint(t, work / "checkpoint.pt", *([rng_ranks] if rng_ranks else []))
        _write_metrics(t.history, work / "metrics.jsonl")
        logger.log(m)
        if progress:
            print(
                f"{STAGE}: epoch {m['epoch']}/{cfg.epochs} loss_d {_fmt(m['loss_d'])} loss_g {_fmt(m['loss_g'])} "
                f"feature_kl {m['feature_kl']:.4f} (floor {_fmt(m.get('feature_kl_floor'))} at {cfg.kl_samples} "
                f"samples) {m['images_per_second']} img/s",
                file=sys.stderr,
            )


def _divergence(e: Diverged, t: Any, cfg: TrainConfig) -> str:
    """What the divergence guard saw, in words."""
    bound = f"{cfg.diverge_loss_max:g}"
    if e.which.endswith("weights"):
        return f"a weight of {e.which[0]} reached {e.value:.3g} in magnitude (above {bound})"
    n = t.steps_over_bound
    span = f"{n} consecutive D steps" + (", to the end of the run" if n < cfg.diverge_steps else "")
    return f"|loss_{e.which.lower()}| above {bound} for {span} (last {e.value:.3g})"


def _last_good(ckpt: Path, finished: int) -> str:
    """What a failed run's message says it left: the epochs it finished and its last checkpoint
    (none when the losses were already above the divergence bound at every epoch's end)."""
    if ckpt.exists():
        at = _ckpt_epoch(ckpt)
        return f"{ckpt} (after epoch {at})" + (f"; {finished} epoch(s) finished" if at != finished else "")
    if finished:
        return f"none ({finished} epoch(s) finished, each with its losses above the divergence bound)"
    return "none (no epoch had finished)"


def _ckpt_epoch(path: Path) -> int | str:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:
        return "?"


def _start_tracking(cfg, batches, tables, features, dataset, key, store, tables_art, run_id) -> str | None:
    """The MLflow run: the resumed one, or a new one with every parameter logged."""
    if not cfg.track:
        return None
    from storage import tracking

    if run_id:
        tracking.reopen_run(run_id)
        return run_id
    params = {
        "train": cfg.model_dump(mode="json"),
        "batches": batches.model_dump(mode="json"),
        "tables": tables.model_dump(mode="json"),
        "features": features.model_dump(mode="json"),
        "dataset": dataset,
        "dataset_content_hash": store.content_hash,
        "n_images": store.n,
        "image_size": store.size,
        "tables_content_hash": tables_art.content_hash,
        "code_version": CODE_VERSION,
        "train_key": key,
        "world_size": distributed.size(),
        "backend": w.backend if (w := distributed.world()) else "none",
    }
    name = run_name(cfg, batches, key)
    return tracking.start_run(dataset, run_name=name, tags={tracking.TRAIN_KEY_TAG: key}, params=params)


def _end_tracking(run_id: str | None, status: str) -> None:
    if not run_id:
        return
    try:
        from storage import tracking

        tracking.end_run(run_id, status)
    except Exception as e:  # the training error matters more than the bookkeeping
        print(f"{STAGE}: could not mark MLflow run {run_id} {status}: {one_line(fault(e) or e)[:300]}", file=sys.stderr)


def launch_train(
    dataset: str,
    cfg: TrainConfig,
    batches: Any,
    tables_art: Artifact,
    *,
    key: str,
    work: Any,
    resume: bool,
    refresh: bool,
    progress: bool,
    started: float | None = None,
) -> dict:
    """Run ``train_stage`` on ``nproc_per_node`` ranks of this node (``nnodes`` nodes in all) under
    torchrun's elastic agent; rank 0's summary. A failed rank ends the run with one line. Each
    rank opens the store by name and the table by its key (``tables_art.key``)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    distributed.check_supported(cfg, batches.batch_size)
    nnodes, nproc = cfg.nnodes, cfg.nproc_per_node
    if nnodes > 1:
        if not cfg.rdzv_endpoint:
            raise SubsampleError(STAGE, f"nnodes={nnodes} needs --rdzv-endpoint HOST:PORT (the same on every node)")
        if cfg.node_rank is not None:  # torchrun's static rendezvous: HOST:PORT is node 0's
            backend, conf = "static", {"rank": cfg.node_rank}
        else:
            backend, conf = "c10d", {}
        endpoint, run_id = cfg.rdzv_endpoint, f"subsample-{key}"
    else:  # torchrun --standalone: a c10d store on a free local port
        backend, conf, endpoint, run_id = "c10d", {}, "localhost:0", str(uuid.uuid4())
    if nproc > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    config = LaunchConfig(
        min_nodes=nnodes,
        max_nodes=nnodes,
        nproc_per_node=nproc,
        run_id=run_id,
        rdzv_backend=backend,
        rdzv_endpoint=endpoint,
        rdzv_configs=conf,
        max_restarts=0,
        monitor_interval=0.2,
        start_method="spawn",
    )
    payload = {
        "dataset": dataset,
        "train": cfg.model_dump(mode="json"),
        "batches": batches.model_dump(mode="json"),
        "tables_key": tables_art.key,
        "resume": resume,
        "refresh": refresh,
        "progress": progress,
    }
    from storage import interrupts

    token = interrupts.on_interrupt(lambda reason: _mark_killed(work))  # rank 0 started the MLflow run
    try:
        results = elastic_launch(config, _train_worker)(payload)
    except ChildFailedError as e:
        r, failure = e.get_first_failure()
        _mark_killed(work)
        ckpt = work / "checkpoint.pt"
        last = (
            f"{ckpt} is kept; rerun with --resume to continue from it"
            if ckpt.exists()
            else "no epoch had finished, nothing to resume"
        )
        raise SubsampleError(
            STAGE,
            f"rank {r} of {distributed.world_size_of(cfg)} died ({_why(failure)}), which ended the run; last good checkpoint: {last}",
        ) from None
    finally:
        interrupts.discard(token)
    errors = [v["error"] for _, v in sorted(results.items()) if isinstance(v, dict) and v.get("error")]
    if errors:
        raise SubsampleError(STAGE, errors[0].removeprefix(f"{STAGE}: "))
    if 0 not in results:  # another node holds rank 0, which wrote the artifact
        return {
            "stage": STAGE,
            "dataset": dataset,
            "key": key,
            "node_rank": cfg.node_rank,
            "world_size": distributed.world_size_of(cfg),
            "note": "trained as a non-zero node; rank 0 (node 0) wrote the artifact and the MLflow run",
            "cache_hit": False,
            "seconds": round(time.perf_counter() - started, 3) if started is not None else 0.0,
        }
    return results[0]["summary"]


def _why(failure: Any) -> str:
    code = getattr(failure, "exitcode", None)
    msg = getattr(failure, "message", "") or ""
    if isinstance(msg, dict):
        msg = msg.get("message", "")
    msg = str(msg).strip().splitlines()[-1] if str(msg).strip() else ""
    if code is not None and code < 0:
        return f"killed by signal {-code}"
    return f"exit code {code}" + (f": {msg[:200]}" if msg and "To enable traceback" not in msg else "")


def _mark_killed(work: Any) -> str | None:
    """The MLflow run of a run whose ranks died is marked KILLED (a resume reopens it)."""
    try:
        run_id = json.loads((work / "run.json").read_text()).get("mlflow_run_id")
    except (OSError, ValueError):
        return None
    if run_id:
        _end_tracking(run_id, "KILLED")
        return f"MLflow run {run_id} marked KILLED"
    return None


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
