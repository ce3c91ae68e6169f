"""The evaluation stage (spec §5): ``subsample evaluate RUN --samples N``.

N images are generated from a trained generator with a fixed seed and compared with the training
set it was trained on:

- **IS, FID, KID** with torch-fidelity (one call, shared features), the training set streamed from
  the zarr store; its reference features and FID statistics are cached per data set under
  ``$SUBSAMPLE_HOME/fidelity-cache`` (named by the store's content hash and the extractor weights'
  hash), so a second evaluation against the same data set only extracts the generated images.
- **Feature-space** ``KL(f_G || f_X)`` and JS on the training table's bins
  (:func:`pipeline.metrics.feature_kl`; generated features binned with the *training* scale), with
  the KL's floor at N samples beside it (``feature_kl{N}_train_floor``: the same estimator on N
  real images, :mod:`pipeline.floors`), since a perfect generator does not score 0.
- **Sharpness**: mean energy-gradient sharpness of the generated images and its difference from
  the training set's (seed paper 004).

Metrics are registered by protocol name (stylegan2-ada's ``metric_main`` style,
:data:`pipeline.metrics.METRICS`): ``fid10k_train`` is FID between 10,000 generated images and the
full training set; ``is10k`` the Inception Score of those 10,000 images. ``--metrics`` computes
only those named (``EvaluateConfig.metrics``; default all), each family's shared work once. Results go to the
artifact's ``metrics.json``, one JSON line per computed evaluation appended to
``$SUBSAMPLE_HOME/metrics/<train key>.jsonl`` (with timing), and the training run's MLflow run as
``eval/<name>``.

Without network access the Inception weights cannot be fetched: the stage says so in one line,
skips IS/FID/KID and still reports the feature-space metrics (``fidelity: "skipped: ..."``);
``--weights PATH`` points torch-fidelity at a local copy.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import EvaluateConfig, FeaturesConfig, TablesConfig
from pipeline.extractor_weights import WeightsUnavailable, resolve_weights
from pipeline.fidelity import EvalContext, StoreDataset, evaluate_images, generate_images, needs_fidelity
from pipeline.metrics import SHARPNESS_DIFF, selected_metrics
from pipeline.stages.lineage import tables_command, upstream_artifact
from pipeline.stages.result import StageResult
from storage.artifacts import Artifact, artifact_key, artifact_path, build_artifact, open_artifact
from storage.errors import MissingArtifactError, SubsampleError, one_line, redact_uri
from storage.paths import home, inside_home, is_train_key

STAGE = "evaluate"
CODE_VERSION = "3"  # 2: samples.png titled, >= 512 px wide, or the feature KL's floor beside it; 3: both


def metrics_log_path(train_key: str) -> Path:
    """One JSON line per computed evaluation of one training run (stylegan2-ada's metric-*.jsonl)."""
    if not is_train_key(train_key):
        raise SubsampleError(STAGE, f"invalid train key {train_key!r} for the metrics log: expected 16 hex digits")
    return inside_home(home() / "metrics" / f"{train_key}.jsonl", what="metrics log")


# --- generation ---------------------------------------------------------------------------------


def image_grid(images: np.ndarray, columns: int | None = None) -> np.ndarray:
    """uint8 ``(k, S, S, 3)`` -> one uint8 grid image, 2-pixel black gutters."""
    from pipeline.pictures import grid_array

    return grid_array(images, columns)


def samples_title(info: dict, epochs: Any) -> str:
    """What ``samples.png`` shows: data set, preset, strategy, B, seed and epoch of the generator."""
    from pipeline.pictures import run_title

    train, batches = info.get("train") or {}, info.get("batches") or {}
    return run_title(
        info.get("dataset"),
        train.get("preset"),
        batches.get("strategy"),
        batches.get("batch_size"),
        train.get("seed"),
        int(epochs) if epochs else None,
    )


# --- the stage ----------------------------------------------------------------------------------


def _train_sharpness_mean(table: Any, tables_art: Artifact, store: Any) -> float:
    """The training set's mean sharpness: from the features artifact under the table when it has
    the sharpness column, else computed from the store chunk by chunk."""
    from kernels.features import compute_features
    from pipeline.stages.features import load_features

    if "sharpness" in table.features and (features_art := upstream_artifact(tables_art, "features")) is not None:
        values, names = load_features(features_art)
        return float(values[:, list(names).index("sharpness")].mean())
    total, step = 0.0, int(store.images.chunks[0])
    for start in range(0, store.n, step):
        total += float(compute_features(np.asarray(store.images[start : start + step]), names=("sharpness",)).sum())
    return total / store.n


def _training_table(train: Artifact, info: dict) -> Artifact:
    """The tables artifact the generator was trained on, by the key the train manifest records
    (by content hash for runs made before manifests recorded keys); MissingArtifactError naming
    the command that rebuilds it when it is gone."""
    tables_art = upstream_artifact(train, "tables")
    if tables_art is not None:
        return tables_art
    dataset, key = info["dataset"], train.upstream.get("tables", "?")
    try:
        command = tables_command(dataset, TablesConfig(**info["tables"]), FeaturesConfig(**info["features"]))
    except (TypeError, ValueError, KeyError) as e:
        raise SubsampleError(
            STAGE, f"{info['path']}/generator.pt: invalid features/tables settings ({one_line(str(e))[:200]})"
        ) from None
    raise MissingArtifactError(
        STAGE,
        f"the table train run {train.key} was trained on (stages/tables/{key}) is missing or corrupt; "
        f"run `{command}` first",
    )


def _log_to_mlflow(run_id: str, metrics: dict[str, float], files: list[Path], key: str, step: int) -> bool:
    """Log ``eval/<name>`` metrics, an ``eval/key`` tag and the artifact's files (under
    ``eval/<key>/``) to the training run. Returns False (with a note on stderr) when that fails."""
    from mlflow.exceptions import MlflowException

    from storage import tracking

    try:
        tracking.log_metrics(run_id, {f"eval/{k}": v for k, v in metrics.items()}, step)
        tracking.set_tags(run_id, {"eval/key": key})
        tracking.log_artifacts(run_id, [(f, f"eval/{key}") for f in files])
    except (MlflowException, SubsampleError) as e:
        print(
            f"{STAGE}: could not log to MLflow run {run_id} ({one_line(redact_uri(e.message))}); "
            "metrics are in the artifact",
            file=sys.stderr,
        )
        return False
    return True


def run_evaluate(run: str, cfg: EvaluateConfig, *, refresh: bool = False, progress: bool = True) -> dict:
    """``subsample evaluate RUN``: evaluate a trained generator (``run``: train artifact key or
    MLflow run id) against its training set. Returns the stage summary with a ``metrics`` dict and
    the ``fidelity`` status."""
    from pipeline.stages.generators import find_train_artifact

    return evaluate_stage(find_train_artifact(run, STAGE), cfg, run=run, refresh=refresh, progress=progress).to_json()


def evaluate_stage(
    train: Artifact, cfg: EvaluateConfig, *, run: str | None = None, refresh: bool = False, progress: bool = True
) -> StageResult:
    """Evaluate the generator of the train artifact ``train`` against its training set (the store
    it names, the table its manifest records); ``run``: how it was asked for (default its key)."""
    from pipeline.stages.generators import open_generator
    from pipeline.stages.tables import load_table
    from storage.store import open_store

    t0 = time.perf_counter()
    run = run or train.key
    chosen = selected_metrics(cfg.metrics, cfg.samples)  # UnknownName before anything is loaded
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    G, info = open_generator(train, map_location=device, stage=STAGE)
    dataset, train_key = info["dataset"], info["key"]
    upstream = {"train": train.key}

    fidelity_skip: str | None = None
    weights_path, weights_tag = None, "none"
    if needs_fidelity(cfg):
        try:
            weights_path, weights_tag = resolve_weights(cfg, progress=progress)
        except WeightsUnavailable as e:
            fidelity_skip, weights_tag = str(e), "unavailable"
            print(f"{STAGE}: {e}; IS/FID/KID skipped", file=sys.stderr)

    inputs = {"train": train.content_hash, "fidelity_weights": weights_tag}
    key = artifact_key(STAGE, cfg.key_params(), inputs, CODE_VERSION)
    base = {
        "stage": STAGE,
        "dataset": dataset,
        "key": key,
        "run": run,
        "train_key": train_key,
        "mlflow_run_id": info.get("mlflow_run_id"),
        "samples": cfg.samples,
    }

    art = None if refresh else open_artifact(STAGE, key)
    if (
        art is not None
        and fidelity_skip is None
        and needs_fidelity(cfg)
        and str(art.summary.get("fidelity")).startswith("skipped")
    ):
        art = None  # cached while the extractor's weights were unreachable; they are reachable now
    if art is not None:
        s = art.summary
        return StageResult.from_summary(
            {
                **base,
                "path": str(art.path),
                "cache_hit": True,
                "seconds": round(time.perf_counter() - t0, 3),
                "metrics": s.get("metrics", {}),
                "fidelity": s.get("fidelity"),
                "fidelity_reference_cache": s.get("fidelity_reference_cache"),
                "metrics_log": s.get("metrics_log"),
            },
            upstream=upstream,
            artifact=art,
        )

    store = open_store(dataset, verify=True, stage=STAGE)
    tables_art = _training_table(train, info)
    table = load_table(tables_art)
    image_size = int(info.get("image_size", store.size))
    if image_size != store.size:
        raise SubsampleError(
            STAGE,
            f"generator makes {image_size}px images but {dataset} holds {store.size}px images; "
            "features and bins are only comparable at the training resolution",
        )

    t_gen = time.perf_counter()
    images = generate_images(
        G, cfg.samples, int(info["z_dim"]), seed=cfg.seed, batch_size=cfg.batch_size, device=device, progress=progress
    )
    gen_seconds = round(time.perf_counter() - t_gen, 3)

    ctx = EvalContext(
        images=images,
        cfg=cfg,
        table=table,
        train_sharpness_mean=_train_sharpness_mean(table, tables_art, store)
        if SHARPNESS_DIFF in chosen
        else float("nan"),
        table_hash=tables_art.content_hash,
        reference=StoreDataset(store.images),
        reference_cache_name=f"subsample-{store.content_hash[:16]}-w{weights_tag}",
        weights_path=weights_path,
        fidelity_skip=fidelity_skip,
        cuda=device.type == "cuda",
        progress=progress,
    )
    metrics, timing = evaluate_images(ctx)
    timing = {"generate": gen_seconds, **timing}
    log_path = metrics_log_path(train_key)

    with build_artifact(
        STAGE, key, params=cfg.key_params(), inputs=inputs, code_version=CODE_VERSION, upstream=upstream
    ) as b:
        result = {
            "metrics": metrics,
            "fidelity": ctx.notes.get("fidelity"),
            "fidelity_reference_cache": ctx.notes.get("fidelity_reference_cache"),
        }
        (b.path / "metrics.json").write_text(json.dumps({**base, **result}, indent=2))
        files = [b.path / "metrics.json"]
        if cfg.grid:
            from pipeline.pictures import save, titled_grid

            save(
                titled_grid(
                    images[: cfg.grid],
                    samples_title(info, train.summary.get("epochs")),
                    lines=[f"{min(cfg.grid, len(images))} of the {cfg.samples} evaluated samples (z seed {cfg.seed})"],
                ),
                b.path / "samples.png",
            )
            files.append(b.path / "samples.png")
        b.summary = {**base, **result, "timing": timing, "metrics_log": str(log_path)}
        final_files = [artifact_path(STAGE, key) / f.name for f in files]  # where they land after the rename

    seconds = round(time.perf_counter() - t0, 3)
    line = {
        "evaluate_key": key,
        "run": run,
        "train_key": train_key,
        "dataset": dataset,
        "samples": cfg.samples,
        "params": cfg.key_params(),
        "fidelity": ctx.notes.get("fidelity"),
        "results": metrics,
        "timing": timing,
        "total_time": seconds,
        "timestamp": time.time(),
    }
    from storage.safe_io import make_dirs, open_write

    make_dirs(log_path.parent, what="metrics folder")
    with open_write(log_path, "a", what="metrics log") as f:  # inside the home, never through a link
        f.write(json.dumps(line) + "\n")

    mlflow_logged = False
    if info.get("mlflow_run_id"):
        mlflow_logged = _log_to_mlflow(
            info["mlflow_run_id"], metrics, final_files, key, int(train.summary.get("epochs") or 0)
        )

    return StageResult.from_summary(
        {
            **base,
            "path": str(final_files[0].parent),
            "cache_hit": False,
            "seconds": seconds,
            "metrics": metrics,
            "fidelity": ctx.notes.get("fidelity"),
            "fidelity_reference_cache": ctx.notes.get("fidelity_reference_cache"),
            "metrics_log": str(log_path),
            "mlflow_logged": mlflow_logged,
            "timing": timing,
        },
        upstream=upstream,
        artifact=open_artifact(STAGE, key, verify=False),
    )
