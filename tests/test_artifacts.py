"""storage.artifacts: content-addressed keys, atomic builds, verification and cache hits."""

from __future__ import annotations

import time

import pytest

from storage.artifacts import (
    artifact_key,
    artifact_path,
    artifact_status,
    build_artifact,
    cached_summary,
    open_artifact,
)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _build(key: str, text: str = "data", summary: dict | None = None):
    with build_artifact("demo", key, params={"p": 1}, inputs={"x": "h"}, code_version="1") as b:
        (b.path / "out.txt").write_text(text)
        b.summary = summary or {"stage": "demo", "where": str(b.final_path / "out.txt")}
    return open_artifact("demo", key)


def test_key_depends_on_params_inputs_and_code_version_only():
    k = artifact_key("tables", {"bins": [32, 32]}, {"features": "abc"}, "1")
    assert k == artifact_key("tables", {"bins": (32, 32)}, {"features": "abc"}, "1")
    assert k != artifact_key("tables", {"bins": [16, 16]}, {"features": "abc"}, "1")
    assert k != artifact_key("tables", {"bins": [32, 32]}, {"features": "abd"}, "1")
    assert k != artifact_key("tables", {"bins": [32, 32]}, {"features": "abc"}, "2")
    assert k != artifact_key("batches", {"bins": [32, 32]}, {"features": "abc"}, "1")


def test_build_is_atomic_and_recorded(home):
    art = _build("k1")
    assert art is not None and art.path == artifact_path("demo", "k1")
    assert art.summary["where"] == str(art.path / "out.txt")  # final_path, not the temporary directory
    assert art.params == {"p": 1} and art.inputs == {"x": "h"}
    with pytest.raises(RuntimeError):
        with build_artifact("demo", "k2", params={}, inputs={}, code_version="1") as b:
            (b.path / "half.txt").write_text("half")
            raise RuntimeError("killed")
    assert artifact_status("demo", "k2") == "missing"
    assert [p.name for p in (home / "stages" / "demo").iterdir()] == ["k1"]  # no temporary left behind


def test_corruption_is_detected_and_a_rebuild_replaces_it():
    art = _build("k1")
    (art.path / "out.txt").write_text("tampered")
    assert artifact_status("demo", "k1") == "corrupt"
    assert open_artifact("demo", "k1") is None
    assert cached_summary("demo", "k1", started=time.perf_counter()) is None
    assert _build("k1", "data") is not None
    assert artifact_status("demo", "k1") == "ok"


def test_cached_summary_reports_a_hit_with_the_callers_fields():
    _build("k1", summary={"stage": "demo", "dataset": "a", "n": 3, "cache_hit": False})
    hit = cached_summary("demo", "k1", started=time.perf_counter(), dataset="b", key="k1")
    assert hit["cache_hit"] is True and hit["n"] == 3
    assert hit["dataset"] == "b" and hit["key"] == "k1"
    assert hit["path"] == str(artifact_path("demo", "k1")) and hit["seconds"] >= 0
    assert cached_summary("demo", "nope", started=time.perf_counter()) is None
