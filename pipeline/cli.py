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


# --- features / tables / batches ----------------------------------------------------------------


# --- train / evaluate / presets -----------------------------------------------------------------


# --- run / demo / compare (Prefect flows) -------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> None:
    try:
        app(args=argv, prog_name="subsample")
    except SubsampleError as e:
        print(str(e), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
