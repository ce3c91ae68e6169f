"""Issue 23: interruptions, a dead owner's runs, a moved home, and the tracking server's credentials.

Real signals to real processes: each command is started as a terminal starts it (its own process
group, ``start_new_session=True``), then its group gets SIGINT (Ctrl-C) or its process SIGTERM.
Afterwards no process of the command may be alive (every process in the sessions its processes
had), the MLflow run must be KILLED with the reason tagged, the output must hold one line about it
and no traceback, and the next command must work.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBSAMPLE = str(Path(sys.executable).with_name("subsample"))


# --- helpers --------------------------------------------------------------------------------------


class Command:
    """A ``subsample`` command started as a terminal starts it, its stderr read as it comes."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(
            [SUBSAMPLE, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.sessions: set[int] = set()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def err(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.err:
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before {text!r}: {self.err[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s: {self.err[-3000:]}"
            time.sleep(0.1)
        self.note_sessions()

    def note_sessions(self) -> None:
        """The sessions of the command's processes (the supervisor's and its worker's)."""
        try:
            procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.Error:
            return
        for p in procs:
            try:
                self.sessions.add(os.getsid(p.pid))
            except OSError:
                pass

    def signal_group(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)  # as a terminal sends Ctrl-C: to the whole foreground group

    def finish(self, timeout: float = 120) -> int:
        self.proc.wait(timeout)
        self._reader.join(10)
        return self.proc.returncode

    def alive(self) -> list[str]:
        """Processes still alive in any session the command's processes had."""
        out = []
        for p in psutil.process_iter(["pid", "cmdline", "status"]):
            try:
                if os.getsid(p.pid) in self.sessions and p.info["status"] != psutil.STATUS_ZOMBIE:
                    out.append(f"{p.pid} {' '.join(p.info['cmdline'] or [])[:120]}")
            except (OSError, psutil.Error):
                pass
        return out


def env_for(home: Path, prefect_home: Path | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "SUBSAMPLE_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_URL"):
        env.pop(var, None)
    env.update(extra)
    if prefect_home is not None:
        env["PREFECT_HOME"] = str(prefect_home)
    return env


def interrupted_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip().startswith("subsample: ") and " by SIG" in ln]


def run_statuses(home: Path) -> dict[str, tuple[str, dict[str, str]]]:
    import sqlite3

    con = sqlite3.connect(home / "mlflow.db")
    try:
        runs = dict(con.execute("SELECT run_uuid, status FROM runs").fetchall())
        out = {}
        for run_id, status in runs.items():
            tags = dict(con.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)).fetchall())
            out[run_id] = (status, tags)
        return out
    finally:
        con.close()


@pytest.fixture()
def tiny_home(tmp_path, monkeypatch):
    """A home holding data set 'tiny' (256 random 16×16 images), its features and its table."""
    from pipeline.config import FeaturesConfig, TablesConfig
    from pipeline.stages.features import run_features
    from pipeline.stages.tables import run_tables
    from storage.store import write_store

    home = tmp_path / "home"
    monkeypatch.setenv("SUBSAMPLE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_store("tiny", np.random.default_rng(0).integers(0, 256, (256, 16, 16, 3), dtype=np.uint8))
    run_features("tiny", FeaturesConfig(workers=1), progress=False)
    run_tables("tiny", TablesConfig(bins=(4, 4)), FeaturesConfig())
    return home


TRAIN = ["train", "tiny", "--preset", "smoke", "--bins", "4", "4", "--batch-size", "32"]
SMALL = ["--set", "kl_samples=32", "--set", "sample_grid=4", "--set", "ngf=4", "--set", "ndf=4"]


# --- credentials and tracking servers ---------------------------------------------------------------

URIS = [  # (URI, its password): the password holds @, / or : (5 of 13 URIs leaked a part of it)
    ("http://u:se@cret1@host:5000", "se@cret1"),
    ("http://u:pass/word9@host", "pass/word9"),
    ("http://u:alpha:beta:gamma@host/path", "alpha:beta:gamma"),
    ("https://alice:x@y/zeta:wxyz@mlflow.example.com:443/api", "x@y/zeta:wxyz"),
    ("http://u:p%40ss%2Fword@host", "p%40ss%2Fword"),
    ("postgresql://u:pass@word@db:5432/mlflow", "pass@word"),
    ("http://u:@@@host", "@@"),
    ("http://user:paaa:ssss@host?x=1", "paaa:ssss"),
    ("http://u:hunter2@host and then http://v:s3cr@t/@other", "s3cr@t/"),
]


@pytest.mark.parametrize("uri,password", URIS)
def test_a_password_is_redacted_whatever_it_holds(uri, password, monkeypatch):
    from storage.errors import SubsampleError, redact_uri

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    for text in (uri, f"could not reach {uri} (refused)", f"('{uri}',)", str(SubsampleError("mlflow", uri))):
        out = redact_uri(text)
        assert password not in out and "***" in out, (text, out)
        for piece in re.split(r"[@/:]", password):  # nor any part of it
            assert len(piece) < 4 or piece not in out, (text, out)
    assert "hunter2" not in redact_uri(URIS[-1][0])  # the first of two URIs on one line too


def test_urls_without_credentials_are_left_alone():
    from storage.errors import redact_uri

    for text in (
        "http://host:5000/api/2.0/mlflow/runs/get",
        "file:///home/stages/.tmp-k1-123@host-deadbeef/grids",
        "sqlite:////tmp/a@b/mlflow.db",
        "see /tmp/x@y/z",
    ):
        assert redact_uri(text) == text


def test_the_tracking_uris_credentials_never_reach_mlflow(monkeypatch):
    """The password leaves the URI for MLflow's basic-auth variables, and is redacted word for word
    anywhere (even where no URI surrounds it)."""
    from storage.errors import redact_uri
    from storage.paths import mlflow_tracking_uri

    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:se@cret1@127.0.0.1:5000")
    assert mlflow_tracking_uri() == "http://127.0.0.1:5000"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "se@cret1"
    assert "cret1" not in redact_uri("auth failed for alice / se@cret1 at host")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_tracking_server_is_one_line_without_the_password(tmp_path):
    run_id = "0" * 32
    env = env_for(tmp_path / "home", MLFLOW_TRACKING_URI=f"http://u:se@cret1@127.0.0.1:{closed_port()}")
    p = subprocess.run(
        [SUBSAMPLE, "compare-report", run_id], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    out = p.stdout + p.stderr
    assert p.returncode == 2, out
    assert "cret1" not in out and "Traceback" not in out, out
    assert "cannot reach the tracking server http://127.0.0.1:" in p.stderr, out
    assert len(p.stderr.strip().splitlines()) == 1, out


# --- owners -----------------------------------------------------------------------------------------


def dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def test_an_owner_token_tells_a_live_process_from_a_gone_one():
    from storage.locks import owner_tag
    from storage.owners import boot_id, process_token, token_gone

    me = process_token()
    host = owner_tag().split("@")[1]
    assert not token_gone(me)
    assert token_gone(f"{dead_pid()}@{host}")
    assert not token_gone(f"{dead_pid()}@another-host")  # never judged
    assert token_gone(me.replace(f"start={me.rsplit('start=', 1)[1]}", "start=1"))  # a reused pid
    if boot_id():
        assert token_gone(me.replace(boot_id(), "00000000-0000-0000-0000-000000000000"))  # a restart


HOLD_RUN = """
import sys, time
from storage import tracking
run = tracking.start_run("tiny", run_name="held", tags={}, params={})
print(run, flush=True)
time.sleep(600)
"""


def test_a_run_left_running_by_a_killed_process_is_marked_when_the_home_is_opened(tmp_path, monkeypatch):
    from storage import tracking

    home = tmp_path / "home"
    env = env_for(home, PYTHONPATH=str(ROOT))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_RUN], env=env, stdout=subprocess.PIPE, text=True)
    run_id = holder.stdout.readline().strip()
    monkeypatch.setenv("SUBSAMPLE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "_OPENED", set())
    try:
        tracking.client()  # its owner is alive: left alone
        assert run_statuses(home)[run_id][0] == "RUNNING"
    finally:
        holder.kill()  # kill -9
        holder.wait()
    monkeypatch.setattr(tracking, "_OPENED", set())
    tracking.client()
    status, tags = run_statuses(home)[run_id]
    assert status == "KILLED"
    assert f"its process ({holder.pid}@" in tags["subsample.ended_by"]


# --- real signals ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_stops_a_training_run_and_the_next_run_works(tiny_home):
    env = env_for(tiny_home)
    cmd = Command([*TRAIN, "--epochs", "500", *SMALL], env)
    cmd.wait_for("train epoch 2/500")
    cmd.signal_group(signal.SIGINT)
    assert cmd.finish() == 130, cmd.err[-3000:]
    assert cmd.alive() == []
    assert "Traceback" not in cmd.err, cmd.err[-3000:]
    lines = interrupted_lines(cmd.err)
    assert len(lines) == 1 and "interrupted by SIGINT (Ctrl-C)" in lines[0], cmd.err[-2000:]
    [(run_id, (status, tags))] = run_statuses(tiny_home).items()
    assert status == "KILLED" and tags["subsample.ended_by"].startswith("interrupted (Ctrl-C)")
    assert f"MLflow run {run_id} marked KILLED" in lines[0]
    # nothing blocks the next run: it trains (its lock is free) and finishes
    again = subprocess.run([SUBSAMPLE, *TRAIN, "--epochs", "1", *SMALL], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "waiting for it" not in again.stderr
    assert sorted(s for s, _ in run_statuses(tiny_home).values()) == ["FINISHED", "KILLED"]


@pytest.mark.slow
def test_sigterm_to_the_process_alone_stops_ingest_and_leaves_nothing_half_built(tmp_path, tiny_cifar_source):
    home = tmp_path / "home"
    env = env_for(home)
    big = tmp_path / "src"
    big.mkdir()
    data = (Path(tiny_cifar_source) / "data_batch_1.bin").read_bytes()
    for i in range(1, 6):
        (big / f"data_batch_{i}.bin").write_bytes(data * 40)  # 5 × 7,680 images
    cmd = Command(["ingest", str(big), "--name", "big", "--size", "32"], env)
    cmd.wait_for("ingest big")
    os.kill(cmd.proc.pid, signal.SIGTERM)  # the process alone, as a process manager stops it
    assert cmd.finish() == 143, cmd.err[-3000:]
    assert cmd.alive() == []
    assert "Traceback" not in cmd.err and len(interrupted_lines(cmd.err)) == 1, cmd.err[-3000:]
    assert not (home / "datasets" / "big.zarr").exists()  # no store that looks complete
    again = subprocess.run(
        [SUBSAMPLE, "ingest", str(tiny_cifar_source), "--name", "big", "--size", "32", "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p.name for p in (home / "datasets").iterdir()] == ["big.zarr"]  # the killed one's temporary is gone


@pytest.mark.slow
def test_ctrl_c_to_a_flow_run_stops_the_temporary_prefect_server(tmp_path, tiny_cifar_source):
    env = env_for(tmp_path / "home", tmp_path / "prefect")
    cmd = Command(["run", "--dataset", "tinyc", "--source", str(tiny_cifar_source), "--preset", "smoke"], env)
    cmd.wait_for("Task run 'ingest")  # the server answers and the flow runs
    assert any("uvicorn" in " ".join(p.cmdline()) for p in psutil.Process(cmd.proc.pid).children(recursive=True))
    cmd.signal_group(signal.SIGINT)
    assert cmd.finish() == 130, cmd.err[-3000:]
    assert cmd.alive() == []
    assert "Traceback" not in cmd.err, cmd.err[-3000:]
    [line] = interrupted_lines(cmd.err)
    assert "the temporary Prefect server" in line


# --- a moved home ------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.slow
def test_a_moved_or_copied_home_writes_nothing_to_the_old_place(tiny_home, monkeypatch):
    from pipeline.config import FeaturesConfig, TablesConfig
    from pipeline.presets import resolve_batches_config, resolve_train_config
    from pipeline.stages.train import run_train
    from storage import tracking

    def train(seed: int) -> dict:
        cfg = resolve_train_config("smoke", {"kl_samples": 32, "sample_grid": 4, "ngf": 4, "ndf": 4, "seed": seed})
        batches = resolve_batches_config("smoke", {"batch_size": 32, "seed": seed})
        return run_train("tiny", cfg, batches, TablesConfig(bins=(4, 4)), FeaturesConfig(), progress=False)

    first = train(0)
    moved = tiny_home.parent / "moved"
    shutil.move(tiny_home, moved)
    monkeypatch.setenv("SUBSAMPLE_HOME", str(moved))
    s = train(1)
    assert not tiny_home.exists()  # nothing was written to the old path (MLflow would re-create it)
    run = tracking.client().get_run(s["mlflow_run_id"])
    assert run.info.artifact_uri.startswith((moved / "mlflow-artifacts").as_uri())
    logged = moved / "mlflow-artifacts" / "subsample" / "tiny" / s["mlflow_run_id"] / "artifacts"
    assert (logged / "generator.pt").exists() and (logged / "grids").is_dir()
    # the first run's recorded locations follow the home too, and a cache hit names today's paths
    assert tracking.client().get_run(first["mlflow_run_id"]).info.artifact_uri.startswith(moved.as_uri())
    assert train(0)["grids"].startswith(str(moved))
    # a copy: the original stays as it was
    copy = tiny_home.parent / "copy"
    shutil.copytree(moved, copy, symlinks=True)
    before = snapshot(moved)
    monkeypatch.setenv("SUBSAMPLE_HOME", str(copy))
    s2 = train(2)
    assert snapshot(moved) == before
    assert (
        copy / "mlflow-artifacts" / "subsample" / "tiny" / s2["mlflow_run_id"] / "artifacts" / "generator.pt"
    ).exists()


@pytest.mark.slow
def test_kill_9_of_the_command_stops_its_worker_and_marks_its_run(tiny_home):
    """The supervisor killed outright: the kernel tells the worker (PR_SET_PDEATHSIG), which marks
    its run KILLED and stops as on SIGTERM."""
    cmd = Command([*TRAIN, "--epochs", "500", *SMALL], env_for(tiny_home))
    cmd.wait_for("train epoch 2/500")
    cmd.proc.kill()
    cmd.finish()
    deadline = time.monotonic() + 60
    while cmd.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cmd.alive() == []
    [(status, tags)] = run_statuses(tiny_home).values()
    assert status == "KILLED" and tags["subsample.ended_by"].startswith("terminated")


def test_which_commands_are_supervised(monkeypatch):
    from storage.interrupts import should_supervise

    monkeypatch.delenv("SUBSAMPLE_SUPERVISE", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert should_supervise(["run", "--dataset", "demo"]) and should_supervise(["ingest", "x", "--name", "y"])
    assert not should_supervise(["presets"]) and not should_supervise(["run", "--help"]) and not should_supervise([])
    monkeypatch.setenv("WORLD_SIZE", "2")  # a rank torchrun started: its agent supervises it
    assert not should_supervise(["train", "demo"])
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("SUBSAMPLE_SUPERVISE", "0")
    assert not should_supervise(["train", "demo"])
