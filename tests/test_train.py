"""The training stage on tiny data made here: it learns, records to MLflow, resumes exactly,
stops on a non-finite loss, and the CLI prints one JSON object."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import patterns, stage_home

from pipeline.config import BatchesConfig, FeaturesConfig, TablesConfig
from pipeline.presets import resolve_train_config
from storage.errors import SubsampleError

TABLES = TablesConfig(bins=(8, 8))
BATCHES = BatchesConfig(batch_size=32, strategy="constructed", seed=0)
SMALL = dict(ngf=16, ndf=16, sample_grid=16, kl_samples=128)


@pytest.fixture(scope="module")
def toy_home(tmp_path_factory):
    """A SUBSAMPLE_HOME with the data set ``toy`` (256 images 32×32), its features and 9×9 table."""
    with stage_home(tmp_path_factory, "train-home", "toy", patterns(), tables=TABLES) as home:
        yield home


def _cfg(**kw):
    return resolve_train_config("paper-128a", {**SMALL, "track": False, **kw})


def _train(cfg, batches=BATCHES, **kw):
    from pipeline.stages.train import run_train

    return run_train("toy", cfg, batches, TABLES, FeaturesConfig(), progress=False, **kw)


def _checkpoint(path):
    return torch.load(f"{path}/checkpoint.pt", weights_only=True)


def test_a_short_run_learns_and_is_tracked(toy_home):
    """40 D/G steps: D's loss falls well below its start (log 4 for an undecided D), D tells real
    from generated; grids, checkpoint, metrics and the MLflow record are all there."""
    import mlflow

    from pipeline.stages.generators import load_generator
    from storage.paths import mlflow_tracking_uri

    cfg = _cfg(epochs=5, track=True)
    s = _train(cfg)
    assert (s["cache_hit"], s["epochs"], s["steps"], s["g_steps"]) == (False, 5, 40, 40)

    ck = _checkpoint(s["path"])
    loss_d = np.array(ck["history"]["loss_d"])
    assert len(loss_d) == 40 and np.isfinite(loss_d).all()
    assert loss_d[-8:].mean() < 0.8 * loss_d[:3].mean()
    last = ck["history"]["epochs"][-1]
    assert last["d_real_prob"] > last["d_fake_prob"]
    lines = [json.loads(x) for x in open(f"{s['path']}/metrics.jsonl")]
    assert [e["epoch"] for e in lines] == [0, 1, 2, 3, 4, 5]  # epoch 0: the untrained generator
    assert set(lines[0]) == {"epoch", "step", "feature_kl", "feature_js"} and lines[0]["step"] == 0
    assert lines[0]["feature_kl"] == s["feature_kl_initial"] == ck["history"]["initial"]["feature_kl"]
    assert {
        "loss_d",
        "loss_g",
        "d_real_prob",
        "d_fake_prob",
        "feature_kl",
        "feature_js",
        "seconds",
        "images_per_second",
    } <= set(lines[1])
    assert sorted(p.name for p in (toy_home / "stages/train" / s["key"] / "grids").iterdir()) == [
        f"epoch_{e:04d}.png" for e in range(1, 6)
    ]
    from PIL import Image

    grid = Image.open(toy_home / "stages/train" / s["key"] / "grids/epoch_0005.png")
    assert grid.width >= 512 and grid.text["Title"] == "toy · paper-128a · constructed B=32 · seed 0 · epoch 5"
    assert Image.open(f"{s['path']}/loss_curve.png").text["Title"] == "toy · paper-128a · constructed B=32 · seed 0"
    assert not (toy_home / "stages/train" / f"{s['key']}.work").exists()

    # the generator loads by key and by MLflow run id
    G, info = load_generator(s["key"])
    assert G(torch.randn(2, info["z_dim"])).shape == (2, 3, 32, 32)
    assert (info["dataset"], info["key"], info["image_size"], info["tables"]["bins"]) == ("toy", s["key"], 32, [8, 8])
    G2, info2 = load_generator(s["mlflow_run_id"])
    assert info2["key"] == s["key"]
    assert all(torch.equal(a, b) for a, b in zip(G.state_dict().values(), G2.state_dict().values()))

    # MLflow: a real SQLite store under SUBSAMPLE_HOME
    assert mlflow_tracking_uri().startswith(f"sqlite:///{toy_home}")
    client = mlflow.MlflowClient(tracking_uri=mlflow_tracking_uri())
    exp = client.get_experiment_by_name("subsample/toy")
    assert exp.artifact_location.startswith((toy_home / "mlflow-artifacts").as_uri())
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_id == s["mlflow_run_id"]
    assert run.info.status == "FINISHED"
    assert run.data.tags["subsample.train_key"] == s["key"]
    p = run.data.params
    assert (p["train.lr_d"], p["batches.strategy"], p["batches.batch_size"], p["tables.bins"]) == (
        "0.0002",
        "constructed",
        "32",
        "[8, 8]",
    )
    assert p["dataset_content_hash"] and p["code_version"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss_d")] == [1, 2, 3, 4, 5]
    # the per-epoch feature KL carries its sample size in its name, and its floor sits beside it
    n = cfg.kl_samples
    kl = client.get_metric_history(run.info.run_id, f"feature_kl{n}")
    floor = client.get_metric_history(run.info.run_id, f"feature_kl{n}_floor")
    assert len(kl) == 6 and len(floor) == 5 and "feature_kl" not in run.data.metrics
    assert lines[-1]["feature_kl_floor"] == pytest.approx(floor[-1].value) == pytest.approx(s["feature_kl_floor"])
    assert 0 < s["feature_kl_floor"] and s["feature_kl_samples"] == n
    # epoch 0 is the untrained generator, logged before the first step
    kl_history = {m.step: m.value for m in kl}
    assert sorted(kl_history) == [0, 1, 2, 3, 4, 5] and kl_history[0] == s["feature_kl_initial"]
    assert run.data.metrics[f"feature_kl{n}_floor_sd"] == pytest.approx(lines[-1]["feature_kl_floor_sd"])
    assert lines[-1]["feature_kl_floor_sd"] > 0
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"grids", "generator.pt", "loss_curve.png", "metrics.jsonl", "table"} <= arts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "table")} == {"table/heatmap.png"}

    # unchanged inputs and parameters: a cache hit, nothing retrained
    again = _train(cfg.model_copy(update={"device": "cpu"}))  # execution-only fields do not change the key
    assert again["cache_hit"] and again["key"] == s["key"] and again["mlflow_run_id"] == s["mlflow_run_id"]


def test_kill_and_resume_gives_the_same_losses(toy_home, monkeypatch):
    """Two epochs straight vs one epoch, a kill, and --resume for the second: on a CPU every
    step's losses and the final weights are bit-for-bit equal (RNG, optimiser and sampler state
    all restored). A gradient penalty and 2 D steps per G step exercise the RNG and counters."""
    import pipeline.stages.train_loop as train_loop
    from pipeline.stages.train_work import work_dir

    cfg = _cfg(
        epochs=2,
        loss="wasserstein",
        d_batchnorm=False,
        gp_weight=10.0,
        d_steps=2,
        optimizer="rmsprop",
        lr_d=1e-4,
        lr_g=1e-4,
        seed=3,
        ngf=8,
        ndf=8,
    )
    batches = BatchesConfig(batch_size=64, strategy="constructed", seed=5)
    straight = _train(cfg, batches)
    a = _checkpoint(straight["path"])

    real_save = train_loop.save_checkpoint

    def save_then_die(t, path):
        real_save(t, path)
        raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(train_loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train(cfg, batches, refresh=True)
    work = work_dir(straight["key"])
    assert (work / "checkpoint.pt").exists() and (work / "grids/epoch_0001.png").exists()
    monkeypatch.setattr(train_loop, "save_checkpoint", real_save)

    resumed = _train(cfg, batches, refresh=True, resume=True)
    b = _checkpoint(resumed["path"])
    assert resumed["resumed_from_epoch"] == 1 and resumed["key"] == straight["key"]
    assert len(a["history"]["loss_d"]) == 8 and len(a["history"]["loss_g"]) == 4
    assert a["history"]["loss_d"] == b["history"]["loss_d"]
    assert a["history"]["initial"] == b["history"]["initial"]  # the epoch-0 record survives the kill
    assert a["history"]["loss_g"] == b["history"]["loss_g"]
    assert all(torch.equal(a["G"][k], b["G"][k]) for k in a["G"])
    assert not work.exists()


def test_non_finite_loss_stops_with_the_last_good_checkpoint(toy_home, monkeypatch):
    """A D loss that turns NaN at step 12 (epoch 2) stops the run with a SubsampleError naming
    the epoch, the step and the checkpoint of epoch 1, which is kept; no artifact is written."""
    from pipeline.gan.losses import LOSSES, GanLoss, logistic_d

    calls = {"n": 0}

    def nan_after_11(real, fake):
        calls["n"] += 1
        loss = logistic_d(real, fake)
        return loss * float("nan") if calls["n"] >= 12 else loss

    monkeypatch.setitem(
        LOSSES, "nan-at-12", GanLoss("nan-at-12", "test", nan_after_11, LOSSES["nonsaturating"].g, True)
    )
    cfg = _cfg(epochs=3, loss="nan-at-12", ngf=8, ndf=8)
    with pytest.raises(SubsampleError) as e:
        _train(cfg)
    work = next((toy_home / "stages/train").glob("*.work"))
    msg = str(e.value)
    assert msg.startswith("train: non-finite D loss at epoch 2 step 12; last good checkpoint: ")
    assert str(work / "checkpoint.pt") in msg and "(after epoch 1)" in msg
    assert torch.load(work / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (toy_home / "stages/train" / work.name.removesuffix(".work")).exists()


def test_cli_train_prints_one_json_object(toy_home, capsys):
    from flows.cli import main

    with pytest.raises(SystemExit) as e:
        main(
            [
                "train",
                "toy",
                "--preset",
                "smoke",
                "--bins",
                "8",
                "8",
                "--batch-size",
                "64",
                "--max-steps",
                "2",
                "--set",
                "track=false",
                "--set",
                "lr_d=1e-3",
                "--json",
            ]
        )
    assert e.value.code == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["stage"], s["steps"], s["preset"], s["strategy"], s["batch_size"]) == (
        "train",
        2,
        "smoke",
        "constructed",
        64,
    )
    assert s["mlflow_run_id"] is None
    from pipeline.stages.generators import load_generator

    assert load_generator(s["key"])[1]["train"]["lr_d"] == 1e-3

    with pytest.raises(SystemExit) as e:
        main(["train", "toy", "--preset", "smoke", "--set", "no_such_field=1"])
    assert e.value.code == 2
    assert "no_such_field" in capsys.readouterr().err
