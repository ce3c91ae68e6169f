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


@app.command("evaluate")
def evaluate_cmd(
    run: str = typer.Argument(..., help="train artifact key or MLflow run id"),
    samples: int = typer.Option(10_000, "--samples", "-n", min=2, help="generated images N (names: fid10k_train, is10k, ...)"),
    batch_size: int = typer.Option(250, "--batch-size", min=1, help="generation and feature-extraction batch"),
    weights: Optional[str] = typer.Option(
        None, "--weights", help="local copy of the feature extractor's weights (default: torch-fidelity's download)"
    ),
    no_fidelity: bool = typer.Option(False, "--no-fidelity", help="skip IS/FID/KID; feature-space metrics only"),
    feature_extractor: str = typer.Option("inception-v3-compat", "--feature-extractor", help="torch-fidelity extractor"),
    seed: int = typer.Option(0, "--seed", help="seed of the latent codes"),
    device: Optional[str] = typer.Option(None, "--device", help="default: the generator's device"),
    refresh: bool = typer.Option(False, "--refresh", help="recompute even if this evaluation is cached"),
    as_json: bool = JsonOpt,
) -> None:
    """Evaluate a trained generator against its training set: IS, FID, KID (torch-fidelity), feature-space KL/JS and sharpness (spec §5)."""
    from pipeline.config import EvaluateConfig
    from pipeline.evaluate import run_evaluate

    cfg = EvaluateConfig(
        samples=samples,
        batch_size=batch_size,
        weights=weights,
        fidelity=not no_fidelity,
        feature_extractor=feature_extractor,
        seed=seed,
        device=device,
    )
    emit(run_evaluate(run, cfg, refresh=refresh), as_json)


# --- run / demo / compare (Prefect flows) -------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> None:
    try:
        app(args=argv, prog_name="subsample")
    except SubsampleError as e:
        print(str(e), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
