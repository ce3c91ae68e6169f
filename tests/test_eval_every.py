"""``subsample train --eval-every E``: per-epoch IS/FID/KID and feature KL as MLflow step
metrics, at the right epochs, without changing the generator, the reference statistics computed
once, and a resumed run that logs every point exactly once. The tiny deterministic feature
extractor of test_evaluate.py stands in for Inception (no weights here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_evaluate import TINY  # registers the tiny extractor with torch-fidelity
from test_train import _cfg, _train, toy_home  # noqa: F401  (toy_home: the fixture)

EVAL = dict(eval_feature_extractor=TINY, eval_samples=64)


def histories(run_id: str) -> dict[str, list[int]]:
    from storage import tracking

    c = tracking.client()
    return {k: [m.step for m in c.get_metric_history(run_id, k)] for k in c.get_run(run_id).data.metrics}


@pytest.mark.slow  # training with Inception evaluations every epoch
def test_eval_every_logs_fidelity_curves_at_the_right_epochs(toy_home, monkeypatch):
    from pipeline import fidelity

    reads = []
    real_getitem = fidelity.StoreDataset.__getitem__
    monkeypatch.setattr(fidelity.StoreDataset, "__getitem__", lambda self, i: reads.append(i) or real_getitem(self, i))
    s = _train(_cfg(epochs=3, track=True, eval_every=2, seed=11, **EVAL))
    h = histories(s["mlflow_run_id"])
    for name in ("fid64_train", "kid64_train", "is64", "feature_kl64_train", "feature_js64_train"):
        assert h[name] == [2, 3], name  # every 2nd epoch, and after the last
    assert h["loss_d"] == [1, 2, 3] and s["eval_every"] == 2 and s["eval_fidelity"] == "ok"
    assert reads.count(255) == 1 and len(reads) <= 258  # one pass over the training set (torch-fidelity probes
    # item 0 of an input once more), then its features came from the cache
    from storage import tracking

    fid = tracking.client().get_metric_history(s["mlflow_run_id"], "fid64_train")
    assert all(np.isfinite(m.value) and m.value >= 0 for m in fid)


@pytest.mark.slow  # training with Inception evaluations every epoch
def test_the_evaluations_do_not_change_training(toy_home):
    """eval_every is execution-only: the key and every weight are those of a run without it."""
    plain = _train(_cfg(epochs=2, seed=12, eval_every=0))
    a = torch.load(f"{plain['path']}/checkpoint.pt", weights_only=True)  # before the same key is trained again
    curves = _train(_cfg(epochs=2, seed=12, eval_every=1, **EVAL), refresh=True)
    assert curves["key"] == plain["key"] and plain["eval_every"] == 0 and curves["eval_every"] == 1
    b = torch.load(f"{curves['path']}/checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["G"][k], b["G"][k]) for k in a["G"]) and a["history"]["loss_d"] == b["history"]["loss_d"]
    assert "fid64_train" in b["history"]["epochs"][0] and "fid64_train" not in a["history"]["epochs"][0]


@pytest.mark.slow
def test_resume_logs_every_point_exactly_once(toy_home, monkeypatch):
    """Killed (1) after epoch 2's checkpoint but before its MLflow log, then (2) after epoch 3's
    log but before its checkpoint (checkpoints every 2 epochs): after the resumes every metric
    has exactly the points 1..4, the missing one logged, none twice."""
    import pipeline.stages.train_loop as train_loop
    import pipeline.stages.train_tracking as train_tracking

    cfg = _cfg(epochs=4, track=True, eval_every=1, seed=13, checkpoint_every=2, **EVAL)
    real_save, real_log = train_loop.save_checkpoint, train_tracking.StepLogger.log

    def save_then_die(t, path):
        real_save(t, path)
        if t.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train(cfg, refresh=True)
    monkeypatch.setattr(train_loop, "save_checkpoint", real_save)
    run_id = __import__("json").loads(next((toy_home / "stages/train").glob("*.work/run.json")).read_text())[
        "mlflow_run_id"
    ]
    assert histories(run_id)["fid64_train"] == [1]  # epoch 2 was checkpointed, never logged

    def log_then_die(self, m):
        real_log(self, m)
        if m["epoch"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_tracking.StepLogger, "log", log_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train(cfg, resume=True)
    monkeypatch.setattr(train_tracking.StepLogger, "log", real_log)
    assert histories(run_id)["fid64_train"] == [1, 2, 3]  # epoch 2 back-filled; 3 logged, not checkpointed

    s = _train(cfg, resume=True)  # resumes from epoch 2, runs 3 again and 4
    assert s["mlflow_run_id"] == run_id and s["resumed_from_epoch"] == 2
    h = histories(run_id)
    for name in ("fid64_train", "feature_kl64_train", "loss_d"):
        assert h[name] == [1, 2, 3, 4], (name, h[name])
    from pipeline.metrics import count_tag

    per_epoch_kl = f"feature_kl{count_tag(cfg.kl_samples)}"  # training's own KL, from epoch 0 (untrained)
    assert h[per_epoch_kl] == [0, 1, 2, 3, 4], h[per_epoch_kl]


def test_compare_report_plots_the_per_epoch_fid_curves(tmp_path, monkeypatch):
    from pipeline.experiments.compare import GridCell
    from pipeline.experiments.plots import _per_epoch_fid_curves
    from pipeline.experiments.stats import Member, ReportData
    from storage import tracking

    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path))
    members = []
    for strategy, level in (("random", 60.0), ("constructed", 45.0)):
        for seed in (0, 1):
            run = tracking.start_run("curves", run_name=f"{strategy}-{seed}", tags={}, params={})
            for epoch in range(1, 5):
                tracking.log_metrics(run, {"fid64_train": level / epoch + seed, "loss_d": 1.0}, step=epoch)
            members.append(
                Member(
                    run,
                    GridCell(strategy, 64, "smoke", seed),
                    "FINISHED",
                    None,
                    "ok",
                    {"fid64_train": level / 4 + seed, "loss_d": 1.0},
                )
            )
    data = ReportData("parent", "p", "FINISHED", "curves", {}, [], members, "0")
    made = _per_epoch_fid_curves(data, tmp_path / "plots")
    assert set(made) == {"fid_curves.png"} and "every evaluated epoch" in made["fid_curves.png"]
    assert (tmp_path / "plots" / "fid_curves.png").stat().st_size > 10_000
    assert members[0].history["epoch/fid64_train"] == [(1, 60.0), (2, 30.0), (3, 20.0), (4, 15.0)]
    no_curves = [Member(m.run_id, m.cell, m.status, None, "ok", {"loss_d": 1.0}) for m in members]
    assert (
        _per_epoch_fid_curves(ReportData("p", "p", "FINISHED", "curves", {}, [], no_curves, "0"), tmp_path / "p2") == {}
    )
