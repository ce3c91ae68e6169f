"""``subsample.batch_sampler(data, batch_size=…, strategy=…, seed=…)``: the pipeline's batches for
any PyTorch loop, with no pipeline around it.

It computes the features of ``data`` (:mod:`subsample.extract`), bins them into the joint table
exactly as the tables stage does (:func:`pipeline.stages.tables.build_table`) and returns a
:class:`BatchSampler`: the pipeline's :class:`~pipeline.data.sampler.SubsampleBatchSampler` over
that table (``set_epoch``, ``__len__``, ``num_replicas``/``rank`` from the torch.distributed
world, picklable), plus :meth:`BatchSampler.diagnostics`, the batches stage's diagnostics of an
epoch. The same images, bins and seed give exactly the batches ``subsample batches`` stores.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from pipeline.config import BatchesConfig, FeaturesConfig, TablesConfig, validation_message
from pipeline.data.sampler import SubsampleBatchSampler, _default_replicas
from pipeline.stages.tables import Table, build_table
from storage.errors import SubsampleError
from subsample import cache as _cache
from subsample import extract
from subsample.images import STAGE, VALUE_RANGES


class BatchSampler(SubsampleBatchSampler):
    """The pipeline's batch sampler over a table built from ``data`` (see :func:`batch_sampler`).

    Attributes beyond the pipeline's: ``table`` (the joint table: ``counts``, ``cells``, ``maxima``),
    ``features`` (float64 n × F, the values behind it), ``files`` (a folder: the image files in index
    order, relative to it; else None), ``quarantine`` (a folder: the files left out and why),
    ``cache_hit`` (features read from the cache)."""

    features: np.ndarray
    files: list[str] | None
    quarantine: list[dict]
    cache_hit: bool
    value_range: tuple[float, float] | None

    def diagnostics(self, epoch: int | None = None) -> dict[str, Any]:
        """The batches stage's diagnostics of epoch ``epoch`` (default: the current one), for the
        whole batches (every rank's share together): ``coverage`` (distinct images drawn / n),
        ``kl_mean``, ``kl_sd``, ``kl_min``, ``kl_max`` (Eq. 10 per batch on the table's cells,
        natural log; sd is the population s.d., as the paper's Tables 1-2), ``never_drawn`` (how
        many images no batch of the epoch holds) and ``floor`` / ``floor_sd``: the same KL for a
        uniformly random sample of B images (mean and s.d. over 20 samples), i.e. what a batch drawn
        from the data set by chance scores, the value the batches stage reports as ``kl_random_sample``.
        Random batches sit at the floor; constructed and dealt batches go below it because they
        are built to match this very histogram."""
        from pipeline.stages.batches import diagnose_epoch, kl_batch_vs_dataset, random_sample_reference

        e = self.epoch if epoch is None else int(epoch)
        d = diagnose_epoch(self.table, self.epoch_batches(e))
        if getattr(self, "_floor", None) is None:
            self._floor = random_sample_reference(
                lambda s: kl_batch_vs_dataset(self.table, s), int(self.table.n), self.batch_size
            )
        return {
            "epoch": e,
            "strategy": self.strategy,
            "batch_size": self.batch_size,
            "batches": len(self),
            "n": int(self.table.n),
            "coverage": d["coverage"],
            "kl_mean": d["kl"]["mean"],
            "kl_sd": d["kl"]["std"],
            "kl_min": d["kl"]["min"],
            "kl_max": d["kl"]["max"],
            "never_drawn": d["n_never_drawn"],
            "floor": self._floor["mean"],
            "floor_sd": self._floor["sd"],
        }


def _configs(batch_size: int, strategy: str, seed: int, bins, features, top_k: int, fill: str, topup: str):
    """The batches, tables and features stages' own configs: the same checks and messages."""
    try:
        b = BatchesConfig(batch_size=batch_size, strategy=strategy, seed=seed, top_k=top_k, fill=fill, topup=topup)
        t = TablesConfig(bins=tuple(bins))
        f = FeaturesConfig(features=tuple(features))
    except ValidationError as e:
        raise SubsampleError(STAGE, validation_message(e)) from None
    if len(t.bins) != len(f.features):
        raise SubsampleError(STAGE, f"bins gives {len(t.bins)} counts for {len(f.features)} features {f.features}")
    return b, t, f


def _kind(data: Any) -> str:
    if isinstance(data, (str, os.PathLike)):
        return "path"
    if isinstance(data, np.ndarray) or type(data).__name__ == "Tensor" or hasattr(data, "__array_interface__"):
        return "array"
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return "dataset"
    raise SubsampleError(
        STAGE,
        f"data is a {type(data).__name__}: give a map-style torch Dataset (with len()), a uint8 N×H×W×3 array "
        "or the path of a folder of images",
    )


def _n_images(data: Any, kind: str, path_source: Any) -> int:
    if kind == "path":
        return int(path_source[0].n_items)
    return len(data)


def batch_sampler(
    data: Any,
    *,
    batch_size: int,
    strategy: str = "constructed",
    seed: int = 0,
    bins: tuple[int, ...] = TablesConfig().bins,
    features: tuple[str, ...] = FeaturesConfig().features,
    top_k: int = 8,
    fill: str = "topk",
    topup: str = "topk",
    size: int | None = None,
    crop: int | None = None,
    value_range: tuple[float, float] | None = None,
    num_replicas: int | None = None,
    rank: int | None = None,
    cache: bool | str | os.PathLike = False,
    progress: bool = True,
    num_workers: int | None = None,
    chunk: int = 256,
) -> BatchSampler:
    """A batch sampler of ``data``'s distribution-matched batches (docs/library.md).

    ``data``: a map-style ``torch.utils.data.Dataset`` whose items are an image or a tuple whose
    first element is one (:mod:`subsample.images` lists the kinds), a uint8 array N×H×W×3, or the
    path of a folder of images (or any source ``subsample ingest`` reads). Batch options as the
    batches stage has them; ``size``/``crop``: ingest's policy (centre crop, Lanczos to S×S) applied
    before the features, else the images as they are (all one size); ``value_range``: of float
    images, default [-1, 1] when a probed item has a negative value, else [0, 1]; ``cache``: False,
    True (an artifact under ``$SUBSAMPLE_HOME`` keyed by content) or the path of a ``.npz``;
    ``num_workers``/``chunk``: the DataLoader that reads a Dataset or a folder for the features."""
    cfg, tables_cfg, features_cfg = _configs(batch_size, strategy, seed, bins, features, top_k, fill, topup)
    replicas, rank = _default_replicas(num_replicas, rank)
    if batch_size % replicas:
        raise SubsampleError(
            STAGE,
            f"batch size {batch_size} is not divisible by the {replicas} ranks (num_replicas={replicas}); "
            f"choose a multiple of {replicas}",
        )
    if value_range is not None and tuple(value_range) not in VALUE_RANGES:
        raise SubsampleError(STAGE, f"value_range must be (0, 1) or (-1, 1), got {value_range}")
    policy = extract.policy_for(size, crop)
    kind = _kind(data)
    source = extract.open_path(Path(data).expanduser().absolute(), size, crop) if kind == "path" else None
    arr = extract.check_array(data) if kind == "array" else None
    n = len(arr) if arr is not None else _n_images(data, kind, source)
    if n < batch_size:
        raise SubsampleError(
            STAGE, f"{n} images are fewer than one batch of {batch_size}; choose batch_size <= {n} (and > 0)"
        )
    names = tuple(features_cfg.features)
    workers = extract.default_workers(num_workers)

    def compute() -> extract.Extracted:
        if kind == "array":
            return extract.array_features(arr, names, policy=policy, chunk=chunk, progress=progress)
        if kind == "path":
            return extract.path_features(
                Path(data), names, size=size, crop=crop, num_workers=workers, progress=progress, src_cfg=source
            )
        return extract.dataset_features(
            data,
            names,
            policy=policy,
            value_range=value_range,
            num_workers=workers,
            chunk=chunk,
            progress=progress,
        )

    if cache is False or cache is None:
        got, hit = compute(), False
    else:
        if kind == "array":
            fp = _cache.array_fingerprint(arr)
        elif kind == "path":
            fp = source[0].fingerprint()
        else:
            fp = _cache.dataset_fingerprint(data, value_range)
        params = {"kind": kind, "size": size, "crop": crop, "features": list(names), "value_range": value_range}
        got, hit = _cache.cached(cache, _cache.cache_key(params, fp), len(names), compute)
    if len(got.values) < batch_size:  # a folder whose files were quarantined
        raise SubsampleError(
            STAGE,
            f"{len(got.values)} readable images are fewer than one batch of {batch_size} "
            f"({len(got.quarantine)} files left out: {got.quarantine[:1]})",
        )
    table: Table = build_table(got.values, names, tables_cfg.bins)
    sampler = BatchSampler(
        table,
        batch_size=cfg.batch_size,
        strategy=cfg.strategy,
        seed=cfg.seed,
        top_k=cfg.top_k,
        fill=cfg.fill,
        topup=cfg.topup,
        num_replicas=replicas,
        rank=rank,
    )
    sampler.features, sampler.files, sampler.quarantine = got.values, got.files, got.quarantine
    sampler.cache_hit, sampler.value_range = hit, got.value_range
    return sampler
