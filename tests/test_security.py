"""Issue 15 (hardening): every case of the audit, made here with small crafted inputs.

- no file read by the project (or by torch-fidelity on its behalf) runs code: payload files leave
  no marker;
- RUN is a key or an MLflow run id, never a path; nothing is written outside $SUBSAMPLE_HOME;
- decompression bombs in array sources are refused before allocation, with the peak memory of the
  refusing process measured in a subprocess (``resource.getrusage``);
- a corrupt store is one line naming the data set and the command to rebuild it;
- crashes of the audit are one-line errors (exit 2); names and messages stay on one line.

Concurrency (MLflow schema, artifact replacement, train ownership) is in ``test_concurrency.py``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
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


# --- 4. bombs in array sources: refused before allocation, peak memory measured --------------------


PEAK_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import pipeline.stages.ingest, flows.cli
    from flows.cli import main
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        main(["ingest", sys.argv[1], "--name", "bomb", "--json"] + sys.argv[2:])
        code = 0
    except SystemExit as e:
        code = e.code
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"code": code, "grew_mib": (after - before) / 1024}), file=sys.stderr)
""")


def ingest_in_subprocess(source: Path, home: Path, *extra: str) -> tuple[int, float, str, str]:
    """``subsample ingest SOURCE`` in a fresh process: (exit code, growth of its peak RSS in MiB
    during the ingest, stdout, the stderr lines before the measurement)."""
    env = {**os.environ, "SUBSAMPLE_HOME": str(home), "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(source), *extra], capture_output=True, text=True, env=env, timeout=300
    )
    *rest, last = p.stderr.strip().splitlines()
    m = json.loads(last)
    return m["code"], m["grew_mib"], p.stdout, "\n".join(rest)


PEAK_MIB = 150  # each bomb below costs over 400 MiB (up to 2.2 GB) when read the old way


def _gz_zeros(f, n: int) -> None:
    block = bytes(1 << 20)
    for _ in range(n // len(block)):
        f.write(block)
    f.write(bytes(n % len(block)))


@pytest.mark.slow
def test_idx_gz_bomb_is_refused_with_bounded_memory(tmp_path):
    """261 KB on disk: one 16384×16384 image (268 M pixels) behind a valid IDX header."""
    src = tmp_path / "bomb-images-idx3-ubyte.gz"
    with gzip.open(src, "wb", compresslevel=9) as f:
        f.write(b"\0\0\x08\x03" + np.array([1, 16384, 16384], ">u4").tobytes())
        _gz_zeros(f, 16384 * 16384)
    assert src.stat().st_size < 1 << 20
    code, grew, _, err = ingest_in_subprocess(src, tmp_path / "home")
    assert code == 2 and grew < PEAK_MIB, (grew, err)
    assert "16,384×16,384 = 268,435,456 pixels exceed --max-pixels 64,000,000" in one_line_error(err, "ingest")
    assert not (tmp_path / "home" / "datasets" / "bomb.zarr").exists()


def _npz_member(zf: zipfile.ZipFile, key: str, shape: tuple, dtype: str, body: int | bytes) -> None:
    with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape})
        if isinstance(body, bytes):
            f.write(body)
        else:
            _gz_zeros(f, body)


@pytest.mark.slow
def test_npz_bomb_is_refused_with_bounded_memory(tmp_path):
    """~420 KB on disk: one 12000×12000×3 image (144 M pixels, 432 MB)."""
    src = tmp_path / "bomb.npz"
    with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        _npz_member(zf, "images", (1, 12000, 12000, 3), "u1", 12000 * 12000 * 3)
    assert src.stat().st_size < 1 << 20
    code, grew, _, err = ingest_in_subprocess(src, tmp_path / "home")
    assert code == 2 and grew < PEAK_MIB, (grew, err)
    assert "pixels exceed --max-pixels" in one_line_error(err, "ingest")


def test_npz_and_idx_byte_limits_and_large_images_stream(tmp_path):
    """--max-bytes refuses from the header; an accepted array source is read in blocks."""
    src = tmp_path / "a.npz"
    x = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    np.savez_compressed(src, images=x, labels=np.arange(40))
    env_home = tmp_path / "home"
    from pipeline.config import IngestConfig
    from pipeline.stages.ingest import run_ingest
    from storage.store import open_store

    os.environ["SUBSAMPLE_HOME"] = str(env_home)
    try:
        with pytest.raises(SubsampleError, match=r"hold 7,680 bytes, more than --max-bytes 7,000"):
            run_ingest(IngestConfig(source=str(src), name="a", size=8, max_bytes=7000), progress=False)
        run_ingest(IngestConfig(source=str(src), name="a", size=8), progress=False)
        s = open_store("a", verify=True)
        np.testing.assert_array_equal(s.images[:], x)
        np.testing.assert_array_equal(s.labels[:], np.arange(40))
    finally:
        del os.environ["SUBSAMPLE_HOME"]


@pytest.mark.slow
def test_zip_member_with_a_patched_small_size_is_read_with_a_real_cap(tmp_path):
    """A member of 600 MB of zeros whose declared size (local and central headers) says 1,000
    bytes: read to its declared size only, its CRC fails, it is quarantined; the rest ingests."""
    src = tmp_path / "bomb.zip"
    with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED) as zf:
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(buf, "PNG")
        zf.writestr("a.png", buf.getvalue())
        with zf.open("b.png", "w", force_zip64=False) as f:
            _gz_zeros(f, 600 << 20)
    raw = bytearray(src.read_bytes())
    info = zipfile.ZipFile(src).getinfo("b.png")
    local = info.header_offset
    assert raw[local : local + 4] == b"PK\x03\x04"
    raw[local + 22 : local + 26] = (1000).to_bytes(4, "little")  # uncompressed size, local header
    for pos in [i for i in range(len(raw) - 4) if raw[i : i + 4] == b"PK\x01\x02"]:
        name_len = int.from_bytes(raw[pos + 28 : pos + 30], "little")
        if raw[pos + 46 : pos + 46 + name_len] == b"b.png":
            raw[pos + 24 : pos + 28] = (1000).to_bytes(4, "little")  # uncompressed size, central directory
    src.write_bytes(bytes(raw))
    code, grew, out, err = ingest_in_subprocess(src, tmp_path / "home", "--size", "8")
    assert code == 0 and grew < PEAK_MIB, (grew, err)
    s = json.loads(out)
    assert s["n_images"] == 1 and [q["path"] for q in s["quarantine"]] == ["b.png"]
    assert "CRC" in s["quarantine"][0]["reason"]


def _pickle_file(path: Path, obj_reduce) -> Path:
    class Fake:
        def __reduce__(self):
            return obj_reduce

    path.write_bytes(pickle.dumps({b"data": Fake(), b"labels": [0]}, protocol=2))
    return path


@pytest.mark.parametrize(
    "reduce, why",
    [
        ((np.ndarray, ((20000, 3072), "u1")), "refusing numpy.ndarray(...)"),  # 189 bytes → 20,000 uninitialised images
        ((np.ndarray, ((2**40, 3072), "u1")), "refusing numpy.ndarray(...)"),  # a MemoryError traceback
        ((np._core.multiarray._reconstruct, (np.ndarray, (2**40, 3072), b"B")), "not how numpy pickles an array"),
        (
            (
                np._core.multiarray._reconstruct,
                (np.ndarray, (0,), b"b"),
                (1, (20000, 3072), np.dtype("u1"), False, b"\0" * 10),
            ),
            "declaring shape (20000, 3072) of uint8 but carrying 10 bytes",
        ),
        (
            (
                np._core.multiarray._reconstruct,
                (np.ndarray, (0,), b"b"),
                (1, (10, 10), np.dtype("u1"), False, b"\0" * 100),
            ),
            "CIFAR-10 records are (N, 3072)",
        ),
    ],
)
def test_cifar_pickles_declaring_shapes_are_refused_before_allocation(tmp_path, monkeypatch, capsys, reduce, why):
    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path / "home"))
    src = _pickle_file(tmp_path / "data_batch_1", reduce)
    assert src.stat().st_size < 1000
    code, _, err = cli(["ingest", str(src), "--name", "c"], capsys)
    assert code == 2
    line = one_line_error(err, "ingest")
    assert why in line and "refusing" in line
    assert not (tmp_path / "home" / "datasets" / "c.zarr").exists()


def test_empty_dimensions_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path / "home"))
    idx = tmp_path / "e-images-idx3-ubyte"
    idx.write_bytes(b"\0\0\x08\x03" + np.array([5, 0, 28], ">u4").tobytes())
    npz = tmp_path / "e.npz"
    np.savez(npz, images=np.zeros((2, 0, 5, 3), np.uint8))
    for src in (idx, npz):
        code, _, err = cli(["ingest", str(src), "--name", "e"], capsys)
        assert code == 2
        assert "have an empty dimension" in one_line_error(err, "ingest")
    assert not (tmp_path / "home" / "datasets" / "e.zarr").exists()


# --- 5. integrity: a corrupt store stops the stage that would build on it ---------------------------


def _chunks(store_path: Path) -> list[Path]:
    return sorted(p for p in (store_path / "images" / "c").rglob("*") if p.is_file())


def test_a_swapped_chunk_stops_features_and_a_truncated_one_stops_train(tmp_path, monkeypatch, capsys):
    from storage.store import StoreBuilder

    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with StoreBuilder("toy", size=16, n_max=96, chunk=32, attrs={"source": "/data/toy", "policy": {}}) as b:
        b.append(blobs(96))
        store = b.finish()
    assert cli(["features", "toy", "--workers", "1", "--json"], capsys)[0] == 0
    assert cli(["tables", "toy", "--bins", "4", "4", "--json"], capsys)[0] == 0
    a, c = _chunks(store.path)[:2]
    good = a.read_bytes()
    a.write_bytes(c.read_bytes())  # another chunk's bytes: valid zstd, wrong images
    code, out, err = cli(["features", "toy", "--workers", "1", "--refresh"], capsys)
    assert code == 2 and out == ""
    line = one_line_error(err, "features")
    assert "data set toy" in line and "content hash mismatch" in line
    assert "`subsample ingest /data/toy --name toy --refresh`" in line

    a.write_bytes(good[: len(good) // 2])  # truncated
    code, _, err = cli(
        ["train", "toy", "--preset", "smoke", "--bins", "4", "4", "--batch-size", "32", "--set", "track=false"], capsys
    )
    assert code == 2
    line = one_line_error(err, "train")
    assert "data set toy" in line and "unreadable chunk" in line and "--refresh" in line

    a.write_bytes(good)  # repaired: the stages run again (the check is repeated, then recorded)
    assert cli(["features", "toy", "--workers", "1", "--refresh", "--json"], capsys)[0] == 0


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


# --- 8. a folder source never follows a symlink out of the folder -----------------------------------


def test_symlinks_leaving_a_folder_source_are_quarantined(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path / "home"))
    src, elsewhere = tmp_path / "imgs", tmp_path / "private"
    src.mkdir()
    elsewhere.mkdir()
    png(src / "a.png")
    png(src / "sub.png", seed=1)
    png(elsewhere / "secret.png", seed=2)
    (src / "link.png").symlink_to(elsewhere / "secret.png")
    (src / "inside.png").symlink_to(src / "sub.png")  # stays in the folder: read
    (src / "dir").symlink_to(elsewhere, target_is_directory=True)
    code, out, err = cli(["ingest", str(src), "--name", "s", "--size", "8", "--json"], capsys)
    assert code == 0, err
    s = json.loads(out)
    assert s["n_images"] == 3
    reasons = {q["path"]: q["reason"] for q in s["quarantine"]}
    assert set(reasons) == {"link.png", "dir"}
    assert all(r.startswith("symlink: points outside the source folder") for r in reasons.values())


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
