"""Measuring generated images: torch-fidelity's IS / FID / KID (extractor weights handled safely,
reference statistics cached per data set), the feature-space KL/JS against the training table and
the sharpness statistics, behind one metric registry; and the per-epoch evaluator training runs.

The evaluate stage (``pipeline.stages.evaluate``) and the train stage (``--eval-every``) both
measure through this module, so a curve's last point and the final evaluation are the same
computation. It reads a store's images and a table, never a stage's artifact.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.config import EvaluateConfig
from pipeline.extractor_weights import (
    _NETWORK_ERRORS,
    INCEPTION,
    WeightsUnavailable,
    cached_inception_weights,
    resolve_weights,
    weights_handover,
)
from pipeline.gan.trainer import to_uint8
from pipeline.metrics import (
    FEATURE_KL,
    FID,
    IS,
    KID,
    METRICS,
    Metric,
    count_tag,
    feature_kl,
    selected_metrics,
    sharpness_stats,
)
from pipeline.reference_cache import (
    fidelity_cache_root,
    load_reference_cache,
    reference_cache_file,
    save_reference_cache,
)
from pipeline.registry import Registry
from storage.errors import SubsampleError, brief

STAGE = "evaluate"


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


# --- IS / FID / KID -----------------------------------------------------------------------------
# The reference set's features and FID statistics are cached by this project, not torch-fidelity
# (whose cache is unpickled with weights_only=False): an .npz of plain arrays per data set and
# extractor, read with allow_pickle=False after its headers are checked. torch-fidelity's
# metric functions (IS, FID, KID) are called on the features exactly as calculate_metrics does.


@dataclass
class FidelityResult:
    metrics: dict[str, float]
    reference_cache: str  # 'hit', 'miss' or 'off'


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
    wanted: Collection[Metric] = (IS, FID, KID),
) -> FidelityResult:
    """IS of ``generated``, FID and KID between ``generated`` and ``reference`` (torch-fidelity's
    metric functions, ``cfg.feature_extractor``), those of them ``wanted``: one feature extraction
    of the generated images serves all three, the reference's is only needed for FID or KID. With
    ``reference_cache_name`` the reference's features and FID statistics are cached under
    ``cache_root`` and reused by later calls (whichever of FID and KID asked). Metric names follow
    :func:`count_tag`: ``is{N}``, ``is{N}_std``, ``fid{N}_train``, ``kid{N}_train``,
    ``kid{N}_train_std``. ``weights_path`` is loaded weights-only and handed over in memory."""
    import torch_fidelity
    from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_featuresdict_to_metric
    from torch_fidelity.metric_kid import kid_featuresdict_to_metric
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    fe = cfg.feature_extractor
    if fe not in FEATURE_EXTRACTORS_REGISTRY:
        raise SubsampleError(
            STAGE,
            f"feature extractor {fe!r} is not registered with torch-fidelity; "
            f"known: {sorted(FEATURE_EXTRACTORS_REGISTRY)}",
        )
    n, n_ref = len(generated), len(reference)
    kid_subset = min(cfg.kid_subset_size, n, n_ref)
    cls = FEATURE_EXTRACTORS_REGISTRY[fe]
    layer_isc = cfg.feature_layer_isc or cls.get_default_feature_layer_for_metric("isc")
    layer_fid = cfg.feature_layer_fid or cls.get_default_feature_layer_for_metric("fid")
    layer_kid = cfg.feature_layer_kid or cls.get_default_feature_layer_for_metric("kid")
    layers = {layer_isc, layer_fid, layer_kid}
    kwargs: dict[str, Any] = dict(  # torch-fidelity's metric options, as calculate_metrics passes them
        isc_splits=cfg.isc_splits,
        kid_subsets=cfg.kid_subsets,
        kid_subset_size=kid_subset,
        rng_seed=cfg.seed,
        verbose=progress,
    )
    fe_kwargs: dict[str, Any] = {"verbose": progress}
    weights_sha = None  # the sha256 of the weights bytes the extractor is built from: the cache's key
    if weights_path is not None:
        fe_kwargs["feature_extractor_weights_path"], weights_sha = weights_handover(weights_path, fe)
    cache_file = None
    if reference_cache_name is not None:
        cache_root = Path(cache_root) if cache_root is not None else fidelity_cache_root()
        cache_file = reference_cache_file(cache_root, reference_cache_name, fe, layers, weights_sha)
    with redirect_stdout(sys.stderr):  # torch-fidelity prints some notes on stdout; --json owns it
        try:
            extractor = create_feature_extractor(fe, sorted(layers), cuda=cuda, **fe_kwargs)
        except RuntimeError as e:  # load_state_dict: the weights do not fit the network
            raise SubsampleError(STAGE, f"weights {weights_path} do not fit extractor {fe!r} ({brief(e)})") from None

        def features(ds: Dataset) -> dict:
            # save_cpu_ram: datasets are read in this process (zarr 3 runs an asyncio thread that
            # must not be forked into DataLoader workers; the inputs are in memory or chunk-cached)
            return get_featuresdict_from_dataset(ds, extractor, cfg.batch_size, cuda, True, progress)

        f_gen = features(generated)
        cached = None
        if FID in wanted or KID in wanted:
            dims = {layer: int(f_gen[layer].shape[1]) for layer in layers}
            cached = load_reference_cache(cache_file, dims, layer_fid, n_ref) if cache_file is not None else None
            if cached is not None:
                f_ref, stats_ref = cached["features"], cached["fid"]
            else:
                f_ref = features(reference)
                stats_ref = fid_featuresdict_to_statistics(f_ref, layer_fid)
                if cache_file is not None:
                    save_reference_cache(cache_file, f_ref, stats_ref)
        else:
            cache_file = None  # IS alone reads no reference
        raw: dict[str, Any] = {}
        if IS in wanted:
            raw.update(isc_featuresdict_to_metric(f_gen, layer_isc, **kwargs))
        if FID in wanted:
            raw.update(fid_statistics_to_metric(fid_featuresdict_to_statistics(f_gen, layer_fid), stats_ref, progress))
        if KID in wanted:
            raw.update(kid_featuresdict_to_metric(f_gen, f_ref, layer_kid, **kwargs))
    values = {  # each metric's outputs (Metric.outputs order), from torch-fidelity's keys
        IS: (torch_fidelity.KEY_METRIC_ISC_MEAN, torch_fidelity.KEY_METRIC_ISC_STD),
        FID: (torch_fidelity.KEY_METRIC_FID,),
        KID: (torch_fidelity.KEY_METRIC_KID_MEAN, torch_fidelity.KEY_METRIC_KID_STD),
    }
    metrics = {name: raw[k] for m in (IS, FID, KID) if m in wanted for name, k in zip(m.outputs(n), values[m])}
    status = "off" if cache_file is None else ("hit" if cached is not None else "miss")
    return FidelityResult({k: float(v) for k, v in metrics.items()}, status)


# --- the metric registry ------------------------------------------------------------------------


@dataclass
class EvalContext:
    """Everything a metric family may read. ``images``: generated uint8 (N, S, S, 3)."""

    images: np.ndarray
    cfg: EvaluateConfig
    table: Any  # pipeline.stages.tables.Table
    train_sharpness_mean: float
    table_hash: str | None = None  # the tables artifact's content hash: caches the KL's floor
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


MetricFamily = Callable[[EvalContext, frozenset[Metric]], dict[str, float]]
"""``family(ctx, wanted) -> {name: value}``: the ``wanted`` metrics of one family (at least one),
with their companions, computing only what they need."""


METRIC_FAMILIES: Registry[MetricFamily] = Registry("metric family", stage=STAGE)


def register_metric_family(name: str) -> Callable[[MetricFamily], MetricFamily]:
    return METRIC_FAMILIES.register(name=name)


def needs_fidelity(cfg: EvaluateConfig) -> bool:
    """Will this evaluation run torch-fidelity (so it needs the extractor's weights)?"""
    return cfg.fidelity and any(m.family == "fidelity" for m in selected_metrics(cfg.metrics, cfg.samples))


@register_metric_family("fidelity")
def fidelity_metrics(ctx: EvalContext, wanted: frozenset[Metric]) -> dict[str, float]:
    """``is{N}``, ``fid{N}_train``, ``kid{N}_train`` (torch-fidelity, one feature extraction for
    all); skipped with a reason when disabled or when the extractor's weights are unavailable."""
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
            wanted=wanted,
        )
    except _NETWORK_ERRORS as e:  # an extractor other than Inception fetching its own weights
        reason = (
            f"{ctx.cfg.feature_extractor} weights not available offline ({getattr(e, 'reason', None) or e}); "
            "pass --weights PATH"
        )
        ctx.notes["fidelity"] = f"skipped: {reason}"
        print(f"{STAGE}: {reason}; IS/FID/KID skipped", file=sys.stderr)
        return {}
    ctx.notes["fidelity"] = "ok"
    ctx.notes["fidelity_reference_cache"] = res.reference_cache
    return res.metrics


@register_metric_family("feature")
def feature_space_metrics(ctx: EvalContext, wanted: frozenset[Metric]) -> dict[str, float]:
    """``feature_kl{N}_train`` = KL(f_G || f_X) with f_X smoothed (0.5 per cell), its floor at N
    samples ``feature_kl{N}_train_floor`` (mean over real samples of N, s.d. ``..._floor_sd``),
    ``feature_js{N}_train``, and ``feature_outside{N}_train``: the fraction of generated images in
    cells no training image occupies (spec §5). One binning serves all three; the floor (N real
    samples, several times) is computed only with the KL."""
    from kernels.features import compute_features
    from pipeline.floors import cached_feature_kl_floor

    values = compute_features(ctx.images, names=tuple(ctx.table.features))
    r = feature_kl(ctx.table.bin_values(values), ctx.table)
    t = ctx.tag
    out = {
        f"feature_kl{t}_train": r["kl"],
        f"feature_js{t}_train": r["js"],
        f"feature_outside{t}_train": r["empty_cells_hit"],
    }
    if FEATURE_KL in wanted:
        floor = cached_feature_kl_floor(ctx.table, ctx.table_hash, len(ctx.images))
        out[f"feature_kl{t}_train_floor"] = floor["mean"]
        if floor["sd"] is not None:
            out[f"feature_kl{t}_train_floor_sd"] = floor["sd"]
    return out


@register_metric_family("sharpness")
def sharpness_metrics(ctx: EvalContext, wanted: frozenset[Metric]) -> dict[str, float]:
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


# every metric is computed by a registered family
if {m.family for m in METRICS.values()} - set(METRIC_FAMILIES):
    raise ImportError(
        f"metrics of unregistered families: {sorted({m.family for m in METRICS.values()} - set(METRIC_FAMILIES))}"
    )


def evaluate_images(
    ctx: EvalContext, families: tuple[str, ...] | None = None
) -> tuple[dict[str, float], dict[str, float]]:
    """Compute the metrics ``ctx.cfg.metrics`` selects (None: all), those of ``families`` only
    when given -> ``(metrics, seconds per family)``. Each family runs once, for all its selected
    metrics, and only the selected metrics (and their companions) are returned."""
    n = len(ctx.images)
    chosen = [m for m in selected_metrics(ctx.cfg.metrics, n) if families is None or m.family in families]
    metrics: dict[str, float] = {}
    timing: dict[str, float] = {}
    for family, compute in METRIC_FAMILIES.items():
        wanted = frozenset(m for m in chosen if m.family == family)
        if not wanted:
            if family == "fidelity" and (families is None or family in families):
                ctx.notes["fidelity"] = "skipped: not among the metrics asked for (--metrics)"
            continue
        t0 = time.perf_counter()
        out = compute(ctx, wanted)
        keep = {name for m in wanted for name in m.outputs(n)}
        metrics.update({name: v for name, v in out.items() if name in keep})
        timing[family] = round(time.perf_counter() - t0, 3)
    return metrics, timing


# --- during training: per-epoch curves (``subsample train --eval-every E``) -----------------------


@contextmanager
def preserved_rng():
    """Restore the global random states (torch CPU and CUDA, numpy, random) on exit."""
    import random

    state = (
        torch.get_rng_state(),
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        np.random.get_state(),
        random.getstate(),
    )
    try:
        yield
    finally:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state_all(state[1])
        np.random.set_state(state[2])
        random.setstate(state[3])


@dataclass
class EpochEvaluator:
    """IS/FID/KID (torch-fidelity, the ``fidelity`` family above) and the feature-space KL/JS
    (the ``feature`` family) of ``cfg.samples`` images of the generator being trained, every
    ``every`` epochs and after the last. The same machinery and names as ``subsample evaluate``
    (``fid10k_train``, ``feature_kl10k_train``, ...), with the same latent seed, so the last point
    of a curve is the final evaluation's figure when the sample counts agree. The reference
    statistics are cached once per data set and extractor (``fidelity-cache/``), shared with the
    evaluate stage.

    It cannot change training: z comes from a CPU ``torch.Generator`` of its own, G runs in eval
    mode under ``no_grad`` (batch-norm statistics untouched) and is put back in train mode, and
    the global RNGs (torch CPU and CUDA, numpy, random) are restored afterwards: torch-fidelity's
    DataLoader draws its base seed from torch's global generator, which would otherwise shift
    every later draw of the training run."""

    every: int
    cfg: EvaluateConfig
    table: Any
    z_dim: int
    device: torch.device
    reference: Dataset | None = None
    reference_cache_name: str | None = None
    weights_path: str | None = None
    fidelity_skip: str | None = None

    def due(self, epoch: int, last: bool) -> bool:
        """Evaluate after (1-based) ``epoch``?"""
        return epoch % self.every == 0 or last

    def __call__(self, G: torch.nn.Module) -> dict[str, float]:
        with preserved_rng():
            return self._evaluate(G)

    def _evaluate(self, G: torch.nn.Module) -> dict[str, float]:
        images = generate_images(
            G, self.cfg.samples, self.z_dim, seed=self.cfg.seed, batch_size=self.cfg.batch_size, device=self.device
        )
        ctx = EvalContext(
            images=images,
            cfg=self.cfg,
            table=self.table,
            train_sharpness_mean=0.0,
            reference=self.reference,
            reference_cache_name=self.reference_cache_name,
            weights_path=self.weights_path,
            fidelity_skip=self.fidelity_skip,
            cuda=self.device.type == "cuda",
        )
        metrics, _ = evaluate_images(ctx, families=("fidelity", "feature"))
        return metrics


def epoch_evaluator(train_cfg: Any, store: Any, table: Any, z_dim: int, device: torch.device) -> EpochEvaluator | None:
    """The evaluator ``subsample train`` runs after epochs, or None when off. ``eval_every``:
    0 off; an integer, every that many epochs; None (auto) every ``max(1, epochs // 20)`` epochs
    when training on CUDA with the extractor's weights on disk (``eval_weights``, or Inception in
    the torch hub cache; no download is tried), else off. When asked for explicitly but the
    weights cannot be had, IS/FID/KID are skipped with one line on stderr and the feature-space
    metrics are still logged."""
    every = train_cfg.eval_every
    inception = train_cfg.eval_feature_extractor == INCEPTION
    if every is None:
        local = train_cfg.eval_weights is not None or (inception and cached_inception_weights() is not None)
        if device.type != "cuda" or not local:
            return None
        every = max(1, train_cfg.epochs // 20)
    if every == 0:
        return None
    n = train_cfg.eval_samples
    cfg = EvaluateConfig(
        samples=n,
        seed=0,
        feature_extractor=train_cfg.eval_feature_extractor,
        weights=train_cfg.eval_weights,
        isc_splits=min(10, n),
        device=str(device),
    )
    skip, weights_path, tag = None, None, "none"
    try:
        weights_path, tag = resolve_weights(cfg)
    except WeightsUnavailable as e:
        skip = str(e)
        print(
            f"train: per-epoch IS/FID/KID skipped: {e} (for training: --set eval_weights=PATH); "
            "feature KL is still evaluated",
            file=sys.stderr,
        )
    return EpochEvaluator(
        every=every,
        cfg=cfg,
        table=table,
        z_dim=z_dim,
        device=device,
        reference=StoreDataset(store.images),
        reference_cache_name=f"subsample-{store.content_hash[:16]}-w{tag}",
        weights_path=weights_path,
        fidelity_skip=skip,
    )
