"""The batches stage (spec §3, §4) on stores made here: its artifact, diagnostics and cache, the
key, the CLI's one JSON object, and the label check beside the feature KL. The strategies against
their promises are in ``test_batches.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.strategies import construct_epoch
from pipeline.stages.batches import kl_stats, never_drawn

# --- the stage: cache behaviour ----------------------------------------------------------------


@pytest.fixture
def toy_dataset(tmp_path, monkeypatch):
    """A 240-image store with varied brightness and texture, its features and a 5×5 table."""
    from pipeline.config import FeaturesConfig, TablesConfig
    from pipeline.stages.features import run_features
    from pipeline.stages.tables import run_tables
    from storage.store import write_store

    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path))
    rng = np.random.default_rng(0)
    n = 240
    base = rng.integers(0, 256, (n, 1, 1, 3)) * rng.uniform(0.2, 1.0, (n, 1, 1, 1)) ** 2
    noise = rng.normal(0.0, 1.0, (n, 16, 16, 3)) * rng.uniform(0.0, 60.0, (n, 1, 1, 1))
    write_store("toy", np.clip(base + noise, 0, 255).astype(np.uint8))
    run_features("toy", FeaturesConfig(workers=1), progress=False)
    run_tables("toy", TablesConfig(bins=(4, 4)))
    return "toy"


def test_stage_writes_batches_and_diagnostics_then_hits_the_cache(toy_dataset):
    import json
    from pathlib import Path

    from pipeline.config import BatchesConfig, TablesConfig
    from pipeline.stages.batches import load_batches, run_batches
    from pipeline.stages.tables import load_table, tables_artifact
    from storage.artifacts import open_artifact

    cfg = BatchesConfig(batch_size=32, strategy="constructed", epochs=3, seed=4)
    tables = TablesConfig(bins=(4, 4))
    first = run_batches(toy_dataset, cfg, tables, progress=False)
    assert first["cache_hit"] is False
    assert first["m"] == 240 // 32 and first["epochs"] == 3 and len(first["coverage"]["per_epoch"]) == 3
    json.dumps(first)
    path = Path(first["path"])
    stored = np.load(path / "batches.npy")
    assert stored.dtype == np.int32 and stored.shape == (3, 7, 32)
    table = load_table(tables_artifact(toy_dataset, tables))
    for e in range(3):
        want = construct_epoch(table, batch_size=32, strategy="constructed", seed=4, epoch=e)
        assert np.array_equal(stored[e], want)
    diag = json.loads((path / "diagnostics.json").read_text())
    assert len(diag["epochs"]) == 3 and len(diag["epochs"][0]["kl_per_batch"]) == 7
    assert first["n_never_drawn"] == len(never_drawn(stored[0], 240))
    assert (path / "diagnostics.md").read_text().count("\n| ") == 5  # header + 3 epochs + "all"
    from PIL import Image

    picture = Image.open(path / "never_drawn.png")
    assert picture.width >= 512
    assert picture.text["Title"] == (
        f"toy · never drawn · constructed B=32 · batches seed 4\n{first['n_never_drawn']} of "
        "240 images never drawn in the first epoch of batches"
    )

    again = run_batches(toy_dataset, cfg, tables, progress=False)
    assert again["cache_hit"] is True and again["key"] == first["key"]
    assert np.array_equal(load_batches(open_artifact("batches", first["key"])), stored)
    assert run_batches(toy_dataset, cfg, tables, refresh=True, progress=False)["cache_hit"] is False

    (path / "batches.npy").unlink()  # a damaged artifact fails verification and is rebuilt
    rebuilt = run_batches(toy_dataset, cfg, tables, progress=False)
    assert rebuilt["cache_hit"] is False and np.array_equal(np.load(path / "batches.npy"), stored)


def test_stage_key_follows_the_table_and_the_parameters_that_matter(toy_dataset):
    from pipeline.config import BatchesConfig, TablesConfig
    from pipeline.stages.batches import run_batches
    from pipeline.stages.tables import run_tables
    from storage.errors import MissingArtifactError

    base = run_batches(
        toy_dataset, BatchesConfig(batch_size=32, strategy="random"), TablesConfig(bins=(4, 4)), progress=False
    )
    # top_k / fill do not shape random batches: same artifact
    same = run_batches(
        toy_dataset,
        BatchesConfig(batch_size=32, strategy="random", top_k=3, fill="coverage"),
        TablesConfig(bins=(4, 4)),
        progress=False,
    )
    assert same["cache_hit"] is True and same["key"] == base["key"]
    with pytest.raises(MissingArtifactError, match="tables"):
        run_batches(
            toy_dataset, BatchesConfig(batch_size=32, strategy="random"), TablesConfig(bins=(6, 6)), progress=False
        )
    run_tables(toy_dataset, TablesConfig(bins=(6, 6)))
    other = run_batches(
        toy_dataset, BatchesConfig(batch_size=32, strategy="random"), TablesConfig(bins=(6, 6)), progress=False
    )
    assert other["cache_hit"] is False and other["key"] != base["key"]
    seeded = run_batches(
        toy_dataset, BatchesConfig(batch_size=32, strategy="random", seed=1), TablesConfig(bins=(4, 4)), progress=False
    )
    assert seeded["cache_hit"] is False and seeded["key"] != base["key"]


def test_cli_batches_prints_one_json_object(toy_dataset, capsys):
    import json

    from flows.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["batches", toy_dataset, "--batch-size", "48", "--strategy", "dealt", "--bins", "4", "4", "--json"])
    assert exit_.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stage"] == "batches" and out["strategy"] == "dealt" and out["m"] == 5 and out["coverage"]["mean"] == 1.0
    with pytest.raises(SystemExit) as exit_:
        main(["batches", toy_dataset, "--batch-size", "4800", "--bins", "4", "4", "--json"])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(
        "batches: batch size 4800 is larger than data set 'toy' (240 images"
    )


# --- the label check (spec §4, beyond the paper) ------------------------------------------------------


def test_label_kl_matches_a_direct_computation():
    from pipeline.stages.batches import label_kl_batch_vs_dataset

    rng = np.random.default_rng(0)
    labels = rng.choice([3, 7, 9], size=200, p=[0.5, 0.3, 0.2])  # any integer labels
    batches = np.stack([rng.choice(200, 20, replace=False) for _ in range(6)])
    got = label_kl_batch_vs_dataset(labels, batches)
    for j, batch in enumerate(batches):
        want = 0.0
        for c in np.unique(labels):
            q = np.mean(labels[batch] == c)
            if q > 0:
                want += q * np.log(q / np.mean(labels == c))
        assert got[j] == pytest.approx(want, abs=1e-12)
    assert label_kl_batch_vs_dataset(labels, np.arange(200)[None])[0] == pytest.approx(0.0, abs=1e-12)


@pytest.fixture
def labelled_dataset(tmp_path, monkeypatch):
    """240 images whose labels follow their brightness half the time: a store with labels."""
    from pipeline.config import FeaturesConfig, TablesConfig
    from pipeline.stages.features import run_features
    from pipeline.stages.tables import run_tables
    from storage.store import write_store

    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path))
    rng = np.random.default_rng(1)
    n = 240
    level = rng.uniform(0.1, 1.0, n)
    images = np.clip(level[:, None, None, None] * 255 + rng.normal(0, 30, (n, 16, 16, 3)), 0, 255).astype(np.uint8)
    labels = np.where(rng.random(n) < 0.5, (level * 4).astype(int), rng.integers(0, 4, n))
    write_store("toyl", images, labels)
    run_features("toyl", FeaturesConfig(workers=1), progress=False)
    run_tables("toyl", TablesConfig(bins=(4, 4)))
    return "toyl", labels


def test_batches_stage_reports_label_kl_beside_the_feature_kl(labelled_dataset):
    import json
    from pathlib import Path

    from pipeline.config import BatchesConfig, TablesConfig
    from pipeline.stages.batches import label_kl_batch_vs_dataset, load_batches, run_batches
    from storage.artifacts import open_artifact

    name, labels = labelled_dataset
    s = run_batches(
        name,
        BatchesConfig(batch_size=40, strategy="constructed", topup="random", epochs=2),
        TablesConfig(bins=(4, 4)),
        progress=False,
    )
    stored = load_batches(open_artifact("batches", s["key"]))
    per_batch = np.concatenate([label_kl_batch_vs_dataset(labels, e) for e in stored])
    assert s["label_kl"] == pytest.approx(kl_stats(per_batch))
    assert s["label_kl_random_sample"]["mean"] > 0 and s["kl_random_sample"]["mean"] > s["kl"]["mean"]
    assert s["topup"] == "random" and len(s["n_never_drawn_per_epoch"]) == 2
    assert list(s).index("label_kl") == list(s).index("kl") + 1  # beside the feature KL
    diag = json.loads((Path(s["path"]) / "diagnostics.json").read_text())
    assert diag["epochs"][1]["label_kl"]["mean"] == pytest.approx(label_kl_batch_vs_dataset(labels, stored[1]).mean())
    assert "Independent check (labels" in (Path(s["path"]) / "diagnostics.md").read_text()


def test_batches_stage_without_labels_says_so(toy_dataset):
    from pipeline.config import BatchesConfig, TablesConfig
    from pipeline.stages.batches import run_batches

    s = run_batches(
        toy_dataset, BatchesConfig(batch_size=32, strategy="random"), TablesConfig(bins=(4, 4)), progress=False
    )
    assert s["label_kl"] is None and "no labels" in s["label_kl_note"]
