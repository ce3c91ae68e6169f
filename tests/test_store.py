"""storage/store.py: the atomic builder, content hash and verification, open_store's errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import zarr

from storage.errors import SubsampleError
from storage.paths import dataset_path, datasets_dir
from storage.store import CHUNK_TARGET_BYTES, StoreBuilder, chunk_len, open_store, write_store


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def images(n: int, size: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def leftovers() -> list[str]:
    return (
        sorted(p.name for p in datasets_dir().iterdir() if not p.name.endswith(".zarr"))
        if datasets_dir().exists()
        else []
    )


def test_write_store_round_trip_with_labels_and_attrs():
    x, y = images(10), np.arange(10) % 3
    s = write_store(
        "t", x, y, source="/src", policy={"size": 4}, quarantine=[{"path": "a.png", "reason": "zero bytes"}]
    )
    s = open_store("t", verify=True)
    assert np.array_equal(s.images[:], x) and np.array_equal(s.labels[:], y)
    assert (s.n, s.size, s.name) == (10, 4, "t")
    assert s.attrs["source"] == "/src" and s.attrs["policy"] == {"size": 4} and s.attrs["complete"] is True
    assert s.attrs["n_quarantined"] == 1 and s.quarantine == [{"path": "a.png", "reason": "zero bytes"}]
    assert open_store(s.path).n == 10  # by path too


def test_chunk_len_targets_two_mib():
    assert CHUNK_TARGET_BYTES == 2 << 20
    assert chunk_len(32) == (2 << 20) // 3072 == 682
    assert chunk_len(64) == 170 and chunk_len(4096) == 1


@pytest.mark.parametrize("n_max", [3, 14, 40])  # under, exactly, over the final count
def test_builder_unaligned_appends_keep_order_and_shrink_or_grow(n_max):
    x, y = images(14, seed=1), np.arange(14)
    with StoreBuilder("t", size=4, n_max=n_max, has_labels=True, chunk=3) as b:
        for a, c in [(0, 1), (1, 6), (6, 6), (6, 8), (8, 14)]:  # includes an empty append
            b.append(x[a:c], y[a:c])
        s = b.finish()
    assert s.images.shape == (14, 4, 4, 3) and s.images.chunks[0] == 3
    assert np.array_equal(s.images[:], x) and np.array_equal(s.labels[:], y)
    s.verify()


def test_content_hash_is_independent_of_chunking_and_covers_labels():
    x = images(9, seed=2)
    hashes = set()
    for i, chunk in enumerate((2, 5)):
        with StoreBuilder(f"c{i}", size=4, n_max=9, chunk=chunk) as b:
            b.append(x)
            hashes.add(b.finish().content_hash)
    assert len(hashes) == 1
    assert write_store("l", x, np.zeros(9, int)).content_hash not in hashes
    assert write_store("m", x, np.ones(9, int)).content_hash != write_store("l", x, np.zeros(9, int)).content_hash


def test_builder_rejects_bad_appends():
    with StoreBuilder("t", size=4, n_max=4, has_labels=True) as b:
        with pytest.raises(ValueError):
            b.append(images(2, size=5), np.zeros(2))
        with pytest.raises(ValueError):
            b.append(images(2).astype(np.float32), np.zeros(2))
        with pytest.raises(ValueError):
            b.append(images(2))  # labels missing
        with pytest.raises(ValueError):
            b.append(images(2), np.zeros(3))
    assert leftovers() == [] and not dataset_path("t").exists()


def test_failed_build_leaves_nothing_and_keeps_the_old_store():
    old = write_store("t", images(5, seed=3))
    with pytest.raises(RuntimeError):
        with StoreBuilder("t", size=4, n_max=5) as b:
            b.append(images(5, seed=4))
            raise RuntimeError("killed")
    assert leftovers() == []
    again = open_store("t", verify=True)
    assert again.content_hash == old.content_hash
    with pytest.raises(RuntimeError):
        with StoreBuilder("u", size=4, n_max=5) as b:
            b.append(images(5))
            raise RuntimeError("killed")
    with pytest.raises(SubsampleError, match="no data set store"):
        open_store("u")
    assert leftovers() == []


def test_builder_replaces_a_store_atomically():
    write_store("t", images(5, seed=5))
    new = write_store("t", images(7, seed=6))
    assert open_store("t", verify=True).n == 7 and open_store("t").content_hash == new.content_hash
    assert leftovers() == []


def test_stale_temp_stores_of_dead_processes_are_removed():
    datasets_dir().mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    from storage.locks import owner_tag

    pid = int(dead.stdout)
    stale = datasets_dir() / f".t.zarr.tmp-{pid}-deadbeef"  # the name format before hosts were recorded
    alive = datasets_dir() / f".t.zarr.tmp-{owner_tag()}-cafef00d"  # a build still running here
    other = datasets_dir() / f".u.zarr.tmp-{pid}@{owner_tag().split('@')[1]}-deadbeef"  # another data set's
    trash = datasets_dir() / f".trash-t.zarr-{pid}@{owner_tag().split('@')[1]}-deadbeef"
    remote = datasets_dir() / f".t.zarr.tmp-{pid}@another-host-deadbeef"  # a process elsewhere (shared home)
    for p in (stale, alive, other, trash, remote):
        p.mkdir()
    write_store("t", images(2))
    assert not stale.exists() and not other.exists() and not trash.exists()
    assert alive.exists() and remote.exists()


def _chunk_files(store) -> list:
    return sorted(p for p in (store.path / "images" / "c").rglob("*") if p.is_file())


def test_verify_detects_swapped_garbled_and_deleted_chunks():
    x = images(9, seed=7)
    with StoreBuilder("t", size=4, n_max=9, chunk=3) as b:
        b.append(x)
        s = b.finish()
    s.verify()
    a, c = _chunk_files(s)[0], _chunk_files(s)[1]
    good_a, good_c = a.read_bytes(), c.read_bytes()

    a.write_bytes(good_c)  # a valid chunk in the wrong place: only the hash can tell
    with pytest.raises(SubsampleError, match="content hash mismatch"):
        open_store("t", verify=True)
    a.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(SubsampleError, match="unreadable chunk"):
        open_store("t").verify()
    a.unlink()  # a missing chunk reads as the fill value
    with pytest.raises(SubsampleError, match="corrupt"):
        open_store("t").verify()
    a.write_bytes(good_a)
    open_store("t", verify=True)


def test_open_store_errors_name_the_store_and_what_to_do():
    with pytest.raises(SubsampleError, match=r"run `subsample ingest SOURCE --name nope`"):
        open_store("nope")
    with pytest.raises(SubsampleError, match="invalid data set name"):
        open_store("bad name!")
    # a store without complete=True (written by something that died before finishing)
    g = zarr.open_group(str(dataset_path("half")), mode="w", zarr_format=3)
    g.create_array("images", shape=(1, 4, 4, 3), dtype="uint8")
    with pytest.raises(SubsampleError, match="not a finished data set store"):
        open_store("half")
    (dataset_path("half") / "zarr.json").write_text("{not json")
    with pytest.raises(SubsampleError, match="not a finished data set store"):
        open_store("half")
