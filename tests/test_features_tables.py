"""The features and tables stages on tiny stores: results, caching, rebuilds, errors, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

import pipeline.stages.features as features_mod
from kernels.features import compute_features_reference
from kernels.histogram import cells_reference
from pipeline.config import FeaturesConfig, TablesConfig
from pipeline.stages.features import features_artifact, load_features, run_features
from pipeline.stages.tables import Table, build_table, load_table, run_tables, tables_artifact
from storage.artifacts import open_artifact
from storage.errors import MissingArtifactError, SubsampleError
from storage.store import StoreBuilder

SIZE = 8


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def make_store(name: str, n: int = 50, seed: int = 0, chunk: int = 16, images: np.ndarray | None = None):
    """A store with several chunks (chunk=16), so the Dask pass really iterates."""
    if images is None:
        images = np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    with StoreBuilder(name, size=images.shape[1], n_max=len(images), chunk=chunk) as b:
        b.append(images)
        b.finish()
    return images


def forbid_recompute(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("features were recomputed")

    monkeypatch.setattr(features_mod, "compute_store_features", boom)


# --- features -----------------------------------------------------------------------------------


def test_features_match_reference_and_summary(home):
    images = make_store("tiny")
    s = run_features("tiny", FeaturesConfig(), progress=False)
    assert s["stage"] == "features" and s["dataset"] == "tiny" and s["cache_hit"] is False
    assert s["n_images"] == 50 and s["features"] == ["colour_moment", "sharpness"]
    values, names = load_features(features_artifact("tiny"))
    ref = compute_features_reference(images)
    np.testing.assert_array_equal(values, ref)
    assert values.dtype == np.float64 and names == ("colour_moment", "sharpness")
    assert s["feature_stats"]["sharpness"]["max"] == ref[:, 1].max()
    assert s["feature_stats"]["colour_moment"]["mean"] == pytest.approx(ref[:, 0].mean())
    json.dumps(s)


def test_features_cache_hit_does_not_recompute_and_refresh_does(home, monkeypatch):
    make_store("tiny")
    first = run_features("tiny", progress=False)
    manifest = features_artifact("tiny").path / "manifest.json"
    before = (manifest.stat().st_mtime_ns, manifest.read_text())

    with monkeypatch.context() as m:
        forbid_recompute(m)
        again = run_features("tiny", progress=False)
    assert again["cache_hit"] is True and again["key"] == first["key"]
    assert (manifest.stat().st_mtime_ns, manifest.read_text()) == before

    calls = []
    real = features_mod.compute_store_features
    monkeypatch.setattr(features_mod, "compute_store_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    fresh = run_features("tiny", refresh=True, progress=False)
    assert fresh["cache_hit"] is False and calls == [1] and fresh["key"] == first["key"]


def test_changed_store_gives_new_key(home):
    make_store("tiny", seed=0)
    a = run_features("tiny", progress=False)
    make_store("tiny", seed=1)  # same name, different images
    with pytest.raises(MissingArtifactError):
        features_artifact("tiny")
    b = run_features("tiny", progress=False)
    assert a["key"] != b["key"] and b["cache_hit"] is False


def test_corrupted_features_are_detected_and_rebuilt(home):
    images = make_store("tiny")
    s = run_features("tiny", progress=False)
    chunk_files = [
        p
        for p in (features_artifact("tiny").path / "features.zarr").rglob("*")
        if p.is_file() and p.name != "zarr.json"
    ]
    assert chunk_files
    chunk_files[0].write_bytes(b"\0" * chunk_files[0].stat().st_size)
    assert open_artifact("features", s["key"]) is None
    with pytest.raises(MissingArtifactError, match="subsample features tiny"):
        features_artifact("tiny")
    again = run_features("tiny", progress=False)
    assert again["cache_hit"] is False and again["key"] == s["key"]
    np.testing.assert_array_equal(load_features(features_artifact("tiny"))[0], compute_features_reference(images))


def test_existing_dask_scheduler_gives_identical_features(home):
    from distributed import LocalCluster

    make_store("tiny")
    default = run_features("tiny", progress=False)
    expected = load_features(features_artifact("tiny"))[0]
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        cfg = FeaturesConfig(dask_address=cluster.scheduler_address)
        s = run_features("tiny", cfg, refresh=True, progress=False)
    assert s["key"] == default["key"]  # the address is execution-only
    np.testing.assert_array_equal(load_features(features_artifact("tiny"))[0], expected)


@pytest.mark.slow
def test_local_cluster_scheduler_gives_identical_features(home, monkeypatch):
    """scheduler="local-cluster": a LocalCluster of 2 worker processes computes the features (the
    threaded path is forbidden here), equal to the numpy reference, under the same key."""
    images = make_store("tiny")
    default = run_features("tiny", progress=False)

    def no_threads(*a, **k):
        raise AssertionError("the threaded scheduler ran instead of the local cluster")

    monkeypatch.setattr(features_mod, "_compute_threads", no_threads)
    seen = {}
    real = features_mod._compute_distributed

    def record(blocks, client, bar):
        seen["workers"] = len(client.scheduler_info()["workers"])
        return real(blocks, client, bar)

    monkeypatch.setattr(features_mod, "_compute_distributed", record)
    s = run_features("tiny", FeaturesConfig(scheduler="local-cluster", workers=2), refresh=True, progress=False)
    assert seen == {"workers": 2} and s["cache_hit"] is False
    assert s["key"] == default["key"]  # the scheduler is execution-only
    np.testing.assert_array_equal(load_features(features_artifact("tiny"))[0], compute_features_reference(images))


def test_unreachable_scheduler_is_a_user_error(home, monkeypatch):
    monkeypatch.setattr(features_mod, "SCHEDULER_CONNECT_TIMEOUT", "0.5s")
    make_store("tiny")
    with pytest.raises(SubsampleError, match="cannot reach the Dask scheduler"):
        run_features("tiny", FeaturesConfig(dask_address="tcp://127.0.0.1:9"), progress=False)


def test_unknown_feature_is_a_user_error(home):
    make_store("tiny")
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown feature 'nope'"):
        FeaturesConfig(features=("nope",))
    with pytest.raises(SubsampleError, match="unknown feature 'nope'"):  # a config built without validation
        run_features("tiny", FeaturesConfig.model_construct(features=("nope",)), progress=False)


# --- tables -------------------------------------------------------------------------------------


def test_table_from_stage_is_consistent(home):
    make_store("tiny", n=60)
    run_features("tiny", progress=False)
    s = run_tables("tiny", TablesConfig(bins=(4, 6)))
    table = load_table(tables_artifact("tiny", TablesConfig(bins=(4, 6))))
    values, names = load_features(features_artifact("tiny"))

    assert table.features == names and table.bins == (4, 6) and table.counts.shape == (5, 7)
    assert table.counts.sum() == table.n == 60
    np.testing.assert_array_equal(np.bincount(table.cells, minlength=35).reshape(5, 7), table.counts)
    np.testing.assert_array_equal(table.maxima, values.max(axis=0))
    np.testing.assert_array_equal(table.cells, cells_reference(values, values.max(axis=0), np.array([4, 6])))
    np.testing.assert_allclose(table.probs.sum(), 1.0)
    # every image at its own maximum lands in the last bin of that axis
    rows, cols = np.unravel_index(table.cells, table.shape)
    assert rows[values[:, 0].argmax()] == 4 and cols[values[:, 1].argmax()] == 6

    assert s["shape"] == [5, 7] and s["total_cells"] == 35 and s["n_images"] == 60
    assert s["occupied_cells"] == int((table.counts > 0).sum())
    assert s["largest_cell_share"] == pytest.approx(table.counts.max() / 60)
    art = tables_artifact("tiny", TablesConfig(bins=(4, 6)))
    for f in ("heatmap.png", "hist_colour_moment.png", "hist_sharpness.png", "table.npz"):
        assert (art.path / f).stat().st_size > 0
    assert (art.path / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with np.load(art.path / "table.npz") as z:
        np.testing.assert_allclose(z["probs"], table.probs)

    again = run_tables("tiny", TablesConfig(bins=(4, 6)))
    assert again["cache_hit"] is True and again["key"] == s["key"]
    other = run_tables("tiny", TablesConfig(bins=(5, 6)))
    assert other["key"] != s["key"] and other["cache_hit"] is False


def test_tables_key_follows_the_features(home):
    make_store("tiny", seed=0)
    run_features("tiny", progress=False)
    a = run_tables("tiny", TablesConfig(bins=(3, 3)))
    make_store("tiny", seed=2)
    with pytest.raises(MissingArtifactError, match="subsample features tiny"):
        run_tables("tiny", TablesConfig(bins=(3, 3)))
    run_features("tiny", progress=False)
    b = run_tables("tiny", TablesConfig(bins=(3, 3)))
    assert a["key"] != b["key"]


def test_missing_features_and_table_name_the_command(home):
    make_store("tiny")
    with pytest.raises(MissingArtifactError, match="`subsample features tiny`") as e:
        run_tables("tiny", TablesConfig(bins=(3, 3)))
    assert e.value.stage == "tables"
    run_features("tiny", progress=False)
    with pytest.raises(MissingArtifactError, match="`subsample tables tiny --bins 3 3`"):
        tables_artifact("tiny", TablesConfig(bins=(3, 3)))
    with pytest.raises(SubsampleError, match="--bins gives 3 bin counts"):
        run_tables("tiny", TablesConfig(bins=(3, 3, 3)))


def test_all_zero_images_put_everything_in_bin_zero(home):
    make_store("flat", images=np.zeros((20, SIZE, SIZE, 3), np.uint8))
    run_features("flat", progress=False)
    s = run_tables("flat", TablesConfig(bins=(4, 4)))
    table = load_table(tables_artifact("flat", TablesConfig(bins=(4, 4))))
    assert table.counts[0, 0] == 20 and s["occupied_cells"] == 1 and s["maxima"] == [0.0, 0.0]
    assert table.bin_values(np.array([[5.0, 7.0]])).tolist() == [0]


def test_eq16_rounds_half_up_exactly():
    # m = 4 with max 8 puts v = 1, 3, 5, 7 exactly on half bins: they round up.
    mu = np.array([0.0, 1.0, 2.0, 3.0, 5.0, 7.0, 8.0])
    sharp = np.array([0.0, 5.0, 10.0, 15.0, 25.0, 35.0, 40.0])  # m = 8, max 40: 5 * k -> exact bins
    table = build_table(np.stack([mu, sharp], axis=1), ("colour_moment", "sharpness"), (4, 8))
    rows, cols = np.unravel_index(table.cells, table.shape)
    assert rows.tolist() == [0, 1, 1, 2, 3, 4, 4]
    assert cols.tolist() == [0, 1, 2, 3, 5, 7, 8]
    # just below a half bin rounds down
    below = np.nextafter(1.0, 0.0)
    assert table.bin_values(np.array([[below, 0.0]])).tolist() == [0]


def test_bin_values_uses_training_scale_and_clips():
    values = np.array([[10.0, 100.0], [5.0, 50.0], [0.0, 0.0]])
    table = build_table(values, ("colour_moment", "sharpness"), (4, 4))
    cells = table.bin_values(np.array([[1e9, 1e12], [-3.0, -1.0], [5.0, 50.0], [20.0, 25.0]]))
    rows, cols = np.unravel_index(cells, table.shape)
    assert rows.tolist() == [4, 0, 2, 4] and cols.tolist() == [4, 0, 2, 1]
    with pytest.raises(ValueError):
        table.bin_values(np.zeros((2, 3)))


def test_table_validates_its_fields():
    with pytest.raises(ValueError, match="counts shape"):
        Table(
            features=("a", "b"),
            bins=(2, 2),
            maxima=np.ones(2),
            counts=np.zeros((2, 2), np.int64),
            cells=np.zeros(0, np.int64),
        )
    with pytest.raises(ValueError, match="sum to"):
        Table(
            features=("a", "b"),
            bins=(1, 1),
            maxima=np.ones(2),
            counts=np.ones((2, 2), np.int64),
            cells=np.zeros(3, np.int64),
        )


# --- CLI ----------------------------------------------------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    from flows.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(argv))
    out, err = capsys.readouterr()
    return e.value.code or 0, out, err


def test_cli_prints_one_json_object(home, capsys):
    make_store("tiny")
    code, out, err = run_cli(capsys, "features", "tiny", "--json")
    assert code == 0 and len(out.strip().splitlines()) == 1
    s = json.loads(out)
    assert s["stage"] == "features" and s["cache_hit"] is False

    code, out, err = run_cli(capsys, "tables", "tiny", "--bins", "5", "3", "--json")
    assert code == 0 and len(out.strip().splitlines()) == 1
    t = json.loads(out)
    assert t["stage"] == "tables" and t["shape"] == [6, 4]
    assert (home / "stages" / "tables" / t["key"] / "heatmap.png").exists()

    code, out, err = run_cli(capsys, "tables", "nothere", "--json")
    assert code == 2 and out == "" and "subsample ingest" in err
