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
    """Print a stage summary: one JSON object with ``--json``, else aligned ``key: value`` lines."""
    if as_json:
        print(json.dumps(summary, default=str))
        return
    width = max((len(k) for k in summary), default=0)
    for k, v in summary.items():
        if isinstance(v, (dict, list)):
            v = json.dumps(v, default=str)
            if len(v) > 200:
                v = v[:197] + "..."
        print(f"{k:>{width}}: {v}")


# --- ingest -----------------------------------------------------------------------------------


def _ingest_default(field: str) -> Any:
    from pipeline.config import IngestConfig

    return IngestConfig.model_fields[field].default


@app.command("ingest")
def ingest_cmd(
    source: str = typer.Argument(
        ..., help="folder of images, .zip of images, CIFAR-10 .bin/python batches (folder or file), MNIST-style IDX file or folder, or .npz"
    ),
    name: str = typer.Option(..., "--name", help="data set name: the store is $SUBSAMPLE_HOME/datasets/NAME.zarr"),
    size: int = typer.Option(_ingest_default("size"), "--size", help="output side S: images are stored S×S×3 uint8"),
    crop: Optional[int] = typer.Option(None, "--crop", help="centre-crop side before resizing (CelebA: 178); default: the short side"),
    workers: int = typer.Option(_ingest_default("workers"), "--workers", help="parallel decode workers"),
    scheduler: str = typer.Option(_ingest_default("scheduler"), "--scheduler", help="Dask local scheduler: threads or processes"),
    files_per_task: int = typer.Option(_ingest_default("files_per_task"), "--files-per-task", help="files decoded per Dask task"),
    max_pixels: int = typer.Option(_ingest_default("max_pixels"), "--max-pixels", help="quarantine larger source images"),
    decoder: str = typer.Option(_ingest_default("decoder"), "--decoder", help="fast (libjpeg-turbo + Lanczos kernel) or pillow (ingest/1's path)"),
    decode_device: str = typer.Option(_ingest_default("decode_device"), "--decode-device", help="cpu, or cuda: JPEGs decoded by nvJPEG on the GPU"),
    refresh: bool = typer.Option(False, "--refresh", help="rebuild even if an identical store exists"),
    as_json: bool = JsonOpt,
) -> None:
    """Decode a source data set into the store datasets/NAME.zarr (centre crop, resize to S×S, RGB)."""
    from pydantic import ValidationError

    from pipeline.config import IngestConfig
    from pipeline.ingest import run_ingest

    try:
        cfg = IngestConfig(
            source=source, name=name, size=size, crop=crop, workers=workers, scheduler=scheduler,
            files_per_task=files_per_task, max_pixels=max_pixels, decoder=decoder, decode_device=decode_device,
        )
    except ValidationError as e:
        raise SubsampleError("ingest", "; ".join(f"--{'-'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())) from None
    emit(run_ingest(cfg, refresh=refresh), as_json)


# --- features / tables / batches ----------------------------------------------------------------


def _config_or_exit(stage: str, make):
    """Build a pydantic config, turning a validation error into a one-line SubsampleError."""
    from pydantic import ValidationError

    try:
        return make()
    except ValidationError as e:
        raise SubsampleError(stage, "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()))


@app.command("features")
def features_cmd(
    name: str = typer.Argument(..., help="data set name (its store must exist: run `subsample ingest` first)"),
    dask_address: Optional[str] = typer.Option(None, "--dask-address", help="existing Dask scheduler (tcp://host:8786); its workers must see the store path"),
    scheduler: str = typer.Option("threads", "--scheduler", help="without --dask-address: 'threads' (default, no start-up cost) or 'local-cluster' (worker processes)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="local threads / cluster workers (default: all cores)"),
    feature: Optional[list[str]] = typer.Option(None, "--feature", help="registered feature name (repeat; default: colour_moment, sharpness)"),
    refresh: bool = typer.Option(False, "--refresh", help="recompute even if the artifact is cached"),
    as_json: bool = JsonOpt,
) -> None:
    """Per-image features (colour moment, Eq. 14; energy-gradient sharpness, Eq. 15) of every image."""
    from pipeline.config import FeaturesConfig
    from pipeline.features import run_features

    extra = {"features": tuple(feature)} if feature else {}
    cfg = _config_or_exit(
        "features", lambda: FeaturesConfig(dask_address=dask_address, scheduler=scheduler, workers=workers, **extra)
    )
    emit(run_features(name, cfg, refresh=refresh, progress=True), as_json)


@app.command("tables")
def tables_cmd(
    name: str = typer.Argument(..., help="data set name (its features must exist: run `subsample features NAME` first)"),
    bins: Optional[tuple[int, int]] = typer.Option(None, "--bins", help="M1 M2: bins per feature; the table has (M1+1) x (M2+1) cells (default 32 32)"),
    feature: Optional[list[str]] = typer.Option(None, "--feature", help="feature names of the features artifact (repeat; default: colour_moment, sharpness)"),
    refresh: bool = typer.Option(False, "--refresh", help="rebuild even if the artifact is cached"),
    as_json: bool = JsonOpt,
) -> None:
    """The joint distribution table of the features (Eq. 16, round half up), with a heat map."""
    from pipeline.config import FeaturesConfig, TablesConfig
    from pipeline.tables import run_tables

    cfg = _config_or_exit("tables", lambda: TablesConfig(bins=tuple(bins)) if bins else TablesConfig())
    features = _config_or_exit("tables", lambda: FeaturesConfig(features=tuple(feature)) if feature else FeaturesConfig())
    emit(run_tables(name, cfg, features, refresh=refresh), as_json)


from enum import Enum  # noqa: E402  (batches: choices for --strategy / --fill)
from typing import get_args  # noqa: E402

from pipeline.config import BatchesConfig as _BatchesConfig, Strategy as _StrategyLiteral  # noqa: E402

_BatchStrategy = Enum("_BatchStrategy", {s: s for s in get_args(_StrategyLiteral)}, type=str)
_BatchFill = Enum("_BatchFill", {"topk": "topk", "coverage": "coverage"}, type=str)
_BATCH_DEFAULTS = {k: f.default for k, f in _BatchesConfig.model_fields.items()}  # defaults in one place


@app.command("batches")
def batches_cmd(
    name: str = typer.Argument(..., help="data set name (its features and tables must exist)"),
    batch_size: int = typer.Option(_BATCH_DEFAULTS["batch_size"], "--batch-size", "-b", help="images per batch B; an epoch has floor(n / B) batches"),
    strategy: _BatchStrategy = typer.Option(_BATCH_DEFAULTS["strategy"], "--strategy", help="random (baseline), constructed (the paper) or dealt"),
    epochs: int = typer.Option(_BATCH_DEFAULTS["epochs"], "--epochs", help="epochs of batches to construct and store"),
    seed: int = typer.Option(_BATCH_DEFAULTS["seed"], "--seed", help="run seed; epoch e is constructed from (seed, e)"),
    top_k: int = typer.Option(_BATCH_DEFAULTS["top_k"], "--top-k", help="constructed: shortfall filled from the k most frequent cells"),
    fill: _BatchFill = typer.Option(_BATCH_DEFAULTS["fill"], "--fill", help="constructed: 'coverage' first uses not-yet-drawn images of cells with T2 = 0"),
    bins: Optional[tuple[int, int]] = typer.Option(None, "--bins", help="the table's M1 M2 (default: the tables stage's default)"),
    feature: Optional[list[str]] = typer.Option(None, "--feature", help="feature names of the table (repeat; default: colour_moment, sharpness)"),
    refresh: bool = typer.Option(False, "--refresh", help="rebuild even if the artifact is cached"),
    as_json: bool = JsonOpt,
) -> None:
    """Construct epochs of batches from the joint table, with coverage / KL diagnostics (spec §3-4)."""
    from pydantic import ValidationError

    from pipeline.batches import run_batches
    from pipeline.config import FeaturesConfig, TablesConfig

    try:
        cfg = _BatchesConfig(
            batch_size=batch_size, strategy=strategy.value, epochs=epochs, seed=seed, top_k=top_k, fill=fill.value
        )
        tables = TablesConfig(bins=tuple(bins)) if bins else TablesConfig()
        features = FeaturesConfig(features=tuple(feature)) if feature else FeaturesConfig()
    except ValidationError as e:
        raise SubsampleError("batches", "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()))
    emit(run_batches(name, cfg, tables, features, refresh=refresh), as_json)


# --- train / evaluate / presets -----------------------------------------------------------------


def _parse_sets(items: list[str], stage: str) -> dict[str, Any]:
    """``["lr_d=1e-4", "clip=null", "optimizer=sgd"]`` -> dict; values are JSON when they parse
    as JSON (numbers, true/false/null, lists), else strings. Pydantic validates them."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SubsampleError(stage, f"--set {item!r}: expected key=value, e.g. --set lr_d=1e-4")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


@app.command("train")
def train_cmd(
    name: str = typer.Argument(..., help="data set name (its features and tables must exist)"),
    preset: str = typer.Option("paper-constructed", "--preset", "-p", help="named configuration (`subsample presets` lists them)"),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="batches: random, constructed or dealt (default: the preset's)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="images per batch B (default: the preset's)"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="training epochs (default: the preset's)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="run seed: the batches' (seed, epoch) and the model init / z draws"),
    bins: Optional[tuple[int, int]] = typer.Option(None, "--bins", help="the table's M1 M2 (default: the tables stage's default)"),
    feature: Optional[list[str]] = typer.Option(None, "--feature", help="feature names of the table (repeat; default: colour_moment, sharpness)"),
    device: Optional[str] = typer.Option(None, "--device", help="auto (default), cpu or cuda"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="stop after this many D steps (smoke runs)"),
    eval_every: Optional[int] = typer.Option(
        None, "--eval-every", min=0, help="epochs between IS/FID/KID + feature-KL evaluations during training, logged "
        "per epoch to MLflow (0 off; default: on with CUDA and the Inception weights on disk, else off)"),
    eval_samples: Optional[int] = typer.Option(None, "--eval-samples", min=10, help="generated images per such evaluation (default 10,000)"),
    sets: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="override any training field, e.g. --set lr_d=1e-4 --set loss=hinge (repeatable)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run of the same configuration from its last checkpoint"),
    refresh: bool = typer.Option(False, "--refresh", help="train again even if the artifact is cached"),
    as_json: bool = JsonOpt,
) -> None:
    """Train a GAN on the data set's batches (preset < --set < dedicated flags); logs to MLflow
    (experiment subsample/NAME) and writes stages/train/<key>/ with the generator, grids and metrics."""
    from pydantic import ValidationError

    from pipeline.config import FeaturesConfig, TablesConfig
    from pipeline.presets import resolve_batches_config, resolve_train_config
    from pipeline.train import run_train

    flags = {"epochs": epochs, "seed": seed, "device": device, "max_steps": max_steps, "eval_every": eval_every,
             "eval_samples": eval_samples}
    cfg = resolve_train_config(preset, {**_parse_sets(sets, "train"), **{k: v for k, v in flags.items() if v is not None}})
    batches = resolve_batches_config(preset, {"strategy": strategy, "batch_size": batch_size, "seed": seed})
    try:
        tables = TablesConfig(bins=tuple(bins)) if bins else TablesConfig()
        features = FeaturesConfig(features=tuple(feature)) if feature else FeaturesConfig()
    except ValidationError as e:
        raise SubsampleError("train", "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()))
    emit(run_train(name, cfg, batches, tables, features, resume=resume, refresh=refresh), as_json)


@app.command("presets")
def presets_cmd(as_json: bool = JsonOpt) -> None:
    """List the training presets: name, one-line description, source."""
    from pipeline.presets import preset_table

    rows = preset_table()
    if as_json:
        print(json.dumps({"presets": rows}))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['description']}\n{'':<{width}}  source: {r['source']}")


@app.command("evaluate")
def evaluate_cmd(
    run: str = typer.Argument(..., help="train artifact key or MLflow run id"),
    samples: int = typer.Option(10_000, "--samples", "-n", min=2, help="generated images N (names: fid10k_train, is10k, ...)"),
    batch_size: int = typer.Option(250, "--batch-size", min=1, help="generation and feature-extraction batch"),
    weights: Optional[str] = typer.Option(
        None, "--weights", help="local copy of the feature extractor's weights (default: torch-fidelity's download)"
    ),
    no_fidelity: bool = typer.Option(False, "--no-fidelity", help="skip IS/FID/KID; feature-space metrics only"),
    feature_extractor: str = typer.Option("inception-v3-compat", "--feature-extractor", help="torch-fidelity extractor"),
    seed: int = typer.Option(0, "--seed", help="seed of the latent codes"),
    device: Optional[str] = typer.Option(None, "--device", help="default: the generator's device"),
    refresh: bool = typer.Option(False, "--refresh", help="recompute even if this evaluation is cached"),
    as_json: bool = JsonOpt,
) -> None:
    """Evaluate a trained generator against its training set: IS, FID, KID (torch-fidelity), feature-space KL/JS and sharpness (spec §5)."""
    from pipeline.config import EvaluateConfig
    from pipeline.evaluate import run_evaluate

    cfg = EvaluateConfig(
        samples=samples,
        batch_size=batch_size,
        weights=weights,
        fidelity=not no_fidelity,
        feature_extractor=feature_extractor,
        seed=seed,
        device=device,
    )
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


def _run_flow(fields: dict[str, Any], overrides: list[str], as_json: bool) -> None:
    from flows.config import build_config
    from flows.train_subsample import run

    cfg = build_config(fields, overrides)
    with _stdout_to_stderr():
        report = run(cfg)
    if as_json:
        emit(report, True)
        return
    print(f"flow run {report['flow_run']} on data set {report['dataset']} ({report['seconds']:.1f} s)")
    for s in report["stages"]:
        print(f"  {s['stage']:<9} {'cache hit' if s['cache_hit'] else 'built':<9} {s['seconds']:8.1f} s  {s['key']}  {s['path']}")
    for k, v in report.items():
        if k not in {"flow_run", "flow_run_id", "dataset", "stages", "seconds"} and v is not None:
            print(f"{k}: {v if not isinstance(v, (dict, list)) else json.dumps(v, default=str)}")


@app.command("run")
def run_cmd(
    dataset: str = typer.Option("demo", "--dataset", "-d", help="data set name (known: demo, celeba, cifar10, anime-faces, mnist)"),
    source: Optional[str] = typer.Option(None, "--source", help="source path (default: $SUBSAMPLE_<DATASET>_SOURCE; demo: the embedded data)"),
    only: Optional[str] = typer.Option(None, "--only", metavar="STAGE", help="run this one stage; its upstream must be cached"),
    refresh: Optional[str] = typer.Option(None, "--refresh", metavar="STAGE", help="rebuild this stage and everything downstream"),
    overrides: list[str] = typer.Option([], "--set", metavar="SECTION.FIELD=VALUE", help="e.g. --set tables.bins=[16,16] --set train.epochs=2 (repeatable)"),
    dask_address: Optional[str] = typer.Option(None, "--dask-address", help="Dask scheduler for the features stage (default: Dask on this machine, features.scheduler)"),
    as_json: bool = JsonOpt,
) -> None:
    """Run the Prefect flow train-subsample (ingest → features → tables → batches → train → evaluate);
    every stage whose inputs, parameters and code are unchanged is a cache hit."""
    from flows.config import dataset_defaults

    fields = {**dataset_defaults(dataset), "dataset": dataset, "source": source, "only": only, "refresh": refresh, "dask_address": dask_address}
    _run_flow(fields, overrides, as_json)


@app.command("demo")
def demo_cmd(
    overrides: list[str] = typer.Option([], "--set", metavar="SECTION.FIELD=VALUE", help="change a demo setting"),
    as_json: bool = JsonOpt,
) -> None:
    """The whole flow on the embedded demo data (2,000 CIFAR-10 images) with short training
    settings: a few minutes on a laptop CPU, no server needed."""
    from flows.config import demo_fields

    _run_flow(demo_fields(), overrides, as_json)


def _split_list(values: list[str]) -> Optional[list[str]]:
    """Repeated and/or comma-separated values (``--strategies random,constructed``); None when empty."""
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return out or None


@app.command("compare")
def compare_cmd(
    dataset: str = typer.Option("demo", "--dataset", "-d", help="data set name (known: demo, celeba, cifar10, anime-faces, mnist)"),
    source: Optional[str] = typer.Option(None, "--source", help="source path (default: $SUBSAMPLE_<DATASET>_SOURCE; demo: the embedded data)"),
    scale: str = typer.Option("smoke", "--scale", help="smoke: tiny models, minutes on a CPU; paper: the paper's settings (a GPU machine)"),
    strategies: list[str] = typer.Option([], "--strategies", help="batch strategies (default: random, constructed, dealt); repeat or comma-separate"),
    batch_sizes: list[str] = typer.Option([], "--batch-sizes", help="batch sizes (default: the scale's; smoke 128,1000, paper 128,512,1024,2000)"),
    presets: list[str] = typer.Option([], "--presets", help="training presets (default: the scale's; `subsample presets` lists them)"),
    seeds: int = typer.Option(3, "--seeds", help="seeds per configuration (at least 3)"),
    overrides: list[str] = typer.Option([], "--set", metavar="SECTION.FIELD=VALUE", help="e.g. --set train.epochs=2 --set evaluate.samples=1000 --set tables.bins=[16,16]"),
    as_json: bool = JsonOpt,
) -> None:
    """The paper's comparison (Prefect flow compare-strategies): strategies × batch sizes × presets ×
    seeds, each a train-subsample run nested under one MLflow parent run, and a report (HTML and
    markdown) built from what MLflow recorded."""
    from flows.compare import build_compare_config, run

    sizes = _split_list(batch_sizes)
    try:
        sizes_int = [int(b) for b in sizes] if sizes else None
    except ValueError:
        raise SubsampleError("compare", f"--batch-sizes {batch_sizes}: expected integers, e.g. --batch-sizes 128,1000") from None
    fields = {"dataset": dataset, "source": source, "scale": scale, "strategies": _split_list(strategies),
              "batch_sizes": sizes_int, "presets": _split_list(presets), "seeds": seeds}
    cfg = build_compare_config(fields, overrides)
    with _stdout_to_stderr():
        summary = run(cfg)
    if as_json:
        emit(summary, True)
        return
    print(f"compare-strategies on {summary['dataset']} ({summary['scale']}): {summary['cells']} runs, "
          f"{summary['cells_failed']} failed, {summary['cells_trained_now']} trained now, {summary['seconds']:.1f} s")
    print(f"MLflow parent run: {summary['parent_run_id']}  ({summary['mlflow_tracking_uri']})")
    print(f"report: {summary['report_html']}")
    print(f"        {summary['report_md']}")


@app.command("compare-report")
def compare_report_cmd(
    parent_run_id: str = typer.Argument(..., help="the MLflow parent run id `subsample compare` printed"),
    as_json: bool = JsonOpt,
) -> None:
    """Rebuild a comparison's report from MLflow (e.g. after its runs finished on another machine)."""
    from pipeline.report import build_report

    emit(build_report(parent_run_id), as_json)



def main(argv: Optional[list[str]] = None) -> None:
    try:
        app(args=argv, prog_name="subsample")
    except SubsampleError as e:
        print(str(e), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
