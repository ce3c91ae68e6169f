"""``subsample``: the command line, a thin layer over ``pipeline``.

Every stage command takes ``--json`` and then prints exactly one JSON object (its summary) on
stdout; progress bars and logs go to stderr. A :class:`~storage.errors.SubsampleError` becomes a
one-line message on stderr and exit code 2.

This module holds the Typer :data:`app`, its commands registered in the order ``subsample --help``
lists them (their code is in :mod:`flows.commands`), and :func:`main`, the entry point.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from flows.commands.runs import compare_cmd, compare_report_cmd, demo_cmd, run_cmd
from flows.commands.stages import batches_cmd, features_cmd, ingest_cmd, tables_cmd
from flows.commands.train import evaluate_cmd, presets_cmd, train_cmd
from storage.errors import SubsampleError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Train GANs on distribution-matched mini-batches. Artifacts live under $SUBSAMPLE_HOME (default ./artifacts).",
)


app.command("ingest")(ingest_cmd)
app.command("features")(features_cmd)
app.command("tables")(tables_cmd)
app.command("batches")(batches_cmd)
app.command("train")(train_cmd)
app.command("presets")(presets_cmd)
app.command("evaluate")(evaluate_cmd)
app.command("run")(run_cmd)
app.command("demo")(demo_cmd)
app.command("compare")(compare_cmd)
app.command("compare-report")(compare_report_cmd)


def omp_wait_policy() -> None:
    """Let PyTorch's OpenMP threads sleep, not spin, while they wait, when the cores are already
    busy (unless the user chose a policy). Measured on the 2-core development machine (60 DCGAN-32
    steps, B = 64): with both cores busy with other work, spinning took 4.7-6.7 s against 3.5-4.0 s
    (and 1.6-2.3 times the CPU time); on idle cores spinning is faster, 0.9-1.0 s against 1.3-1.4 s.
    So the choice follows the load when the command starts. It must be set before torch loads."""
    import os

    if "OMP_WAIT_POLICY" in os.environ or not hasattr(os, "getloadavg"):
        return
    if os.getloadavg()[0] >= 0.75 * (os.cpu_count() or 1):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def main(argv: Optional[list[str]] = None) -> None:
    omp_wait_policy()
    from flows.local_server import client_defaults

    client_defaults()  # before Prefect reads its settings
    if argv is None:  # the command line: a long command runs in a worker under a supervisor
        from storage import interrupts

        if interrupts.should_supervise(sys.argv[1:]) and (code := interrupts.supervise()) is not None:
            sys.exit(code)
    try:
        app(args=argv, prog_name="subsample")
    except SubsampleError as e:
        print(str(e), file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # a file-system fault (read-only home, disk full, ulimit -f) is one line too
        from storage.safe_io import fault

        err = fault(e, argv[0] if argv else (sys.argv[1] if len(sys.argv) > 1 else "subsample"))
        if err is None:
            raise
        print(str(err), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
