"""Faults (docs/security.md, "Faults and interruptions"): every write resolves
inside the home and never goes through a link leading out; file-system faults (disk full, the
file-size limit, a read-only home, the home a file, a damaged manifest) are one line; the
divergence guard catches short runs and absurd learning rates; numba's cache stays out of the
source tree. Hostile inputs bounded before they are built: tests/test_bounded_inputs.py."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import blob_images

from flows.cli import main
from storage.errors import SubsampleError

ROOT = Path(__file__).resolve().parents[1]


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``subsample ARGV`` in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def last_line(err: str) -> str:
    """The error line (the last non-empty line on stderr); no traceback anywhere."""
    assert "Traceback" not in err, err
    lines = [ln.strip() for ln in re.split(r"[\r\n]", err) if ln.strip()]
    assert lines, err
    return lines[-1]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("SUBSAMPLE_HOME", str(h))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return h


@pytest.fixture
def outside(tmp_path) -> Path:
    """A file outside the home that a planted link points to; its bytes must never change."""
    p = tmp_path / "outside" / "precious.txt"
    p.parent.mkdir()
    p.write_text("do not touch\n")
    return p


# --- 1. every write resolves inside the home -------------------------------------------------------


def test_an_mlflow_lock_linked_outside_is_refused_and_its_target_left_intact(home, outside):
    """The re-audit: `mlflow.db.lock` as a link to an outside file, and `train` truncated it to 0 bytes."""
    from storage import tracking

    (home / "mlflow.db.lock").symlink_to(outside)
    tracking._OPENED.clear()
    with pytest.raises(SubsampleError, match=rf"home: {re.escape(str(home))}/mlflow\.db\.lock is a symbolic link"):
        tracking.client()
    (home / "mlflow.db.lock").unlink()
    (home / "mlflow.db-journal").symlink_to(outside)  # SQLite would write its journal through it
    with pytest.raises(SubsampleError, match=r"mlflow\.db-journal is a symbolic link"):
        tracking.client()
    assert outside.read_text() == "do not touch\n"


def test_lock_files_are_never_opened_through_a_link(home, outside):
    from storage.locks import file_lock, lock_is_free

    lock = home / "stages" / "train" / "0123456789abcdef.lock"
    lock.parent.mkdir(parents=True)
    lock.symlink_to(outside)
    with pytest.raises(SubsampleError, match="symbolic link"):
        with file_lock(lock):
            pass
    assert not lock_is_free(lock)  # not ours to judge: nothing removes what it guards
    assert outside.read_text() == "do not touch\n"


def test_a_folder_linked_outside_is_refused_naming_the_link(home, outside):
    from storage.safe_io import atomic_path, make_dirs, open_write, write_atomic

    (home / "floors").symlink_to(outside.parent, target_is_directory=True)
    for write in (
        lambda: write_atomic(home / "floors" / "new.json", "{}"),
        lambda: open_write(home / "floors" / "log.jsonl", "a").close(),
        lambda: make_dirs(home / "floors" / "sub"),
        lambda: atomic_path(home / "floors" / "precious.txt").__enter__(),
    ):
        with pytest.raises(SubsampleError, match=rf"{re.escape(str(home / 'floors'))} is a symbolic link to .*outside"):
            write()
    assert sorted(p.name for p in outside.parent.iterdir()) == ["precious.txt"]
    assert outside.read_text() == "do not touch\n"


def test_a_file_linked_anywhere_is_never_written_through(home, outside):
    from storage.safe_io import open_write, write_atomic

    inside = home / "target.txt"
    inside.write_text("inside\n")
    (home / "out.json").symlink_to(outside)
    (home / "in.json").symlink_to(inside)
    with pytest.raises(SubsampleError, match="out.json is a symbolic link"):
        write_atomic(home / "out.json", "x")
    with pytest.raises(SubsampleError, match="symbolic link"):
        open_write(home / "in.json", "a")  # O_NOFOLLOW, even when it leads inside
    write_atomic(home / "in.json", "new")  # replaced: the link itself, not its target
    assert not (home / "in.json").is_symlink() and (home / "in.json").read_text() == "new"
    assert inside.read_text() == "inside\n" and outside.read_text() == "do not touch\n"


def test_floors_linked_outside_write_nothing_there(home, outside, capsys):
    from pipeline.floors import cached_feature_kl_floor

    table = _small_table()
    (home / "floors").symlink_to(outside.parent, target_is_directory=True)
    floor = cached_feature_kl_floor(table, "ab" * 32, 64)
    assert floor["cache_hit"] is False
    assert sorted(p.name for p in outside.parent.iterdir()) == ["precious.txt"]
    assert "is a symbolic link" in capsys.readouterr().err


def _small_table():
    from pipeline.config import FeaturesConfig, TablesConfig
    from pipeline.stages.features import run_features
    from pipeline.stages.tables import load_table, run_tables
    from storage.artifacts import open_artifact
    from storage.store import write_store

    write_store("toy", blob_images(64))
    run_features("toy", FeaturesConfig(workers=1), progress=False)
    key = run_tables("toy", TablesConfig(bins=(4, 4)), FeaturesConfig(workers=1))["key"]
    return load_table(open_artifact("tables", key))


def test_mlflow_artifacts_are_not_copied_through_links(home, outside):
    from storage.safe_io import check_artifact_copies

    src = home / "stages" / "x"
    src.mkdir(parents=True)
    (src / "grid.png").write_bytes(b"png")
    art = home / "mlflow-artifacts"
    art.mkdir()
    (art / "subsample").symlink_to(outside.parent, target_is_directory=True)
    with pytest.raises(SubsampleError, match="subsample is a symbolic link"):
        check_artifact_copies((art / "subsample" / "1" / "run" / "artifacts").as_uri(), [(src / "grid.png", None)])
    run_dir = home / "mlflow-artifacts" / "own" / "artifacts"
    (run_dir / "grids").mkdir(parents=True)
    (run_dir / "grids" / "grid.png").symlink_to(outside)
    with pytest.raises(SubsampleError, match="grid.png is a symbolic link"):
        check_artifact_copies(run_dir.as_uri(), [(src, "grids")])
    check_artifact_copies("http://tracking.example/artifacts", [(src, "grids")])  # a remote store: not ours
    assert outside.read_text() == "do not touch\n"


# --- 2. file-system faults are one line -------------------------------------------------------------


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.ENOSPC, "no space left on the device"),
        (errno.EFBIG, "file-size limit"),
        (errno.EROFS, "read-only"),
        (errno.EDQUOT, "quota"),
    ],
)
def test_file_system_faults_become_one_line_naming_the_path(home, code, words):
    from storage.safe_io import fault

    err = fault(OSError(code, os.strerror(code), str(home / "stages" / "x")), "tables")
    assert err is not None and str(err).startswith(f"tables: {home / 'stages' / 'x'}: ") and words in str(err)
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = OSError(code, os.strerror(code))
    assert words in str(fault(wrapped, "train"))
    assert fault(ValueError("a bug"), "train") is None


def test_library_messages_of_a_full_disk_are_recognised(home):
    from storage.safe_io import fault

    assert "no space left" in str(fault(Exception("(sqlite3.OperationalError) database or disk is full")))
    assert "read-only" in str(fault(Exception("attempt to write a readonly database")))


def test_a_disk_full_while_a_stage_writes_is_one_line_and_leaves_no_artifact(home, monkeypatch, capsys):
    import pipeline.stages.tables as tables_stage
    from pipeline.config import FeaturesConfig
    from pipeline.stages.features import run_features
    from storage.store import write_store

    write_store("toy", blob_images(64))
    run_features("toy", FeaturesConfig(workers=1), progress=False)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))

    monkeypatch.setattr(tables_stage.np, "savez", full)
    code, _, err = cli(["tables", "toy", "--bins", "4", "4"], capsys)
    assert code == 2
    line = last_line(err)
    assert line.startswith("tables: ") and "no space left on the device" in line
    stage = home / "stages" / "tables"
    assert not any((p / "manifest.json").exists() for p in stage.iterdir()) if stage.exists() else True
    assert not [p for p in stage.iterdir() if p.name.startswith(".tmp-")] if stage.exists() else True


FSIZE_SCRIPT = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
    from flows.cli import main
    main(["ingest", sys.argv[1], "--name", "big", "--size", "32"])
""")


def test_the_file_size_limit_is_one_line_and_leaves_no_store(home, tmp_path):
    """``ulimit -f``: Python ignores SIGXFSZ, so a write past the limit fails with EFBIG (the
    re-audit counted 63 tracebacks under ``ulimit -f 2000``)."""
    src = tmp_path / "arrays.npz"
    np.savez(src, images=np.random.default_rng(0).integers(0, 256, (600, 32, 32, 3), dtype=np.uint8))
    env = {**os.environ, "SUBSAMPLE_HOME": str(home), "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [sys.executable, "-c", FSIZE_SCRIPT, str(src), str(256 << 10)], capture_output=True, text=True, env=env
    )
    assert p.returncode == 2, p.stderr
    line = last_line(p.stderr)
    assert "file-size limit" in line, line
    assert not (home / "datasets" / "big.zarr").exists()
    assert not [q for q in (home / "datasets").iterdir() if q.name.startswith(".big")]


def test_a_read_only_home_is_one_line(home, tmp_path, monkeypatch, capsys):
    """As root, permission bits do not stop a write: the read-only file system is simulated at
    ``os.mkdir`` / ``os.open`` for paths under the home (the manual check mounts one)."""
    src = tmp_path / "arrays.npz"
    np.savez(src, images=np.zeros((4, 8, 8, 3), np.uint8))
    real_mkdir, real_open = os.mkdir, os.open

    def refuse(path) -> None:
        if str(home) in os.fsdecode(path):
            raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))

    monkeypatch.setattr(os, "mkdir", lambda p, *a, **k: (refuse(p), real_mkdir(p, *a, **k))[1])
    monkeypatch.setattr(os, "open", lambda p, *a, **k: (refuse(p), real_open(p, *a, **k))[1])
    code, _, err = cli(["ingest", str(src), "--name", "ro"], capsys)
    assert code == 2
    line = last_line(err)
    assert "read-only" in line and str(home) in line, line


def test_a_home_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    f = tmp_path / "home-file"
    f.write_text("not a folder")
    monkeypatch.setenv("SUBSAMPLE_HOME", str(f))
    src = tmp_path / "arrays.npz"
    np.savez(src, images=np.zeros((4, 8, 8, 3), np.uint8))
    code, _, err = cli(["ingest", str(src), "--name", "x"], capsys)
    assert code == 2
    assert f"SUBSAMPLE_HOME={f} is a file, not a folder" in last_line(err)


def test_a_manifest_naming_a_path_as_its_upstream_is_one_line(home):
    from pipeline.stages.lineage import upstream_artifact
    from storage.artifacts import Artifact

    art = Artifact("train", "0123456789abcdef", home / "stages" / "train" / "0123456789abcdef", {})
    art.manifest["upstream"] = {"tables": "../../../x"}
    with pytest.raises(SubsampleError, match=r"names tables artifact '\.\./\.\./\.\./x' as its upstream"):
        upstream_artifact(art, "tables")


# --- 4. the divergence guard ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_home(tmp_path_factory):
    from conftest import stage_home

    from pipeline.config import TablesConfig

    with stage_home(tmp_path_factory, "faults", "blobs", blob_images(256), tables=TablesConfig(bins=(4, 4))) as h:
        yield h


@pytest.mark.parametrize("lr", ["lr_d", "lr_g"])
def test_a_short_run_with_an_absurd_learning_rate_fails(toy_home, monkeypatch, capsys, lr):
    """8 steps, fewer than the guard's 50-step window: the re-audit's `--set lr_d=1e9` exited 0."""
    monkeypatch.setenv("SUBSAMPLE_HOME", str(toy_home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["train", "blobs", "--preset", "smoke", "--bins", "4", "4", "--batch-size", "32", "--set", "track=false"]
    code, _, err = cli([*args, "--set", f"{lr}=1e9"], capsys)
    assert code == 2
    line = last_line(err)
    assert line.startswith("train: diverged: ") and "last good checkpoint: none (no epoch had finished)" in line
    assert not list((toy_home / "stages" / "train").glob("*/manifest.json"))


def test_the_divergence_message_names_the_epochs_finished(tmp_path):
    from pipeline.stages.train_work import _last_good

    assert _last_good(tmp_path / "checkpoint.pt", 0) == "none (no epoch had finished)"
    assert _last_good(tmp_path / "checkpoint.pt", 2).startswith("none (2 epoch(s) finished")


def test_a_run_ending_above_the_bound_diverged():
    from pipeline.config import TrainConfig
    from pipeline.gan.trainer import Diverged, _check_divergence, check_divergence_at_end

    class T:
        cfg = TrainConfig(diverge_loss_max=10.0, diverge_steps=50)
        steps_over_bound = 0
        last_over_bound = None

    t = T()
    _check_divergence(t, [[1.0, 0, 0], [20.0, 0, 0], [30.0, 0, 0]], {}, 1)
    with pytest.raises(Diverged) as e:
        check_divergence_at_end(t)
    assert (e.value.which, e.value.step, e.value.value) == ("D", 3, 30.0)
    _check_divergence(t, [[1.0, 0, 0]], {}, 4)  # back under the bound at the end: not diverged
    check_divergence_at_end(t)


# --- 5. numba's cache -------------------------------------------------------------------------------


def test_numba_caches_kernels_in_the_users_cache_folder_not_the_source_tree(tmp_path):
    script = textwrap.dedent("""
        import numpy as np
        from kernels.histogram import count_kernel
        count_kernel(np.zeros(4, np.int64), np.zeros(2, np.int64))
        print(count_kernel._cache._cache_path)
    """)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    where = Path(p.stdout.strip().splitlines()[-1])
    assert (tmp_path / "cache" / "subsample-gan" / "numba") in where.parents
    assert list(where.glob("histogram.count_kernel-*.nbi"))
    assert ROOT not in where.parents


def test_resume_refuses_a_work_folder_holding_links(toy_home, monkeypatch, capsys, outside):
    """The re-audit: a killed run's `.work` with planted links, then `--resume`, wrote run.json,
    metrics.jsonl, checkpoint.pt.tmp and the grids through to outside files."""
    import shutil

    monkeypatch.setenv("SUBSAMPLE_HOME", str(toy_home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["train", "blobs", "--preset", "smoke", "--bins", "4", "4", "--batch-size", "32", "--set", "track=false"]
    code, out, _ = cli([*args, "--json"], capsys)
    assert code in (0, None)
    key = json.loads(out)["key"]
    shutil.rmtree(toy_home / "stages" / "train" / key)
    work = toy_home / "stages" / "train" / f"{key}.work"
    work.mkdir()
    (work / "checkpoint.pt").write_bytes(b"a checkpoint to resume")
    (work / "metrics.jsonl").symlink_to(outside)
    (work / "grids").symlink_to(outside.parent, target_is_directory=True)
    code, _, err = cli([*args, "--resume"], capsys)
    assert code == 2
    assert "holds a symbolic link" in last_line(err)
    assert outside.read_text() == "do not touch\n"
    assert sorted(p.name for p in outside.parent.iterdir()) == ["precious.txt"]
