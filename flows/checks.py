"""The checks a command makes before anything expensive (importing torch, starting a Prefect
server), each failing as one line: unknown settings (:func:`check_keys`), preset names
(:func:`check_preset`), whether the source a run ingests exists (:func:`check_source`), and whether
a batch size fits the data set (:func:`check_batch_sizes`). The device check is
:func:`flows.machine.check_devices`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from flows.config import DATASETS, RunConfig, _section_models, source_env
from pipeline.config import unknown_keys_message
from storage.errors import SubsampleError, did_you_mean


def check_keys(data: dict[str, Any], stage: str) -> None:
    """Unknown fields in ``data`` (RunConfig fields and section fields) are one line naming them,
    the nearest valid name and every valid name, before pydantic (or torch) is involved."""
    top = list(RunConfig.model_fields)
    unknown = [k for k in data if k not in RunConfig.model_fields]
    if unknown:
        owners = [s for s, model in _section_models().items() if unknown[0] in model.model_fields]
        if len(owners) == 1:  # `subsample run --set lr_d=1e-4`: a stage's field without its section
            raise SubsampleError(
                stage,
                f"unknown setting {unknown[0]!r}: a {owners[0]} setting is given as {owners[0]}.{unknown[0]}=VALUE",
            )
        raise SubsampleError(stage, unknown_keys_message(unknown, top))
    for section, model in _section_models().items():
        value = data.get(section)
        if isinstance(value, dict):
            bad = [k for k in value if k not in model.model_fields]
            if bad:
                raise SubsampleError(stage, unknown_keys_message(bad, list(model.model_fields), section))


def check_preset(name: Any, stage: str) -> None:
    from pipeline.presets import get_preset

    if isinstance(name, str):
        get_preset(name, stage)


def check_source(dataset: str, source: Optional[str], stage: str) -> None:
    """The source a run's ingest will read exists (the same resolution as
    :meth:`RunConfig.resolved_source`); an unknown data set without a source suggests the nearest
    known name and says how to give one."""
    if not source:
        env = source_env(dataset)
        source = os.environ.get(env) or None
        known = DATASETS.get(dataset)
        if source is None and known is not None and known.default_source is not None:
            source = str(known.default_source)
        if source is None:
            from storage.paths import datasets_dir  # not storage.store: zarr takes a while to import

            stores = [p.name[: -len(".zarr")] for p in datasets_dir().glob("*.zarr")] if datasets_dir().is_dir() else []
            names = sorted({*DATASETS, *stores})
            hint = "" if dataset in names else did_you_mean(dataset, names)  # a known name needs no suggestion
            what = f" ({known.note})" if known and known.note else ""
            raise SubsampleError(
                stage,
                f"no source for data set {dataset!r}{what}{hint}: pass --source PATH or set {env}; "
                f"known data sets: {', '.join(DATASETS)}",
            )
    if not Path(source).expanduser().exists():
        raise SubsampleError(
            stage, f"source {Path(source).expanduser().absolute()} of data set {dataset!r} does not exist"
        )


def data_set_size(
    dataset: str, source: Optional[str], reads_source: bool, split: str = "train"
) -> Optional[tuple[int, str]]:
    """``(n, where)``: the images in the data set's store, else (when the run ingests) an upper
    bound from the source's listing (files or records); None when neither is known cheaply."""
    from storage.store import open_store

    try:
        store = open_store(dataset)
        same_source = source and store.attrs.get("source") == str(Path(source).expanduser().absolute())
        if not reads_source or (same_source and store.attrs.get("split", "train") == split):
            return store.n, str(store.path)
    except SubsampleError:
        if not reads_source:  # the run starts from the store: say it is missing, now
            raise
    if source:  # the run (re)builds the store from this source: its listing bounds n
        from pipeline.data.sources import open_source

        try:
            src = open_source(source, split=split)
        except SubsampleError:
            return None  # ingest says what is wrong with it
        if src.format != "cifar10-python":  # its count is a guess until unpickled
            return src.n_items, str(src.path)
    return None


def check_batch_sizes(
    dataset: str, batch_sizes: list[int], source: Optional[str], reads_source: bool, stage: str, split: str = "train"
) -> None:
    """Every batch size fits the data set: an epoch has floor(n / B) batches, none when B > n."""
    size = data_set_size(dataset, source, reads_source, split)
    if size is None:
        return
    n, where = size
    too_big = sorted(b for b in batch_sizes if b > n)
    if too_big:
        raise SubsampleError(
            stage,
            f"batch size {too_big[-1]} is larger than data set {dataset!r} ({n:,} images, {where}): "
            f"an epoch would have no batch; use at most {n}",
        )
