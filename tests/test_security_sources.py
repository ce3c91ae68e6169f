"""Issue 15 (hardening), hostile sources and stores: decompression bombs in array sources are
refused before allocation, with the peak memory of the refusing process measured in a subprocess
(``resource.getrusage``); crafted CIFAR pickles are refused before allocation; a corrupt store is
one line naming the data set and the command to rebuild it; a folder source never follows a
symlink out of the folder. The other cases of the audit are in ``test_security.py``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_security import ROOT, blobs, cli, one_line_error, png

from storage.errors import SubsampleError

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
