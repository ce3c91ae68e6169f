"""Data-parallel training (pipeline.gan.distributed) on the CPU with gloo, 2 ranks launched by torchrun's
elastic agent, against the one-process run with the same global batch: same weights (max |Δw| < 1e-6,
R1 1e-4), each rank fed its stratified share of every constructed batch, one MLflow run and one
artifact, and a killed rank leaves a checkpoint that a rerun resumes to the uninterrupted weights.

Tiny models (ngf = ndf = 8) on 128 tiny images made here; each 2-rank launch takes ~10-20 s (two
processes importing torch on a shared 2-core machine)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import stage_home

from pipeline.config import BatchesConfig, FeaturesConfig, TablesConfig
from pipeline.gan import distributed
from pipeline.presets import resolve_train_config
from pipeline.stages import train
from pipeline.stages.train_work import work_dir
from storage.errors import SubsampleError

TABLES = TablesConfig(bins=(4, 4))
BATCHES = BatchesConfig(batch_size=32, strategy="constructed", seed=1)
# SGD with a small step rather than the presets' Adam for the weight comparisons: Adam divides each
# update by the gradient's running RMS, so an element whose gradient is near zero moves by ±lr with
# a sign set by floating-point summation order (the one-process run itself moves such elements by
# 5e-4 on 1 thread instead of 2: smoke preset, 4 steps, measured), and larger SGD steps
# (lr 5e-3 with momentum 0.9) make these toy runs oscillate, which grows 1e-7 into 2e-4 within 6
# steps whatever the cause (measured). At lr 2e-3: gan 6e-8, wgan-gp 6e-8, R1 (weight 1) 7e-5.
TINY = dict(
    ngf=8, ndf=8, sample_grid=4, kl_samples=64, track=False, device="cpu", optimizer="sgd", lr_g=0.002, lr_d=0.002
)
# max |w_1 - w_2| over G's and D's weights and buffers, 1 process vs 2 ranks, with its margin over
# the measured difference stated: gan and wgan-gp 6e-8 measured, 1e-6 allowed (16x: float32
# rounding of the all-reduced gradients over 6 steps, ~1e-7, is all there is to allow for); R1
# 7e-5 measured, 1e-4 allowed (1.4x only: its double backward through synchronised batch norm
# sums in another order on 2 ranks). A wrong split costs a whole update: 6 steps of lr 2e-3 on
# gradients of order 1e-2 or more move weights by >= 1e-4, so only R1's bound is near a bug's size.
TOLS = {"gan": 1e-6, "wgan-gp": 1e-6, "r1-batchnorm": 1e-4}
TOL = 1e-4  # the killed-rank test's bound (Adam on 2 ranks against 1 process; see that test)


def blobs(n: int = 128, s: int = 32, seed: int = 0) -> np.ndarray:
    """Discs of random colour, size and brightness on a dark ground (features spread over cells)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:s, :s]
    out = np.zeros((n, s, s, 3), np.uint8)
    for i in range(n):
        cy, cx = rng.integers(6, s - 6, 2)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= int(rng.integers(2, 10)) ** 2
        out[i][mask] = rng.integers(40, 256, 3)
        out[i][~mask] = rng.integers(0, 50)
    return out


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with stage_home(tmp_path_factory, "ddp-home", "toy", blobs(), tables=TABLES) as path:
        yield path


def _cfg(**kw):
    return resolve_train_config("smoke", {**TINY, **kw})


def _train(cfg, nproc: int = 1, **kw) -> tuple[dict, dict]:
    """Train with ``nproc`` ranks; the summary and the final checkpoint (read before the next run
    replaces the artifact: the world size is not in the key)."""
    from pipeline.stages.train import run_train

    threads = torch.get_num_threads()
    if nproc == 1:  # as many threads as each of 2 ranks gets: the same summation order within a rank
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        s = run_train(
            "toy",
            cfg.model_copy(update={"nproc_per_node": nproc}),
            BATCHES,
            TABLES,
            FeaturesConfig(),
            progress=False,
            refresh=True,
            **kw,
        )
    finally:
        torch.set_num_threads(threads)
    return s, torch.load(Path(s["path"]) / "checkpoint.pt", weights_only=True)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())


def _recording_worker(payload: dict) -> dict:
    """A rank that saves the index batches the training loop gets (then trains as usual)."""
    import pipeline.stages.train as train
    import pipeline.stages.train_loop as train_loop

    real = train_loop.epoch_indices

    def record(sampler, epoch, device):
        out = real(sampler, epoch, device)
        np.save(
            Path(os.environ["DDP_TEST_RECORD"]) / f"rank{os.environ['RANK']}_epoch{epoch}.npy",
            np.stack([b.cpu().numpy() for b in out]),
        )
        return out

    train_loop.epoch_indices = record
    return train._train_worker(payload)


@pytest.mark.slow
@pytest.mark.parametrize(
    "setting",
    [
        {},  # the default gan method, DCGAN with batch norm in G and D (SyncBatchNorm under DDP)
        {"loss": "wasserstein", "gp_weight": 10.0, "d_batchnorm": False, "d_steps": 2},
        {"r1_weight": 0.2},  # R1's double backward through D's synchronised batch norm
    ],
    ids=["gan", "wgan-gp", "r1-batchnorm"],
)
def test_two_ranks_train_the_weights_of_one_process(home, tmp_path, monkeypatch, setting, request):
    """2 ranks × B/2 give G and D within TOLS (1e-6; R1 1e-4) of 1 process × B after 6 D steps (3 of them
    crossing an epoch); the losses agree; each rank got rows r::2 of every constructed batch (a
    disjoint, stratified half; the union is the batch); one MLflow run records world size 2."""
    import mlflow

    from storage.paths import mlflow_tracking_uri

    cfg = _cfg(epochs=2, max_steps=6, **setting)
    one, ck1 = _train(cfg)
    monkeypatch.setenv("DDP_TEST_RECORD", str(tmp_path))
    monkeypatch.setattr(train, "_train_worker", _recording_worker)
    two, ck2 = _train(cfg.model_copy(update={"track": True}), nproc=2)

    assert (two["world_size"], two["backend"], two["key"], two["steps"]) == (2, "gloo", one["key"], 6)
    tol = TOLS[request.node.callspec.id]
    assert _max_diff(ck1["G"], ck2["G"]) < tol
    assert _max_diff(ck1["D"], ck2["D"]) < tol
    np.testing.assert_allclose(ck1["history"]["loss_d"], ck2["history"]["loss_d"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ck1["history"]["loss_g"], ck2["history"]["loss_g"], rtol=1e-4, atol=1e-5)

    # the rank split the loop used: rows r::2 of each batch of the one-process sampler
    from pipeline.stages.tables import load_table, tables_artifact
    from pipeline.stages.train_loop import make_sampler

    table = load_table(tables_artifact("toy", TABLES, FeaturesConfig()))
    whole = make_sampler(table, BATCHES)
    cells = np.asarray(table.cells)
    for epoch in (0, 1):
        full = whole.epoch_batches(epoch)
        r0, r1 = (np.load(tmp_path / f"rank{r}_epoch{epoch}.npy") for r in (0, 1))
        assert r0.shape == r1.shape == (len(full), BATCHES.batch_size // 2)
        for b, p0, p1 in zip(full, r0, r1):
            assert not set(p0) & set(p1) and sorted([*p0, *p1]) == sorted(b)
            n = [np.bincount(cells[p], minlength=table.counts.size) for p in (p0, p1)]
            assert np.abs(n[0] - n[1]).max() <= 1  # cells per rank within one of each other

    # one MLflow run (rank 0's) with the world size, one artifact
    client = mlflow.MlflowClient(tracking_uri=mlflow_tracking_uri())
    exp = client.get_experiment_by_name("subsample/toy")
    runs = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("subsample.train_key") == two["key"] and r.info.run_id == two["mlflow_run_id"]
    ]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert (runs[0].data.params["world_size"], runs[0].data.params["backend"]) == ("2", "gloo")
    assert runs[0].data.params["train.nproc_per_node"] == "2"
    # one artifact (the run's lock file, which stays, is not one)
    assert [p.name for p in (home / "stages/train").iterdir() if p.name.startswith(one["key"]) and p.is_dir()] == [
        one["key"]
    ]


def _dying_worker(payload: dict) -> dict:
    """Rank 1 dies (exit code 3) once rank 0 has written the epoch-1 checkpoint."""
    import pipeline.stages.train as train
    import pipeline.stages.train_loop as train_loop

    real = train_loop.epoch_indices

    def die_in_epoch_2(sampler, epoch, device):
        if epoch == 1 and os.environ["RANK"] == "1":
            deadline = time.time() + 120
            home = Path(os.environ["SUBSAMPLE_HOME"]) / "stages/train"
            while time.time() < deadline:
                cks = list(home.glob("*.work/checkpoint.pt"))
                if cks and torch.load(cks[0], weights_only=True)["epoch"] == 1:
                    break
                time.sleep(0.2)
            os._exit(3)
        return real(sampler, epoch, device)

    train_loop.epoch_indices = die_in_epoch_2
    return train._train_worker(payload)


@pytest.mark.slow
def test_a_killed_rank_leaves_a_checkpoint_that_resumes_to_the_same_weights(home, monkeypatch):
    """2 ranks, 2 epochs (8 D steps). Rank 1 dies in epoch 2: the run ends with one line naming
    the rank and the kept checkpoint, the MLflow run is KILLED; --resume on 2 ranks finishes,
    in the same MLflow run, with the weights and losses of an uninterrupted run (the one-process
    run, so within the 1e-4 of the test above; a resume that lost the RNG, optimiser or sampler
    state would be off by far more)."""
    import mlflow

    import pipeline.stages.train as train
    from storage.paths import mlflow_tracking_uri

    # Adam: this SGD setting with 2 D steps oscillates (D's loss 0.50 -> 0.91 -> 0.32), so a 1e-5
    # difference in summation order (1 vs 2 threads in one process) grows to 4 % by step 8
    cfg = _cfg(epochs=2, d_steps=2, seed=4, track=True, optimizer="adam", lr_g=2e-4, lr_d=2e-4)
    straight, a = _train(cfg)

    real_worker = train._train_worker
    monkeypatch.setattr(train, "_train_worker", _dying_worker)
    with pytest.raises(SubsampleError) as e:
        _train(cfg, nproc=2)
    msg = str(e.value)
    work = work_dir(straight["key"])
    assert msg.startswith("train: rank 1 of 2 died (exit code 3)") and "\n" not in msg
    assert f"{work / 'checkpoint.pt'} is kept; rerun with --resume" in msg
    ck = torch.load(work / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 1 and len(ck["rng_ranks"]) == 2
    client = mlflow.MlflowClient(tracking_uri=mlflow_tracking_uri())
    killed_run = json.loads((work / "run.json").read_text())["mlflow_run_id"]
    assert client.get_run(killed_run).info.status == "KILLED"

    monkeypatch.setattr(train, "_train_worker", real_worker)
    resumed, b = _train(cfg, nproc=2, resume=True)
    assert resumed["resumed_from_epoch"] == 1 and resumed["mlflow_run_id"] == killed_run
    assert client.get_run(killed_run).info.status == "FINISHED"
    assert len(b["history"]["loss_d"]) == 8 and len(b["history"]["loss_g"]) == 4
    np.testing.assert_allclose(a["history"]["loss_d"], b["history"]["loss_d"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a["history"]["loss_g"], b["history"]["loss_g"], rtol=1e-4, atol=1e-5)
    assert _max_diff(a["G"], b["G"]) < TOL and _max_diff(a["D"], b["D"]) < TOL
    assert not work.exists()


def test_bad_world_sizes_and_refused_settings_are_one_line_errors(home):
    """Checked before any rank starts: B not divisible by k, the per-class IGAN, nnodes without a rendezvous."""
    from pipeline.stages.train import run_train

    with pytest.raises(SubsampleError, match=r"^train: batch size B=32 is not divisible by the world size k=3 "):
        run_train("toy", _cfg(nproc_per_node=3), BATCHES, TABLES, FeaturesConfig(), progress=False)
    with pytest.raises(
        SubsampleError, match=r"^train: arch 'igan-nclass' is not supported under DDP: .*different classes"
    ):
        run_train("toy", _cfg(nproc_per_node=2, arch="igan-nclass"), BATCHES, TABLES, FeaturesConfig(), progress=False)
    with pytest.raises(SubsampleError, match="nnodes=2 needs --rdzv-endpoint"):
        run_train("toy", _cfg(nnodes=2), BATCHES, TABLES, FeaturesConfig(), progress=False)


def test_the_world_size_is_not_in_the_key_unless_batch_norm_is_per_rank():
    from pipeline.stages.train import train_key

    base = _cfg()
    key = train_key(base, BATCHES, "t", "s")
    assert train_key(base.model_copy(update={"nproc_per_node": 8, "nnodes": 2}), BATCHES, "t", "s") == key
    assert train_key(base.model_copy(update={"sync_batchnorm": False}), BATCHES, "t", "s") == key  # one rank
    per_rank = base.model_copy(update={"nproc_per_node": 4, "sync_batchnorm": False})
    assert train_key(per_rank, BATCHES, "t", "s") != key


def test_random_draws_are_shares_of_one_global_draw():
    """Without a process group the draws are torch's own (the one-process run is unchanged); as
    rank r of k, rows r::k of the one-process draw from the same RNG state."""
    torch.manual_seed(7)
    z, eps, x = (
        torch.randn(8, 3),
        torch.rand(8, 1, 1, 1),
        torch.randn_like(torch.empty(8, 3, 4, 4).to(memory_format=torch.channels_last)),
    )
    torch.manual_seed(7)
    assert torch.equal(distributed.randn(8, 3), z)
    try:
        for r in range(2):
            distributed._WORLD = distributed.World(r, 2, r, 2, "gloo")
            torch.manual_seed(7)
            assert torch.equal(distributed.randn(4, 3), z[r::2])
            assert torch.equal(distributed.rand(4, 1, 1, 1), eps[r::2])
            share = distributed.randn_like(torch.empty(4, 3, 4, 4).to(memory_format=torch.channels_last))
            assert torch.equal(share, x[r::2])
    finally:
        distributed._WORLD = None


def test_the_flow_and_the_8_gpu_deployment_set_the_world_size_not_the_key():
    """``prefect.yaml``'s celeba-8gpu deployment and an override of the celeba one ask the train
    stage for 8 ranks; both name the artifact a one-process run of the configuration names."""
    import yaml

    from flows.config import REPO_ROOT
    from flows.resolve import build_config

    deployments = {d["name"]: d for d in yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]}
    gpu8 = build_config(deployments["celeba-8gpu"]["parameters"])
    one = build_config(deployments["celeba"]["parameters"])
    override = build_config(deployments["celeba"]["parameters"], ["train.nproc_per_node=8"])
    assert deployments["celeba-8gpu"]["work_pool"]["name"] == "subsample-gpu8"
    assert (gpu8.train.nproc_per_node, gpu8.train.device, override.train.nproc_per_node, one.train.nproc_per_node) == (
        8,
        "cuda",
        8,
        1,
    )
    assert gpu8.train.key_params() == one.train.key_params() == override.train.key_params()
    assert gpu8.batches.batch_size % 8 == 0
