"""The train stage's epochs (``pipeline.stages.train``): the images read into one tensor, the
batches stage's sampler and each epoch's index batches, the loop over epochs (train, per-epoch
metrics and evaluation, sample grid, checkpoint, metrics.jsonl, MLflow) and the divergence
guard's finding in words. The steps themselves are ``pipeline.gan.trainer``'s."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pipeline.config import BatchesConfig, TrainConfig
from pipeline.gan import distributed
from pipeline.gan.trainer import (
    Diverged,
    Trainer,
    check_divergence_at_end,
    check_weights,
    generate,
    rng_state,
    save_checkpoint,
    train_epoch,
)
from pipeline.stages.train_records import RunClock, _fmt, _write_metrics, epoch_metrics, initial_metrics, save_grid
from pipeline.stages.train_tracking import StepLogger

STAGE = "train"


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


# --- the epochs ------------------------------------------------------------------------------------


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
