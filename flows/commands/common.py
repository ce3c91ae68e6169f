"""What every ``subsample`` command shares: the ``--json``, ``--set`` and ``--dry-run`` options,
:func:`emit` (a command's summary: one JSON object with ``--json``, else aligned lines) and the
``--dry-run`` view of a resolved configuration (:func:`config_view`, :func:`show_config`).
"""

from __future__ import annotations

import json
from typing import Any

import typer

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


SetOpt = typer.Option(
    [],
    "--set",
    metavar="KEY=VALUE",
    help="override any setting: section.field=value (train.lr_d=1e-4, tables.bins=[16,16]) or a run setting "
    "(preset=smoke); on a stage command a bare field is that stage's (lr_d=1e-4); repeatable "
    "(docs/training.md, 'Changing settings: --set')",
)


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
