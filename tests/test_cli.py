"""A user's first commands: one resolution of every command's config (defaults < the machine's <
the data set's < the preset's < --set < flags), the checks done before anything slow (a bad data
set, source, batch size, preset or key is one line, exit 2, without importing torch or starting a
Prefect server), the nearest valid name in every "unknown" message, which batches `train` uses,
and the up-front time estimate of a long run."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import flows.machine as fm
from flows.config import DEMO_SOURCE, REPO_ROOT, demo_fields
from flows.resolve import build_config, resolve_config
from storage.errors import SubsampleError


@pytest.fixture
def cpu(monkeypatch):
    monkeypatch.setattr(fm, "cuda_available", lambda: False)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "home"


def quiet(_: str) -> None:
    pass


# --- resolution order ---------------------------------------------------------------------------


def test_defaults_fit_the_machine_under_the_data_set_preset_sets_and_flags(cpu, home, tmp_path, monkeypatch):
    monkeypatch.setenv("SUBSAMPLE_CIFAR10_SOURCE", str(tmp_path))
    notes: list[str] = []
    cfg = resolve_config("run", {"dataset": "cifar10"}, note=notes.append)
    # the machine's layer: on a CPU the demo-sized preset and a small evaluation, said in one line
    assert cfg.preset == "demo" and (cfg.train.ngf, cfg.train.epochs, cfg.batches.batch_size) == (16, 10, 64)
    assert (cfg.evaluate.samples, cfg.evaluate.fidelity) == (2000, False)
    assert len(notes) == 1 and notes[0].startswith("run: no GPU: preset 'demo'")
    # the data set's layer over it (CIFAR-10 at 32 px), --set over that, flags over --set
    assert cfg.ingest.size == 32
    cfg = resolve_config(
        "run", {"dataset": "cifar10"}, ["evaluate.samples=100", "train.epochs=3"], {"train": {"epochs": 5}}, note=quiet
    )
    assert (cfg.evaluate.samples, cfg.train.epochs, cfg.train.ngf) == (100, 5, 16)
    # a preset given: no machine preset, no note; its values under --set
    notes.clear()
    cfg = resolve_config(
        "run", {"dataset": "cifar10"}, ["train.lr_d=1e-4"], {"preset": "paper-128a"}, note=notes.append
    )
    assert (cfg.preset, cfg.batches.strategy, cfg.batches.batch_size, cfg.train.lr_d) == (
        "paper-128a",
        "random",
        128,
        1e-4,
    )
    assert notes == [] and cfg.evaluate.samples == 10_000
    # on a GPU the paper's preset and the full evaluation
    monkeypatch.setattr(fm, "cuda_available", lambda: True)
    cfg = resolve_config("run", {"dataset": "cifar10"}, note=quiet)
    assert (cfg.preset, cfg.batches.batch_size, cfg.evaluate.samples, cfg.evaluate.fidelity) == (
        "paper-constructed",
        2048,
        10_000,
        True,
    )  # the paper's B on CIFAR-10
    # ... unless the run asks for the CPU
    assert resolve_config("run", {"dataset": "cifar10"}, ["train.device=cpu"], note=quiet).preset == "demo"


def test_run_dataset_demo_is_the_demo_on_any_machine(cpu, home, monkeypatch):
    notes: list[str] = []
    demo = resolve_config("demo", demo_fields(), note=notes.append)
    assert demo == resolve_config("run", {"dataset": "demo"}, note=notes.append)
    assert notes == []  # the data set says what to run: nothing to default
    assert (demo.preset, demo.tables.bins, demo.train.ngf, demo.train.epochs) == ("demo", (16, 16), 16, 10)
    assert (demo.evaluate.samples, demo.evaluate.fidelity, demo.batches.batch_size) == (2000, False, 64)
    monkeypatch.setattr(fm, "cuda_available", lambda: True)
    assert resolve_config("run", {"dataset": "demo"}, note=quiet) == demo
    # the deployment `demo` (prefect.yaml) gives the same parameters through build_config
    assert build_config({"dataset": "demo"}) == demo


# --- unknown names: one line, the nearest valid one, all valid ones -----------------------------


def test_unknown_keys_presets_and_data_sets_suggest_the_nearest(cpu, home):
    with pytest.raises(SubsampleError) as e:
        resolve_config("run", {"dataset": "demo"}, ["train.lr_dd=1e-4"])
    msg = str(e.value)
    assert "unknown setting 'train.lr_dd' (did you mean 'train.lr_d'?)" in msg
    assert "valid train settings:" in msg and "lr_g" in msg and "\n" not in msg
    with pytest.raises(SubsampleError, match=r"unknown setting 'evalute' \(did you mean 'evaluate'\?\)"):
        resolve_config("run", {"dataset": "demo"}, ["evalute.samples=10"])
    with pytest.raises(SubsampleError, match=r"unknown preset 'paper128a' \(did you mean 'paper-128a'\?\)"):
        resolve_config("run", {"dataset": "demo"}, flags={"preset": "paper128a"})
    with pytest.raises(SubsampleError, match=r"no source for data set 'cifar' \(did you mean 'cifar10'\?\)"):
        resolve_config("run", {"dataset": "cifar"})
    with pytest.raises(SubsampleError, match=r"source .*nowhere of data set 'demo' does not exist"):
        resolve_config("run", {"dataset": "demo", "source": "/nowhere"})
    # the stage commands' own resolution says the same
    from pipeline.presets import resolve_train_config

    with pytest.raises(SubsampleError, match=r"'lr_dd' \(did you mean 'lr_d'\?\); valid settings: preset, arch"):
        resolve_train_config("smoke", {"lr_dd": 1})
    # a store that is not there: the nearest store name
    from storage.store import open_store, write_store

    write_store("cifar-subset", np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(SubsampleError, match=r"\(did you mean 'cifar-subset'\?\).*stores here: cifar-subset"):
        open_store("cifar-subst")


def test_batch_size_is_checked_against_the_store_or_the_source_before_the_run(cpu, home):
    from storage.store import write_store

    write_store("small", np.zeros((40, 8, 8, 3), np.uint8))
    with pytest.raises(SubsampleError, match=r"batch size 64 is larger than data set 'small' \(40 images"):
        resolve_config("train", {"dataset": "small", "only": "train"}, flags={"preset": "smoke"})
    assert (
        resolve_config(
            "train", {"dataset": "small", "only": "train"}, flags={"batches": {"batch_size": 40}}, note=quiet
        ).batches.batch_size
        == 40
    )
    # no store yet: the source's listing bounds n (the demo: 2,000 records)
    with pytest.raises(SubsampleError, match=r"batch size 4096 is larger than data set 'demo' \(2,000 images"):
        resolve_config("run", {"dataset": "demo"}, ["batches.batch_size=4096"])
    # a stage that starts from the store says the store is missing, before anything else
    with pytest.raises(SubsampleError, match=r"no data set store at .*nothere\.zarr"):
        resolve_config("train", {"dataset": "nothere", "only": "train"}, note=quiet)


def _cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """``subsample ARGS`` in a child process; prints whether torch or a Prefect server was touched."""
    probe = (
        "import sys\nfrom flows.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
        "    print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", probe, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


def test_first_mistakes_fail_at_once_in_one_line(tmp_path):
    """`run --dataset nosuch` and `train demo --batch-size 99999` (the issue's examples) exit 2 with
    one line, before torch is imported and before Prefect's server is started."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SUBSAMPLE_"))}
    env.update(
        SUBSAMPLE_HOME=str(tmp_path / "home"),
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONPATH=str(REPO_ROOT),
    )
    subprocess.run(
        [sys.executable, "-m", "flows.cli", "ingest", str(DEMO_SOURCE), "--name", "demo"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
        timeout=300,
    )
    for args, start in (
        (["run", "--dataset", "nosuch"], "run: no source for data set 'nosuch'"),
        (
            ["train", "demo", "--batch-size", "99999"],
            "train: batch size 99999 is larger than data set 'demo' (2,000 images",
        ),
        (["train", "demo", "--preset", "smok"], "train: unknown preset 'smok' (did you mean 'smoke'?)"),
        (["run", "--set", "train.lr_dd=1"], "run: unknown setting 'train.lr_dd' (did you mean 'train.lr_d'?)"),
    ):
        r = _cli(args, env)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and r.stdout == "", (args, r.stderr)
        assert lines[-1] == "NO-TORCH" and len(lines) == 2 and lines[0].startswith(start), (args, lines)
    assert not (tmp_path / "prefect" / "prefect.db").exists()  # no server was started


# --- train: which batches ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A store of 256 images with features, a 9×9 table and two batches artifacts (B=32, then B=16)."""
    from pipeline.config import BatchesConfig, FeaturesConfig, TablesConfig
    from pipeline.stages.batches import run_batches
    from pipeline.stages.features import run_features
    from pipeline.stages.tables import run_tables
    from storage.store import write_store

    home = tmp_path_factory.mktemp("toy-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SUBSAMPLE_HOME", str(home))
        rng = np.random.default_rng(0)
        write_store("toy", rng.integers(0, 256, (256, 16, 16, 3), dtype=np.uint8))
        run_features("toy", FeaturesConfig(workers=1), progress=False)
        tables = TablesConfig(bins=(8, 8))
        run_tables("toy", tables, FeaturesConfig())
        run_batches("toy", BatchesConfig(batch_size=32, seed=0), tables, progress=False)
        os.utime(next((home / "stages" / "batches").iterdir()), (1, 1))  # make it the older one
        for m in (home / "stages" / "batches").glob("*/manifest.json"):
            os.utime(m, (1, 1))
        run_batches("toy", BatchesConfig(batch_size=16, strategy="random", seed=3), tables, progress=False)
    return home


def _train_cfg(flags: dict, sets=(), notes=None):
    """What `subsample train toy` resolves (flows.cli.train_cmd's steps)."""
    from flows.checks import check_batch_sizes
    from flows.resolve import train_batches

    full = {"preset": None, "train": {}, "batches": {}, "tables": {"bins": [8, 8]}, **flags}
    chose = any(v is not None for v in full["batches"].values())
    cfg = resolve_config(
        "train",
        {"dataset": "toy", "only": "train"},
        list(sets),
        full,
        note=quiet,
        check_batches=chose or full["preset"] is not None,
    )
    cfg = train_batches(
        cfg,
        chose_batches=chose,
        chose_preset=full["preset"] is not None,
        note=(notes.append if notes is not None else quiet),
    )
    check_batch_sizes("toy", [cfg.batches.batch_size], None, False, "train")
    return cfg


def test_train_uses_the_batches_just_built_and_says_which(cpu, toy, monkeypatch):
    monkeypatch.setenv("SUBSAMPLE_HOME", str(toy))
    notes: list[str] = []
    cfg = _train_cfg({}, notes=notes)
    # no preset, no batch option: the batches `subsample batches` built last, seed included
    assert (cfg.batches.strategy, cfg.batches.batch_size, cfg.batches.seed, cfg.train.seed) == ("random", 16, 3, 3)
    assert len(notes) == 1 and notes[0].startswith(
        "train: batches random B=16 seed 3, as `subsample batches` built them"
    )
    # a preset's own batches when a preset is named, with the built ones pointed at
    notes.clear()
    cfg = _train_cfg({"preset": "smoke"}, notes=notes)
    assert (cfg.batches.strategy, cfg.batches.batch_size) == ("constructed", 64)
    assert notes == [
        "train: batches constructed B=64 seed 0 from preset smoke; `subsample batches` built random B=16 "
        "seed 3 for this table: --strategy random --batch-size 16 --seed 3 trains on those"
    ]
    # an option given: exactly what was asked
    notes.clear()
    cfg = _train_cfg({"batches": {"batch_size": 32}}, notes=notes)
    assert (cfg.batches.batch_size, cfg.batches.seed) == (32, 0) and "from the options given" in notes[0]
    # on a GPU the default preset's B = 2000 does not fit 256 images, the built batches do
    monkeypatch.setattr(fm, "cuda_available", lambda: True)
    cfg = _train_cfg({})
    assert (cfg.preset, cfg.batches.batch_size) == ("paper-constructed", 16)
    with pytest.raises(SubsampleError, match="batch size 2000 is larger than data set 'toy'"):
        _train_cfg({"preset": "paper-constructed"})


# --- the up-front estimate ----------------------------------------------------------------------


def test_a_long_run_says_how_long_after_its_first_steps(monkeypatch):
    import torch

    import pipeline.stages.train_records as tr

    clock = {"t": 0.0}
    monkeypatch.setattr(tr.time, "perf_counter", lambda: clock["t"])
    said: list[str] = []
    run = tr.RunClock(
        total_steps=1000, steps_per_epoch=50, epochs=20, batch_size=128, device=torch.device("cpu"), note=said.append
    )
    for step in range(1, 30):
        run.tick(step)
        clock["t"] += 2.0  # 2 s per step: 1,000 steps take about 33 min
    assert len(said) == 1 and run.estimate_s == pytest.approx(2000)
    assert said[0] == (
        "train: about 33 min for 1,000 steps (20 epochs x 50 of B=128) at 64 images/s, measured on "
        f"{tr.ESTIMATE_STEPS} steps on cpu; Ctrl-C stops it, --resume continues from its last epoch"
    )
    short = tr.RunClock(
        total_steps=40, steps_per_epoch=40, epochs=1, batch_size=64, device=torch.device("cpu"), note=said.append
    )
    for step in range(1, 41):
        short.tick(step)
        clock["t"] += 2.0
    assert short.estimate_s == pytest.approx(80) and len(said) == 1  # 80 s: nothing to say


def test_omp_threads_sleep_only_when_the_cores_are_busy(monkeypatch):
    import os

    from flows.cli import omp_wait_policy

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    for load, want in ((0.4, None), (1.5, "PASSIVE"), (7.0, "PASSIVE")):
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        omp_wait_policy()
        assert os.environ.get("OMP_WAIT_POLICY") == want, load
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice stays
    omp_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
