"""``subsample train``, ``presets`` and ``evaluate``: training a GAN on a data set's batches, the
training presets, and the evaluation of a trained generator.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import typer

from flows.commands.common import DryRunOpt, JsonOpt, SetOpt, config_view, emit, show_config


def train_cmd(
    name: str = typer.Argument(..., help="data set name (its features and tables must exist)"),
    preset: Optional[str] = typer.Option(
        None,
        "--preset",
        "-p",
        help="named configuration (`subsample presets`; default: the data set's, else demo on a CPU, "
        "paper-constructed on a GPU)",
    ),
    strategy: Optional[str] = typer.Option(
        None,
        "--strategy",
        help="batches: random, constructed or dealt "
        "(default: the batches `subsample batches` built, else the preset's)",
    ),
    batch_size: Optional[int] = typer.Option(
        None,
        "--batch-size",
        "-b",
        help="images per batch B (default: the batches `subsample batches` built, else the preset's)",
    ),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="training epochs (default: the preset's)"),
    seed: Optional[int] = typer.Option(
        None, "--seed", help="run seed: the batches' (seed, epoch) and the model init / z draws"
    ),
    bins: Optional[tuple[int, int]] = typer.Option(
        None, "--bins", help="the table's M1 M2 (default: the data set's, else 32 32)"
    ),
    feature: Optional[list[str]] = typer.Option(
        None, "--feature", help="feature names of the table (repeat; default: colour_moment, sharpness)"
    ),
    device: Optional[str] = typer.Option(None, "--device", help="auto (default), cpu or cuda"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="stop after this many D steps (smoke runs)"),
    eval_every: Optional[int] = typer.Option(
        None,
        "--eval-every",
        min=0,
        help="epochs between IS/FID/KID + feature-KL evaluations during training, logged "
        "per epoch to MLflow (0 off; default: on with CUDA and the Inception weights on disk, else off)",
    ),
    eval_samples: Optional[int] = typer.Option(
        None, "--eval-samples", min=10, help="generated images per such evaluation (default 10,000)"
    ),
    sets: list[str] = typer.Option(
        [],
        "--set",
        metavar="KEY=VALUE",
        help="override a setting: a training field bare or dotted (lr_d=1e-4 = train.lr_d=1e-4), the batches or table "
        "train reads (batches.top_k=4, tables.bins=[16,16]), or preset=P; repeatable (docs/training.md)",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="continue an interrupted run of the same configuration from its last checkpoint"
    ),
    refresh: bool = typer.Option(False, "--refresh", help="train again even if the artifact is cached"),
    nproc_per_node: Optional[int] = typer.Option(
        None,
        "--nproc-per-node",
        help="data-parallel ranks on this node (GPUs, or CPU processes); "
        "launches torchrun's elastic agent (docs/distributed.md)",
    ),
    nnodes: Optional[int] = typer.Option(None, "--nnodes", help="nodes of a multi-node run (each runs this command)"),
    node_rank: Optional[int] = typer.Option(
        None, "--node-rank", help="this node's rank (static rendezvous; else c10d assigns it)"
    ),
    rdzv_endpoint: Optional[str] = typer.Option(
        None, "--rdzv-endpoint", help="HOST:PORT of the rendezvous on node 0 (multi-node)"
    ),
    dry_run: bool = DryRunOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Train a GAN on the data set's batches (defaults < the machine's < the data set's < preset <
    --set < flags); logs to MLflow (experiment subsample/NAME) and writes stages/train/<key>/ with
    the generator, grids and metrics. With --nproc-per-node N the global batch B is split over N
    data-parallel ranks (torch.distributed)."""
    from flows.checks import check_batch_sizes
    from flows.config import parse_overrides
    from flows.resolve import resolve_config, train_batches

    given = parse_overrides(sets, "train", "train")  # (resolve_config parses them again; this says what they set)
    flags = {
        "preset": preset,
        "train": {
            "epochs": epochs,
            "seed": seed,
            "device": device,
            "max_steps": max_steps,
            "eval_every": eval_every,
            "eval_samples": eval_samples,
            "nproc_per_node": nproc_per_node,
            "nnodes": nnodes,
            "node_rank": node_rank,
            "rdzv_endpoint": rdzv_endpoint,
        },
        "batches": {"strategy": strategy, "batch_size": batch_size, "seed": seed},
        "tables": {"bins": list(bins) if bins else None},
        "features": {"features": list(feature) if feature else None},
    }
    chose_batches = any(v is not None for v in (strategy, batch_size, seed)) or "batches" in given
    chose_preset = preset is not None or "preset" in given
    # the batch size is checked at once when given (or a preset gives it), else once the built
    # batches are chosen (the defaults' B may not fit where the built batches do)
    cfg = resolve_config(
        "train", {"dataset": name, "only": "train"}, sets, flags, check_batches=chose_batches or chose_preset
    )
    cfg = train_batches(cfg, chose_batches=chose_batches, chose_preset=chose_preset)
    if not (chose_batches or chose_preset):
        check_batch_sizes(cfg.dataset, [cfg.batches.batch_size], None, False, "train")
    if dry_run:
        return show_config(config_view(cfg), as_json)

    from pipeline.stages.train import run_train

    summary = run_train(cfg.dataset, cfg.train, cfg.batches, cfg.tables, cfg.features, resume=resume, refresh=refresh)
    if summary.get("rank", 0) == 0:  # started by torchrun by hand: rank 0 alone prints the summary
        emit({**summary, "train_config": cfg.train.model_dump(mode="json")} if as_json else summary, as_json)


def presets_cmd(as_json: bool = JsonOpt) -> None:
    """List the training presets as a table: strategy, B, epochs, loss or method, optimizer, learning
    rates and a one-line description (blank cells: the defaults); --json adds every value, the values
    per data set kind, the source, and for the paper's the sentence followed and what it leaves open."""
    from flows.terminal import presets_lines
    from pipeline.presets import KIND_NAMES, preset_table

    rows = preset_table()
    if as_json:
        print(json.dumps({"presets": rows}))
        return
    print("\n".join(presets_lines(rows, KIND_NAMES)))
    print("sources, every value and the paper's words: subsample presets --json; docs/training.md")


def _evaluate_default(field: str) -> Any:
    from pipeline.config import EvaluateConfig

    return EvaluateConfig.model_fields[field].default


def evaluate_cmd(
    run: str = typer.Argument(..., help="train artifact key or MLflow run id"),
    samples: Optional[int] = typer.Option(
        None,
        "--samples",
        "-n",
        min=2,
        help="generated images N (names: fid10k_train, is10k, ...; "
        "default: EvaluateConfig's with a GPU, 2,000 on a CPU)",
    ),
    batch_size: Optional[int] = typer.Option(
        None,
        "--batch-size",
        min=1,
        help=f"generation and feature-extraction batch (default {_evaluate_default('batch_size')})",
    ),
    weights: Optional[str] = typer.Option(
        None, "--weights", help="local copy of the feature extractor's weights (default: torch-fidelity's download)"
    ),
    fidelity: Optional[bool] = typer.Option(
        None,
        "--fidelity/--no-fidelity",
        help="IS/FID/KID with torch-fidelity (default: on with a GPU, off on a CPU); "
        "--no-fidelity: feature-space metrics only",
    ),
    feature_extractor: Optional[str] = typer.Option(
        None,
        "--feature-extractor",
        help="torch-fidelity extractor (default inception-v3-compat); giving it, or --weights, "
        "turns IS/FID/KID on unless --no-fidelity",
    ),
    seed: Optional[int] = typer.Option(
        None, "--seed", help=f"seed of the latent codes (default {_evaluate_default('seed')})"
    ),
    device: Optional[str] = typer.Option(None, "--device", help="default: the generator's device"),
    metrics: Optional[str] = typer.Option(
        None,
        "--metrics",
        help="only these, comma-separated, e.g. fid10k_train,kid10k_train (names for N = --samples, "
        "which they set when it is not given; docs/evaluate.md lists them); default: all",
    ),
    sets: list[str] = SetOpt,
    refresh: bool = typer.Option(False, "--refresh", help="recompute even if this evaluation is cached"),
    as_json: bool = JsonOpt,
) -> None:
    """Evaluate a trained generator against its training set: IS, FID, KID (torch-fidelity), feature-space KL/JS \
and sharpness (spec §5)."""
    from flows.resolve import resolve_evaluate_config

    flags = {
        "samples": samples,
        "batch_size": batch_size,
        "weights": weights,
        "fidelity": fidelity,
        "feature_extractor": feature_extractor,
        "seed": seed,
        "device": device,
        "metrics": metrics,
    }
    resolve_evaluate_config(
        flags, None, lambda _: None, sets=sets
    )  # a wrong option, metric or device: one line, before the run is looked up (and torch imported)
    from pipeline.stages.generators import find_train_artifact

    # its data set's defaults apply, as in `subsample run`
    dataset = find_train_artifact(run, "evaluate").summary.get("dataset")
    cfg = resolve_evaluate_config(flags, dataset, sets=sets)
    from pipeline.stages.evaluate import run_evaluate

    emit(run_evaluate(run, cfg, refresh=refresh), as_json)
