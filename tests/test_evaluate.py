"""The evaluation stage: IS/FID/KID through torch-fidelity with a tiny deterministic feature
extractor (no Inception weights needed), the reference-statistics cache, the offline path, and
``run_evaluate`` end to end on a freshly trained tiny generator."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import blob_images
from torch_fidelity import register_feature_extractor
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from pipeline import extractor_weights, fidelity
from pipeline.config import EvaluateConfig
from pipeline.stages import evaluate as ev

TINY = "subsample-test-tiny"


class TinyExtractor(FeatureExtractorBase):
    """Deterministic stand-in for Inception: per-channel means and standard deviations plus a
    4×4 average-pooled image ('stats', 54-d) and a fixed random projection of them to 10 logits
    ('logits_unbiased', for IS). Sensitive to noise (stds) and to colour shifts (means)."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        self.register_buffer("proj", torch.randn(54, 10, generator=torch.Generator().manual_seed(0)))

    @staticmethod
    def get_provided_features_list():
        return ("stats", "logits_unbiased")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "logits_unbiased" if metric == "isc" else "stats"

    @staticmethod
    def can_be_compiled():
        return False

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3
        x = x.double() / 255.0
        stats = torch.cat([x.mean((2, 3)), x.std((2, 3)), F.adaptive_avg_pool2d(x, 4).flatten(1)], 1)
        out = {"stats": stats.float(), "logits_unbiased": (stats @ self.proj.double()).float() * 4}
        return tuple(out[name] for name in self.features_list)


if TINY not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(TINY, TinyExtractor)

CFG = EvaluateConfig(samples=200, feature_extractor=TINY, kid_subsets=20, batch_size=100)


def noisy(images: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(images + rng.normal(0, sigma, images.shape), 0, 255).round().astype(np.uint8)


def scores(gen: np.ndarray, ref: np.ndarray, **kw) -> fidelity.FidelityResult:
    return fidelity.fidelity_scores(fidelity.ImageArrayDataset(gen), fidelity.ImageArrayDataset(ref), CFG, **kw)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise():
    x = blob_images(200)
    same = scores(x, x).metrics
    assert set(same) == {"is200", "is200_std", "fid200_train", "kid200_train", "kid200_train_std"}
    assert abs(same["fid200_train"]) < 1e-6
    fid, kid = [], [same["kid200_train"]]
    for sigma in (4, 12, 30, 60):
        m = scores(noisy(x, sigma), x).metrics
        fid.append(m["fid200_train"])
        kid.append(m["kid200_train"])
    assert fid[0] > 1e-4
    assert all(a < b for a, b in zip(fid, fid[1:])), fid
    assert all(a < b for a, b in zip(kid, kid[1:])), kid
    # KID(X, X) is not exactly 0 (torch-fidelity's estimator keeps K_XY's diagonal), but small
    assert abs(kid[0]) < 0.1 * kid[-1]
    # a different draw from the same distribution is far closer than heavy noise
    other = scores(blob_images(200, seed=5), x).metrics
    assert other["fid200_train"] < fid[-1]


def test_metrics_are_exactly_torch_fidelitys(tmp_path):
    """The project extracts features and caches the reference itself (torch-fidelity's cache is
    unpickled unsafely) but computes IS/FID/KID with torch-fidelity's own functions: the numbers
    are those of torch_fidelity.calculate_metrics on the same inputs, cached or not."""
    import torch_fidelity

    x, gen = blob_images(120, seed=3), noisy(blob_images(120, seed=3), 15)
    raw = torch_fidelity.calculate_metrics(
        input1=fidelity.ImageArrayDataset(gen),
        input2=fidelity.ImageArrayDataset(x),
        isc=True,
        fid=True,
        kid=True,
        feature_extractor=TINY,
        isc_splits=CFG.isc_splits,
        kid_subsets=CFG.kid_subsets,
        kid_subset_size=100,
        batch_size=CFG.batch_size,
        cuda=False,
        cache=False,
        rng_seed=CFG.seed,
        save_cpu_ram=True,
        verbose=False,
    )
    for kw in (
        {},
        {"reference_cache_name": "r", "cache_root": tmp_path},
        {"reference_cache_name": "r", "cache_root": tmp_path},
    ):
        m = fidelity.fidelity_scores(
            fidelity.ImageArrayDataset(gen),
            fidelity.ImageArrayDataset(x),
            CFG.model_copy(update={"kid_subset_size": 100}),
            **kw,
        ).metrics
        assert m["fid120_train"] == raw[torch_fidelity.KEY_METRIC_FID]
        assert (
            m["is120"] == raw[torch_fidelity.KEY_METRIC_ISC_MEAN]
            and m["is120_std"] == raw[torch_fidelity.KEY_METRIC_ISC_STD]
        )
        assert m["kid120_train"] == raw[torch_fidelity.KEY_METRIC_KID_MEAN]


def test_reference_statistics_are_cached_per_data_set(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path))  # the cache is written inside the home
    x = blob_images(120, seed=2)
    gen = noisy(x, 10)
    cache = tmp_path / "fidelity-cache"
    first = scores(gen, x, reference_cache_name="ds-abc", cache_root=cache)
    assert first.reference_cache == "miss"
    files = sorted(cache.glob("ds-abc-*"))
    assert [f.name for f in files] == [f"ds-abc-{TINY}-logits_unbiased-stats.npz"]  # the project's cache, plain arrays
    mtimes = {f: f.stat().st_mtime_ns for f in files}

    class Untouchable(torch.utils.data.Dataset):
        """The reference on the second call: reading it would mean the cache was not used."""

        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            raise AssertionError("reference images were read again despite the cache")

    second = fidelity.fidelity_scores(
        fidelity.ImageArrayDataset(gen), Untouchable(), CFG, reference_cache_name="ds-abc", cache_root=cache
    )
    assert second.reference_cache == "hit"
    assert second.metrics == pytest.approx(first.metrics)
    assert {f: f.stat().st_mtime_ns for f in sorted(cache.glob("ds-abc-*"))} == mtimes
    # generated images are never cached: another generator gives another FID
    third = scores(noisy(x, 40), x, reference_cache_name="ds-abc", cache_root=cache)
    assert third.metrics["fid120_train"] > first.metrics["fid120_train"]


def test_store_dataset_reads_chunks_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path))
    from storage.store import StoreBuilder

    x = blob_images(25, size=8)
    with StoreBuilder("blobs", size=8, n_max=25, chunk=10) as b:
        b.append(x)
        store = b.finish()
    ds = fidelity.StoreDataset(store.images)
    assert len(ds) == 25
    got = np.stack([ds[i].numpy().transpose(1, 2, 0) for i in range(25)])
    np.testing.assert_array_equal(got, x)
    with pytest.raises(IndexError):
        ds[25]


def test_offline_inception_weights_give_one_clear_reason_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # empty hub cache
    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path / "home"))  # downloads go to $SUBSAMPLE_HOME/weights
    calls = []

    def no_network(url, dst, *a, **k):
        calls.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(extractor_weights.WeightsUnavailable) as e:
        extractor_weights.resolve_weights(EvaluateConfig())
    msg = str(e.value)
    assert "\n" not in msg
    assert "Inception weights not available offline" in msg and "--weights PATH" in msg
    assert "weights-inception-2015-12-05" in msg
    assert len(calls) == 1  # one attempt, through the patched function only

    # a local copy is used as given (checked to be an Inception state dict), and its hash names the cache
    from storage.errors import SubsampleError

    w = tmp_path / "weights.pth"
    w.write_bytes(b"not really weights")
    with pytest.raises(SubsampleError, match="cannot be loaded weights-only"):
        extractor_weights.resolve_weights(EvaluateConfig(weights=str(w)))
    torch.save({"some.weight": torch.zeros(3)}, w)
    with pytest.raises(SubsampleError, match="not torch-fidelity's Inception state dict"):
        extractor_weights.resolve_weights(EvaluateConfig(weights=str(w)))
    fake = {"Conv2d_1a_3x3.conv.weight": torch.zeros(1), "fc.weight": torch.zeros(1008, 1)}
    torch.save(fake, w)
    path, tag = extractor_weights.resolve_weights(EvaluateConfig(weights=str(w)))
    assert path == str(w) and len(tag) == 16
    # a file already in the hub cache is used without any download, checked like any other
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True, exist_ok=True)
    (hub / "weights-inception-2015-12-05-6726825d.pth").write_bytes(b"x")
    with pytest.raises(SubsampleError, match="cannot be loaded weights-only"):
        extractor_weights.resolve_weights(EvaluateConfig())
    torch.save(fake, hub / "weights-inception-2015-12-05-6726825d.pth")
    path, _ = extractor_weights.resolve_weights(EvaluateConfig())
    assert path.endswith("weights-inception-2015-12-05-6726825d.pth") and len(calls) == 1


def test_missing_weights_file_is_a_user_error(tmp_path):
    from storage.errors import SubsampleError

    with pytest.raises(SubsampleError, match="no such file"):
        extractor_weights.resolve_weights(EvaluateConfig(weights=str(tmp_path / "nope.pth")))


def test_count_tag_and_grid():
    assert (
        fidelity.count_tag(50_000) == "50k" and fidelity.count_tag(1000) == "1k" and fidelity.count_tag(1234) == "1234"
    )
    g = ev.image_grid(np.full((5, 4, 4, 3), 255, np.uint8), columns=3)
    assert g.shape == (2 * 6 + 2, 3 * 6 + 2, 3)
    assert (g == 255).sum() == 5 * 16 * 3


# --- the stage end to end -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny store (256 blob images, 16×16), its features and 4×4 table, and a one-epoch smoke
    training run: ``(home, train key, mlflow run id)``."""
    from pipeline.config import FeaturesConfig, TablesConfig
    from pipeline.presets import resolve_batches_config, resolve_train_config
    from pipeline.stages.features import run_features
    from pipeline.stages.tables import run_tables
    from pipeline.stages.train import run_train
    from storage.store import write_store

    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SUBSAMPLE_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        write_store("blobs", blob_images(256, size=16))
        features, tables = FeaturesConfig(workers=1), TablesConfig(bins=(4, 4))
        run_features("blobs", features, progress=False)
        run_tables("blobs", tables, features)
        s = run_train(
            "blobs",
            resolve_train_config("smoke", {"kl_samples": 64, "sample_grid": 4}),
            resolve_batches_config("smoke", {"batch_size": 32}),
            tables,
            features,
            progress=False,
        )
    return home, s["key"], s["mlflow_run_id"]


def cli(argv: list[str]) -> int:
    """Run ``subsample ARGV`` in-process; its exit code."""
    from flows.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty torch hub cache and a network that refuses: any download attempt is recorded."""
    calls = []

    def no_network(url, dst, *a, **k):
        calls.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return calls


def test_run_evaluate_end_to_end_cache_and_mlflow(trained, monkeypatch):
    import json

    from storage import tracking

    home, key, run_id = trained
    monkeypatch.setenv("SUBSAMPLE_HOME", str(home))
    cfg = EvaluateConfig(samples=100, feature_extractor=TINY, kid_subsets=10, grid=16)
    s = ev.run_evaluate(key, cfg, progress=False)
    assert s["stage"] == "evaluate" and s["dataset"] == "blobs" and s["cache_hit"] is False
    assert s["mlflow_run_id"] == run_id and s["fidelity"] == "ok" and s["fidelity_reference_cache"] == "miss"
    m = s["metrics"]
    for name in (
        "is100",
        "fid100_train",
        "kid100_train",
        "feature_kl100_train",
        "feature_js100_train",
        "sharpness_mean100",
        "sharpness_diff100_train",
    ):
        assert np.isfinite(m[name]), name
    assert 0 <= m["feature_js100_train"] <= np.log(2) + 1e-12
    assert m["sharpness_diff100_train"] == pytest.approx(m["sharpness_mean100"] - m["sharpness_mean_train"])
    art = home / "stages" / "evaluate" / s["key"]
    assert json.loads((art / "metrics.json").read_text())["metrics"] == m
    from PIL import Image

    samples = Image.open(art / "samples.png")  # 16 images of 16 px, scaled up to be read
    assert samples.width >= 512
    assert (
        samples.text["Title"]
        == "blobs · smoke · constructed B=32 · seed 0 · epoch 1\n16 of the 100 evaluated samples (z seed 0)"
    )
    log = home / "metrics" / f"{key}.jsonl"
    assert [json.loads(x)["results"] for x in log.read_text().splitlines()] == [m]

    # logged to the training run
    data = tracking.client().get_run(run_id).data
    assert data.metrics["eval/fid100_train"] == pytest.approx(m["fid100_train"])
    assert data.metrics["eval/feature_kl100_train"] == pytest.approx(m["feature_kl100_train"])
    assert data.tags["eval/key"] == s["key"]

    # the MLflow run id names the same run: a cache hit, nothing appended; --refresh recomputes
    # the same numbers (fixed seed) from the cached reference statistics
    again = ev.run_evaluate(run_id, cfg, progress=False)
    assert again["cache_hit"] is True and again["key"] == s["key"] and again["metrics"] == m
    assert len(log.read_text().splitlines()) == 1
    fresh = ev.run_evaluate(key, cfg, refresh=True, progress=False)
    assert fresh["cache_hit"] is False and fresh["fidelity_reference_cache"] == "hit"
    assert fresh["metrics"] == pytest.approx(m)
    assert len(log.read_text().splitlines()) == 2
    # another sample count is another evaluation
    other = ev.run_evaluate(key, cfg.model_copy(update={"samples": 50}), progress=False)
    assert other["key"] != s["key"] and "fid50_train" in other["metrics"]


def test_evaluate_opens_the_table_its_train_manifest_names(trained, monkeypatch):
    """The generator's table and features are the artifacts its train manifest (and the table's)
    record: evaluate finds them with lineage's lookups from configs disabled; its own manifest
    records the train key."""
    from pipeline.stages import lineage
    from storage.artifacts import open_artifact

    home, key, _ = trained
    monkeypatch.setenv("SUBSAMPLE_HOME", str(home))
    train = open_artifact("train", key)
    tables = open_artifact("tables", train.upstream["tables"])
    assert tables.content_hash == train.inputs["tables"]
    assert lineage.upstream_artifact(tables, "features").content_hash == tables.inputs["features"]

    def from_configs(*a, **k):
        raise AssertionError("evaluate looked an artifact up from configs")

    for name in ("find_features", "find_tables", "find_train", "locate", "find"):
        monkeypatch.setattr(lineage, name, from_configs)
    s = ev.run_evaluate(key, EvaluateConfig(samples=64, fidelity=False, grid=4), refresh=True, progress=False)
    assert s["cache_hit"] is False and s["train_key"] == key
    assert np.isfinite(s["metrics"]["feature_kl64_train"]) and np.isfinite(s["metrics"]["sharpness_diff64_train"])
    assert open_artifact("evaluate", s["key"]).upstream == {"train": key}


def test_offline_evaluation_says_so_in_one_line_and_keeps_feature_metrics(trained, offline, monkeypatch, capsys):
    import json

    home, key, _ = trained
    monkeypatch.setenv("SUBSAMPLE_HOME", str(home))
    assert cli(["evaluate", key, "--samples", "64", "--fidelity", "--json"]) == 0  # default extractor: Inception
    out, err = capsys.readouterr()
    s = json.loads(out)  # exactly one JSON object on stdout
    lines = [x for x in err.splitlines() if "not available offline" in x]
    assert len(lines) == 1
    assert lines[0].startswith("evaluate: Inception weights not available offline")
    assert lines[0].endswith("pass --weights PATH to a local copy; IS/FID/KID skipped")
    assert s["fidelity"].startswith("skipped: Inception weights not available offline")
    assert "fid64_train" not in s["metrics"] and "is64" not in s["metrics"]
    assert np.isfinite(s["metrics"]["feature_kl64_train"]) and np.isfinite(s["metrics"]["sharpness_mean64"])
    assert offline == [offline[0]] and "weights-inception-2015-12-05" in offline[0]


def test_evaluate_defaults_fit_the_device(monkeypatch, capsys):
    """On a CPU, evaluate's defaults are 2,000 samples without Inception (one line says so); what
    the user gives wins; on a GPU the full protocol (10,000 samples, IS/FID/KID)."""
    import flows.machine as fm
    import flows.resolve as fr

    monkeypatch.setattr(fm, "cuda_available", lambda: False)
    cfg = fr.resolve_evaluate_config({"samples": None, "fidelity": None, "seed": 0}, "mydata")
    assert (cfg.samples, cfg.fidelity) == (2000, False)
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and note[0].startswith("evaluate: no GPU: 2,000 samples")
    cfg = fr.resolve_evaluate_config({"samples": 500, "fidelity": True}, "mydata")
    assert (cfg.samples, cfg.fidelity) == (500, True) and capsys.readouterr().err == ""  # nothing defaulted
    monkeypatch.setattr(fm, "cuda_available", lambda: True)
    cfg = fr.resolve_evaluate_config({"samples": None, "fidelity": None}, "mydata")
    assert (cfg.samples, cfg.fidelity) == (10_000, True) and capsys.readouterr().err == ""
    assert fr.resolve_evaluate_config({"device": "cpu"}, "mydata").samples == 2000  # asked for the CPU: CPU-sized


def test_no_fidelity_and_missing_run_from_the_cli(trained, monkeypatch, capsys):
    import json

    home, key, _ = trained
    monkeypatch.setenv("SUBSAMPLE_HOME", str(home))
    assert cli(["evaluate", key, "--samples", "32", "--no-fidelity", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (
        s["fidelity"] == "skipped: disabled (--no-fidelity, the default on a CPU)"
        and "feature_kl32_train" in s["metrics"]
    )
    assert cli(["evaluate", "0123456789abcdef", "--samples", "32", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "0123456789abcdef" in captured.err


def test_metrics_one_by_one_end_to_end(trained, monkeypatch):
    """``--metrics``: only the named metrics are computed and stored, under a key of their own;
    IS/FID/KID alone share the tiny extractor's features; the values are the full evaluation's."""
    home, key, _ = trained
    monkeypatch.setenv("SUBSAMPLE_HOME", str(home))
    full = ev.run_evaluate(
        key, EvaluateConfig(samples=50, feature_extractor=TINY, kid_subsets=5, grid=0), progress=False
    )
    only = EvaluateConfig(samples=50, fidelity=False, metrics="feature_kl50_train", grid=0)
    s = ev.run_evaluate(key, only, progress=False)
    assert set(s["metrics"]) == {"feature_kl50_train", "feature_kl50_train_floor", "feature_kl50_train_floor_sd"}
    assert s["metrics"] == {k: full["metrics"][k] for k in s["metrics"]}
    assert s["fidelity"] == "skipped: not among the metrics asked for (--metrics)" and s["key"] != full["key"]
    assert ev.run_evaluate(key, only, progress=False)["cache_hit"] is True
    two = ev.run_evaluate(
        key,
        EvaluateConfig(
            samples=50, feature_extractor=TINY, kid_subsets=5, grid=0, metrics=("kid50_train", "fid50_train")
        ),
        progress=False,
    )
    assert two["metrics"] == {k: full["metrics"][k] for k in ("fid50_train", "kid50_train", "kid50_train_std")}
    assert two["fidelity"] == "ok" and two["fidelity_reference_cache"] == "hit"  # the full run cached the reference
