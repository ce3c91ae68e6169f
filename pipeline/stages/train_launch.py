"""The train stage's data-parallel launcher (``pipeline.stages.train``): ``nproc_per_node`` ranks
per node (``nnodes`` nodes in all) under torchrun's elastic agent, each running ``train_stage``
in its process group (``pipeline.gan.distributed``); a failed rank ends the run with one line
naming the last good checkpoint, and its MLflow run is marked KILLED."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from pipeline.config import TrainConfig
from pipeline.gan import distributed
from pipeline.stages.train_tracking import _end_tracking
from storage.artifacts import Artifact
from storage.errors import SubsampleError

STAGE = "train"


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
    worker: Callable[[dict], dict],
) -> dict:
    """Run ``train_stage`` on ``nproc_per_node`` ranks of this node (``nnodes`` nodes in all) under
    torchrun's elastic agent; rank 0's summary. A failed rank ends the run with one line. Each
    rank runs ``worker`` (``pipeline.stages.train._train_worker``: a module-level function, which
    the spawned processes import), which opens the store by name and the table by its key
    (``tables_art.key``)."""
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
        results = elastic_launch(config, worker)(payload)
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
            f"rank {r} of {distributed.world_size_of(cfg)} died ({_why(failure)}), which ended the run; "
            f"last good checkpoint: {last}",
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
