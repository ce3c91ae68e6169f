"""subsample.batch_sampler: the pipeline's batches for any PyTorch loop, from a Dataset, an array
or a folder, equal to the stages' on the same images; epochs, ranks, workers, the cache, the
diagnostics and each bad input's one line."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset

import subsample
from storage.errors import SubsampleError

N, S, B, BINS = 240, 16, 32, (4, 4)
ROOT = Path(__file__).resolve().parents[1]


def make_images(n: int = N, size: int = S, seed: int = 0) -> np.ndarray:
    """Varied brightness and texture, so the 5×5 table has many occupied cells."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 1, 1, 3)) * rng.uniform(0.2, 1.0, (n, 1, 1, 1)) ** 2
    noise = rng.normal(0.0, 1.0, (n, size, size, 3)) * rng.uniform(0.0, 60.0, (n, 1, 1, 1))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


class Items(Dataset):
    """A Dataset over an array, its items in one of the accepted kinds, with a label beside."""

    def __init__(self, images: np.ndarray, kind: str):
        self.images, self.kind = images, kind

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        im = self.images[i]
        if self.kind == "pil":
            return Image.fromarray(im), i % 10
        if self.kind == "hwc-uint8":
            return im
        x = torch.from_numpy(im).permute(2, 0, 1).float() / 255.0
        if self.kind == "chw-01":
            return x, i % 10
        return (x - 0.5) / 0.5, i % 10  # chw-11: Normalize((0.5,)*3, (0.5,)*3)


def sampler_of(data, **kw) -> subsample.BatchSampler:
    opts = dict(batch_size=B, strategy="constructed", seed=3, bins=BINS, progress=False, num_workers=0)
    opts.update(kw)
    return subsample.batch_sampler(data, **opts)


def epochs(sampler, n: int = 2) -> list[list[list[int]]]:
    out = []
    for e in range(n):
        sampler.set_epoch(e)
        out.append(list(sampler))
    return out


def write_pngs(images: np.ndarray, folder: Path) -> Path:
    (folder / "all").mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / "all" / f"{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return make_images()


@pytest.fixture(scope="module")
def reference(images):
    return epochs(sampler_of(images))


# --- every kind of data gives the same batches ---------------------------------------------------


@pytest.mark.parametrize("kind", ["pil", "hwc-uint8", "chw-01", "chw-11"])
def test_each_dataset_item_kind_gives_the_array_batches(images, reference, kind):
    s = sampler_of(Items(images, kind))
    assert np.array_equal(s.features, sampler_of(images).features)
    assert epochs(s) == reference
    assert s.value_range == {"chw-01": (0.0, 1.0), "chw-11": (-1.0, 1.0)}.get(kind)


def test_a_folder_and_an_image_folder_give_the_array_batches(images, reference, tmp_path):
    from torchvision.datasets import ImageFolder

    folder = write_pngs(images, tmp_path / "pngs")
    s = sampler_of(folder, num_workers=2)
    assert s.files == [f"all/{i:04d}.png" for i in range(N)] and s.quarantine == []
    assert epochs(s) == reference
    assert epochs(sampler_of(ImageFolder(str(folder)), num_workers=2)) == reference


def test_the_dataset_read_by_workers_gives_the_same_features_as_in_process(images):
    here = sampler_of(Items(images, "chw-11"), num_workers=0, chunk=50)
    workers = sampler_of(Items(images, "chw-11"), num_workers=2, chunk=50)
    assert np.array_equal(here.features, workers.features)


# --- equal to the pipeline's stages on the same store ----------------------------------------------


@pytest.fixture(scope="module")
def store_home(tmp_path_factory, images):
    from pipeline.config import FeaturesConfig, TablesConfig
    from pipeline.stages.features import run_features
    from pipeline.stages.tables import run_tables
    from storage.store import write_store

    home = tmp_path_factory.mktemp("library-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SUBSAMPLE_HOME", str(home))
        write_store("lib", images)
        run_features("lib", FeaturesConfig(workers=1), progress=False)
        run_tables("lib", TablesConfig(bins=BINS))
        yield home


@pytest.mark.parametrize("strategy,extra", [("random", {}), ("constructed", {"fill": "coverage"}), ("dealt", {})])
def test_batches_and_diagnostics_equal_the_batches_stage_on_the_same_store(store_home, monkeypatch, strategy, extra):
    import json

    from pipeline.config import BatchesConfig, TablesConfig
    from pipeline.stages.batches import load_batches, run_batches
    from pipeline.stages.features import features_artifact, load_features
    from storage.artifacts import open_artifact
    from storage.store import open_store

    monkeypatch.setenv("SUBSAMPLE_HOME", str(store_home))
    cfg = BatchesConfig(batch_size=B, strategy=strategy, epochs=3, seed=5, **extra)
    summary = run_batches("lib", cfg, TablesConfig(bins=BINS), progress=False)
    stored = load_batches(open_artifact("batches", summary["key"]))
    s = sampler_of(np.asarray(open_store("lib").images[:]), strategy=strategy, seed=5, **extra)
    assert np.array_equal(s.features, load_features(features_artifact("lib"))[0])
    diag = json.loads((Path(summary["path"]) / "diagnostics.json").read_text())
    for e in range(3):
        assert np.array_equal(s.epoch_batches(e), stored[e])
        d, want = s.diagnostics(e), diag["epochs"][e]
        assert d["coverage"] == want["coverage"] and d["never_drawn"] == want["n_never_drawn"]
        assert d["kl_mean"] == pytest.approx(want["kl"]["mean"], abs=1e-15)
        assert d["kl_sd"] == pytest.approx(want["kl"]["std"], abs=1e-15)
    assert (s.diagnostics(0)["floor"], s.diagnostics(0)["floor_sd"]) == (
        diag["kl_random_sample"]["mean"],
        diag["kl_random_sample"]["sd"],
    )


def test_a_folder_at_a_size_gives_what_ingest_and_the_stages_give(tmp_path, monkeypatch):
    """Mixed sizes, centre crop and Lanczos resize: the folder read as `subsample ingest --size 12`."""
    from pipeline.config import BatchesConfig, FeaturesConfig, IngestConfig, TablesConfig
    from pipeline.stages.batches import load_batches, run_batches
    from pipeline.stages.features import run_features
    from pipeline.stages.ingest import run_ingest
    from pipeline.stages.tables import run_tables
    from storage.artifacts import open_artifact

    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path / "home"))
    rng = np.random.default_rng(1)
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(90):
        h, w = [(20, 24), (24, 20), (16, 16)][i % 3]
        Image.fromarray(make_images(1, 24, seed=i)[0, :h, :w]).save(folder / f"{i:03d}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really" + rng.bytes(40))
    run_ingest(IngestConfig(source=str(folder), name="mixed", size=12), progress=False)
    run_features("mixed", FeaturesConfig(workers=1), progress=False)
    run_tables("mixed", TablesConfig(bins=BINS))
    summary = run_batches(
        "mixed", BatchesConfig(batch_size=16, epochs=2, seed=1), TablesConfig(bins=BINS), progress=False
    )
    stored = load_batches(open_artifact("batches", summary["key"]))
    s = sampler_of(folder, size=12, batch_size=16, seed=1, num_workers=2)
    assert [q["path"] for q in s.quarantine] == ["broken.png"] and len(s.files) == 90
    assert [s.epoch_batches(e).tolist() for e in range(2)] == stored.tolist()
    with pytest.raises(
        SubsampleError,
        match=r"^batch_sampler: file \d+ is \d+×\d+ \(\d+\.png\) but the first image is 20×24|not square",
    ):
        sampler_of(folder, batch_size=16)


# --- the sampler's contract ----------------------------------------------------------------------


def test_set_epoch_determines_the_batches(images, reference):
    again = sampler_of(images)
    again.set_epoch(1)
    assert list(again) == reference[1] and reference[0] != reference[1]
    again.set_epoch(0)
    assert list(again) == reference[0] and len(again) == N // B == len(reference[0])


@pytest.mark.parametrize("strategy", ["random", "constructed", "dealt"])
def test_ranks_split_every_batch_disjointly_and_cover_it(images, strategy):
    whole = sampler_of(images, strategy=strategy, num_replicas=1, rank=0)
    parts = [sampler_of(images, strategy=strategy, num_replicas=4, rank=r) for r in range(4)]
    for e in range(2):
        for p in [whole, *parts]:
            p.set_epoch(e)
        shares = [list(p) for p in parts]
        for j, batch in enumerate(whole):
            got = [x for share in shares for x in share[j]]
            assert sorted(got) == sorted(batch) and len(set(got)) == len(got) == B
            assert all(len(share[j]) == B // 4 for share in shares)


def test_it_pickles_and_drives_a_dataloader_with_two_workers(images, reference):
    s = sampler_of(images)
    clone = pickle.loads(pickle.dumps(s))
    assert epochs(clone) == reference and np.array_equal(clone.table.cells, s.table.cells)
    loader = DataLoader(TensorDataset(torch.arange(N)), batch_sampler=s, num_workers=2)
    for e in range(2):
        s.set_epoch(e)
        assert [x.tolist() for (x,) in loader] == reference[e]


def test_diagnostics_of_random_batches_sit_at_the_floor_and_constructed_below(images):
    rand = sampler_of(images, strategy="random").diagnostics(0)
    cons = sampler_of(images, strategy="constructed").diagnostics(0)
    assert set(cons) >= {"coverage", "kl_mean", "kl_sd", "never_drawn", "floor"}
    assert rand["coverage"] == (N - N % B) / N and rand["never_drawn"] == N % B
    assert abs(rand["kl_mean"] - rand["floor"]) < 2 * rand["floor_sd"]
    assert cons["kl_mean"] < rand["kl_mean"] and cons["kl_sd"] < 1e-12  # top-k top-up: every batch the same


# --- the cache -----------------------------------------------------------------------------------


def test_the_cache_is_keyed_by_content(images, tmp_path, monkeypatch):
    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path / "home"))
    first = sampler_of(images, cache=True)
    again = sampler_of(images.copy(), cache=True)
    assert (first.cache_hit, again.cache_hit) == (False, True)
    assert np.array_equal(again.features, first.features) and epochs(again) == epochs(first)
    assert list((tmp_path / "home" / "stages" / "library").glob("*/features.npz"))
    changed = images.copy()
    changed[34] = 255 - changed[34]  # one of the items a Dataset's key reads (8 spread over 0..239)
    assert sampler_of(changed, cache=True).cache_hit is False
    assert sampler_of(images, cache=True, size=8).cache_hit is False  # another size: other features

    path = tmp_path / "mine" / "features.npz"
    assert sampler_of(Items(images, "pil"), cache=path).cache_hit is False and path.exists()
    assert sampler_of(Items(images, "pil"), cache=path).cache_hit is True
    assert sampler_of(Items(changed, "pil"), cache=path).cache_hit is False
    elsewhere = images.copy()
    elsewhere[7] = 255 - elsewhere[7]  # an array's key is all its bytes; a Dataset's, as documented, is sampled
    assert sampler_of(elsewhere, cache=True).cache_hit is False
    assert sampler_of(Items(changed, "pil"), cache=path).cache_hit is True


def test_a_hostile_cache_file_is_recomputed_not_trusted(images, tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, key=np.asarray("x"), values=np.zeros((3, 2)))
    s = sampler_of(images, cache=path)
    assert s.cache_hit is False and len(s.features) == N
    path.write_bytes(b"not a zip")
    assert sampler_of(images, cache=path).cache_hit is False


# --- bad input: one clear line each ----------------------------------------------------------------


class Strings(Dataset):
    def __init__(self, n: int, bad: int | None = None, images: np.ndarray | None = None):
        self.n, self.bad, self.images = n, bad, images

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self.images is not None and i != self.bad:
            return self.images[i]
        return f"image-{i}.png"


def one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_items_that_are_not_images_are_named_in_one_line(images):
    with pytest.raises(SubsampleError) as e:
        sampler_of(Strings(N))
    assert one_line(e) == (
        "batch_sampler: item 0 of the Dataset is not an image (a str): items must be a PIL image, an H×W×3 "
        "uint8 array or a 3×H×W float tensor in [0, 1] or [-1, 1], or a tuple whose first element is one"
    )
    with pytest.raises(SubsampleError) as e:  # one a worker meets, past the items read first
        sampler_of(Strings(N, bad=101, images=images), num_workers=2)
    assert one_line(e).startswith("batch_sampler: item 101 of the Dataset is not an image (a str)")


def test_mixed_sizes_without_a_size_are_one_line_and_a_size_mends_them(images):
    mixed = [images[i] if i != 101 else images[i, :12, :14] for i in range(N)]  # a list is a Dataset too
    with pytest.raises(SubsampleError) as e:
        sampler_of(mixed, num_workers=2)  # item 101 is met by a worker, not among the items read first
    assert one_line(e) == (
        "batch_sampler: item 101 is 12×14 but the first image is 16×16: images of mixed sizes need size=S "
        "(centre crop and Lanczos resize to S×S, the policy of `subsample ingest --size S`)"
    )
    assert len(sampler_of(mixed, size=8).features) == N


def test_fewer_images_than_one_batch_is_one_line_before_any_work(images):
    with pytest.raises(SubsampleError) as e:
        sampler_of(Strings(20))  # not read at all: the count decides first
    assert one_line(e) == "batch_sampler: 20 images are fewer than one batch of 32; choose batch_size <= 20 (and > 0)"


def test_a_batch_size_the_ranks_cannot_share_is_one_line(images):
    with pytest.raises(SubsampleError) as e:
        sampler_of(images, num_replicas=3, rank=0)
    assert one_line(e) == (
        "batch_sampler: batch size 32 is not divisible by the 3 ranks (num_replicas=3); choose a multiple of 3"
    )


def test_options_are_checked_as_the_stages_check_them(images):
    with pytest.raises(SubsampleError, match=r"^batch_sampler: strategy: Input should be 'random', 'constructed'"):
        sampler_of(images, strategy="stratified")
    with pytest.raises(SubsampleError, match=r"^batch_sampler: an array of images must be uint8 N×H×W×3"):
        sampler_of(images.astype(np.float32))


# --- the layer on top ----------------------------------------------------------------------------


def test_import_subsample_needs_no_prefect_mlflow_or_dask():
    code = "import sys, subsample; print(sorted(m for m in ('prefect', 'mlflow', 'dask') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_every_subsample_name_the_library_page_uses_exists():
    import re

    text = (ROOT / "docs" / "library.md").read_text()
    names = set(re.findall(r"\bsubsample\.([A-Za-z_]\w*)", text))
    assert {"batch_sampler", "write_image_folder"} <= names
    assert sorted(n for n in names if not hasattr(subsample, n)) == []


def test_write_image_folder_and_an_npz_source_give_the_array_batches(images, reference, tmp_path):
    from torchvision.datasets import ImageFolder

    np.savez(tmp_path / "set.npz", images=images, labels=np.zeros(N, np.int64))
    assert epochs(sampler_of(tmp_path / "set.npz")) == reference  # an ingest source read as ingest reads it
    assert subsample.write_image_folder(tmp_path / "set.npz", tmp_path / "folder") == N
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == ["class0"]
    assert epochs(sampler_of(ImageFolder(str(tmp_path / "folder")))) == reference
    with pytest.raises(SubsampleError, match="exists and is not an empty folder"):
        subsample.write_image_folder(tmp_path / "set.npz", tmp_path / "folder")


def test_a_float_image_outside_its_range_is_one_line_not_a_guess(images):
    imagenet = [((torch.from_numpy(im).permute(2, 0, 1).float() / 255 - 0.45) / 0.225, 0) for im in images]
    with pytest.raises(SubsampleError) as e:
        sampler_of(imagenet)
    assert one_line(e).startswith(
        "batch_sampler: item 0 of the Dataset is not an image (a float image with values in ["
    )
    assert "outside the value range [-1, 1]" in one_line(e)
