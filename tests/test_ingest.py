"""pipeline/stages/ingest.py: every source kind round-trips, quarantine, atomicity, the restricted
unpickler, the CLI's exit codes and the cache. The crop/resize and colour-mode policy is in
``test_ingest_images.py``."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pipeline.data.images as images_mod
import pipeline.data.readers as readers_mod
import pipeline.stages.ingest as ingest_mod
from flows.cli import main
from pipeline.config import IngestConfig
from pipeline.data.unpickle import RestrictedUnpickler
from pipeline.stages.ingest import run_ingest
from storage.errors import SubsampleError
from storage.paths import dataset_path
from storage.store import open_store


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def ingest(source, name="t", refresh=False, **kw):
    return run_ingest(IngestConfig(source=str(source), name=name, **kw), progress=False, refresh=refresh)


def stored(name="t"):
    s = open_store(name, verify=True)
    return s.images[:], (s.labels[:] if s.labels is not None else None)


def rgb(n, h=6, w=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def png_bytes(a: np.ndarray, **kw) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a).save(b, "PNG", **kw)
    return b.getvalue()


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, "JPEG", quality=95, **kw)
    return b.getvalue()


def to_bytes(img: Image.Image, fmt="PNG", **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def no_leftovers(home) -> bool:
    d = home / "datasets"
    return not d.exists() or not any(p for p in d.iterdir() if not p.name.endswith(".zarr"))


# --- every source kind round-trips exactly ---------------------------------------------------------


def test_png_folder_recursive_sorted_and_other_files_ignored(tmp_path):
    x = rgb(6)
    names = ["b/2.png", "a.png", "b/1.PNG", "c/d/0.png", "z.bmp", "y.webp"]  # sorted: a, b/1, b/2, c/d/0, y, z
    src = tmp_path / "imgs"
    for a, n in zip(x, names):
        (src / n).parent.mkdir(parents=True, exist_ok=True)
        fmt = {"bmp": "BMP", "webp": "WEBP"}.get(n.rsplit(".", 1)[1], "PNG")
        Image.fromarray(a).save(src / n, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    (src / "README.txt").write_text("not an image, and not named like one")
    (src / ".hidden.png").write_bytes(b"macOS junk")
    s = ingest(src, size=6)
    order = [names.index(n) for n in sorted(names)]
    imgs, labels = stored()
    assert np.array_equal(imgs, x[order]) and labels is None
    assert (s["n_images"], s["n_quarantined"], s["source_format"], s["size"]) == (6, 0, "images", 6)
    assert s["source"] == str(src) and s["cache_hit"] is False and s["labels"] is False
    attrs = open_store("t").attrs
    assert attrs["source_format"] == "images" and attrs["key"] == s["key"] and attrs["source_fingerprint"]
    policy = {
        k: attrs["policy"][k] for k in ("crop", "size", "filter", "jpeg_draft", "alpha", "decoder", "decode_device")
    }
    assert policy == {
        "crop": "short-side",
        "size": 6,
        "filter": "lanczos",
        "jpeg_draft": True,
        "alpha": "composited on white",
        "decoder": "fast",
        "decode_device": "cpu",
    }
    assert attrs["policy"]["jpeg"].startswith("simplejpeg ") and attrs["policy"]["resize"].startswith("kernels.resize")


def test_zip_of_pngs(tmp_path):
    x = rgb(4, seed=1)
    src = tmp_path / "imgs.zip"
    with zipfile.ZipFile(src, "w") as zf:
        for i in (3, 1, 0, 2):  # stored out of order: ingest sorts by member name
            zf.writestr(f"img_align/{i:06d}.png", png_bytes(x[i]))
        zf.writestr("__MACOSX/img_align/._000001.png", b"resource fork")
        zf.writestr("list_attr.txt", "metadata")
    s = ingest(src, size=6)
    assert np.array_equal(stored()[0], x) and (s["source_format"], s["n_quarantined"]) == ("zip", 0)


def write_cifar_bin(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    rec = np.concatenate([y.astype(np.uint8)[:, None], x.transpose(0, 3, 1, 2).reshape(len(x), -1)], axis=1)
    path.write_bytes(rec.tobytes())


def test_cifar_bin_folder_and_single_file(tmp_path):
    x, y = rgb(7, 32, 32, seed=2), np.array([3, 1, 4, 1, 5, 9, 2])
    src = tmp_path / "cifar-10-batches-bin"
    src.mkdir()
    write_cifar_bin(src / "data_batch_1.bin", x[:4], y[:4])
    write_cifar_bin(src / "test_batch.bin", x[4:], y[4:])
    (src / "batches.meta.txt").write_text("airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n")
    (src / "readme.html").write_text("<html/>")
    s = ingest(src, size=32, split="all")
    imgs, labels = stored()
    assert np.array_equal(imgs, x) and np.array_equal(labels, y)
    assert (s["n_images"], s["n_quarantined"], s["source_format"], s["labels"]) == (7, 0, "cifar10-bin", True)
    assert open_store("t").attrs["class_names"][9] == "truck"
    ingest(src / "test_batch.bin", name="one", size=32, split="test")
    assert np.array_equal(stored("one")[0], x[4:]) and np.array_equal(stored("one")[1], y[4:])


def test_cifar_folders_ingest_the_training_batches_unless_asked(tmp_path):
    """FID "vs train" must not include the test images: a CIFAR folder's test batch is read only
    with --split test or all, and the store records which split it holds."""
    x, y = rgb(7, 32, 32, seed=2), np.array([3, 1, 4, 1, 5, 9, 2])
    binary = tmp_path / "cifar-10-batches-bin"
    binary.mkdir()
    write_cifar_bin(binary / "data_batch_1.bin", x[:2], y[:2])
    write_cifar_bin(binary / "data_batch_2.bin", x[2:4], y[2:4])
    write_cifar_bin(binary / "test_batch.bin", x[4:], y[4:])
    python = tmp_path / "cifar-10-batches-py"
    python.mkdir()
    (python / "data_batch_1").write_bytes(cifar_py_batch(x[:4], y[:4]))
    (python / "test_batch").write_bytes(cifar_py_batch(x[4:], y[4:]))
    for src, fmt in ((binary, "cifar10-bin"), (python, "cifar10-python")):
        s = ingest(src, name="train", size=32)
        assert (s["n_images"], s["split"], s["source_format"]) == (4, "train", fmt)
        assert np.array_equal(stored("train")[0], x[:4]) and np.array_equal(stored("train")[1], y[:4])
        attrs = open_store("train").attrs
        assert attrs["split"] == "train" and "test_batch" not in " ".join(attrs["split_files"])
        s = ingest(src, name="test", size=32, split="test")
        assert (s["n_images"], s["split"]) == (3, "test") and np.array_equal(stored("test")[0], x[4:])
        assert ingest(src, name="all", size=32, split="all")["n_images"] == 7
    # a test batch given alone is refused under the default split, with the fix in the message
    with pytest.raises(SubsampleError, match=r"no CIFAR-10 train batch among test_batch\.bin; pass --split test"):
        ingest(binary / "test_batch.bin", name="x", size=32)
    np.savez(tmp_path / "a.npz", images=rgb(2))
    with pytest.raises(SubsampleError, match=r"--split test applies to CIFAR-10 sources only"):
        ingest(tmp_path / "a.npz", name="x", size=6, split="test")
    # the embedded demo data (one .bin that is not a test batch) is training data
    from flows.config import DEMO_SOURCE

    s = ingest(DEMO_SOURCE, name="demo", size=32)
    assert (s["n_images"], s["split"]) == (2000, "train")


def test_cifar_bin_of_the_wrong_size_is_an_error_naming_the_file(tmp_path):
    src = tmp_path / "c"
    src.mkdir()
    write_cifar_bin(src / "data_batch_1.bin", rgb(2, 32, 32), np.zeros(2))
    (src / "data_batch_2.bin").write_bytes(b"\0" * 3074)
    with pytest.raises(SubsampleError, match=r"data_batch_2\.bin: 3,074 bytes is not a whole number"):
        ingest(src)


def cifar_py_batch(x, y, numpy_core_alias=False) -> bytes:
    d = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [int(v) for v in y],
        b"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1),
        b"filenames": [b"a.png"] * len(x),
    }
    raw = pickle.dumps(d, protocol=2)
    # the published CIFAR pickles were written by numpy 1.x, which spells the module numpy.core
    return raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray") if numpy_core_alias else raw


def test_cifar_python_batches_with_the_restricted_unpickler(tmp_path):
    x, y = rgb(6, 32, 32, seed=3), np.array([0, 1, 2, 3, 4, 5])
    src = tmp_path / "cifar-10-batches-py"
    src.mkdir()
    (src / "data_batch_1").write_bytes(cifar_py_batch(x[:3], y[:3], numpy_core_alias=True))
    (src / "test_batch").write_bytes(cifar_py_batch(x[3:], y[3:]))
    (src / "batches.meta").write_bytes(
        pickle.dumps({b"label_names": [b"airplane", b"automobile"], b"num_vis": 3072}, protocol=2)
    )
    s = ingest(src, size=32, split="all")
    imgs, labels = stored()
    assert np.array_equal(imgs, x) and np.array_equal(labels, y) and s["source_format"] == "cifar10-python"
    assert open_store("t").attrs["class_names"] == ["airplane", "automobile"]


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "py"
    src.mkdir()
    (src / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(SubsampleError, match=r"data_batch_1: refusing to load posix\.system"):
        ingest(src)
    assert not marker.exists() and not dataset_path("t").exists()
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        RestrictedUnpickler(io.BytesIO(b"cbuiltins\neval\n(S'1+1'\ntR.")).load()
    assert pickle.loads(b"cbuiltins\neval\n(S'1+1'\ntR.") == 2  # the same bytes do run code unrestricted


def idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 8, a.ndim]) + np.array(a.shape, ">u4").tobytes() + a.astype(np.uint8).tobytes()


@pytest.mark.parametrize("gz", [True, False])
def test_idx_grey_images_with_labels(tmp_path, gz):
    g = np.random.default_rng(4).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    y = np.array([7, 2, 1, 0, 4])
    src = tmp_path / "mnist"
    src.mkdir()
    ext = ".gz" if gz else ""
    write = (lambda p, b: p.write_bytes(gzip.compress(b))) if gz else (lambda p, b: p.write_bytes(b))
    write(src / f"train-images-idx3-ubyte{ext}", idx_bytes(g[:3]))
    write(src / f"train-labels-idx1-ubyte{ext}", idx_bytes(y[:3]))
    write(src / f"t10k-images-idx3-ubyte{ext}", idx_bytes(g[3:]))
    write(src / f"t10k-labels-idx1-ubyte{ext}", idx_bytes(y[3:]))
    s = ingest(src, size=28)
    imgs, labels = stored()
    order = [3, 4, 0, 1, 2]  # sorted file names: t10k-* before train-*
    assert imgs.shape == (5, 28, 28, 3) and s["source_format"] == "idx"
    assert np.array_equal(imgs, np.repeat(g[order][..., None], 3, axis=-1)) and np.array_equal(labels, y[order])
    ingest(src / f"train-images-idx3-ubyte{ext}", name="one", size=28)  # one file: labels found next to it
    assert np.array_equal(stored("one")[1], y[:3])


def test_idx_with_a_bad_header_is_an_error(tmp_path):
    (tmp_path / "x-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03" + np.array([2, 4, 4], ">u4").tobytes() + b"\0" * 5)
    with pytest.raises(SubsampleError, match="header says"):
        ingest(tmp_path / "x-images-idx3-ubyte")


def test_npz_rgb_with_labels_and_grey_without(tmp_path):
    x, y = rgb(4, 8, 8, seed=5), np.array([1, 0, 1, 1])
    np.savez(tmp_path / "rgb.npz", images=x, labels=y)
    s = ingest(tmp_path / "rgb.npz", size=8)
    assert np.array_equal(stored()[0], x) and np.array_equal(stored()[1], y) and s["source_format"] == "npz"
    g = x[..., 0]
    np.savez(tmp_path / "grey.npz", images=g)
    ingest(tmp_path / "grey.npz", name="g", size=8)
    imgs, labels = stored("g")
    assert labels is None and np.array_equal(imgs, np.repeat(g[..., None], 3, axis=-1))
    np.savez(tmp_path / "float.npz", images=x.astype(np.float32))
    with pytest.raises(SubsampleError, match="must be uint8"):
        ingest(tmp_path / "float.npz")


# --- quarantine ------------------------------------------------------------------------------------


def test_bad_files_are_quarantined_with_reasons_and_the_rest_ingested(tmp_path):
    x = rgb(3, 8, 8, seed=10)
    src = tmp_path / "mixed"
    src.mkdir()
    for i, a in enumerate(x):
        (src / f"good{i}.png").write_bytes(png_bytes(a))
    png = png_bytes(rgb(1, 40, 40)[0])
    (src / "bad_zero.jpg").write_bytes(b"")
    (src / "bad_text.png").write_text("this is not an image at all\n" * 4)
    (src / "bad_trunc.png").write_bytes(png[: len(png) // 2])
    (src / "bad_trunc.jpg").write_bytes(jpeg_bytes(Image.fromarray(rgb(1, 64, 64)[0]))[:400])
    (src / "bad_corrupt.png").write_bytes(png[:100] + b"\0" * 200 + png[300:])
    (src / "bad_huge.png").write_bytes(png_bytes(np.zeros((90, 90, 3), np.uint8)))
    (src / "bad_gif.png").write_bytes(to_bytes(Image.fromarray(x[0]), "GIF"))  # decodable, but not a format we read
    (src / "good3.jpg").write_bytes(png_bytes(x[0]))  # a PNG named .jpg is still a PNG
    s = ingest(src, size=8, max_pixels=80 * 80)
    assert np.array_equal(stored()[0], np.concatenate([x, x[:1]]))
    reasons = {q["path"]: q["reason"] for q in s["quarantine"]}
    assert s["n_images"] == 4 and s["n_quarantined"] == 7 and len(reasons) == 7
    assert reasons["bad_gif.png"].startswith("not an image")
    assert reasons["bad_zero.jpg"] == "zero bytes"
    assert reasons["bad_text.png"].startswith("not an image")
    assert reasons["bad_trunc.png"].startswith("truncated") and reasons["bad_trunc.jpg"].startswith("truncated")
    assert reasons["bad_corrupt.png"].startswith("corrupt")
    assert reasons["bad_huge.png"].startswith("too large: 90×90 = 8,100 pixels > max_pixels 6,400")
    assert (
        json.loads((Path(s["path"]) / "quarantine.json").read_text()) == s["quarantine"] == open_store("t").quarantine
    )
    assert [q["path"] for q in s["quarantine"]] == sorted(reasons)


def test_decompression_bombs_are_quarantined(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30 * 30)  # Pillow warns above this, raises above twice
    src = tmp_path / "bombs"
    src.mkdir()
    (src / "ok.png").write_bytes(png_bytes(rgb(1, 8, 8)[0]))
    (src / "warn.png").write_bytes(png_bytes(np.zeros((40, 40, 3), np.uint8)))  # 1,600 > 900
    (src / "error.png").write_bytes(png_bytes(np.zeros((50, 50, 3), np.uint8)))  # 2,500 > 1,800
    s = ingest(src, size=8)
    reasons = {q["path"]: q["reason"] for q in s["quarantine"]}
    assert s["n_images"] == 1 and set(reasons) == {"warn.png", "error.png"}
    assert all(r.startswith("decompression bomb") for r in reasons.values())


def test_unsafe_zip_members_are_quarantined(tmp_path):
    good = rgb(1, 6, 6)[0]
    src = tmp_path / "evil.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("ok.png", png_bytes(good))
        zf.writestr("../escape.png", png_bytes(good))
        zf.writestr("/abs.png", png_bytes(good))
        zf.writestr("a/../../b.png", png_bytes(good))
        zf.writestr("-empty.png", b"")  # sorts first: the quarantine list is sorted by path
    s = ingest(src, size=6)
    reasons = {q["path"]: q["reason"] for q in s["quarantine"]}
    assert s["n_images"] == 1 and np.array_equal(stored()[0][0], good)
    assert reasons == {
        "../escape.png": "unsafe member path: absolute or with '..'",
        "/abs.png": "unsafe member path: absolute or with '..'",
        "a/../../b.png": "unsafe member path: absolute or with '..'",
        "-empty.png": "zero bytes",
    }
    assert [q["path"] for q in s["quarantine"]] == sorted(reasons)
    assert not (tmp_path / "escape.png").exists()


# --- atomicity, errors, CLI ------------------------------------------------------------------------


def png_folder(path: Path, n: int, seed=0, size=6) -> np.ndarray:
    x = rgb(n, size, size, seed=seed)
    path.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(x):
        (path / f"{i:03d}.png").write_bytes(png_bytes(a))
    return x


def test_a_killed_ingest_leaves_no_store_and_a_rerun_completes(tmp_path, home, monkeypatch):
    x = png_folder(tmp_path / "src", 9)
    real, calls = readers_mod.decode_files, []

    def dying(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed mid-way")
        return real(*args)

    monkeypatch.setattr(readers_mod, "decode_files", dying)
    with pytest.raises(RuntimeError, match="killed"):
        ingest(tmp_path / "src", size=6, files_per_task=2, workers=1)
    assert len(calls) >= 3 and not dataset_path("t").exists() and no_leftovers(home)
    with pytest.raises(SubsampleError, match="no data set store"):
        open_store("t")
    monkeypatch.setattr(readers_mod, "decode_files", real)
    s = ingest(tmp_path / "src", size=6, files_per_task=2)
    assert s["n_images"] == 9 and np.array_equal(stored()[0], x)

    # a killed rebuild keeps the old store
    (tmp_path / "src" / "000.png").write_bytes(png_bytes(rgb(1, 6, 6, seed=99)[0]))
    calls.clear()
    monkeypatch.setattr(readers_mod, "decode_files", dying)
    with pytest.raises(RuntimeError):
        ingest(tmp_path / "src", size=6, files_per_task=2, workers=1)
    assert open_store("t", verify=True).content_hash == s["content_hash"] and no_leftovers(home)


def cli(*args) -> int:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    return e.value.code


def test_cli_exit_2_and_nothing_written_for_missing_empty_or_all_bad_sources(tmp_path, home, capsys):
    assert cli("ingest", str(tmp_path / "nope"), "--name", "t") == 2
    assert capsys.readouterr().err.strip().endswith(f"ingest: source {tmp_path / 'nope'} does not exist")
    (tmp_path / "empty").mkdir()
    assert cli("ingest", str(tmp_path / "empty"), "--name", "t") == 2
    assert "no image files" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"")
    (tmp_path / "bad" / "b.jpg").write_text("nope")
    assert cli("ingest", str(tmp_path / "bad"), "--name", "t") == 2
    err = capsys.readouterr().err
    assert "no valid image" in err and "1 zero bytes" in err and "1 not an image" in err and "nothing written" in err
    (tmp_path / "parent" / "cifar-10-batches-bin").mkdir(parents=True)
    write_cifar_bin(tmp_path / "parent" / "cifar-10-batches-bin" / "data_batch_1.bin", rgb(1, 32, 32), np.zeros(1))
    assert cli("ingest", str(tmp_path / "parent"), "--name", "t") == 2
    assert f"pass {tmp_path / 'parent' / 'cifar-10-batches-bin'} itself as SOURCE" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("?")
    assert cli("ingest", str(tmp_path / "notes.txt"), "--name", "t") == 2
    assert "unknown source kind" in capsys.readouterr().err
    assert not home.exists() or not any(home.rglob("*"))  # nothing at all was written


def test_cli_json_prints_exactly_one_object(tmp_path, capsys):
    png_folder(tmp_path / "src", 3)
    assert cli("ingest", str(tmp_path / "src"), "--name", "t", "--size", "6", "--json") == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    s = json.loads(out)
    for k in (
        "stage",
        "dataset",
        "key",
        "path",
        "cache_hit",
        "seconds",
        "n_images",
        "n_quarantined",
        "quarantine",
        "source",
        "source_format",
        "size",
        "content_hash",
        "images_per_second",
    ):
        assert k in s
    assert (s["stage"], s["dataset"], s["n_images"]) == ("ingest", "t", 3)


# --- cache -----------------------------------------------------------------------------------------


def test_cache_hit_on_an_unchanged_rerun_and_rebuild_when_a_file_changes(tmp_path, monkeypatch):
    png_folder(tmp_path / "src", 4)
    first = ingest(tmp_path / "src", size=6)

    def must_not_run(*args):
        raise AssertionError("decoded on a cache hit")

    monkeypatch.setattr(readers_mod, "decode_files", must_not_run)
    again = ingest(tmp_path / "src", size=6, workers=1, files_per_task=1)  # execution-only changes
    assert (
        again["cache_hit"] is True and again["key"] == first["key"] and again["content_hash"] == first["content_hash"]
    )
    assert again["n_images"] == 4 and again["images_per_second"] == first["images_per_second"]
    monkeypatch.undo()
    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path / "home"))

    new = rgb(1, 7, 7, seed=42)[0]  # a different file (size too, so even a coarse mtime sees it)
    (tmp_path / "src" / "002.png").write_bytes(png_bytes(new))
    changed = ingest(tmp_path / "src", size=6)
    assert changed["cache_hit"] is False and changed["key"] != first["key"]
    assert changed["content_hash"] != first["content_hash"]
    assert ingest(tmp_path / "src", size=8)["key"] != changed["key"]  # a parameter change rebuilds too
    assert ingest(tmp_path / "src", size=8, refresh=True)["cache_hit"] is False


def test_a_corrupted_store_is_rebuilt(tmp_path):
    png_folder(tmp_path / "src", 4)
    first = ingest(tmp_path / "src", size=6)
    chunk = next(p for p in (Path(first["path"]) / "images" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(b"garbage")
    again = ingest(tmp_path / "src", size=6)
    assert again["cache_hit"] is False and again["content_hash"] == first["content_hash"]
    open_store("t", verify=True)


def test_workers_scheduler_and_task_size_do_not_change_the_store(tmp_path):
    png_folder(tmp_path / "src", 7, size=10)
    runs = [
        ingest(tmp_path / "src", name=f"r{i}", size=6, workers=w, files_per_task=f, scheduler=sch)
        for i, (w, f, sch) in enumerate([(1, 1, "threads"), (2, 3, "threads"), (2, 2, "processes")])
    ]
    assert len({r["key"] for r in runs}) == 1 and len({r["content_hash"] for r in runs}) == 1


# --- the parallel driver ---------------------------------------------------------------------------


def _slow_block(i: int, delay: float) -> images_mod.Block:
    time.sleep(delay)
    return images_mod.Block(np.full((1, 1, 1, 3), i, np.uint8))


def test_run_tasks_in_order_keeps_order_and_a_bounded_window():
    pulled = []

    def tasks(n):
        for i in range(n):
            pulled.append(i)
            yield _slow_block, (i, 0.02 * ((7 * i) % 3))  # uneven task times: order must not depend on them

    got = [int(b.images[0, 0, 0, 0]) for b in ingest_mod.run_tasks_in_order(tasks(23), workers=2, scheduler="threads")]
    assert got == list(range(23))

    pulled.clear()
    gen = ingest_mod.run_tasks_in_order(tasks(1000), workers=2, scheduler="threads")
    next(gen)  # the caller holds the first block and stops consuming
    time.sleep(0.5)
    assert len(pulled) <= 3 * 2 * 2  # the window being consumed, one queued, one computing
    gen.close()
    assert not any(t.name == "ingest-producer" for t in threading.enumerate())
    assert len(pulled) <= 3 * 2 * 2
