"""`subsample demo`, the command `make demo` runs, as a newcomer's shell runs it: a child process
with fresh homes of its own (no Prefect server running: it starts its temporary one), on the
embedded 2,000 demo images, made small with --set (the smoke preset, two training steps, 64
evaluation samples) so it takes a minute, not the demo's few."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.config import STAGES

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["preset=smoke", "train.max_steps=2", "train.kl_samples=64", "train.sample_grid=16"]
SMALL += ["evaluate.samples=64", "evaluate.grid=16", "evaluate.fidelity=false"]


def cli(tmp_path: Path, *args: str, small: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_"))}
    env.update(
        SUBSAMPLE_HOME=str(tmp_path / "artifacts"),
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONPATH=str(ROOT),
    )
    sets = [a for s in SMALL for a in ("--set", s)] if small else []
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args, *sets, "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_demo_is_run_dataset_demo(tmp_path):
    """The README's promise: `subsample demo` is `subsample run --dataset demo` (same resolved settings)."""
    demo = cli(tmp_path, "demo", "--dry-run", small=False)
    run = cli(tmp_path, "run", "--dataset", "demo", "--dry-run", small=False)
    assert demo.returncode == run.returncode == 0, demo.stderr + run.stderr
    assert json.loads(demo.stdout) == json.loads(run.stdout)
    assert not (tmp_path / "artifacts").exists()  # a dry run writes nothing


@pytest.mark.slow
def test_demo_runs_every_stage_in_fresh_homes(tmp_path):
    r = cli(tmp_path, "demo")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)  # the whole of stdout is one JSON object
    assert [s["stage"] for s in report["stages"]] == list(STAGES)
    assert all(not s["cache_hit"] for s in report["stages"])
    home = tmp_path / "artifacts"
    import zarr

    store = zarr.open_group(str(home / "datasets" / "demo.zarr"), mode="r")
    assert store["images"].shape == (2000, 32, 32, 3)  # every embedded image ingested
    for s in report["stages"][1:]:
        assert (home / "stages" / s["stage"] / s["key"] / "manifest.json").exists()
    assert report["mlflow_run_id"] and (home / "mlflow.db").exists()
    assert report["grids"] and all(Path(g).exists() for g in report["grids"])
    assert any(name.startswith("feature_kl") for name in report["metrics"])
    assert (tmp_path / "prefect").is_dir()  # Prefect's database in the home it was given
