"""The train stage's files around a run (``pipeline.stages.train``): the ``.work`` folder a run
lives in until it finishes (checkpoints, grids so far; it survives a kill for ``--resume``), the
lock a run holds while it trains, the removal of stale work folders, and what a failed run's
message says it left (its last good checkpoint)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from storage.locks import LockBusy, file_lock, lock_is_free
from storage.paths import inside_home, stage_dir

STAGE = "train"


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


def _drop_unresumable(work: Path) -> None:
    """A failed run's work folder is kept only when it holds a checkpoint to ``--resume`` from."""
    if not (work / "checkpoint.pt").exists():
        shutil.rmtree(work, ignore_errors=True)


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
