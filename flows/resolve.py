"""The one resolution of a run's configuration, for every command and deployment.

:func:`resolve_config` is how every command builds its run: defaults < what fits this machine
(:func:`flows.machine.machine_defaults`) < the data set's < the preset's < ``--set`` < the
command's flags, with every check that needs no server (names, keys, the source, the batch size
against the data set: :mod:`flows.checks`) done first, in well under a second.
:func:`build_config` is a deployment's, :func:`resolve_evaluate_config` ``subsample evaluate``'s,
and :func:`train_batches` picks the batches ``subsample train`` trains on.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Optional

from pydantic import ValidationError

from flows.checks import check_batch_sizes, check_keys, check_preset, check_source
from flows.config import (
    DATASETS,
    STAGE_SECTIONS,
    RunConfig,
    as_fields,
    dataset_defaults,
    drop_none,
    effective,
    merge,
    parse_overrides,
    source_env,
)
from flows.machine import check_devices, evaluate_machine_defaults, machine_defaults, run_device
from pipeline.config import BatchesConfig, EvaluateConfig, validation_message
from storage.errors import SubsampleError
from storage.paths import check_name


def _stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


def build_config(fields: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A flow run's (a deployment's) parameters, plus ``section.field=value`` overrides, as a
    RunConfig: :func:`resolve_config` without the machine's layer (the parameters say what to run;
    a run the CLI started arrives resolved) and without the checks of this machine's files and
    devices (the worker resolves the source when ingest runs; a GPU deployment's runs train there)."""
    return resolve_config("run", fields, overrides, machine=False, checks=False, devices=False)


def resolve_config(
    stage: str,
    fields: dict[str, Any],
    sets: list[str] | tuple[str, ...] = (),
    flags: Optional[dict[str, Any]] = None,
    *,
    note: Callable[[str], None] = _stderr,
    machine: bool = True,
    checks: bool = True,
    check_batches: bool = True,
    devices: bool = True,
) -> RunConfig:
    """The one resolution of a run's configuration, for every command (``run``, ``demo``, the
    stage commands, each cell of ``compare``) and every deployment (:func:`build_config`), in one
    order: RunConfig's defaults < what fits this machine (:func:`machine_defaults`, when
    ``machine``) < the data set's (:func:`dataset_defaults`) < the preset's < ``fields`` (what the
    command was given) < ``sets`` (``--set``, :func:`parse_overrides`; on a stage command, ``stage``
    names it and a bare key is that stage's field) < ``flags`` (the command's dedicated options;
    None values mean not given). ``stage`` names the command in error messages.

    Before anything expensive (importing torch, starting a Prefect server): unknown keys, preset
    and data set names (each with the nearest valid name), and, with ``checks``, whether the
    source exists when the run ingests and whether the batch size fits the data set (its store, or
    the source's listing; ``check_batches=False`` leaves that to the caller, e.g. ``train`` before
    it picks built batches), and, with ``devices``, that a CUDA device asked for exists here."""
    sets_data = parse_overrides(sets, stage, stage if stage in STAGE_SECTIONS else None)
    flag_data = drop_none(flags or {})
    given = merge(merge(as_fields(fields), sets_data), flag_data)
    given = merge(given, {"evaluate": implied_evaluate(given.get("evaluate") or {})})
    asked = given["evaluate"]
    check_keys(given, stage)
    dataset = given.get("dataset", RunConfig.model_fields["dataset"].default)
    try:
        check_name(dataset)
    except (TypeError, ValueError) as e:
        raise SubsampleError(stage, str(e)) from None
    check_preset(given.get("preset"), stage)

    base = dataset_defaults(dataset) if isinstance(dataset, str) else {}
    why = None
    if machine and "preset" not in given and "preset" not in base:
        evaluating = given.get("only") == "evaluate"
        device = run_device(effective(given, "evaluate" if evaluating else "train", "device"))
        layer, why = machine_defaults(device)
        base = merge(layer, base)
        if evaluating:  # evaluate's own note, unless everything the machine's layer sets for it was given
            _, why = evaluate_machine_defaults(device)
            if why and all(k in asked for k in layer["evaluate"]):
                why = None
    data = merge(base, given)
    check_preset(data.get("preset"), stage)
    if devices:
        check_devices(data, stage)

    only = data.get("only")
    reads_source = only in (None, "ingest")
    if checks and reads_source:
        check_source(dataset, data.get("source"), stage)
    if checks and check_batches and only in (None, "batches", "train"):
        source = (
            data.get("source")
            or os.environ.get(source_env(dataset))
            or (
                str(DATASETS[dataset].default_source)
                if dataset in DATASETS and DATASETS[dataset].default_source
                else None
            )
        )
        check_batch_sizes(
            dataset,
            [int(effective(data, "batches", "batch_size"))],
            source,
            reads_source,
            stage,
            str(effective(data, "ingest", "split")),
        )
    flag_paths = {(s, f) for s, v in flag_data.items() if isinstance(v, dict) for f in v} | {
        (k,) for k, v in flag_data.items() if not isinstance(v, dict)
    }
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        raise SubsampleError(stage, validation_message(e, RunConfig, flags=flag_paths)) from None
    if why:  # after validation: a refused command prints its one error line only
        note(why if only == "evaluate" else f"{stage}: {why.split('; an evaluation')[0] if only == 'train' else why}")
    return cfg


def implied_evaluate(asked: dict[str, Any]) -> dict[str, Any]:
    """What an evaluation's given settings imply: an extractor or its weights named turns IS/FID/KID
    on; metric names (``fid10k_train``) carry their sample count and whether torch-fidelity runs.
    Only what was not given itself is implied."""
    implied: dict[str, Any] = {}
    if ("weights" in asked or "feature_extractor" in asked) and "fidelity" not in asked:
        implied["fidelity"] = True
    if asked.get("metrics"):
        from pipeline.metrics import parse_metric_name

        names = asked["metrics"].split(",") if isinstance(asked["metrics"], str) else list(asked["metrics"])
        parsed = [parse_metric_name(str(x).strip()) for x in names]
        counts = {n for _, n in filter(None, parsed)}
        if not counts:  # no name is right: the count they were written for, so the error lists those names
            tokens = {re.search(r"(\d+)(k?)_?", str(x)) for x in names} - {None}
            counts = {int(m[1]) * (1000 if m[2] else 1) for m in tokens} - {0}
        if "samples" not in asked and len(counts) == 1:
            implied["samples"] = counts.pop()
        if "fidelity" not in asked and any(p and p[0].family == "fidelity" for p in parsed):
            implied["fidelity"] = True
    return implied


def describe_batches(b: BatchesConfig) -> str:
    extra = (
        f", top_k {b.top_k}, fill {b.fill}" if b.strategy == "constructed" and (b.top_k, b.fill) != (8, "topk") else ""
    )
    return f"{b.strategy} B={b.batch_size} seed {b.seed}{extra}"


def train_batches(
    cfg: RunConfig, *, chose_batches: bool, chose_preset: bool, note: Callable[[str], None] = _stderr
) -> RunConfig:
    """``subsample train``'s batches, said in one line. With no batch setting and no preset given,
    the batches ``subsample batches`` last built from this data set's table (what a user who just
    built them means); otherwise the resolved ones, with a pointer to the built ones if they differ.
    The run seed follows the batches' seed (``--seed`` sets both)."""
    from pipeline.stages.batches import built_batches

    built = built_batches(cfg.dataset, cfg.tables, cfg.features)
    same = lambda a, b: a.model_dump(exclude={"epochs"}) == b.model_dump(exclude={"epochs"})  # noqa: E731
    origin = f"preset {cfg.preset}" if cfg.preset else "the defaults"
    if built and not chose_batches and not chose_preset:
        b, key = built[0]
        b = b.model_copy(update={"epochs": cfg.batches.epochs})
        note(
            f"train: batches {describe_batches(b)}, as `subsample batches` built them (stages/batches/{key}); "
            "--batch-size, --strategy, --seed choose others"
        )
        return cfg.model_copy(update={"batches": b, "train": cfg.train.model_copy(update={"seed": b.seed})})
    hint = ""
    if built and not any(same(b, cfg.batches) for b, _ in built):
        b = built[0][0]
        hint = (
            f"; `subsample batches` built {describe_batches(b)} for this table: "
            f"--strategy {b.strategy} --batch-size {b.batch_size} --seed {b.seed} trains on those"
        )
    source = "the options given" if chose_batches else origin
    note(f"train: batches {describe_batches(cfg.batches)} from {source}{hint}")
    return cfg


UNRECORDED_DATASET = "unrecorded-data-set"  # no known data set has this name: none of DATASETS' defaults apply


def resolve_evaluate_config(
    flags: dict[str, Any],
    dataset: Optional[str] = None,
    note: Callable[[str], None] = _stderr,
    *,
    sets: list[str] | tuple[str, ...] = (),
) -> EvaluateConfig:
    """``subsample evaluate``'s config, by :func:`resolve_config` for the run's data set: defaults <
    what fits this machine (on a CPU 2,000 samples, no IS/FID/KID, said in one line when it
    applies) < the data set's (the demo's: 2,000 samples) < ``--set`` < the flags given (None = not
    given). ``dataset`` None: the run records none, so no data set's defaults apply."""
    fields = {"dataset": dataset if isinstance(dataset, str) else UNRECORDED_DATASET, "only": "evaluate"}
    return resolve_config("evaluate", fields, sets, {"evaluate": flags}, note=note).evaluate
