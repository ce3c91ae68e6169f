"""A real kill: `subsample train` (``python -m flows.cli``, in its own session) is SIGKILLed mid-epoch
at a random moment, and mid-way through writing a checkpoint; `subsample train ... --resume`
through the CLI then finishes with exactly the weights, optimiser states and losses of an
uninterrupted run (bit for bit on the CPU). A checkpoint that cannot be read is one line.

The mid-write kill uses a test-only hook that the product never loads: a ``sitecustomize.py`` on the
killed process's PYTHONPATH wraps ``torch.save`` so that the second checkpoint's temporary file is
half-written, a marker file appears, and the process waits to be killed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import patterns, stage_home

from pipeline.config import TablesConfig

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 4  # 8 D steps of B = 32 per epoch on 256 images
TRAIN = [
    "train", "toy", "--preset", "smoke", "--bins", "8", "8", "--batch-size", "32", "--epochs", str(EPOCHS),
    "--seed", "3", "--set", "sample_grid=4", "--set", "kl_samples=64", "--set", "gp_weight=1.0",
    "--set", "d_batchnorm=false", "--json",
]  # fmt: skip

STALL_HOOK = """
    import io
    import os
    import time
    from pathlib import Path

    import torch

    _save, _calls = torch.save, [0]

    def save(obj, f, *args, **kwargs):
        if "checkpoint.pt" in os.path.basename(str(f)):  # its temporary file, or checkpoint.pt itself
            _calls[0] += 1
            if _calls[0] == int(os.environ["STALL_SAVE"]):
                buf = io.BytesIO()
                _save(obj, buf, *args, **kwargs)
                with open(f, "wb") as out:  # half the checkpoint on disk, then wait to be killed
                    out.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                    out.flush()
                    os.fsync(out.fileno())
                Path(os.environ["STALL_MARKER"]).write_text(str(f))
                time.sleep(600)
        return _save(obj, f, *args, **kwargs)

    torch.save = save
"""


def _env(home: Path, **extra: str) -> dict:
    env = {**os.environ, "SUBSAMPLE_HOME": str(home), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}
    env.pop("MLFLOW_TRACKING_URI", None)  # the home's own database
    return env


def start(home: Path, *args: str, **extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *TRAIN, *args],
        cwd=ROOT,
        env=_env(home, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the SIGKILL reaches nothing else
    )


def cli_train(home: Path, *args: str) -> dict:
    p = start(home, *args)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    return json.loads(out)


def kill(p: subprocess.Popen) -> None:
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL  # it was still running: killed, not finished


def wait_for(path_glob: tuple[Path, str], p: subprocess.Popen, timeout: float = 600) -> Path:
    folder, pattern = path_glob
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
        if p.poll() is not None:
            raise AssertionError(f"the run ended ({p.returncode}) before {pattern} appeared: {p.stderr.read()[-3000:]}")
        time.sleep(0.02)
    raise AssertionError(f"{pattern} did not appear in {timeout} s")


def assert_same_run(a: dict, b: dict) -> None:
    """Bit-for-bit: every weight, buffer and optimiser state, every step's losses, the epoch-0 record."""
    for part in ("G", "D"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    for opt in ("opt_g", "opt_d"):
        sa, sb = a[opt]["state"], b[opt]["state"]
        assert sa.keys() == sb.keys() and all(
            torch.equal(sa[i][k], sb[i][k]) if torch.is_tensor(sa[i][k]) else sa[i][k] == sb[i][k]
            for i in sa
            for k in sa[i]
        ), opt
    assert (a["epoch"], a["step"], a["g_steps"]) == (b["epoch"], b["step"], b["g_steps"]) == (EPOCHS, 32, 32)
    for key in ("loss_d", "loss_g", "initial"):
        assert a["history"][key] == b["history"][key], key
    drop = ("seconds", "images_per_second")
    assert [{k: v for k, v in e.items() if k not in drop} for e in a["history"]["epochs"]] == [
        {k: v for k, v in e.items() if k not in drop} for e in b["history"]["epochs"]
    ]


def checkpoint(summary: dict) -> dict:
    return torch.load(Path(summary["path"]) / "checkpoint.pt", weights_only=True)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run, through the CLI: its summary, final checkpoint and per-epoch seconds."""
    with stage_home(tmp_path_factory, "kill-straight", "toy", patterns(), tables=TablesConfig(bins=(8, 8))) as home:
        s = cli_train(home, "--set", "track=false")
        yield s, checkpoint(s)


def fresh_home(tmp_path_factory, prefix: str) -> Path:
    with stage_home(tmp_path_factory, prefix, "toy", patterns(), tables=TablesConfig(bins=(8, 8))) as home:
        return home


def test_sigkill_mid_epoch_then_cli_resume_is_bit_identical(straight, tmp_path_factory):
    """Killed at a random moment of epoch 2 (after epoch 1's checkpoint, within one epoch's measured
    time), with MLflow tracking on; `--resume` continues from the checkpoint, in the same MLflow run."""
    import mlflow

    s0, ck0 = straight
    home = fresh_home(tmp_path_factory, "kill-epoch")
    p = start(home, "--set", "track=true")
    first = wait_for((home / "stages/train", "*.work/checkpoint.pt"), p)
    epoch_seconds = ck0["history"]["epochs"][1]["seconds"]
    delay = random.uniform(0.1, 0.9) * epoch_seconds
    time.sleep(delay)
    kill(p)
    work = first.parent
    kept = torch.load(first, weights_only=True)["epoch"]
    assert 1 <= kept < EPOCHS, f"killed {delay:.2f} s into epoch 2 (epoch took {epoch_seconds:.2f} s); kept {kept}"
    assert not (home / "stages/train" / s0["key"]).exists()  # no artifact from the killed run
    run_id = json.loads((work / "run.json").read_text())["mlflow_run_id"]

    resumed = cli_train(home, "--set", "track=true", "--resume")
    assert resumed["key"] == s0["key"] and resumed["resumed_from_epoch"] == kept, (delay, resumed)
    assert resumed["mlflow_run_id"] == run_id and not work.exists()
    assert_same_run(ck0, checkpoint(resumed))
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    assert client.get_run(run_id).info.status == "FINISHED"
    losses = client.get_metric_history(run_id, "loss_d")
    assert len(losses) >= 1 and len({h.step for h in losses}) == len(losses)  # no step logged twice


@pytest.mark.parametrize("stall", [1, 2], ids=["first-checkpoint", "second-checkpoint"])
def test_sigkill_mid_checkpoint_write_then_cli_resume_is_bit_identical(straight, tmp_path_factory, stall):
    """Killed while the checkpoint's temporary file is half-written: the first checkpoint (nothing to resume:
    --resume starts over) or the second (epoch 1's checkpoint.pt is intact and resumed from)."""
    s0, ck0 = straight
    home = fresh_home(tmp_path_factory, f"kill-write{stall}")
    hook = home.parent / f"hook{stall}"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(STALL_HOOK))
    marker = home.parent / f"stalled{stall}"
    p = start(
        home,
        "--set",
        "track=false",
        PYTHONPATH=f"{hook}{os.pathsep}{ROOT}",
        STALL_SAVE=str(stall),
        STALL_MARKER=str(marker),
    )
    wait_for((marker.parent, marker.name), p)
    kill(p)
    stalled = Path(marker.read_text())
    ckpt = stalled.with_name("checkpoint.pt")
    with pytest.raises(RuntimeError, match="zip archive"):
        torch.load(stalled, weights_only=True)  # truly half a checkpoint on disk
    kept = torch.load(ckpt, weights_only=True)["epoch"] if ckpt.exists() and ckpt != stalled else None

    resumed = cli_train(home, "--set", "track=false", "--resume")
    assert_same_run(ck0, checkpoint(resumed))
    assert not stalled.parent.exists()
    # what made that possible: the half-written file was the temporary one, checkpoint.pt the
    # previous epoch's whole checkpoint (none at the first save: --resume started over)
    assert stalled.name != "checkpoint.pt" and stalled.name.endswith(".tmp")  # storage.safe_io.atomic_path's
    assert kept == (1 if stall == 2 else None) == resumed["resumed_from_epoch"]


def test_an_unreadable_checkpoint_is_one_line_naming_it(straight, tmp_path_factory):
    """A checkpoint cut short by something other than this project (a full disk, a copy) is refused
    in one line that names the file and says how to start over (--refresh)."""
    s0, _ = straight
    home = fresh_home(tmp_path_factory, "kill-bad")
    work = home / "stages/train" / f"{s0['key']}.work"
    work.mkdir(parents=True)
    (work / "checkpoint.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    p = start(home, "--set", "track=false", "--resume")
    out, err = p.communicate(timeout=600)
    assert p.returncode != 0 and out == ""
    last = err.strip().splitlines()[-1]  # after the resolved configuration's notes, the error: one line
    assert last.startswith(f"train: cannot read checkpoint {work / 'checkpoint.pt'}"), err
    assert last.endswith("re-run with --refresh to start over") and "Traceback" not in err
