"""The commands that run Prefect flows: ``subsample run`` and ``demo`` (flow train-subsample),
``compare`` (flow compare-strategies) and ``compare-report`` (a comparison's report, rebuilt from
MLflow). A flow's server starts only after every check that needs none.
"""

from __future__ import annotations

import contextlib
import json
import sys
from enum import Enum
from typing import Any, Optional

import typer

from flows.commands.common import DryRunOpt, JsonOpt, SetOpt, config_view, emit, show_config
from storage.errors import SubsampleError


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
            f"  {s['stage']:<9} {'cache hit' if s['cache_hit'] else 'built':<9} {s['seconds']:8.1f} s  "
            f"{s['key']}  {s['path']}"
        )
    for k, v in report.items():
        if k not in {"flow_run", "flow_run_id", "dataset", "stages", "seconds"} and v is not None:
            print(f"{k}: {v if not isinstance(v, (dict, list)) else json.dumps(v, default=str)}")


def _run_default(field: str) -> Any:
    from flows.config import RunConfig

    return RunConfig.model_fields[field].default


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
    from flows.resolve import resolve_config

    fields = {"dataset": dataset, "source": source, "only": only, "refresh": refresh, "dask_address": dask_address}
    _run_flow(resolve_config("run", fields, overrides, {"preset": preset}), as_json, dry_run)


def demo_cmd(
    overrides: list[str] = SetOpt,
    dry_run: bool = DryRunOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The whole flow on the embedded demo data (2,000 CIFAR-10 images) with short training
    settings: a few minutes on a laptop CPU, no server needed. The same as `subsample run --dataset demo`."""
    from flows.config import demo_fields
    from flows.resolve import resolve_config

    _run_flow(resolve_config("demo", demo_fields(), overrides), as_json, dry_run, "demo")


def _split_list(values: list[str]) -> Optional[list[str]]:
    """Repeated and/or comma-separated values (``--strategies random,constructed``); None when empty."""
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return out or None


_Scale = Enum("_Scale", {s: s for s in ("smoke", "cpu", "paper")}, type=str)  # flows.compare.CompareConfig's
_Design = Enum("_Design", {s: s for s in ("factorial", "paper")}, type=str)


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
        "learn, about 7 min (factorial) or 10 (paper design) on an idle 2-core CPU; paper: the paper's settings "
        "(a GPU machine)",
    ),
    design: Optional[_Design] = typer.Option(
        None,
        "--design",
        help="(default factorial) factorial: strategies × batch sizes × presets; paper: exactly the paper's cells "
        "(the method at B = 2000, "
        "2048 on CIFAR-10, and 1024; strategies (a)-(d) at 128), each at its preset's B and epochs",
    ),
    strategies: list[str] = typer.Option(
        [],
        "--strategies",
        help="batch strategies trained (factorial) and diagnosed (both designs); default: random, constructed, "
        "dealt; repeat or comma-separate",
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
    from flows.checks import check_batch_sizes, check_preset, check_source
    from flows.machine import check_devices

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
        f"compare-strategies on {summary['dataset']} ({summary['scale']}, "
        f"{summary.get('design', 'factorial')} design): "
        f"{summary['cells']} runs, "
        f"{summary['cells_failed']} failed, {summary['cells_trained_now']} trained now, {summary['seconds']:.1f} s"
    )
    print(f"MLflow parent run: {summary['parent_run_id']}  ({summary['mlflow_tracking_uri']})")
    print(f"report: {summary['report_html']}")
    print(f"        {summary['report_md']}")


def compare_report_cmd(
    parent_run_id: str = typer.Argument(..., help="the MLflow parent run id `subsample compare` printed"),
    as_json: bool = JsonOpt,
) -> None:
    """Rebuild a comparison's report from MLflow (e.g. after its runs finished on another machine)."""
    from pipeline.experiments.report import build_report

    emit(build_report(parent_run_id), as_json)
