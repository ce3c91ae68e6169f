"""Stages handed their inputs: StageResult, lineage (locating a stage's inputs from configs), the
upstream keys manifests record, and going back up from an artifact without configs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.config import BatchesConfig, FeaturesConfig, TablesConfig
from pipeline.stages import lineage
from pipeline.stages.result import StageResult
from storage.artifacts import build_artifact, open_artifact
from storage.errors import MissingArtifactError, SubsampleError
from storage.store import write_store

TABLES = TablesConfig(bins=(4, 4))


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _store(name: str = "toy", n: int = 64, seed: int = 0):
    images = np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    write_store(name, images)


def test_result_json_is_the_summary_with_the_core_fields_first():
    summary = {
        "stage": "train",
        "dataset": "d",
        "key": "k",
        "preset": "p",
        "epochs": 2,
        "grids": "/g",
        "path": "/a/k",
        "cache_hit": False,
        "seconds": 1.5,
    }
    r = StageResult.from_summary(summary, upstream={"tables": "t"})
    assert (r.stage, r.key, r.path, r.cache_hit, r.seconds, r.dataset) == ("train", "k", "/a/k", False, 1.5, "d")
    assert r.details == {"dataset": "d", "preset": "p", "epochs": 2, "grids": "/g"} and r.upstream == {"tables": "t"}
    out = r.to_json()
    assert out == summary
    assert list(out)[:6] == ["stage", "dataset", "key", "path", "cache_hit", "seconds"]
    assert StageResult.from_summary(out).to_json() == out


def test_stage_functions_hand_on_artifacts_with_the_keys_of_the_stages_run_alone(home):
    """The flow's way (each stage handed the artifact the one before returned) and the CLI's (each
    stage run alone, finding its inputs by lineage) give the same keys; every manifest records
    the keys of the artifacts it was built from."""
    from pipeline.stages.batches import batches_stage, run_batches
    from pipeline.stages.features import features_stage, run_features
    from pipeline.stages.tables import run_tables, tables_stage
    from storage.store import open_store

    _store()
    store = open_store("toy")
    f = features_stage(store, FeaturesConfig(workers=1), progress=False)
    t = tables_stage(f.artifact, TABLES, dataset="toy")
    b = batches_stage(t.artifact, store, BatchesConfig(batch_size=16, epochs=1), progress=False)
    assert not (f.cache_hit or t.cache_hit or b.cache_hit)
    assert (f.artifact.key, t.artifact.key, b.artifact.key) == (f.key, t.key, b.key)

    alone = [
        run_features("toy", FeaturesConfig(workers=1), progress=False),
        run_tables("toy", TABLES),
        run_batches("toy", BatchesConfig(batch_size=16, epochs=1), TABLES, progress=False),
    ]
    assert [s["key"] for s in alone] == [f.key, t.key, b.key]
    assert all(s["cache_hit"] for s in alone)

    ingest_key = lineage.store_key(store)
    assert open_artifact("features", f.key).upstream == f.upstream == {"ingest": ingest_key}
    assert open_artifact("tables", t.key).upstream == t.upstream == {"features": f.key}
    assert open_artifact("batches", b.key).upstream == b.upstream == {"tables": t.key, "ingest": ingest_key}

    got = lineage.locate("batches", "toy", tables=TABLES)
    assert (got.tables.key, got.store.path, got.features, got.train) == (t.key, store.path, None, None)
    assert got.keys() == {"tables": t.key, "ingest": ingest_key}
    # what is handed in is used as it is, the rest is found
    assert lineage.locate("batches", "toy", tables=TABLES, given={"tables": t.artifact}).tables is t.artifact


def test_locate_names_the_first_missing_input_and_its_command(home):
    with pytest.raises(SubsampleError, match="subsample ingest"):
        lineage.locate("features", "nowhere")
    _store("bare")
    with pytest.raises(MissingArtifactError) as e:
        lineage.locate("train", "bare", tables=TABLES, needed_by="train")
    assert str(e.value).startswith("train: the features artifact of data set 'bare'")
    assert "run `subsample features bare` first" in str(e.value)
    with pytest.raises(ValueError, match="train and batches configs"):
        lineage.locate("evaluate", "bare")


def test_upstream_artifact_by_recorded_key_else_by_content_hash(home):
    """Going back up needs no configs: the key the manifest records, or (an artifact made before
    manifests recorded keys) the artifact whose content hash its inputs name; None when gone."""
    with build_artifact("tables", "a" * 16, params={}, inputs={}, code_version="x") as b:
        (b.path / "table.npz").write_bytes(b"the table")
    table = open_artifact("tables", "a" * 16)
    with build_artifact("tables", "b" * 16, params={}, inputs={}, code_version="x") as b:
        (b.path / "table.npz").write_bytes(b"another table")

    with build_artifact(
        "train",
        "c" * 16,
        params={},
        inputs={"tables": table.content_hash},
        code_version="x",
        upstream={"tables": table.key},
    ) as b:
        (b.path / "generator.pt").write_bytes(b"g")
    with build_artifact("train", "d" * 16, params={}, inputs={"tables": table.content_hash}, code_version="x") as b:
        (b.path / "generator.pt").write_bytes(b"g")  # an older train artifact: no upstream keys
    new, old = open_artifact("train", "c" * 16), open_artifact("train", "d" * 16)
    assert json.loads((new.path / "manifest.json").read_text())["upstream"] == {"tables": table.key}
    assert old.upstream == {}
    assert lineage.upstream_artifact(new, "tables").key == table.key
    assert lineage.upstream_artifact(old, "tables").key == table.key
    assert lineage.upstream_artifact(new, "features") is None

    (table.path / "table.npz").write_bytes(b"garbled")  # fails its content hash
    assert lineage.upstream_artifact(new, "tables") is None
    assert lineage.upstream_artifact(old, "tables") is None
