"""The feature KL's two floors for a comparison (issue 19): the bootstrap floor (training images drawn
again: the floor of memorising the training set) and the held-out floor (real images the table was
not built from: the data set's test split, else a split-half), at every sample size the cells
measure at, logged to the comparison's parent run (``floors.json``, ``floor/*`` metrics)."""

from __future__ import annotations

from typing import Any

from pipeline.experiments.compare import log_json

FLOORS_ARTIFACT = "floors.json"  # on the parent: the bootstrap and held-out floors at every sample size
TEST_STORE_SUFFIX = "-test"  # the data set's test split: the store `<name>-test` (`subsample ingest --split test`)


def heldout_cells(store: Any, table: Any) -> tuple[Any, str]:
    """The cells (on ``table``'s scale) of the images of ``store``'s test split, when the store
    ``<name>-test`` exists, holds the split "test" and images of the same size; else (None, why):
    the held-out floor is then a split-half of the training images."""
    import numpy as np

    from kernels.features import compute_features
    from storage.errors import SubsampleError
    from storage.store import open_store

    name = f"{store.name}{TEST_STORE_SUFFIX}"
    try:
        test = open_store(name)
    except (SubsampleError, OSError, ValueError):
        return None, f"no test split (no store {name!r}): a split-half of the training images"
    if test.attrs.get("split") != "test" or tuple(test.images.shape[1:]) != tuple(store.images.shape[1:]):
        return None, f"store {name!r} is not a test split of the same image size: a split-half of the training images"
    step = int(test.images.chunks[0])
    values = np.concatenate(
        [
            compute_features(np.asarray(test.images[i : i + step]), names=tuple(table.features))
            for i in range(0, test.n, step)
        ]
    )
    return table.bin_values(values), f"the test split (store {name!r}, {test.n:,} images)"


def kl_floors(table_art: Any, store: Any, sizes: list[int]) -> dict[str, Any]:
    """The feature KL's two floors at every sample size the comparison measures at (training's
    ``kl_samples``, the evaluation's ``samples``): the bootstrap floor (training images drawn
    again, :func:`pipeline.floors.cached_feature_kl_floor`: the floor of memorising the training
    set) and the held-out floor (:func:`pipeline.floors.heldout_feature_kl_floor`: real images the
    table was not built from, the floor of a generator that generalises perfectly)."""
    from pipeline.floors import cached_feature_kl_floor, heldout_feature_kl_floor
    from pipeline.stages.tables import load_table

    table = load_table(table_art)
    held, source = heldout_cells(store, table)
    rows = []
    for n in sorted(set(int(s) for s in sizes)):
        boot = cached_feature_kl_floor(table, table_art.content_hash, n)
        ho = heldout_feature_kl_floor(table, n, held)
        rows.append(
            {
                "size": n,
                "bootstrap": {"mean": boot["mean"], "sd": boot["sd"]},
                "heldout": {"mean": ho["mean"], "sd": ho["sd"], "source": ho["source"]},
            }
        )
    return {"heldout_source": source, "n_images": int(store.n), "sizes": rows}


def log_floors(parent_run_id: str, floors: dict[str, Any]) -> None:
    """The floors on the parent run: ``floors.json`` and metrics ``floor/feature_kl{N}_bootstrap``,
    ``floor/feature_kl{N}_heldout`` (and their ``_sd``)."""
    from pipeline.metrics import count_tag
    from storage import tracking

    log_json(parent_run_id, FLOORS_ARTIFACT, floors)
    metrics = {}
    for r in floors["sizes"]:
        for kind in ("bootstrap", "heldout"):
            key = f"floor/feature_kl{count_tag(r['size'])}_{kind}"
            metrics[key] = r[kind]["mean"]
            if r[kind]["sd"] is not None:
                metrics[f"{key}_sd"] = r[kind]["sd"]
    tracking.log_metrics(parent_run_id, metrics, step=0)
    tracking.set_tags(parent_run_id, {"floor/heldout_source": floors["heldout_source"][:5000]})
