"""MLflow as a user opens it: experiments made as model-training experiments with a runs view of
the metrics that matter, run names that carry strategy, B and seed, and (when Chromium is
installed) the UI checked in a real headless browser by bench/ui_screenshots.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from flows.config import REPO_ROOT


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def a_run(dataset: str = "tiny") -> str:
    """An MLflow run with the parameters and metrics a training run records."""
    from storage import tracking

    run_id = tracking.start_run(
        dataset,
        run_name="demo-constructed-B64-seed0-abc123",
        tags={tracking.TRAIN_KEY_TAG: "abc123"},
        params={
            "train": {"preset": "demo", "epochs": 2},
            "batches": {"strategy": "constructed", "batch_size": 64, "seed": 0},
        },
    )
    for epoch in (1, 2):
        tracking.log_metrics(
            run_id, {"loss_d": 1.0 / epoch, "loss_g": 2.0 * epoch, "feature_kl": 3.0 / epoch}, step=epoch
        )
    tracking.log_metrics(run_id, {"eval/feature_kl2k_train": 1.5}, step=2)
    tracking.end_run(run_id)
    return run_id


def test_experiments_are_model_training_with_a_runs_view_of_the_metrics(home):
    from storage import tracking

    a_run()
    c = tracking.client()
    exp = c.get_experiment_by_name("subsample/tiny")
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    view = json.loads(exp.tags[tracking.VIEW_TAG])  # the UI's saved-view envelope
    assert view["name"] == tracking.VIEW_NAME and isinstance(view["createdAt"], int)
    columns = json.loads(view["state"])["selectedColumns"]
    assert columns[:3] == ["params.`batches.strategy`", "params.`batches.batch_size`", "params.`batches.seed`"]
    assert {"metrics.`feature_kl`", "metrics.`loss_d`", "metrics.`eval/fid10k_train`"} <= set(columns)
    # the link opens that view on the runs table, in the UI's model-training mode
    url = tracking.runs_table_url(exp.experiment_id, "http://127.0.0.1:5000")
    assert url == (
        f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
        "&viewStateShareKey=subsample-runs"
    )
    # an experiment made before the tags existed gets them on its next use
    old = c.create_experiment("subsample/old")
    assert tracking.experiment_id("old") == old
    assert c.get_experiment(old).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert sorted(line.split(": ")[0] for line in tracking.print_runs_table_urls()) == [
        "subsample/old",
        "subsample/tiny",
    ]


def test_run_names_carry_preset_strategy_batch_size_and_seed():
    from pipeline.config import BatchesConfig, TrainConfig
    from pipeline.stages.train_records import run_name

    name = run_name(
        TrainConfig(preset="paper-128a"), BatchesConfig(strategy="random", batch_size=128, seed=2), "3f2a1c9d"
    )
    assert name == "paper-128a-random-B128-seed2-3f2a1c"


HAVE_CHROMIUM = any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome"))


@pytest.mark.slow
@pytest.mark.skipif(
    not HAVE_CHROMIUM and os.environ.get("CI") != "true",
    reason="no Chromium: the browser check runs where one is installed (apt-get install chromium; .ci/run does)",
)
def test_mlflow_ui_opens_on_the_runs_table_in_a_headless_browser(home, tmp_path):
    """Under CI (CI=true) it never skips: .ci/run installs Chromium, and a CI without one fails here."""
    assert HAVE_CHROMIUM, "CI=true and no Chromium on PATH: .ci/run installs the Debian package chromium"
    a_run()
    out = tmp_path / "ui"
    r = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "ui_screenshots.py"), "--home", str(home), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert (out / "experiment.png").stat().st_size > 10_000 and (out / "runs-table.png").stat().st_size > 10_000
    table = (out / "runs-table.txt").read_text()
    assert "demo-constructed-B64-seed0-abc123" in table and "batches.strategy" in table and "feature_kl" in table
    assert "Token Usage" not in (out / "experiment.txt").read_text()
