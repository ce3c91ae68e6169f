"""Issue 15 (hardening): the cases of the audit, made here with small crafted inputs.

- no file read by the project (or by torch-fidelity on its behalf) runs code: payload files leave
  no marker;
- RUN is a key or an MLflow run id, never a path; nothing is written outside $SUBSAMPLE_HOME;
- crashes of the audit are one-line errors (exit 2); names and messages stay on one line.

Hostile sources and stores (decompression bombs, crafted pickles, a corrupt store, symlinks out of a
folder source) are in ``test_security_sources.py``, which shares this module's helpers.
Concurrency (MLflow schema, artifact replacement, train ownership) is in ``test_concurrency.py``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flows.cli import main
from storage.errors import SubsampleError

ROOT = Path(__file__).resolve().parents[1]


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``subsample ARGV`` in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def one_line_error(err: str, stage: str) -> str:
    """The error: the last non-empty line on stderr, naming the stage (notes such as which batches
    a run uses, and progress bars, may come before it), and no traceback anywhere."""
    assert "Traceback" not in err, err
    lines = [ln.strip() for ln in re.split(r"[\r\n]", err) if ln.strip()]
    assert lines and lines[-1].startswith(f"{stage}: "), err
    return lines[-1]


class Payload:
    """Unpickling this runs ``touch MARKER`` (what an attacker's file would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def payload_pt(path: Path, marker: Path) -> Path:
    torch.save({"weight": Payload(marker)}, path)
    return path


def png(path: Path, size: int = 8, seed: int = 0) -> Path:
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def files_outside(root: Path, home: Path) -> list[Path]:
    """Files under ``root`` that are not under ``home``."""
    return [p for p in root.rglob("*") if p.is_file() and home not in p.parents]


# --- a trained run to evaluate ---------------------------------------------------------------------


EXTRACTOR = "subsample-test-security"
LOADED: list = []  # state dicts the weights-loading test extractor received


def _register_extractors() -> None:
    import torch.nn.functional as F
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    class Tiny(FeatureExtractorBase):
        """Per-channel statistics as features; with a weights path it loads it exactly as
        torch-fidelity's own extractors do (torch.load, weights_only=False)."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            if feature_extractor_weights_path is not None:
                LOADED.append(torch.load(feature_extractor_weights_path, weights_only=False))

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
            x = x.double() / 255.0
            stats = torch.cat([x.mean((2, 3)), x.std((2, 3)), F.adaptive_avg_pool2d(x, 2).flatten(1)], 1).float()
            return tuple({"stats": stats, "logits_unbiased": stats[:, :10] * 4}[n] for n in self.features_list)

    if EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(EXTRACTOR, Tiny)


_register_extractors()


def blobs(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.empty((n, size, size, 3), np.float64)
    img[:] = rng.uniform(60, 140, (n, 1, 1, 3))
    for i in range(n):
        y, x = rng.integers(0, size - 6, 2)
        img[i, y : y + 6, x : x + 6] += rng.uniform(20, 60, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A home with the data set ``blobs`` (256 images, 16 px), its features, a 4×4 table and a
    one-epoch smoke run: ``(home, train key)``."""
    from pipeline.config import FeaturesConfig, TablesConfig
    from pipeline.presets import resolve_batches_config, resolve_train_config
    from pipeline.stages.features import run_features
    from pipeline.stages.tables import run_tables
    from pipeline.stages.train import run_train
    from storage.store import write_store

    home = tmp_path_factory.mktemp("sec") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SUBSAMPLE_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        write_store("blobs", blobs(256))
        features, tables = FeaturesConfig(workers=1), TablesConfig(bins=(4, 4))
        run_features("blobs", features, progress=False)
        run_tables("blobs", tables, features)
        s = run_train(
            "blobs",
            resolve_train_config("smoke", {"kl_samples": 64, "sample_grid": 4, "track": False}),
            resolve_batches_config("smoke", {"batch_size": 32}),
            tables,
            features,
            progress=False,
        )
    return home, s["key"]


@pytest.fixture
def in_home(trained, monkeypatch):
    home, key = trained
    monkeypatch.setenv("SUBSAMPLE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home, key


# --- 1. weights: no code runs from --weights, for any extractor ------------------------------------


@pytest.mark.parametrize("extractor", ["vgg16", "inception-v3-compat", EXTRACTOR])
def test_payload_weights_are_refused_for_every_extractor_and_run_nothing(in_home, tmp_path, capsys, extractor):
    home, key = in_home
    marker = tmp_path / "MARKER"
    evil = payload_pt(tmp_path / "evil.pth", marker)
    code, out, err = cli(
        ["evaluate", key, "--weights", str(evil), "--feature-extractor", extractor, "--samples", "32"], capsys
    )
    assert code == 2 and out == ""
    line = one_line_error(err, "evaluate")
    assert "cannot be loaded weights-only" in line and "posix.system" in line and str(evil) in line
    assert not marker.exists()


def test_weights_reach_torch_fidelity_only_as_tensors_this_process_serialised(in_home, tmp_path):
    """A good weights file is loaded weights-only and handed over re-serialised: the extractor
    (which unpickles like torch-fidelity's own, weights_only=False) gets exactly its tensors."""
    from pipeline import extractor_weights, fidelity
    from pipeline.config import EvaluateConfig

    good = tmp_path / "good.pth"
    sd = {"a.weight": torch.arange(6.0).reshape(2, 3), "b.bias": torch.ones(4)}
    torch.save(sd, good)
    cfg = EvaluateConfig(samples=40, feature_extractor=EXTRACTOR, kid_subsets=5, weights=str(good))
    path, tag = extractor_weights.resolve_weights(cfg)
    LOADED.clear()
    images = blobs(40)
    fidelity.fidelity_scores(
        fidelity.ImageArrayDataset(images), fidelity.ImageArrayDataset(images), cfg, weights_path=path
    )
    assert len(LOADED) == 1 and set(LOADED[0]) == set(sd)
    assert all(torch.equal(LOADED[0][k], v) for k, v in sd.items())
    assert tag == extractor_weights.sha256_file(good)[:16]


@pytest.mark.parametrize("extractor", ["clip-vit-b-32", "dinov2-vit-s-14"])
def test_extractors_that_load_torchscript_or_hub_code_are_refused(in_home, capsys, extractor):
    _, key = in_home
    code, _, err = cli(["evaluate", key, "--feature-extractor", extractor, "--samples", "32"], capsys)
    assert code == 2
    assert "can run code from a file" in one_line_error(err, "evaluate")


# --- 2. the fidelity cache: torch-fidelity never unpickles it ---------------------------------------


def test_payloads_planted_in_the_fidelity_cache_run_nothing(in_home, tmp_path, capsys):
    from storage.store import open_store

    home, key = in_home
    marker = tmp_path / "MARKER"
    cache = home / "fidelity-cache"
    cache.mkdir(parents=True, exist_ok=True)
    name = f"subsample-{open_store('blobs').content_hash[:16]}-wdefault"
    # the names torch-fidelity's own cache would have for this evaluation
    for suffix in ("features-stats", "features-logits_unbiased", "stat-fid-stats"):
        payload_pt(cache / f"{name}-{EXTRACTOR}-{suffix}.pt", marker)
    # and the project's own cache file, holding a pickled object array instead of plain numbers
    ours = cache / f"{name}-{EXTRACTOR}-logits_unbiased-stats.npz"
    with zipfile.ZipFile(ours, "w") as zf:
        zf.writestr("feature__stats.npy", pickle.dumps(np.array([Payload(marker)], dtype=object)))
    code, out, err = cli(
        ["evaluate", key, "--feature-extractor", EXTRACTOR, "--samples", "40", "--json", "--refresh"], capsys
    )
    assert code == 0, err
    s = json.loads(out)
    assert s["fidelity"] == "ok" and s["fidelity_reference_cache"] == "miss"
    assert "reference cache" in err and "recomputing" in err
    assert not marker.exists()
    with np.load(ours, allow_pickle=False) as z:  # rewritten with plain arrays
        assert z["feature__stats"].dtype == np.float32 and len(z["feature__stats"]) == 256


# --- 3. RUN is never a path; nothing is written outside the home -----------------------------------


def _evil_run(folder: Path, home: Path, key_inside: str) -> Path:
    """A folder that looks like a train artifact, its generator.pt naming ``key_inside``."""
    from pipeline.stages.generators import find_train_artifact

    real = find_train_artifact(sorted(p.name for p in (home / "stages/train").iterdir() if len(p.name) == 16)[0])
    folder.mkdir(parents=True)
    ck = torch.load(real.path / "generator.pt", weights_only=True)
    ck["info"]["key"] = key_inside
    torch.save(ck, folder / "generator.pt")
    (folder / "manifest.json").write_text((real.path / "manifest.json").read_text())
    return folder


def test_run_as_a_path_is_refused_and_nothing_is_written_outside_the_home(in_home, tmp_path, capsys):
    home, key = in_home
    outside = tmp_path / "outside"
    evil = _evil_run(outside / "evilrun", home, f"../../../../{outside}/pwned")
    before = set(files_outside(tmp_path, home))
    rel = os.path.relpath(evil, home / "stages" / "train")
    for run in (str(evil), rel, f"../../../..{evil}"):
        code, out, err = cli(["evaluate", run, "--samples", "32", "--no-fidelity"], capsys)
        assert code == 2 and out == ""
        assert "never a path" in one_line_error(err, "evaluate")
    assert set(files_outside(tmp_path, home)) == before


def test_a_generator_naming_another_key_is_refused(in_home, tmp_path, capsys):
    """A train artifact whose generator.pt (with a matching content hash) names a path as its key:
    the key is never used to build a path."""
    from storage.artifacts import build_artifact

    home, key = in_home
    outside = tmp_path / "outside"
    src = _evil_run(tmp_path / "src", home, f"../../../../{outside}/pwned")
    fake_key = "f" * 16
    with build_artifact("train", fake_key, params={}, inputs={}, code_version="x") as b:
        (b.path / "generator.pt").write_bytes((src / "generator.pt").read_bytes())
        b.summary = {"stage": "train"}
    code, _, err = cli(["evaluate", fake_key, "--samples", "32", "--no-fidelity"], capsys)
    assert code == 2
    assert "names train key" in one_line_error(err, "evaluate")
    assert not outside.exists() and not (home / "metrics" / "pwned.jsonl").exists()


def test_every_project_path_resolves_inside_the_home(tmp_path, monkeypatch):
    """A symlink planted in the home cannot send a write elsewhere."""
    from pipeline.stages.evaluate import metrics_log_path
    from storage.paths import dataset_path, inside_home, stage_dir

    home = tmp_path / "home"
    monkeypatch.setenv("SUBSAMPLE_HOME", str(home))
    home.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (home / "metrics").symlink_to(tmp_path / "elsewhere")
    (home / "stages").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SubsampleError, match="outside \\$SUBSAMPLE_HOME"):
        metrics_log_path("0123456789abcdef")
    with pytest.raises(SubsampleError, match="outside \\$SUBSAMPLE_HOME"):
        stage_dir("train")
    with pytest.raises(SubsampleError, match="outside \\$SUBSAMPLE_HOME"):
        inside_home(home / ".." / "x")
    assert dataset_path("ok") == (home / "datasets" / "ok.zarr").resolve()
    with pytest.raises(SubsampleError, match="invalid train key"):
        metrics_log_path("../../x")


# --- 6. crashes that were tracebacks are one line, exit 2 ------------------------------------------


def test_huge_bins_are_refused_before_allocating(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path / "home"))
    code, _, err = cli(["tables", "anything", "--bins", "100000", "100000"], capsys)
    assert code == 2
    assert "10,000,200,001 cells" in one_line_error(err, "tables")


def test_a_label_of_2_to_the_40_with_a_conditional_preset(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path / "home"))
    src = tmp_path / "l.npz"
    labels = np.zeros(64, np.int64)
    labels[3] = 2**40
    np.savez(src, images=blobs(64, size=8), labels=labels)
    assert cli(["ingest", str(src), "--name", "l", "--size", "8", "--json"], capsys)[0] == 0
    assert cli(["features", "l", "--workers", "1", "--json"], capsys)[0] == 0
    assert cli(["tables", "l", "--bins", "4", "4", "--json"], capsys)[0] == 0
    code, _, err = cli(
        ["train", "l", "--preset", "cgan", "--bins", "4", "4", "--batch-size", "32", "--set", "track=false"], capsys
    )
    assert code == 2
    assert "labels up to 1,099,511,627,776" in one_line_error(err, "train")


def test_a_payload_generator_is_refused_in_one_line(in_home, tmp_path, capsys):
    from storage.artifacts import build_artifact

    marker = tmp_path / "MARKER"
    key = "e" * 16
    with build_artifact("train", key, params={}, inputs={}, code_version="x") as b:
        payload_pt(b.path / "generator.pt", marker)
        b.summary = {"stage": "train"}
    code, _, err = cli(["evaluate", key, "--samples", "32", "--no-fidelity"], capsys)
    assert code == 2
    line = one_line_error(err, "evaluate")
    assert "not a generator this project wrote" in line and "posix.system" in line
    assert not marker.exists()


def test_an_mlflow_uri_with_a_password_is_redacted_and_leaves_no_work_folder(in_home, monkeypatch, capsys):
    home, _ = in_home
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # the URI's are moved there
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cr3t@127.0.0.1:9/")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    code, _, err = cli(
        ["train", "blobs", "--preset", "smoke", "--bins", "4", "4", "--batch-size", "32", "--seed", "7"], capsys
    )
    assert code == 2
    line = one_line_error(err, "mlflow")
    assert "s3cr3t" not in err and "http://127.0.0.1:9/" in line  # the credentials never reach MLflow
    assert not list((home / "stages" / "train").glob("*.work"))


def test_redact_uri():
    from storage.errors import redact_uri

    assert (
        redact_uri("see http://alice:s3cr3t@host:5000/x and https://bob@h/")
        == "see http://alice:***@host:5000/x and https://***@h/"  # a user alone may be a token
    )
    assert (
        redact_uri("postgresql://u:p%40ss@db/mlflow?password=x&sslmode=1")
        == "postgresql://u:***@db/mlflow?password=***&sslmode=1"
    )
    assert redact_uri("sqlite:////home/me/mlflow.db") == "sqlite:////home/me/mlflow.db"


def test_a_diverging_run_stops_with_a_clear_message(in_home, capsys):
    """--set lr_d=1e9 used to finish with exit 0 and loss_d 1.4e18."""
    home, _ = in_home
    code, _, err = cli(
        [
            "train",
            "blobs",
            "--preset",
            "smoke",
            "--bins",
            "4",
            "4",
            "--batch-size",
            "32",
            "--set",
            "track=false",
            "--set",
            "lr_d=1e9",
            "--set",
            "diverge_steps=3",
            "--epochs",
            "2",
        ],
        capsys,
    )
    assert code == 2
    line = one_line_error(err, "train")
    assert line.startswith("train: diverged: |loss_") and "above 1e+06 for 3 consecutive D steps" in line
    assert "last good checkpoint" in line


def test_divergence_guard_counts_consecutive_steps():
    from pipeline.config import TrainConfig
    from pipeline.gan.trainer import Diverged, _check_divergence

    class T:
        cfg = TrainConfig(diverge_loss_max=10.0, diverge_steps=3)
        steps_over_bound = 0

    t = T()
    _check_divergence(t, [[11.0, 0, 0], [12.0, 0, 0], [1.0, 0, 0]], {}, 1)  # two, then back under the bound
    assert t.steps_over_bound == 0
    _check_divergence(t, [[1.0, 0, 0], [2.0, 0, 0]], {5: -50.0}, 4)  # a G loss counts at its D step
    assert t.steps_over_bound == 1
    with pytest.raises(Diverged) as e:
        _check_divergence(t, [[-20.0, 0, 0], [30.0, 0, 0]], {}, 6)
    assert (e.value.which, e.value.step, e.value.value) == ("D", 7, 30.0)
    t.cfg = TrainConfig(diverge_loss_max=None)
    _check_divergence(t, [[1e30, 0, 0]] * 100, {}, 1)


def test_names_with_control_characters_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path / "home"))
    src = tmp_path / "imgs"
    src.mkdir()
    png(src / "a.png")
    for name in ("demo\n", "de\tmo", "demo\x1b[31m", "demo\x00"):
        code, _, err = cli(["ingest", str(src), "--name", name], capsys)
        assert code == 2
        assert "invalid data set name" in one_line_error(err, "ingest")
    assert not (tmp_path / "home" / "datasets").exists() or not list((tmp_path / "home" / "datasets").iterdir())


def test_a_file_name_with_a_newline_keeps_the_error_on_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path / "home"))
    src = tmp_path / "imgs"
    src.mkdir()
    (src / "bad\nname.png").write_bytes(b"not a png")
    code, _, err = cli(["ingest", str(src), "--name", "nl"], capsys)
    assert code == 2
    line = one_line_error(err, "ingest")
    assert "bad\\nname.png" in line


def test_images_per_second_is_never_rounded_to_zero(tmp_path, monkeypatch):
    from pipeline.config import IngestConfig
    from pipeline.stages.ingest import rate, run_ingest

    assert rate(1, 30.0) == 0.0333 and rate(3, 0.001) == 3000.0 and rate(5, 0) is None
    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path / "home"))
    src = tmp_path / "one"
    src.mkdir()
    png(src / "a.png")
    s = run_ingest(IngestConfig(source=str(src), name="one", size=8), progress=False)
    assert s["images_per_second"] > 0  # was 0.0: the rate counted only images flushed to whole chunks


# --- what holds already and must keep holding -------------------------------------------------------


def test_every_load_in_the_project_is_weights_only_or_pickle_free():
    """Every torch.load in the project's code passes weights_only=True, every np.load
    allow_pickle=False; pickle is only used through the restricted unpickler (ingest)."""
    import ast

    bad = []
    for path in sorted(
        p
        for d in ("pipeline", "storage", "flows", "kernels", "bench", "subsample", "examples")
        for p in (ROOT / d).rglob("*.py")
    ):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
            where = f"{path.relative_to(ROOT)}:{node.lineno} {name}"
            if name == "torch.load" and kw.get("weights_only") != "True":
                bad.append(where)
            if name == "np.load" and kw.get("allow_pickle") != "False":
                bad.append(where)
            if name in ("pickle.load", "pickle.loads", "torch.jit.load", "torch.hub.load", "pickle.Unpickler"):
                bad.append(where)
    assert bad == []
