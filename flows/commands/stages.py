"""The stage commands: ``subsample ingest``, ``features``, ``tables`` and ``batches``, each one
stage run alone with the configuration ``subsample run`` would build for it (:func:`_resolve`).
"""

from __future__ import annotations

from enum import Enum  # choices for --split, --strategy, --fill
from typing import Any, Optional, get_args

import typer

from flows.commands.common import JsonOpt, SetOpt, emit
from pipeline.config import Strategy as _StrategyLiteral

_Split = Enum("_Split", {s: s for s in ("train", "test", "all")}, type=str)


def _resolve(stage: str, name: str, sets: list[str], flags: dict[str, Any], **fields: Any) -> Any:
    """A stage command's configuration, by the one resolution every command and deployment uses
    (:func:`flows.resolve.resolve_config`: defaults < the machine's < the data set's < preset <
    ``--set`` < flags), so a stage run alone builds what ``subsample run`` builds for that stage.
    Only ``batches`` reads a preset's section, so only it takes the machine's layer (``evaluate``
    resolves through :func:`flows.resolve.resolve_evaluate_config`)."""
    from flows.resolve import resolve_config

    return resolve_config(
        stage,
        {"dataset": name, "only": stage, **fields},
        sets,
        flags,
        machine=stage == "batches",
        checks=stage != "ingest",
    )  # ingest checks its source itself


def ingest_cmd(
    source: str = typer.Argument(
        ...,
        help="folder of images, .zip of images, CIFAR-10 .bin/python batches (folder or file), "
        "MNIST-style IDX file or folder, or .npz",
    ),
    name: str = typer.Option(..., "--name", help="data set name: the store is $SUBSAMPLE_HOME/datasets/NAME.zarr"),
    size: Optional[int] = typer.Option(
        None,
        "--size",
        help="output side S: images are stored S×S×3 uint8 (default: the data set's, e.g. celeba 64, else 32)",
    ),
    crop: Optional[int] = typer.Option(
        None,
        "--crop",
        help="centre-crop side before resizing (default: the data set's, e.g. celeba 178, else the short side)",
    ),
    workers: Optional[int] = typer.Option(None, "--workers", help="parallel decode workers (default: IngestConfig's)"),
    scheduler: Optional[str] = typer.Option(
        None, "--scheduler", help="Dask local scheduler: threads (default) or processes"
    ),
    files_per_task: Optional[int] = typer.Option(None, "--files-per-task", help="files decoded per Dask task"),
    max_pixels: Optional[int] = typer.Option(
        None, "--max-pixels", help="quarantine larger source images (refuse an array source of larger images)"
    ),
    max_bytes: Optional[int] = typer.Option(
        None, "--max-bytes", help="refuse a source holding more bytes (files, zip members, arrays' N×H×W×C)"
    ),
    split: Optional[_Split] = typer.Option(
        None,
        "--split",
        help="CIFAR-10 folders: the training batches (data_batch_*, the default), the test batch, or all",
    ),
    decoder: Optional[str] = typer.Option(
        None, "--decoder", help="fast (default: libjpeg-turbo + Lanczos kernel) or pillow (ingest/1's path)"
    ),
    decode_device: Optional[str] = typer.Option(
        None, "--decode-device", help="cpu (default), or cuda: JPEGs decoded by nvJPEG on the GPU"
    ),
    sets: list[str] = SetOpt,
    refresh: bool = typer.Option(False, "--refresh", help="rebuild even if an identical store exists"),
    as_json: bool = JsonOpt,
) -> None:
    """Decode a source data set into the store datasets/NAME.zarr (centre crop, resize to S×S, RGB)."""
    flags = {
        "ingest": {
            "size": size,
            "crop": crop,
            "workers": workers,
            "scheduler": scheduler,
            "files_per_task": files_per_task,
            "max_pixels": max_pixels,
            "max_bytes": max_bytes,
            "split": split.value if split else None,
            "decoder": decoder,
            "decode_device": decode_device,
        }
    }
    cfg = _resolve("ingest", name, sets, flags, source=source)
    from pipeline.stages.ingest import run_ingest

    emit(run_ingest(cfg.ingest_config(), refresh=refresh), as_json)


def features_cmd(
    name: str = typer.Argument(..., help="data set name (its store must exist: run `subsample ingest` first)"),
    dask_address: Optional[str] = typer.Option(
        None, "--dask-address", help="existing Dask scheduler (tcp://host:8786); its workers must see the store path"
    ),
    scheduler: Optional[str] = typer.Option(
        None,
        "--scheduler",
        help="without --dask-address: 'threads' (default, no start-up cost) or 'local-cluster' (worker processes)",
    ),
    workers: Optional[int] = typer.Option(
        None, "--workers", help="local threads / cluster workers (default: all cores)"
    ),
    feature: Optional[list[str]] = typer.Option(
        None, "--feature", help="registered feature name (repeat; default: colour_moment, sharpness)"
    ),
    sets: list[str] = SetOpt,
    refresh: bool = typer.Option(False, "--refresh", help="recompute even if the artifact is cached"),
    as_json: bool = JsonOpt,
) -> None:
    """Per-image features (colour moment, Eq. 14; energy-gradient sharpness, Eq. 15) of every image."""
    flags = {
        "features": {
            "dask_address": dask_address,
            "scheduler": scheduler,
            "workers": workers,
            "features": list(feature) if feature else None,
        }
    }
    cfg = _resolve("features", name, sets, flags)
    from pipeline.stages.features import run_features

    emit(run_features(cfg.dataset, cfg.features, refresh=refresh, progress=True), as_json)


def tables_cmd(
    name: str = typer.Argument(
        ..., help="data set name (its features must exist: run `subsample features NAME` first)"
    ),
    bins: Optional[tuple[int, int]] = typer.Option(
        None,
        "--bins",
        help="M1 M2: bins per feature; the table has (M1+1) x (M2+1) cells (default: the data set's, else 32 32)",
    ),
    feature: Optional[list[str]] = typer.Option(
        None, "--feature", help="feature names of the features artifact (repeat; default: colour_moment, sharpness)"
    ),
    sets: list[str] = SetOpt,
    refresh: bool = typer.Option(False, "--refresh", help="rebuild even if the artifact is cached"),
    as_json: bool = JsonOpt,
) -> None:
    """The joint distribution table of the features (Eq. 16, round half up), with a heat map."""
    flags = {
        "tables": {"bins": list(bins) if bins else None},
        "features": {"features": list(feature) if feature else None},
    }
    cfg = _resolve("tables", name, sets, flags)
    from pipeline.stages.tables import run_tables

    emit(run_tables(cfg.dataset, cfg.tables, cfg.features, refresh=refresh), as_json)


_BatchStrategy = Enum("_BatchStrategy", {s: s for s in get_args(_StrategyLiteral)}, type=str)
_BatchFill = Enum("_BatchFill", {"topk": "topk", "coverage": "coverage"}, type=str)
_BatchTopup = Enum("_BatchTopup", {"topk": "topk", "random": "random"}, type=str)


def batches_cmd(
    name: str = typer.Argument(..., help="data set name (its features and tables must exist)"),
    batch_size: Optional[int] = typer.Option(
        None,
        "--batch-size",
        "-b",
        help="images per batch B; an epoch has floor(n / B) batches (default: the preset's, as `subsample run` would)",
    ),
    strategy: Optional[_BatchStrategy] = typer.Option(
        None, "--strategy", help="random (baseline), constructed (the paper; default) or dealt"
    ),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="epochs of batches to construct and store (default 1)"),
    seed: Optional[int] = typer.Option(
        None, "--seed", help="run seed; epoch e is constructed from (seed, e) (default 0)"
    ),
    top_k: Optional[int] = typer.Option(
        None, "--top-k", help="constructed: shortfall filled from the k most frequent cells (default 8)"
    ),
    fill: Optional[_BatchFill] = typer.Option(
        None,
        "--fill",
        help="constructed: 'coverage' first uses not-yet-drawn images of cells with T2 = 0 (default topk)",
    ),
    topup: Optional[_BatchTopup] = typer.Option(
        None,
        "--topup",
        help="constructed: spread the shortfall over the k most frequent cells in proportion "
        "('topk', the default: every batch alike) "
        "or by a random multinomial draw per batch ('random', the paper's reading; the paper-* presets use it)",
    ),
    bins: Optional[tuple[int, int]] = typer.Option(
        None, "--bins", help="the table's M1 M2 (default: the data set's, else 32 32)"
    ),
    feature: Optional[list[str]] = typer.Option(
        None, "--feature", help="feature names of the table (repeat; default: colour_moment, sharpness)"
    ),
    sets: list[str] = SetOpt,
    refresh: bool = typer.Option(False, "--refresh", help="rebuild even if the artifact is cached"),
    as_json: bool = JsonOpt,
) -> None:
    """Construct epochs of batches from the joint table, with coverage / KL diagnostics (spec §3-4).
    Unset options take what `subsample run` would use (the data set's preset, else this machine's)."""
    flags = {
        "batches": {
            "batch_size": batch_size,
            "strategy": strategy.value if strategy else None,
            "epochs": epochs,
            "seed": seed,
            "top_k": top_k,
            "fill": fill.value if fill else None,
            "topup": topup.value if topup else None,
        },
        "tables": {"bins": list(bins) if bins else None},
        "features": {"features": list(feature) if feature else None},
    }
    cfg = _resolve("batches", name, sets, flags)
    from pipeline.stages.batches import run_batches

    emit(run_batches(cfg.dataset, cfg.batches, cfg.tables, cfg.features, refresh=refresh), as_json)
