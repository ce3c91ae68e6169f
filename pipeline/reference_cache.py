"""The reference set's cached Inception (or other extractor) features and FID statistics.

torch-fidelity's own cache is unpickled with ``weights_only=False``, so this project keeps its own:
an ``.npz`` of plain float arrays per data set, extractor, layers and extractor weights, under
``$SUBSAMPLE_HOME/fidelity-cache/``. A file there may have been planted, so it is read as hostile:

- every member's ``.npy`` header is read first and its declared shape must be exactly the one the
  run expects (the reference's row count, each layer's width as the generated images' features
  have it, FID statistics ``(D,)`` and ``(D, D)`` for the FID layer's D), before anything is
  allocated; then ``np.load(allow_pickle=False)``;
- the file name carries the sha256 of the weights bytes the extractor was actually built from
  (:func:`pipeline.extractor_weights.weights_handover` hashes what it loads), so statistics are
  filed under the content they were computed from, never under the key of a file checked earlier
  and swapped since;
- it is written to a temporary name and renamed (:func:`storage.safe_io.atomic_path`).
"""

from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from storage.errors import one_line
from storage.paths import home, inside_home
from storage.safe_io import atomic_path, make_dirs

STAGE = "evaluate"
_LAYER_RE = re.compile(r"[^A-Za-z0-9._-]")


def fidelity_cache_root() -> Path:
    return inside_home(home() / "fidelity-cache", what="fidelity cache")


def reference_cache_file(
    cache_root: Path, cache_name: str, extractor: str, layers: set[str], weights_sha: str | None = None
) -> Path:
    """``<cache root>/<cache name>-<extractor>-<layers>[-x<weights sha256 prefix>].npz``."""
    parts = [cache_name, extractor, *sorted(layers), *([f"x{weights_sha[:16]}"] if weights_sha else [])]
    return cache_root / ("-".join(_LAYER_RE.sub("_", x) for x in parts) + ".npz")


def _header(zf: zipfile.ZipFile, key: str) -> tuple[tuple, np.dtype]:
    with zf.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return shape, dtype


def expected_shapes(dims: dict[str, int], fid_layer: str, n_ref: int) -> dict[str, tuple[int, ...]]:
    """The members a reference cache must hold and their exact shapes: ``dims`` is each layer's
    feature width (from the generated images' features, extracted first)."""
    d = dims[fid_layer]
    return {
        **{f"feature__{layer}": (n_ref, w) for layer, w in dims.items()},
        "fid_mu": (d,),
        "fid_sigma": (d, d),
    }


def load_reference_cache(path: Path, dims: dict[str, int], fid_layer: str, n_ref: int) -> dict | None:
    """The cached reference features ``{layer: tensor}`` and FID statistics, or None when the file
    is missing or is not what :func:`save_reference_cache` writes for this run: every member's
    declared shape checked against :func:`expected_shapes` (and a float dtype) from its header,
    before numpy allocates anything."""
    if not path.is_file():
        return None
    want = expected_shapes(dims, fid_layer, n_ref)
    try:
        with zipfile.ZipFile(path) as zf:
            for key, shape in want.items():
                got, dtype = _header(zf, key)
                if dtype.kind != "f" or dtype.itemsize > 8 or tuple(got) != shape:
                    raise ValueError(f"{key} declares {dtype} {tuple(got)}, expected float {shape}")
        with np.load(path, allow_pickle=False) as z:
            features = {layer: torch.from_numpy(z[f"feature__{layer}"].copy()) for layer in dims}
            stats = {"mu": z["fid_mu"].copy(), "sigma": z["fid_sigma"].copy()}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        print(
            f"{STAGE}: reference cache {path} is unusable ({one_line(str(e))[:200]}); recomputing it", file=sys.stderr
        )
        return None
    return {"features": features, "fid": stats}


def save_reference_cache(path: Path, features: dict, stats: dict) -> None:
    arrays = {f"feature__{k}": v.cpu().numpy() for k, v in features.items()}
    arrays.update(fid_mu=stats["mu"], fid_sigma=stats["sigma"])
    make_dirs(path.parent, what="fidelity cache folder")
    with atomic_path(path, what="fidelity cache", suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
