"""The evaluation stage (spec §5): ``subsample evaluate RUN --samples N``.

N images are generated from a trained generator with a fixed seed and compared with the training
set it was trained on:

- **IS, FID, KID** with torch-fidelity (one call, shared features), the training set streamed from
  the zarr store; its reference features and FID statistics are cached per data set under
  ``$SUBSAMPLE_HOME/fidelity-cache`` (named by the store's content hash and the extractor weights'
  hash), so a second evaluation against the same data set only extracts the generated images.
- **Feature-space** ``KL(f_G || f_X)`` and JS on the training table's bins
  (:func:`pipeline.metrics.feature_kl`; generated features binned with the *training* scale).
- **Sharpness**: mean energy-gradient sharpness of the generated images and its difference from
  the training set's (seed paper 004).

Metrics come from a small registry of metric families (stylegan2-ada's ``metric_main`` style) and
their names carry the protocol: ``fid10k_train`` is FID between 10,000 generated images and the
full training set; ``is10k`` the Inception Score of those 10,000 images. Results go to the
artifact's ``metrics.json``, one JSON line per computed evaluation appended to
``$SUBSAMPLE_HOME/metrics/<train key>.jsonl`` (with timing), and the training run's MLflow run as
``eval/<name>``.

Without network access the Inception weights cannot be fetched: the stage says so in one line,
skips IS/FID/KID and still reports the feature-space metrics (``fidelity: "skipped: ..."``);
``--weights PATH`` points torch-fidelity at a local copy.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import socket
import sys
import time
import urllib.error
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.config import EvaluateConfig, FeaturesConfig, TablesConfig
from pipeline.metrics import feature_kl, sharpness_stats
from storage.artifacts import artifact_key, artifact_path, build_artifact, open_artifact
from storage.errors import SubsampleError
from storage.paths import home

STAGE = "evaluate"
CODE_VERSION = "1"
INCEPTION = "inception-v3-compat"


def count_tag(n: int) -> str:
    """stylegan2-ada's count notation in metric names: 50000 -> '50k', 1234 -> '1234'."""
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def fidelity_cache_root() -> Path:
    return home() / "fidelity-cache"


def metrics_log_path(train_key: str) -> Path:
    """One JSON line per computed evaluation of one training run (stylegan2-ada's metric-*.jsonl)."""
    return home() / "metrics" / f"{train_key}.jsonl"


# --- torch-fidelity inputs: Datasets yielding uint8 3×H×W tensors --------------------------------


class ImageArrayDataset(Dataset):
    """In-memory uint8 ``(N, H, W, 3)`` images as torch-fidelity input (uint8 ``3×H×W``)."""

    def __init__(self, images: np.ndarray):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(f"expected uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.images[i].transpose(2, 0, 1)))


class StoreDataset(Dataset):
    """A data set store's images as torch-fidelity input, read a whole zarr chunk at a time:
    torch-fidelity asks for indices in order, so one cached chunk serves a chunk's worth of reads
    instead of decompressing the chunk once per image."""

    def __init__(self, images: Any):
        self.images = images  # zarr array (N, S, S, 3) uint8
        self.step = int(images.chunks[0])
        self._start = -1
        self._chunk: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < len(self):
            raise IndexError(i)
        start = (i // self.step) * self.step
        if start != self._start:
            self._chunk = np.asarray(self.images[start : start + self.step])
            self._start = start
        return torch.from_numpy(np.ascontiguousarray(self._chunk[i - start].transpose(2, 0, 1)))


# --- generation ---------------------------------------------------------------------------------


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Generator output ``(N, 3, S, S)`` in [-1, 1] -> uint8 ``(N, S, S, 3)``."""
    x = ((x.float() + 1.0) * 127.5).round().clamp_(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def generate_images(
    G: torch.nn.Module,
    n: int,
    z_dim: int,
    *,
    seed: int = 0,
    batch_size: int = 250,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> np.ndarray:
    """``n`` images from ``G`` with latent codes ``z ~ N(0, I)`` drawn on the CPU from ``seed`` (so
    the images do not depend on the batch size or the device), generated in batches on ``device``
    (default: the generator's). Returns uint8 ``(n, S, S, 3)``."""
    from tqdm import tqdm

    if device is None:
        p = next(G.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    was_training = G.training
    G.eval()
    z = torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))
    out: list[np.ndarray] = []
    try:
        with tqdm(total=n, desc="evaluate: generate", unit="img", disable=not progress, file=sys.stderr) as bar:
            for start in range(0, n, batch_size):
                out.append(to_uint8(G(z[start : start + batch_size].to(device))))
                bar.update(len(out[-1]))
    finally:
        G.train(was_training)
    return np.concatenate(out)


def image_grid(images: np.ndarray, columns: int | None = None) -> np.ndarray:
    """uint8 ``(k, S, S, 3)`` -> one uint8 grid image, 2-pixel black gutters."""
    k, s = len(images), images.shape[1]
    cols = columns or int(np.ceil(np.sqrt(k)))
    rows = int(np.ceil(k / cols))
    pad = 2
    grid = np.zeros((rows * (s + pad) + pad, cols * (s + pad) + pad, 3), np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[pad + r * (s + pad) : pad + r * (s + pad) + s, pad + c * (s + pad) : pad + c * (s + pad) + s] = img
    return grid


# --- feature-extractor weights ------------------------------------------------------------------


class WeightsUnavailable(Exception):
    """The feature extractor's weights are neither local nor downloadable; ``str`` is the reason."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout)


def inception_weights(*, timeout_s: float = 20.0, progress: bool = False) -> Path:
    """Path of torch-fidelity's Inception weights in the torch hub cache, downloading them if
    missing (socket timeout ``timeout_s``, so a dead network fails instead of hanging). Raises
    :class:`WeightsUnavailable` with the one-line reason when that fails."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    fname = URL_INCEPTION_V3.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / fname
    if cached.is_file():
        return cached
    old = socket.getdefaulttimeout()
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        socket.setdefaulttimeout(timeout_s)
        with redirect_stdout(sys.stderr):  # torch.hub announces downloads on stdout
            torch.hub.download_url_to_file(URL_INCEPTION_V3, str(cached), progress=progress)
    except (*_NETWORK_ERRORS, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise WeightsUnavailable(
            f"Inception weights not available offline (tried to download {fname} into {cached.parent}: {reason}); "
            "pass --weights PATH to a local copy"
        ) from None
    finally:
        socket.setdefaulttimeout(old)
    return cached


def check_inception_weights(path: Path) -> None:
    """Refuse a file that is not torch-fidelity's Inception state dict (rather than letting a
    load_state_dict traceback surface in the middle of the evaluation)."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        ok = isinstance(sd, dict) and "Conv2d_1a_3x3.conv.weight" in sd and tuple(sd["fc.weight"].shape)[0] == 1008
    except Exception:
        ok = False
    if not ok:
        raise SubsampleError(
            STAGE, f"--weights {path} is not torch-fidelity's Inception state dict (weights-inception-2015-12-05-6726825d.pth)"
        )


def resolve_weights(cfg: EvaluateConfig, *, progress: bool = False) -> tuple[str | None, str]:
    """``(weights path for torch-fidelity or None, weights tag)``. The tag (sha256 prefix of the
    weights file, or ``default`` for an extractor that fetches its own) names the reference cache
    and enters the artifact key, so other weights never reuse cached statistics."""
    if cfg.weights is not None:
        path = Path(cfg.weights).expanduser()
        if not path.is_file():
            raise SubsampleError(STAGE, f"--weights {path}: no such file; pass a local copy of the extractor's weights")
        if cfg.feature_extractor == INCEPTION:
            check_inception_weights(path)
        return str(path.absolute()), sha256_file(path)[:16]
    if cfg.feature_extractor == INCEPTION:
        path = inception_weights(timeout_s=cfg.download_timeout_s, progress=progress)
        return str(path), sha256_file(path)[:16]
    return None, "default"


# --- IS / FID / KID -----------------------------------------------------------------------------


@dataclass
class FidelityResult:
    metrics: dict[str, float]
    reference_cache: str  # 'hit', 'miss' or 'off'


def _reference_cache_files(cache_root: Path, cache_name: str, extractor: str, layers: set[str]) -> list[Path]:
    # torch-fidelity's own naming: <input cache name>-<extractor>-features-<layer>.pt
    return [cache_root / f"{cache_name}-{extractor}-features-{layer}.pt" for layer in sorted(layers)]


def fidelity_scores(
    generated: Dataset,
    reference: Dataset,
    cfg: EvaluateConfig,
    *,
    weights_path: str | None = None,
    reference_cache_name: str | None = None,
    cache_root: str | Path | None = None,
    cuda: bool = False,
    progress: bool = False,
) -> FidelityResult:
    """IS of ``generated``, FID and KID between ``generated`` and ``reference`` (torch-fidelity,
    ``cfg.feature_extractor``). With ``reference_cache_name`` the reference's features and FID
    statistics are cached under ``cache_root`` and reused by later calls. Metric names follow
    :func:`count_tag`: ``is{N}``, ``is{N}_std``, ``fid{N}_train``, ``kid{N}_train``, ``kid{N}_train_std``."""
    import torch_fidelity
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    fe = cfg.feature_extractor
    if fe not in FEATURE_EXTRACTORS_REGISTRY:
        raise SubsampleError(
            STAGE, f"feature extractor {fe!r} is not registered with torch-fidelity; known: {sorted(FEATURE_EXTRACTORS_REGISTRY)}"
        )
    n, n_ref = len(generated), len(reference)
    kid_subset = min(cfg.kid_subset_size, n, n_ref)
    cls = FEATURE_EXTRACTORS_REGISTRY[fe]
    layers = {
        cfg.feature_layer_isc or cls.get_default_feature_layer_for_metric("isc"),
        cfg.feature_layer_fid or cls.get_default_feature_layer_for_metric("fid"),
        cfg.feature_layer_kid or cls.get_default_feature_layer_for_metric("kid"),
    }
    cache = reference_cache_name is not None
    cache_root = Path(cache_root) if cache_root is not None else fidelity_cache_root()
    if cache:
        cache_root.mkdir(parents=True, exist_ok=True)
        files = _reference_cache_files(cache_root, reference_cache_name, fe, layers)
        reference_cache = "hit" if all(f.is_file() for f in files) else "miss"
    else:
        reference_cache = "off"
    kwargs: dict[str, Any] = dict(
        input1=generated,
        input2=reference,
        isc=True,
        fid=True,
        kid=True,
        feature_extractor=fe,
        feature_layer_isc=cfg.feature_layer_isc,
        feature_layer_fid=cfg.feature_layer_fid,
        feature_layer_kid=cfg.feature_layer_kid,
        feature_extractor_weights_path=weights_path,
        isc_splits=cfg.isc_splits,
        kid_subsets=cfg.kid_subsets,
        kid_subset_size=kid_subset,
        batch_size=cfg.batch_size,
        cuda=cuda,
        cache=cache,
        cache_root=str(cache_root),
        input2_cache_name=reference_cache_name,
        rng_seed=cfg.seed,
        # Datasets are read in this process: zarr 3 runs an asyncio thread that must not be forked
        # into DataLoader workers, and the inputs are in memory or chunk-cached anyway.
        save_cpu_ram=True,
        verbose=progress,
    )
    with redirect_stdout(sys.stderr):  # torch-fidelity prints some notes on stdout; --json owns it
        raw = torch_fidelity.calculate_metrics(**kwargs)
    t = count_tag(n)
    metrics = {
        f"is{t}": raw[torch_fidelity.KEY_METRIC_ISC_MEAN],
        f"is{t}_std": raw[torch_fidelity.KEY_METRIC_ISC_STD],
        f"fid{t}_train": raw[torch_fidelity.KEY_METRIC_FID],
        f"kid{t}_train": raw[torch_fidelity.KEY_METRIC_KID_MEAN],
        f"kid{t}_train_std": raw[torch_fidelity.KEY_METRIC_KID_STD],
    }
    return FidelityResult({k: float(v) for k, v in metrics.items()}, reference_cache)


# --- the metric registry ------------------------------------------------------------------------


@dataclass
class EvalContext:
    """Everything a metric family may read. ``images``: generated uint8 (N, S, S, 3)."""

    images: np.ndarray
    cfg: EvaluateConfig
    table: Any  # pipeline.tables.Table
    train_sharpness_mean: float
    reference: Dataset | None = None  # training images for torch-fidelity
    reference_cache_name: str | None = None
    weights_path: str | None = None
    fidelity_skip: str | None = None  # reason IS/FID/KID cannot run, or None
    cuda: bool = False
    progress: bool = False
    notes: dict[str, Any] = field(default_factory=dict)  # family -> status for the summary

    @property
    def tag(self) -> str:
        return count_tag(len(self.images))


MetricFamily = Callable[[EvalContext], dict[str, float]]
METRIC_FAMILIES: dict[str, MetricFamily] = {}


def register_metric_family(name: str) -> Callable[[MetricFamily], MetricFamily]:
    def deco(fn: MetricFamily) -> MetricFamily:
        METRIC_FAMILIES[name] = fn
        return fn

    return deco


@register_metric_family("fidelity")
def fidelity_metrics(ctx: EvalContext) -> dict[str, float]:
    """``is{N}``, ``fid{N}_train``, ``kid{N}_train`` (torch-fidelity); skipped with a reason when
    disabled or when the extractor's weights are unavailable."""
    if not ctx.cfg.fidelity:
        ctx.notes["fidelity"] = "skipped: disabled (--no-fidelity, the default on a CPU)"
        return {}
    if ctx.fidelity_skip is not None:
        ctx.notes["fidelity"] = f"skipped: {ctx.fidelity_skip}"
        return {}
    if ctx.reference is None:
        raise ValueError("fidelity metrics need the training images (ctx.reference)")
    try:
        res = fidelity_scores(
            ImageArrayDataset(ctx.images),
            ctx.reference,
            ctx.cfg,
            weights_path=ctx.weights_path,
            reference_cache_name=ctx.reference_cache_name,
            cuda=ctx.cuda,
            progress=ctx.progress,
        )
    except _NETWORK_ERRORS as e:  # an extractor other than Inception fetching its own weights
        reason = f"{ctx.cfg.feature_extractor} weights not available offline ({getattr(e, 'reason', None) or e}); pass --weights PATH"
        ctx.notes["fidelity"] = f"skipped: {reason}"
        print(f"{STAGE}: {reason}; IS/FID/KID skipped", file=sys.stderr)
        return {}
    ctx.notes["fidelity"] = "ok"
    ctx.notes["fidelity_reference_cache"] = res.reference_cache
    return res.metrics


@register_metric_family("feature")
def feature_space_metrics(ctx: EvalContext) -> dict[str, float]:
    """``feature_kl{N}_train`` = KL(f_G || f_X) with f_X smoothed (0.5 per cell), ``feature_js{N}_train``,
    and ``feature_outside{N}_train``: the fraction of generated images in cells no training image
    occupies (spec §5)."""
    from kernels.features import compute_features

    values = compute_features(ctx.images, names=tuple(ctx.table.features))
    r = feature_kl(ctx.table.bin_values(values), ctx.table)
    t = ctx.tag
    return {
        f"feature_kl{t}_train": r["kl"],
        f"feature_js{t}_train": r["js"],
        f"feature_outside{t}_train": r["empty_cells_hit"],
    }


@register_metric_family("sharpness")
def sharpness_metrics(ctx: EvalContext) -> dict[str, float]:
    """``sharpness_mean{N}`` and ``sharpness_diff{N}_train`` (generated − training mean, Eq. 15)."""
    from kernels.features import compute_features

    s = compute_features(ctx.images, names=("sharpness",))[:, 0]
    r = sharpness_stats(s, ctx.train_sharpness_mean)
    t = ctx.tag
    return {
        f"sharpness_mean{t}": r["sharpness_mean"],
        "sharpness_mean_train": r["sharpness_train_mean"],
        f"sharpness_diff{t}_train": r["sharpness_diff"],
    }


def evaluate_images(ctx: EvalContext, families: tuple[str, ...] | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """Run the metric families on ``ctx`` -> ``(metrics, seconds per family)``."""
    metrics: dict[str, float] = {}
    timing: dict[str, float] = {}
    for name in families or tuple(METRIC_FAMILIES):
        t0 = time.perf_counter()
        metrics.update(METRIC_FAMILIES[name](ctx))
        timing[name] = round(time.perf_counter() - t0, 3)
    return metrics, timing


# --- the stage ----------------------------------------------------------------------------------


def _train_sharpness_mean(dataset: str, features_cfg: FeaturesConfig, store: Any) -> float:
    """The training set's mean sharpness: from the features artifact when it has the sharpness
    column, else computed from the store chunk by chunk."""
    from kernels.features import compute_features
    from pipeline.features import features_artifact, load_features

    if "sharpness" in features_cfg.features:
        values, names = load_features(features_artifact(dataset, features_cfg, needed_by=STAGE))
        return float(values[:, list(names).index("sharpness")].mean())
    total, step = 0.0, int(store.images.chunks[0])
    for start in range(0, store.n, step):
        total += float(compute_features(np.asarray(store.images[start : start + step]), names=("sharpness",)).sum())
    return total / store.n


def _log_to_mlflow(run_id: str, metrics: dict[str, float], files: list[Path], key: str, step: int) -> bool:
    """Log ``eval/<name>`` metrics, an ``eval/key`` tag and the artifact's files (under
    ``eval/<key>/``) to the training run. Returns False (with a note on stderr) when that fails."""
    from mlflow.exceptions import MlflowException

    from storage import tracking

    try:
        tracking.log_metrics(run_id, {f"eval/{k}": v for k, v in metrics.items()}, step)
        tracking.set_tags(run_id, {"eval/key": key})
        tracking.log_artifacts(run_id, [(f, f"eval/{key}") for f in files])
    except MlflowException as e:
        print(f"{STAGE}: could not log to MLflow run {run_id} ({e.message}); metrics are in the artifact", file=sys.stderr)
        return False
    return True


def run_evaluate(run: str, cfg: EvaluateConfig, *, refresh: bool = False, progress: bool = True) -> dict:
    """Evaluate a trained generator (``run``: train artifact key or MLflow run id) against its
    training set. Returns the stage summary with a ``metrics`` dict and the ``fidelity`` status."""
    from pipeline.tables import load_table, tables_artifact
    from pipeline.train import load_generator
    from storage.store import open_store

    t0 = time.perf_counter()
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    G, info = load_generator(run, map_location=device)
    dataset, train_key = info["dataset"], info["key"]
    train = open_artifact("train", train_key, verify=False)
    if train is None:
        raise SubsampleError(STAGE, f"train artifact {train_key} for {run!r} is missing; re-run `subsample train {dataset}`")

    fidelity_skip: str | None = None
    weights_path, weights_tag = None, "none"
    if cfg.fidelity:
        try:
            weights_path, weights_tag = resolve_weights(cfg, progress=progress)
        except WeightsUnavailable as e:
            fidelity_skip, weights_tag = str(e), "unavailable"
            print(f"{STAGE}: {e}; IS/FID/KID skipped", file=sys.stderr)

    inputs = {"train": train.content_hash, "fidelity_weights": weights_tag}
    key = artifact_key(STAGE, cfg.key_params(), inputs, CODE_VERSION)
    base = {"stage": STAGE, "dataset": dataset, "key": key, "run": run, "train_key": train_key,
            "mlflow_run_id": info.get("mlflow_run_id"), "samples": cfg.samples}

    art = None if refresh else open_artifact(STAGE, key)
    if art is not None and fidelity_skip is None and cfg.fidelity and str(art.summary.get("fidelity")).startswith("skipped"):
        art = None  # cached while the extractor's weights were unreachable; they are reachable now
    if art is not None:
        s = art.summary
        return {**base, "path": str(art.path), "cache_hit": True, "seconds": round(time.perf_counter() - t0, 3),
                "metrics": s.get("metrics", {}), "fidelity": s.get("fidelity"),
                "fidelity_reference_cache": s.get("fidelity_reference_cache"), "metrics_log": s.get("metrics_log")}

    store = open_store(dataset)
    features_cfg = FeaturesConfig(**info["features"])
    table = load_table(tables_artifact(dataset, TablesConfig(**info["tables"]), features_cfg, needed_by=STAGE))
    image_size = int(info.get("image_size", store.size))
    if image_size != store.size:
        raise SubsampleError(
            STAGE, f"generator makes {image_size}px images but {dataset} holds {store.size}px images; "
            "features and bins are only comparable at the training resolution"
        )

    t_gen = time.perf_counter()
    images = generate_images(G, cfg.samples, int(info["z_dim"]), seed=cfg.seed, batch_size=cfg.batch_size,
                             device=device, progress=progress)
    gen_seconds = round(time.perf_counter() - t_gen, 3)

    ctx = EvalContext(
        images=images,
        cfg=cfg,
        table=table,
        train_sharpness_mean=_train_sharpness_mean(dataset, features_cfg, store),
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

    with build_artifact(STAGE, key, params=cfg.key_params(), inputs=inputs, code_version=CODE_VERSION) as b:
        result = {"metrics": metrics, "fidelity": ctx.notes.get("fidelity"),
                  "fidelity_reference_cache": ctx.notes.get("fidelity_reference_cache")}
        (b.path / "metrics.json").write_text(json.dumps({**base, **result}, indent=2))
        files = [b.path / "metrics.json"]
        if cfg.grid:
            from PIL import Image

            Image.fromarray(image_grid(images[: cfg.grid])).save(b.path / "samples.png")
            files.append(b.path / "samples.png")
        b.summary = {**base, **result, "timing": timing, "metrics_log": str(log_path)}
        final_files = [artifact_path(STAGE, key) / f.name for f in files]  # where they land after the rename

    seconds = round(time.perf_counter() - t0, 3)
    line = {"evaluate_key": key, "run": run, "train_key": train_key, "dataset": dataset, "samples": cfg.samples,
            "params": cfg.key_params(), "fidelity": ctx.notes.get("fidelity"), "results": metrics,
            "timing": timing, "total_time": seconds, "timestamp": time.time()}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as f:
        f.write(json.dumps(line) + "\n")

    mlflow_logged = False
    if info.get("mlflow_run_id"):
        mlflow_logged = _log_to_mlflow(info["mlflow_run_id"], metrics, final_files, key, int(train.summary.get("epochs") or 0))

    return {**base, "path": str(final_files[0].parent), "cache_hit": False, "seconds": seconds,
            "metrics": metrics, "fidelity": ctx.notes.get("fidelity"),
            "fidelity_reference_cache": ctx.notes.get("fidelity_reference_cache"),
            "metrics_log": str(log_path), "mlflow_logged": mlflow_logged, "timing": timing}
