"""Issue 15 (hardening), concurrency: processes sharing one $SUBSAMPLE_HOME.

- two processes opening a fresh MLflow SQLite database both succeed (the schema is created once,
  under a lock);
- two processes replacing the same artifact (or store) over and over never fail: each rename is
  atomic, the loser of a race discards its copy;
- a live training run owns its ``.work`` folder: a second run of the same key waits and then finds
  the artifact cached, never deletes it; folders of processes that are gone are cleaned;
- the whole chain of stages run twice at once on a fresh home: both finish, one training run;
- two ``subsample run`` at once on one home and one fresh PREFECT_HOME (a temporary server each,
  on one SQLite database): both finish, and neither prints a traceback ("database is locked").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def spawn(code: str, home: Path, *args: str, **env: str) -> subprocess.Popen:
    e = {**os.environ, "SUBSAMPLE_HOME": str(home), "PYTHONPATH": str(ROOT), **env}
    e.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=e,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(p: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


@pytest.mark.slow
def test_two_processes_create_the_mlflow_schema_at_once(tmp_path):
    code = """
        import sys
        from storage import tracking
        run = tracking.start_run("demo", run_name=sys.argv[1], tags={}, params={"p": 1})
        tracking.end_run(run)
        print(run)
    """
    procs = [spawn(code, tmp_path / "home", f"r{i}") for i in range(2)]
    results = [finish(p) for p in procs]
    assert [r[0] for r in results] == [0, 0], [r[2][-2000:] for r in results]
    assert len({r[1].strip() for r in results}) == 2


REPLACE = """
    import sys
    from storage.artifacts import build_artifact, open_artifact
    errors = 0
    for i in range(int(sys.argv[2])):
        try:
            with build_artifact("demo", "k1", params={}, inputs={}, code_version="1") as b:
                (b.path / "out.txt").write_text(f"{sys.argv[1]} {i}")
                (b.path / "sub").mkdir()
                (b.path / "sub" / "more.txt").write_text("x" * 1000)
                b.summary = {"writer": sys.argv[1]}
            # a finished build is readable at once, whoever's copy won: a read that the other
            # process's two renames cut short is read again (open_artifact), never reported missing
            if open_artifact("demo", "k1") is None:
                raise RuntimeError(f"read {i}: no artifact right after a finished build")
        except Exception as e:
            errors += 1
            print(type(e).__name__, e, file=sys.stderr)
    print(errors)
"""


def test_two_processes_replacing_the_same_artifact_never_fail(tmp_path):
    from storage.artifacts import open_artifact

    home = tmp_path / "home"
    procs = [spawn(REPLACE, home, f"w{i}", "300") for i in range(2)]
    results = [finish(p) for p in procs]
    assert [r[0] for r in results] == [0, 0], [r[2][-2000:] for r in results]
    assert [int(r[1]) for r in results] == [0, 0], [r[2][-2000:] for r in results]
    os.environ["SUBSAMPLE_HOME"] = str(home)
    try:
        art = open_artifact("demo", "k1")
        assert art is not None and art.summary["writer"] in ("w0", "w1")
    finally:
        del os.environ["SUBSAMPLE_HOME"]
    assert sorted(p.name for p in (home / "stages" / "demo").iterdir()) == ["k1"]  # no temporary or trash left


def test_the_loser_of_a_race_keeps_the_winners_copy(tmp_path, monkeypatch):
    """A build that finishes after another process put a fresh copy in place discards its own;
    one that set out to replace a (corrupt) copy replaces exactly that one."""
    from storage.artifacts import dir_identity, replace_dir

    dst = tmp_path / "a"
    mine, theirs = tmp_path / ".tmp-mine", tmp_path / ".tmp-theirs"
    for d, text in ((mine, "mine"), (theirs, "theirs")):
        d.mkdir()
        (d / "f").write_text(text)
    before = dir_identity(dst)  # nothing there when both builds started
    assert replace_dir(theirs, dst, replaces=before) is True
    assert replace_dir(mine, dst, replaces=before) is False  # the loser
    assert (dst / "f").read_text() == "theirs" and not mine.exists()
    # --refresh: replace what was there when the build started
    newer = tmp_path / ".tmp-newer"
    newer.mkdir()
    (newer / "f").write_text("newer")
    assert replace_dir(newer, dst, replaces=dir_identity(dst)) is True
    assert (dst / "f").read_text() == "newer" and [p.name for p in tmp_path.iterdir()] == ["a"]


def test_two_processes_writing_the_same_store_never_fail(tmp_path):
    code = """
        import sys
        import numpy as np
        from storage.store import open_store, write_store
        for i in range(40):
            write_store("t", np.full((5, 4, 4, 3), int(sys.argv[1]), np.uint8))
            open_store("t", verify=True)
        print("ok")
    """
    home = tmp_path / "home"
    procs = [spawn(code, home, str(i)) for i in range(2)]
    results = [finish(p) for p in procs]
    assert [r[0] for r in results] == [0, 0], [r[2][-2000:] for r in results]
    assert sorted(p.name for p in (home / "datasets").iterdir()) == ["t.zarr"]


def test_temporary_and_trash_folders_of_gone_processes_are_cleaned(tmp_path, monkeypatch):
    from storage.artifacts import build_artifact
    from storage.locks import owner_tag

    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path / "home"))
    stage = tmp_path / "home" / "stages" / "demo"
    stage.mkdir(parents=True)
    host = owner_tag().split("@")[1]
    pid = dead_pid()
    stale = [
        stage / f".tmp-k9-{pid}@{host}-deadbeef",
        stage / f".trash-k9-{pid}@{host}-deadbeef",
        stage / f".tmp-k9-{pid}-deadbeef",
    ]
    kept = [stage / f".tmp-k9-{owner_tag()}-cafef00d", stage / f".tmp-k9-{pid}@elsewhere-cafef00d"]
    for p in stale + kept:
        p.mkdir()
        (p / "x").write_text("x")
    with build_artifact("demo", "k1", params={}, inputs={}, code_version="1") as b:
        b.summary = {}
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


# --- training runs own their work folder ----------------------------------------------------------


HOLD_LOCK = """
    import sys, time
    from pathlib import Path
    from storage.locks import file_lock
    with file_lock(Path(sys.argv[1])):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
"""


def test_a_live_runs_work_folder_is_never_removed_and_a_dead_ones_is(tmp_path, monkeypatch):
    from pipeline.stages.train_work import remove_stale_work, run_lock, work_dir

    home = tmp_path / "home"
    monkeypatch.setenv("SUBSAMPLE_HOME", str(home))
    live, dead, resumable = "a" * 16, "b" * 16, "c" * 16
    for key in (live, dead, resumable):
        work_dir(key).mkdir(parents=True)
        (work_dir(key) / "grids").mkdir()
    (work_dir(resumable) / "checkpoint.pt").write_bytes(b"x")
    holder = spawn(HOLD_LOCK, home, str(run_lock(live)), "30")
    try:
        assert holder.stdout.readline().strip() == "locked"
        removed = remove_stale_work()
        assert removed == [work_dir(dead)]
        assert work_dir(live).exists() and work_dir(resumable).exists()
    finally:
        holder.kill()
        holder.wait()
    assert remove_stale_work() == [work_dir(live)]  # its owner is gone now
    assert work_dir(resumable).exists()  # kept for --resume


def test_a_second_run_of_the_same_key_waits_for_the_first(tmp_path, monkeypatch, capsys):
    """While another process holds the run's lock the second waits (one line on stderr), then
    trains; it never touches the first's work folder."""
    import numpy as np

    from pipeline.config import FeaturesConfig, TablesConfig
    from pipeline.presets import resolve_batches_config, resolve_train_config
    from pipeline.stages.features import run_features
    from pipeline.stages.tables import run_tables
    from pipeline.stages.train import run_train, train_key
    from pipeline.stages.train_work import run_lock, work_dir
    from storage.store import open_store, write_store

    home = tmp_path / "home"
    monkeypatch.setenv("SUBSAMPLE_HOME", str(home))
    rng = np.random.default_rng(0)
    write_store("w", rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8))
    features, tables = FeaturesConfig(workers=1), TablesConfig(bins=(2, 2))
    run_features("w", features, progress=False)
    run_tables("w", tables, features)
    cfg = resolve_train_config("smoke", {"kl_samples": 16, "sample_grid": 4, "track": False, "ngf": 4, "ndf": 4})
    batches = resolve_batches_config("smoke", {"batch_size": 32})
    from pipeline.stages.tables import tables_artifact

    key = train_key(cfg, batches, tables_artifact("w", tables, features).content_hash, open_store("w").content_hash)
    work_dir(key).mkdir(parents=True)
    (work_dir(key) / "live.txt").write_text("the other run's")
    holder = spawn(HOLD_LOCK, home, str(run_lock(key)), "4")
    assert holder.stdout.readline().strip() == "locked"
    t0 = time.monotonic()
    seen_live = []

    import pipeline.stages.train as train_mod

    real = train_mod._train_locked

    def check_then_train(*a, **k):
        seen_live.append((work_dir(key) / "live.txt").exists())
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "_train_locked", check_then_train)
    s = run_train("w", cfg, batches, tables, features, progress=False)
    holder.wait()
    assert time.monotonic() - t0 >= 3  # it waited for the holder
    assert s["key"] == key and s["cache_hit"] is False
    err = capsys.readouterr().err
    assert (
        f"train: the same run ({key}) is training in another process; waiting for it (held by process {holder.pid}"
        in err
    )
    assert seen_live == [True]  # the first's folder was still there when the second started


# --- the whole chain, twice at once, on a fresh home ---------------------------------------------------


CHAIN = """
    import json, sys
    from flows.cli import main
    def run(*argv):
        try:
            main(list(argv) + ["--json"])
        except SystemExit as e:
            if e.code:
                raise
    src = sys.argv[1]
    run("ingest", src, "--name", "tiny", "--size", "16")
    run("features", "tiny", "--workers", "1")
    run("tables", "tiny", "--bins", "4", "4")
    run("batches", "tiny", "--batch-size", "64", "--bins", "4", "4")
    run("train", "tiny", "--preset", "smoke", "--bins", "4", "4", "--batch-size", "64",
        "--set", "kl_samples=32", "--set", "sample_grid=4")
"""


@pytest.mark.slow
def test_the_stage_chain_twice_at_once_on_a_fresh_home(tmp_path, tiny_cifar_source):
    """What two concurrent `subsample run --dataset demo` do to the home (without Prefect): both
    finish, they agree on every key, one training run is recorded, nothing is left over."""
    home = tmp_path / "home"
    procs = [spawn(CHAIN, home, str(tiny_cifar_source)) for _ in range(2)]
    results = [finish(p, timeout=900) for p in procs]
    assert [r[0] for r in results] == [0, 0], [r[2][-3000:] for r in results]
    summaries = [[json.loads(line) for line in r[1].splitlines() if line.startswith("{")] for r in results]
    assert [[s["key"] for s in ss] for ss in summaries][0] == [[s["key"] for s in ss] for ss in summaries][1]
    trains = [ss[-1] for ss in summaries]
    assert sorted(s["cache_hit"] for s in trains) == [False, True]  # the second waited, then found it
    assert trains[0]["mlflow_run_id"] == trains[1]["mlflow_run_id"]
    leftovers = [
        p
        for p in home.rglob("*")
        if p.name.startswith((".tmp-", ".trash-")) or p.name.endswith(".work") or ".zarr.tmp-" in p.name
    ]
    assert leftovers == []


@pytest.mark.slow
def test_two_flow_runs_at_once_print_no_tracebacks(tmp_path, tiny_cifar_source):
    """Each starts Prefect's temporary server on the one PREFECT_HOME; a server's "database is
    locked" goes to $PREFECT_HOME/temporary-server.log and the client retries, so the user sees
    two clean runs."""
    env = {
        **os.environ,
        "SUBSAMPLE_HOME": str(tmp_path / "home"),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    for var in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        env.pop(var, None)
    cmd = [
        str(Path(sys.executable).with_name("subsample")),
        *("run", "--dataset", "tinyc", "--source", str(tiny_cifar_source), "--preset", "smoke"),
        *("--set", "tables.bins=[4,4]", "--set", "train.kl_samples=32", "--set", "train.sample_grid=4"),
    ]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    results = [finish(p, timeout=1200) for p in procs]
    for code, out, err in results:
        assert code == 0, err[-3000:]
        assert "Traceback" not in out + err and "database is locked" not in out + err, err[-3000:]
