"""Bounded hostile inputs (docs/security.md, "Bounded inputs"): crafted CIFAR pickles are refused
before they are built and under 300 MiB, planted fidelity caches are shape-checked before loading
and keyed by the weights actually loaded, a store's declared shape is checked against its chunks."""

from __future__ import annotations

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
from conftest import blob_images

from storage.errors import SubsampleError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("SUBSAMPLE_HOME", str(h))
    return h


# --- 3. bounded hostile inputs ----------------------------------------------------------------------


class _Encode:
    def __init__(self, inner, encoding: str):
        self.inner, self.encoding = inner, encoding

    def __reduce__(self):
        import codecs

        return (codecs.encode, (self.inner, self.encoding))


def _hex_bomb(levels: int) -> bytes:
    x: object = b"ab"
    for _ in range(levels):
        x = _Encode(x, "hex")
    return pickle.dumps(x, protocol=2)


def _crafted_pickles() -> dict[str, bytes]:
    n = 200_000
    one_mib = "x" * (1 << 20)  # one object, named 600 times through the memo
    cyclic: list = []
    cyclic.append(cyclic)
    return {
        "hex31": _hex_bomb(31),  # 2 bytes doubled 31 times: 4 GiB if built
        "hex5": _hex_bomb(5),  # shallow: refused by the codec rule, not the depth
        "deep": b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b".",  # a list nested 200,000 deep (400 KB)
        "memo": pickle.dumps([_Encode(one_mib, "latin1") for _ in range(600)], protocol=2),  # 600 MiB if built
        "cycle": pickle.dumps(cyclic, protocol=2),
        "flat": b"\x80\x02]" + b"]a" * 1_100_000 + b".",  # 1.1M opcodes of empty lists: 32x in objects
    }


LOAD_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a regression fails here, not the machine
    from pipeline.data.unpickle import restricted_load
    from storage.errors import SubsampleError
    out = {}
    for f in sys.argv[1:]:
        try:
            restricted_load(Path(f))
            out[Path(f).stem] = "loaded"
        except SubsampleError as e:
            out[Path(f).stem] = str(e)
    # VmHWM: this process's own peak (ru_maxrss would carry over the forking parent's)
    hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["peak_mib"] = int(hwm[0].split()[1]) / 1024 if hwm else rss / 1024
    print(json.dumps(out))
""")


def test_crafted_cifar_pickles_are_refused_under_300_mib(tmp_path):
    """The re-audit: 243 bytes of nested ``_codecs.encode`` built 3,264 MiB before refusal; a 400 KB
    nested list ended in a RecursionError traceback."""
    got, peaks = {}, {}
    for name, data in _crafted_pickles().items():  # one process each: the peak is each file's
        (tmp_path / f"{name}.pkl").write_bytes(data)
        p = subprocess.run(
            [sys.executable, "-c", LOAD_SCRIPT, str(tmp_path / f"{name}.pkl")],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=300,
        )
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout.strip().splitlines()[-1])
        got[name], peaks[name] = out[name], out["peak_mib"]
    assert "nested more than 32 deep" in got["hex31"]
    assert "_codecs.encode(..., 'hex')" in got["hex5"]
    assert "nested more than 32 deep" in got["deep"] and "containing themselves" in got["cycle"]
    assert "would make more than" in got["memo"]
    assert "more than 1,000,000 pickle opcodes" in got["flat"]
    assert max(peaks.values()) < 300, peaks


def test_a_real_batch_loads_within_its_budget(tmp_path):
    from pipeline.data.unpickle import restricted_load

    rng = np.random.default_rng(0)
    batch = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": rng.integers(0, 10, 500).tolist(),
        b"data": rng.integers(0, 256, (500, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(500)],
    }
    for protocol in (2, 4):
        f = tmp_path / f"data_batch_{protocol}"
        f.write_bytes(pickle.dumps(batch, protocol=protocol))
        got = restricted_load(f)
        assert np.array_equal(got[b"data"], batch[b"data"]) and got[b"labels"] == batch[b"labels"]


def test_the_opcode_scan_measures_depth_through_the_memo():
    from pipeline.data.unpickle import scan

    nested: list = []
    cur = nested
    for _ in range(20):
        cur.append([])
        cur = cur[0]
    scan(pickle.dumps(nested, protocol=2))  # 21 deep: fine
    with pytest.raises(pickle.UnpicklingError, match="nested more than 10 deep"):
        scan(pickle.dumps(nested, protocol=2), max_depth=10)
    shared = [[[1]]]
    scan(pickle.dumps([shared] * 1000, protocol=2), max_depth=5)  # shared, not nested: depth 4


def _npy_header_only(zf: zipfile.ZipFile, key: str, shape: tuple, body: bytes = b"") -> None:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": shape})
    zf.writestr(f"{key}.npy", buf.getvalue() + body)


def test_a_planted_fidelity_cache_is_shape_checked_before_loading(tmp_path, capsys):
    """The re-audit: an npz declaring a 131072×65536 ``fid_sigma`` ended in MemoryError; a 22.7 MB one
    made a 5.6 GB peak."""
    from pipeline.reference_cache import load_reference_cache

    path = tmp_path / "cache.npz"
    with zipfile.ZipFile(path, "w") as zf:
        _npy_header_only(zf, "feature__stats", (100, 18), bytes(100 * 18 * 8))
        _npy_header_only(zf, "fid_mu", (18,), bytes(18 * 8))
        _npy_header_only(zf, "fid_sigma", (131072, 65536))
    assert load_reference_cache(path, {"stats": 18}, "stats", 100) is None
    assert "fid_sigma declares float64 (131072, 65536), expected float (18, 18)" in capsys.readouterr().err
    with zipfile.ZipFile(path, "w") as zf:  # the right shapes, but not the width this run's extractor gives
        _npy_header_only(zf, "feature__stats", (100, 4096), bytes(100 * 4096 * 8))
        _npy_header_only(zf, "fid_mu", (4096,), bytes(4096 * 8))
        _npy_header_only(zf, "fid_sigma", (4096, 4096), bytes(4096 * 4096 * 8))
    assert load_reference_cache(path, {"stats": 18}, "stats", 100) is None
    with zipfile.ZipFile(path, "w") as zf:
        _npy_header_only(zf, "feature__stats", (100, 18), bytes(100 * 18 * 8))
        _npy_header_only(zf, "fid_mu", (18,), bytes(18 * 8))
        _npy_header_only(zf, "fid_sigma", (18, 18), bytes(18 * 18 * 8))
    got = load_reference_cache(path, {"stats": 18}, "stats", 100)
    assert got is not None and got["fid"]["sigma"].shape == (18, 18)


def test_the_fidelity_cache_is_keyed_by_the_weights_bytes_actually_loaded(tmp_path):
    """Weights swapped after their hash check: the statistics are filed under the new file's hash."""
    import torch

    from pipeline.extractor_weights import sha256_file, weights_handover
    from pipeline.reference_cache import reference_cache_file

    w = tmp_path / "w.pt"
    torch.save({"weight": torch.zeros(3)}, w)
    checked_tag = sha256_file(w)  # what the evaluate stage checked and put in its key
    torch.save({"weight": torch.ones(3)}, w)  # swapped afterwards
    buf, sha = weights_handover(w, "not-a-registered-extractor")
    assert sha == sha256_file(w) != checked_tag
    assert torch.load(buf, weights_only=True)["weight"].tolist() == [1.0, 1.0, 1.0]
    a = reference_cache_file(tmp_path, "ds-w" + checked_tag[:16], "x", {"l"}, checked_tag)
    b = reference_cache_file(tmp_path, "ds-w" + checked_tag[:16], "x", {"l"}, sha)
    assert a != b and sha[:16] in b.name


def test_a_store_declaring_more_images_than_its_chunks_hold_is_refused_at_once(home):
    from storage.store import open_store, write_store

    write_store("toy", blob_images(40))
    meta = home / "datasets" / "toy.zarr" / "images" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"][0] = 2**40
    meta.write_text(json.dumps(doc))
    with pytest.raises(SubsampleError, match=r"declare 1,099,511,627,776 images in .* chunks, but it holds 1 chunk"):
        open_store("toy", verify=True)
    doc["shape"][0], doc["chunk_grid"]["configuration"]["chunk_shape"][0] = 2**40, 2**40
    meta.write_text(json.dumps(doc))
    with pytest.raises(SubsampleError, match="declare chunks of"):
        open_store("toy")


def test_all_black_chunks_keep_their_files(home):
    from storage.store import open_store, write_store

    images = np.zeros((40, 16, 16, 3), np.uint8)
    write_store("black", images)
    assert np.array_equal(open_store("black", verify=True).images[:], images)
