"""The train stage's MLflow run (``pipeline.stages.train``): started with every parameter logged
(or reopened on ``--resume``), per-epoch metrics never logged twice at one step
(:class:`StepLogger`), and marked FINISHED, FAILED or KILLED at the end (``storage.tracking``)."""

from __future__ import annotations

import sys

from pipeline.gan import distributed
from pipeline.stages.lineage import CODE_VERSIONS
from pipeline.stages.train_records import mlflow_epoch_metrics, run_name
from storage.errors import one_line
from storage.safe_io import fault

STAGE = "train"
CODE_VERSION = CODE_VERSIONS[STAGE]


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
