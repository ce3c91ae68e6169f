"""``subsample``: the command line, a thin layer over ``pipeline``.

Every stage command takes ``--json`` and then prints exactly one JSON object (its summary) on
stdout; progress bars and logs go to stderr. A :class:`~storage.errors.SubsampleError` becomes a
one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

import typer

from storage.errors import SubsampleError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Train GANs on distribution-matched mini-batches. Artifacts live under $SUBSAMPLE_HOME (default ./artifacts).",
)

JsonOpt = typer.Option(False, "--json", help="print one JSON object summarising what the command did")


def emit(summary: dict[str, Any], as_json: bool) -> None:
    """Print a stage summary: one JSON object with ``--json``, else aligned ``key: value`` lines,
    in full: a dict (e.g. evaluate's metrics) one ``name: value`` line per entry below its key,
    a list as JSON."""
    if as_json:
        print(json.dumps(summary, default=str))
        return
    width = max((len(k) for k in summary), default=0)
    for k, v in summary.items():
        if isinstance(v, dict) and v:
            print(f"{k:>{width}}:")
            inner = max(len(str(name)) for name in v)
            for name, value in v.items():
                shown = json.dumps(value, default=str) if isinstance(value, (dict, list)) else value
                print(f"{'':>{width}}  {str(name):<{inner}}  {shown}")
            continue
        if isinstance(v, (dict, list)):
            v = json.dumps(v, default=str)
        print(f"{k:>{width}}: {v}")


# --- ingest -----------------------------------------------------------------------------------

from enum import Enum  # noqa: E402  (choices for --split, --strategy, --fill)

_Split = Enum("_Split", {s: s for s in ("train", "test", "all")}, type=str)


def _resolve(stage: str, name: str, sets: list[str], flags: dict[str, Any], **fields: Any) -> Any:
    """A stage command's configuration, by the one resolution every command and deployment uses
    (:func:`flows.config.resolve_config`: defaults < the machine's < the data set's < preset <
    ``--set`` < flags), so a stage run alone builds what ``subsample run`` builds for that stage.
    Only ``batches`` reads a preset's section, so only it takes the machine's layer (``evaluate``
    resolves through :func:`flows.config.resolve_evaluate_config`)."""
    from flows.config import resolve_config

    return resolve_config(
        stage,
        {"dataset": name, "only": stage, **fields},
        sets,
        flags,
        machine=stage == "batches",
        checks=stage != "ingest",
    )  # ingest checks its source itself


SetOpt = typer.Option(
    [],
    "--set",
    metavar="KEY=VALUE",
    help="override any setting: section.field=value (train.lr_d=1e-4, tables.bins=[16,16]) or a run setting "
    "(preset=smoke); on a stage command a bare field is that stage's (lr_d=1e-4); repeatable "
    "(docs/training.md, 'Changing settings: --set')",
)


@app.command("ingest")
def ingest_cmd(
    source: str = typer.Argument(
        ...,
        help="folder of images, .zip of images, CIFAR-10 .bin/python batches (folder or file), MNIST-style IDX file or folder, or .npz",
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


# --- features / tables / batches ----------------------------------------------------------------


@app.command("features")
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


@app.command("tables")
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


from typing import get_args  # noqa: E402

from pipeline.config import Strategy as _StrategyLiteral  # noqa: E402

_BatchStrategy = Enum("_BatchStrategy", {s: s for s in get_args(_StrategyLiteral)}, type=str)
_BatchFill = Enum("_BatchFill", {"topk": "topk", "coverage": "coverage"}, type=str)
_BatchTopup = Enum("_BatchTopup", {"topk": "topk", "random": "random"}, type=str)


@app.command("batches")
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
        help="constructed: spread the shortfall over the k most frequent cells in proportion ('topk', the default: every batch alike) "
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


# --- train / evaluate / presets -----------------------------------------------------------------


DryRunOpt = typer.Option(
    False, "--dry-run", help="print the resolved configuration (with --json: one object) and run nothing"
)


def config_view(cfg: Any) -> dict[str, Any]:
    """What ``--dry-run`` prints: the resolved run configuration, every section, and the training
    config on its own (``train_config``, the entry every ``--json`` summary of a training run has)."""
    return {"dry_run": True, "config": cfg.model_dump(mode="json"), "train_config": cfg.train.model_dump(mode="json")}


def show_config(view: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit(view, True)
        return
    for section, value in view["config"].items():
        if isinstance(value, dict):
            print(f"{section}:")
            for k, v in value.items():
                print(f"  {k}: {json.dumps(v, default=str)}")
        else:
            print(f"{section}: {json.dumps(value, default=str)}")


@app.command("train")
def train_cmd(
    name: str = typer.Argument(..., help="data set name (its features and tables must exist)"),
    preset: Optional[str] = typer.Option(
        None,
        "--preset",
        "-p",
        help="named configuration (`subsample presets`; default: the data set's, else demo on a CPU, paper-constructed on a GPU)",
    ),
    strategy: Optional[str] = typer.Option(
        None,
        "--strategy",
        help="batches: random, constructed or dealt (default: the batches `subsample batches` built, else the preset's)",
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
        help="data-parallel ranks on this node (GPUs, or CPU processes); launches torchrun's elastic agent (docs/distributed.md)",
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
    from flows.config import check_batch_sizes, parse_overrides, resolve_config, train_batches

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


@app.command("presets")
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


@app.command("evaluate")
def evaluate_cmd(
    run: str = typer.Argument(..., help="train artifact key or MLflow run id"),
    samples: Optional[int] = typer.Option(
        None,
        "--samples",
        "-n",
        min=2,
        help="generated images N (names: fid10k_train, is10k, ...; default: EvaluateConfig's with a GPU, 2,000 on a CPU)",
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
        help="IS/FID/KID with torch-fidelity (default: on with a GPU, off on a CPU); --no-fidelity: feature-space metrics only",
    ),
    feature_extractor: Optional[str] = typer.Option(
        None,
        "--feature-extractor",
        help="torch-fidelity extractor (default inception-v3-compat); giving it, or --weights, turns IS/FID/KID on unless --no-fidelity",
    ),
    seed: Optional[int] = typer.Option(
        None, "--seed", help=f"seed of the latent codes (default {_evaluate_default('seed')})"
    ),
    device: Optional[str] = typer.Option(None, "--device", help="default: the generator's device"),
    metrics: Optional[str] = typer.Option(
        None,
        "--metrics",
        help="only these, comma-separated, e.g. fid10k_train,kid10k_train (names for N = --samples, which they set when it is not given; docs/evaluate.md lists them); default: all",
    ),
    sets: list[str] = SetOpt,
    refresh: bool = typer.Option(False, "--refresh", help="recompute even if this evaluation is cached"),
    as_json: bool = JsonOpt,
) -> None:
    """Evaluate a trained generator against its training set: IS, FID, KID (torch-fidelity), feature-space KL/JS and sharpness (spec §5)."""
    from flows.config import resolve_evaluate_config

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


# --- run / demo / compare (Prefect flows) -------------------------------------------------------

import contextlib  # noqa: E402


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send everything written to stdout (Python prints and file descriptor 1, e.g. a child
    process's output) to stderr, so ``--json`` leaves exactly one object on stdout."""
    import os

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _run_flow(cfg: Any, as_json: bool, dry_run: bool = False, command: str = "run") -> None:
    """Run the validated config as the flow train-subsample: the temporary Prefect server (when no
    PREFECT_API_URL is set) starts only now, after every check that needs none. ``--json`` adds the
    resolved training config (``train_config``, as ``subsample train --json`` shows it)."""
    if dry_run:
        return show_config(config_view(cfg), as_json)
    from flows.local_server import choose_server, start_temporary_server

    choose_server(command)  # before Prefect is imported: it reads PREFECT_API_URL once
    from flows.train_subsample import run

    with _stdout_to_stderr():  # the server process inherits fd 1: keep it off --json's stdout
        start_temporary_server()
        report = run(cfg)
    if as_json:
        trains = "train" in cfg.stages()
        emit({**report, **({"train_config": cfg.train.model_dump(mode="json")} if trains else {})}, True)
        return
    print(f"flow run {report['flow_run']} on data set {report['dataset']} ({report['seconds']:.1f} s)")
    for s in report["stages"]:
        print(
            f"  {s['stage']:<9} {'cache hit' if s['cache_hit'] else 'built':<9} {s['seconds']:8.1f} s  {s['key']}  {s['path']}"
        )
    for k, v in report.items():
        if k not in {"flow_run", "flow_run_id", "dataset", "stages", "seconds"} and v is not None:
            print(f"{k}: {v if not isinstance(v, (dict, list)) else json.dumps(v, default=str)}")


def _run_default(field: str) -> Any:
    from flows.config import RunConfig

    return RunConfig.model_fields[field].default


@app.command("run")
def run_cmd(
    dataset: str = typer.Option(
        _run_default("dataset"),
        "--dataset",
        "-d",
        help="data set name (known: demo, celeba, cifar10, anime-faces, mnist)",
    ),
    source: Optional[str] = typer.Option(
        None, "--source", help="source path (default: $SUBSAMPLE_<DATASET>_SOURCE; demo: the embedded data)"
    ),
    preset: Optional[str] = typer.Option(
        None,
        "--preset",
        "-p",
        help="training preset (default: the data set's, else demo on a CPU, paper-constructed on a GPU)",
    ),
    only: Optional[str] = typer.Option(
        None, "--only", metavar="STAGE", help="run this one stage; its upstream must be cached"
    ),
    refresh: Optional[str] = typer.Option(
        None, "--refresh", metavar="STAGE", help="rebuild this stage and everything downstream"
    ),
    overrides: list[str] = SetOpt,
    dask_address: Optional[str] = typer.Option(
        None,
        "--dask-address",
        help="Dask scheduler for the features stage (default: Dask on this machine, features.scheduler)",
    ),
    dry_run: bool = DryRunOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Run the Prefect flow train-subsample (ingest → features → tables → batches → train → evaluate);
    every stage whose inputs, parameters and code are unchanged is a cache hit."""
    from flows.config import resolve_config

    fields = {"dataset": dataset, "source": source, "only": only, "refresh": refresh, "dask_address": dask_address}
    _run_flow(resolve_config("run", fields, overrides, {"preset": preset}), as_json, dry_run)


@app.command("demo")
def demo_cmd(
    overrides: list[str] = SetOpt,
    dry_run: bool = DryRunOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The whole flow on the embedded demo data (2,000 CIFAR-10 images) with short training
    settings: a few minutes on a laptop CPU, no server needed. The same as `subsample run --dataset demo`."""
    from flows.config import demo_fields, resolve_config

    _run_flow(resolve_config("demo", demo_fields(), overrides), as_json, dry_run, "demo")


def _split_list(values: list[str]) -> Optional[list[str]]:
    """Repeated and/or comma-separated values (``--strategies random,constructed``); None when empty."""
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return out or None


_Scale = Enum("_Scale", {s: s for s in ("smoke", "cpu", "paper")}, type=str)  # flows.compare.CompareConfig's
_Design = Enum("_Design", {s: s for s in ("factorial", "paper")}, type=str)


@app.command("compare")
def compare_cmd(
    dataset: str = typer.Option(
        _run_default("dataset"),
        "--dataset",
        "-d",
        help="data set name (known: demo, celeba, cifar10, anime-faces, mnist)",
    ),
    source: Optional[str] = typer.Option(
        None, "--source", help="source path (default: $SUBSAMPLE_<DATASET>_SOURCE; demo: the embedded data)"
    ),
    scale: Optional[_Scale] = typer.Option(
        None,
        "--scale",
        help="(default smoke) smoke: tiny models, minutes on a CPU (checks the machinery); cpu: small models that "
        "learn, about 7 min (factorial) or 10 (paper design) on an idle 2-core CPU; paper: the paper's settings (a GPU machine)",
    ),
    design: Optional[_Design] = typer.Option(
        None,
        "--design",
        help="(default factorial) factorial: strategies × batch sizes × presets; paper: exactly the paper's cells (the method at B = 2000, "
        "2048 on CIFAR-10, and 1024; strategies (a)-(d) at 128), each at its preset's B and epochs",
    ),
    strategies: list[str] = typer.Option(
        [],
        "--strategies",
        help="batch strategies trained (factorial) and diagnosed (both designs); default: random, constructed, dealt; repeat or comma-separate",
    ),
    batch_sizes: list[str] = typer.Option(
        [],
        "--batch-sizes",
        help="factorial: batch sizes (default: the scale's; smoke 128,1000, cpu 128,500, paper 128,512,1024,2000)",
    ),
    presets: list[str] = typer.Option(
        [], "--presets", help="factorial: training presets (default: the scale's; `subsample presets` lists them)"
    ),
    seeds: Optional[int] = typer.Option(
        None,
        "--seeds",
        help="seeds per configuration (at least 3; default 3). n seeds detect (80 %, Welch p < 0.05) a difference of "
        "3.0 seed s.d. at n = 3, 2.0 at 5, 1.3 at 10: the paper's 2048 vs 2048* KL difference (0.0205, Table 4) needs "
        "a seed s.d. below 0.0068 with 3 seeds, 0.010 with 5, 0.016 with 10 (docs/reproducing-the-paper.md); the "
        "report's power section gives the seeds its own spread needs",
    ),
    overrides: list[str] = typer.Option(
        [],
        "--set",
        metavar="KEY=VALUE",
        help="every cell's settings, as `subsample run --set` takes them (train.epochs=2, evaluate.samples=1000, "
        "tables.bins=[16,16]), or a comparison setting (batch_scale=0.5)",
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="print the resolved comparison and every cell's training config (with --json: one object); run nothing",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """The paper's comparison (Prefect flow compare-strategies): the paper's cells (--design paper) or
    strategies × batch sizes × presets, × seeds, each a train-subsample run nested under one MLflow
    parent run, and a report (HTML and markdown) built from what MLflow recorded."""
    from flows.config import check_batch_sizes, check_devices, check_preset, check_source

    for p in _split_list(presets) or []:
        check_preset(p, "compare")
    check_source(dataset, source, "compare")
    from flows.local_server import choose_server, start_temporary_server

    if not dry_run:
        choose_server("compare")  # before Prefect is imported: it reads PREFECT_API_URL once
    from flows.compare import build_compare_config, run

    sizes = _split_list(batch_sizes)
    try:
        sizes_int = [int(b) for b in sizes] if sizes else None
    except ValueError:
        raise SubsampleError(
            "compare", f"--batch-sizes {batch_sizes}: expected integers, e.g. --batch-sizes 128,1000"
        ) from None
    fields = {
        "dataset": dataset,
        "source": source,
        "scale": scale.value if scale else None,
        "design": design.value if design else None,
        "strategies": _split_list(strategies),
        "batch_sizes": sizes_int,
        "presets": _split_list(presets),
        "seeds": seeds,
    }
    cfg = build_compare_config(fields, overrides)
    if dry_run:
        runs = [(c, cfg.cell_run_config(c)) for c in cfg.cells()]
        view = {
            "dry_run": True,
            "config": cfg.model_dump(mode="json"),
            "cells": [
                {
                    "cell": c.label,
                    "train_config": rc.train.model_dump(mode="json"),
                    "batches_config": rc.batches.model_dump(mode="json"),
                }
                for c, rc in runs
            ],
        }
        if as_json:
            return emit(view, True)
        for row in view["cells"]:
            print(f"{row['cell']}: {json.dumps(row['train_config'], default=str)}")
        return
    for cell in cfg.cells():  # a device asked for (--set train.device=cuda) that this machine lacks
        check_devices(cfg.cell_run_config(cell).model_dump(), "compare")
    check_batch_sizes(
        cfg.dataset,
        list(cfg.grid_batch_sizes),
        cfg.source or cfg.base_run_config().resolved_source(),
        True,
        "compare",
        cfg.ingest.split,
    )
    with _stdout_to_stderr():
        start_temporary_server()
        summary = run(cfg)
    if as_json:
        emit(summary, True)
        return
    print(
        f"compare-strategies on {summary['dataset']} ({summary['scale']}, {summary.get('design', 'factorial')} design): "
        f"{summary['cells']} runs, "
        f"{summary['cells_failed']} failed, {summary['cells_trained_now']} trained now, {summary['seconds']:.1f} s"
    )
    print(f"MLflow parent run: {summary['parent_run_id']}  ({summary['mlflow_tracking_uri']})")
    print(f"report: {summary['report_html']}")
    print(f"        {summary['report_md']}")


@app.command("compare-report")
def compare_report_cmd(
    parent_run_id: str = typer.Argument(..., help="the MLflow parent run id `subsample compare` printed"),
    as_json: bool = JsonOpt,
) -> None:
    """Rebuild a comparison's report from MLflow (e.g. after its runs finished on another machine)."""
    from pipeline.experiments.report import build_report

    emit(build_report(parent_run_id), as_json)


def omp_wait_policy() -> None:
    """Let PyTorch's OpenMP threads sleep, not spin, while they wait, when the cores are already
    busy (unless the user chose a policy). Measured on the 2-core development machine (60 DCGAN-32
    steps, B = 64): with both cores busy with other work, spinning took 4.7-6.7 s against 3.5-4.0 s
    (and 1.6-2.3 times the CPU time); on idle cores spinning is faster, 0.9-1.0 s against 1.3-1.4 s.
    So the choice follows the load when the command starts. It must be set before torch loads."""
    import os

    if "OMP_WAIT_POLICY" in os.environ or not hasattr(os, "getloadavg"):
        return
    if os.getloadavg()[0] >= 0.75 * (os.cpu_count() or 1):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def main(argv: Optional[list[str]] = None) -> None:
    omp_wait_policy()
    from flows.local_server import client_defaults

    client_defaults()  # before Prefect reads its settings
    if argv is None:  # the command line: a long command runs in a worker under a supervisor
        from storage import interrupts

        if interrupts.should_supervise(sys.argv[1:]) and (code := interrupts.supervise()) is not None:
            sys.exit(code)
    try:
        app(args=argv, prog_name="subsample")
    except SubsampleError as e:
        print(str(e), file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # a file-system fault (read-only home, disk full, ulimit -f) is one line too
        from storage.safe_io import fault

        err = fault(e, argv[0] if argv else (sys.argv[1] if len(sys.argv) > 1 else "subsample"))
        if err is None:
            raise
        print(str(err), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
