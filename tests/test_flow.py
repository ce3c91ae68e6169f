"""The Prefect flow ``train-subsample``: which stages re-run, judged by what the stages report
(cache hit or built) and by the Prefect task states, on 192 real CIFAR-10 images taken from the
embedded demo data, a tiny DCGAN, one epoch of three batches.

One Prefect test harness (a temporary server, ~15 s to start) serves the whole file, and one
``$SUBSAMPLE_HOME`` holds the cold run the other tests start from: each test changes a setting
(so new keys) or asserts only about the runs it makes itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flows.config import STAGES, RunConfig, parse_overrides
from flows.resolve import build_config
from storage.errors import MissingArtifactError, SubsampleError

TINY = [
    "tables.bins=[8,8]",
    "train.kl_samples=64",
    "train.sample_grid=16",
    "train.track=true",
    "evaluate.samples=64",
    "evaluate.grid=16",
    "evaluate.fidelity=false",
]


def config(source: Path, *overrides: str, dataset: str = "tiny", **fields) -> RunConfig:
    return build_config({"dataset": dataset, "source": str(source), "preset": "smoke", **fields}, [*TINY, *overrides])


def run(cfg: RunConfig) -> dict:
    from flows.train_subsample import run as run_flow

    return run_flow(cfg)


def hits(report: dict) -> dict[str, bool]:
    return {s["stage"]: s["cache_hit"] for s in report["stages"]}


def built(report: dict) -> list[str]:
    return [s["stage"] for s in report["stages"] if not s["cache_hit"]]


@pytest.fixture(scope="module")
def cold(flow_home, tiny_cifar_source) -> dict:
    return run(config(tiny_cifar_source))


@pytest.mark.slow  # the flow on a Prefect server
def test_cold_run_builds_every_stage_then_a_rerun_is_all_cache_hits(cold, tiny_cifar_source):
    assert [s["stage"] for s in cold["stages"]] == list(STAGES)
    assert built(cold) == list(STAGES)
    assert cold["mlflow_run_id"]
    assert all(Path(g).exists() for g in cold["grids"])
    assert any(name.startswith("feature_kl") for name in cold["metrics"])

    again = run(config(tiny_cifar_source))
    assert built(again) == []
    assert [s["key"] for s in again["stages"]] == [s["key"] for s in cold["stages"]]
    assert again["mlflow_run_id"] == cold["mlflow_run_id"]


@pytest.mark.slow  # the flow on a Prefect server
def test_stages_run_alone_find_their_inputs_by_lineage_and_give_the_flows_keys(cold, tiny_cifar_source):
    """Each stage run alone (what its command calls) finds the artifacts the flow handed on and
    gives the flow's key; the train key is one function's, the same for the flow, the stage run
    alone, the comparison and lineage; every manifest records the keys of its inputs."""
    from flows.compare import _train_key
    from pipeline.stages.batches import run_batches
    from pipeline.stages.features import run_features
    from pipeline.stages.lineage import locate, train_key_for
    from pipeline.stages.tables import run_tables
    from pipeline.stages.train import run_train
    from storage.artifacts import open_artifact

    cfg = config(tiny_cifar_source)
    keys = {s["stage"]: s["key"] for s in cold["stages"]}
    alone = {
        "features": run_features(cfg.dataset, cfg.features_config(), progress=False),
        "tables": run_tables(cfg.dataset, cfg.tables, cfg.features),
        "batches": run_batches(cfg.dataset, cfg.batches, cfg.tables, cfg.features, progress=False),
        "train": run_train(cfg.dataset, cfg.train, cfg.batches, cfg.tables, cfg.features, progress=False),
    }
    assert {stage: s["key"] for stage, s in alone.items()} == {stage: keys[stage] for stage in alone}
    assert all(s["cache_hit"] for s in alone.values())
    assert train_key_for(cfg.dataset, cfg.train, cfg.batches, cfg.tables, cfg.features) == keys["train"]
    assert _train_key(cfg, {}) == keys["train"]
    assert (
        locate(
            "evaluate", cfg.dataset, features=cfg.features, tables=cfg.tables, batches=cfg.batches, train=cfg.train
        ).train.key
        == keys["train"]
    )

    upstream = {stage: open_artifact(stage, keys[stage]).upstream for stage in STAGES if stage != "ingest"}
    assert upstream == {
        "features": {"ingest": keys["ingest"]},
        "tables": {"features": keys["features"]},
        "batches": {"tables": keys["tables"], "ingest": keys["ingest"]},
        "train": {"tables": keys["tables"], "ingest": keys["ingest"]},
        "evaluate": {"train": keys["train"]},
    }


@pytest.mark.slow  # the flow on a Prefect server
def test_cache_hits_are_prefect_cached_states(cold, tiny_cifar_source):
    """A hit shows in the UI as Prefect's own hits do: a Completed state named Cached."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    report = run(config(tiny_cifar_source))

    async def states():
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[report["flow_run_id"]]))
            )
            return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}

    names = asyncio.run(states())
    assert names == {stage: "Cached" for stage in STAGES}


@pytest.mark.slow  # the flow on a Prefect server
def test_changed_training_parameter_reruns_train_and_evaluate_only(cold, tiny_cifar_source):
    report = run(config(tiny_cifar_source, "train.seed=1"))
    assert built(report) == ["train", "evaluate"]
    assert report["mlflow_run_id"] != cold["mlflow_run_id"]


@pytest.mark.slow  # the flow on a Prefect server
def test_changed_bin_count_reruns_from_tables(cold, tiny_cifar_source):
    report = run(config(tiny_cifar_source, "tables.bins=[6,6]"))
    assert built(report) == ["tables", "batches", "train", "evaluate"]


@pytest.mark.slow  # the flow on a Prefect server
def test_only_runs_one_stage_and_refresh_forces_it_and_downstream(cold, tiny_cifar_source):
    only = run(config(tiny_cifar_source, only="tables"))
    assert hits(only) == {"tables": True}
    assert hits(run(config(tiny_cifar_source, only="evaluate"))) == {"evaluate": True}  # finds the cached generator

    refreshed = run(config(tiny_cifar_source, refresh="batches"))
    assert built(refreshed) == ["batches", "train", "evaluate"]

    both = run(config(tiny_cifar_source, only="tables", refresh="tables"))
    assert hits(both) == {"tables": False}
    assert both["stages"][0]["key"] == cold["stages"][2]["key"]


@pytest.mark.slow  # the flow on a Prefect server
def test_deleted_or_corrupted_artifact_is_detected_and_rebuilt(cold, tiny_cifar_source):
    features = Path(cold["stages"][1]["path"])
    victim = next(p for p in sorted(features.rglob("*")) if p.is_file() and p.name != "manifest.json")
    victim.unlink()
    report = run(config(tiny_cifar_source))
    # features are deterministic: the rebuilt artifact has the same content, so downstream hits
    assert built(report) == ["features"]
    assert victim.exists()

    tables = Path(cold["stages"][2]["path"])
    victim = next(p for p in sorted(tables.rglob("*")) if p.is_file() and p.name != "manifest.json")
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert built(run(config(tiny_cifar_source))) == ["tables"]

    shutil.rmtree(cold["stages"][3]["path"])
    assert built(run(config(tiny_cifar_source))) == ["batches"]


@pytest.mark.slow  # the flow on a Prefect server
def test_only_with_missing_upstream_is_one_clear_error(prefect_harness, tiny_cifar_source, tmp_path, monkeypatch):
    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path))
    run(config(tiny_cifar_source, dataset="fresh", only="ingest"))
    with pytest.raises(MissingArtifactError, match="features"):
        run(config(tiny_cifar_source, dataset="fresh", only="tables"))


@pytest.mark.slow  # the flow on a Prefect server
def test_cli_json_prints_exactly_one_object_and_a_missing_upstream_exits_2(
    prefect_harness, tiny_cifar_source, tmp_path
):
    """The real command in a child process (talking to the harness's server): stdout, at the
    file-descriptor level, holds one JSON object; a missing upstream is one line and exit code 2."""
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "SUBSAMPLE_HOME": str(tmp_path), "PREFECT_API_URL": PREFECT_API_URL.value()}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "flows.cli", *args], env=env, capture_output=True, text=True, timeout=300
        )

    ok = cli("run", "--dataset", "cli", "--source", str(tiny_cifar_source), "--only", "ingest", "--json")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)  # the whole of stdout is one JSON object
    assert [s["stage"] for s in report["stages"]] == ["ingest"]
    assert {"stage", "cache_hit", "seconds", "key"} <= set(report["stages"][0])
    assert "Finished in state Completed" in ok.stderr  # Prefect's logs went to stderr

    missing = cli("run", "--dataset", "cli", "--only", "batches", "--json")
    assert missing.returncode == 2
    assert missing.stdout == ""
    assert "Traceback" not in missing.stderr
    last = missing.stderr.strip().splitlines()[-1]
    assert last.startswith("batches: ") and "features" in last and "subsample features cli" in last


def test_config_overrides_and_validation(monkeypatch):
    assert parse_overrides(["tables.bins=[8,8]", "train.lr_d=1e-4", "only=tables", "source=a=b"]) == {
        "tables": {"bins": [8, 8]},
        "train": {"lr_d": 1e-4},
        "only": "tables",
        "source": "a=b",
    }
    cfg = build_config({"dataset": "celeba", "preset": "smoke"}, ["train.epochs=3"])
    assert (cfg.ingest.size, cfg.ingest.crop) == (64, 178)  # the data set's convention
    assert (cfg.train.ngf, cfg.train.epochs, cfg.batches.batch_size) == (8, 3, 64)  # preset under the given value
    assert build_config(cfg.model_dump(mode="json")) == cfg  # what a deployment stores round-trips
    assert cfg.refreshes("train") is False and build_config({"refresh": "tables"}).refreshes("train")
    with pytest.raises(SubsampleError, match="train.nope"):
        build_config({}, ["train.nope=1"])
    with pytest.raises(SubsampleError, match="downstream"):
        build_config({"only": "tables", "refresh": "train"})
    monkeypatch.delenv("SUBSAMPLE_CELEBA_SOURCE", raising=False)
    with pytest.raises(SubsampleError, match="SUBSAMPLE_CELEBA_SOURCE"):
        cfg.ingest_config()
    monkeypatch.setenv("SUBSAMPLE_CELEBA_SOURCE", "/data/celeba.zip")
    assert cfg.ingest_config().source == "/data/celeba.zip"


def test_flow_parameters_are_the_run_config():
    """The flow's parameters (the deployment form) are RunConfig's fields, plus overrides."""
    from flows.train_subsample import train_subsample

    assert list(train_subsample.parameters.properties) == [*RunConfig.model_fields, "overrides"]
