"""The tables stage: the joint distribution table of the features (spec §2, Eq. 16).

``subsample tables NAME --bins M1 M2`` reads the features artifact, scales feature i with
``v* = v * m_i / max_i``, rounds half up to bins ``0..m_i`` and counts the images per cell, so the
table has ``(m_1 + 1) × (m_2 + 1)`` cells; ``T1 = T / n`` represents ``f_X``. It writes a
``tables`` artifact::

    stages/tables/<key>/table.npz        counts (int64, table shape), probs (T1), cells (int64 (n,),
                                         flat C-order cell of each image), maxima (float64 (F,)),
                                         bins (int64 (F,)), features (names)
    stages/tables/<key>/heatmap.png      log-scaled picture of the table (first two features)
    stages/tables/<key>/hist_<name>.png  histogram of each feature on the table's bins

with ``key = H(bins, the features artifact's content hash, CODE_VERSION)``. The maxima and bin
counts travel with the table: generated images are binned on the *training* scale
(:meth:`Table.bin_values`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernels.histogram import bin_cells, count_cells, table_shape
from pipeline.config import FeaturesConfig, TablesConfig
from pipeline.stages.lineage import CODE_VERSIONS, find, locate, tables_key
from pipeline.stages.result import StageResult, built_result, cached_result
from storage.artifacts import Artifact, build_artifact
from storage.errors import SubsampleError

STAGE = "tables"
CODE_VERSION = CODE_VERSIONS[STAGE]  # bumped in pipeline/stages/lineage.py, with the key recipe
TABLE_FILE = "table.npz"
HEATMAP_FILE = "heatmap.png"


@dataclass(frozen=True, eq=False)
class Table:
    """The joint distribution table of a data set (spec §2)."""

    features: tuple[str, ...]  # feature names, axis order
    bins: tuple[int, ...]  # m_i; axis i has m_i + 1 cells (spec §2 decision)
    maxima: np.ndarray  # float64 (F,), training maxima (Eq. 16 scale)
    counts: np.ndarray  # int64, shape tuple(m + 1 for m in bins); sums to n
    cells: np.ndarray  # int64 (n,), flat (C-order) cell index of each image

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "bins", tuple(int(m) for m in self.bins))
        object.__setattr__(self, "maxima", np.asarray(self.maxima, dtype=np.float64))
        object.__setattr__(self, "counts", np.asarray(self.counts, dtype=np.int64))
        object.__setattr__(self, "cells", np.asarray(self.cells, dtype=np.int64))
        f = len(self.bins)
        if len(self.features) != f or self.maxima.shape != (f,):
            raise ValueError(f"table: {len(self.features)} names, {f} bin counts, maxima {self.maxima.shape}")
        if self.counts.shape != self.shape:
            raise ValueError(f"table: counts shape {self.counts.shape} != {self.shape} for bins {self.bins}")
        if int(self.counts.sum()) != len(self.cells):
            raise ValueError(f"table: counts sum to {int(self.counts.sum())} but {len(self.cells)} cells are given")

    @property
    def shape(self) -> tuple[int, ...]:
        return table_shape(self.bins)

    @property
    def n(self) -> int:
        """Number of images."""
        return len(self.cells)

    @property
    def probs(self) -> np.ndarray:
        """``T1 = T / n``, the table's estimate of ``f_X``."""
        return self.counts / self.n

    def bin_values(self, values: np.ndarray) -> np.ndarray:
        """Flat cells (int64 (k,)) of feature rows ``values`` (k, F) on the *training* scale (Eq. 16
        with this table's maxima and m_i): values above a maximum go to the last bin, negative
        values to bin 0."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(self.bins):
            raise ValueError(
                f"expected feature rows (k, {len(self.bins)}) in order {self.features}, got {values.shape}"
            )
        return bin_cells(values, self.maxima, self.bins)


def build_table(values: np.ndarray, names: tuple[str, ...], bins: tuple[int, ...]) -> Table:
    """Eq. 16 and step 3 of spec §2: the maxima of ``values`` (n, F), every image's cell, the counts."""
    values = np.asarray(values, dtype=np.float64)
    maxima = values.max(axis=0) if len(values) else np.zeros(values.shape[1])
    cells = bin_cells(values, maxima, bins)
    return Table(
        features=tuple(names),
        bins=tuple(bins),
        maxima=maxima,
        counts=count_cells(cells, table_shape(bins)),
        cells=cells,
    )


def save_table(table: Table, path: Path) -> None:
    np.savez(
        path,
        counts=table.counts,
        probs=table.probs,
        cells=table.cells,
        maxima=table.maxima,
        bins=np.asarray(table.bins, dtype=np.int64),
        features=np.asarray(table.features, dtype=str),
    )


def load_table(artifact: Artifact) -> Table:
    """The :class:`Table` of a tables artifact."""
    with np.load(artifact.path / TABLE_FILE, allow_pickle=False) as z:
        return Table(
            features=tuple(str(s) for s in z["features"]),
            bins=tuple(int(m) for m in z["bins"]),
            maxima=z["maxima"],
            counts=z["counts"],
            cells=z["cells"],
        )


def tables_artifact(
    dataset: str,
    cfg: TablesConfig = TablesConfig(),
    features: FeaturesConfig = FeaturesConfig(),
    *,
    needed_by: str = STAGE,
) -> Artifact:
    """The cached tables artifact; raises :class:`MissingArtifactError` (stage ``needed_by``) naming
    the missing artifact (the table, or the features under it) and the command to run."""
    return find(STAGE, dataset, features=features, tables=cfg, needed_by=needed_by)


# --- pictures -----------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _edges(m: int, maximum: float) -> np.ndarray:
    """Value-space edges of bins 0..m: bin b holds v with (b - 0.5) * step <= v < (b + 0.5) * step."""
    step = maximum / m if maximum > 0 else 1.0 / m
    return (np.arange(m + 2) - 0.5) * step


def plot_heatmap(table: Table, path: Path, title: str) -> None:
    """The table's first two axes (others summed out) on a log colour scale, axes in feature units."""
    from matplotlib.colors import LogNorm

    counts = table.counts.reshape(table.shape[0], table.shape[1], -1).sum(axis=2)
    fig = _figure(6.4, 5.2)
    ax = fig.add_subplot()
    y_edges = _edges(table.bins[0], table.maxima[0])
    x_edges = _edges(table.bins[1], table.maxima[1])
    masked = np.ma.masked_equal(counts, 0)
    mesh = ax.pcolormesh(x_edges, y_edges, masked, norm=LogNorm(vmin=1, vmax=max(int(counts.max()), 2)), cmap="viridis")
    ax.set_facecolor("#f2f2f2")
    cbar = fig.colorbar(mesh, ax=ax)
    cbar.set_label("images per cell (log scale; empty cells grey)")
    ax.set_xlabel(f"{table.features[1]} ({table.bins[1] + 1} bins, 0 – {table.maxima[1]:.4g})")
    ax.set_ylabel(f"{table.features[0]} ({table.bins[0] + 1} bins, 0 – {table.maxima[0]:.4g})")
    occupied = int((counts > 0).sum())
    ax.set_title(f"{title}\n{table.n} images, {occupied} of {counts.size} cells occupied", fontsize=10)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    fig.tight_layout()
    fig.savefig(path)


def plot_histogram(values: np.ndarray, name: str, m: int, maximum: float, path: Path, title: str) -> None:
    """One feature's histogram on the table's bins (the table's marginal), with min/mean/max."""
    fig = _figure(6.0, 3.6)
    ax = fig.add_subplot()
    ax.hist(values, bins=_edges(m, maximum), color="#3b6ea8", edgecolor="white", linewidth=0.4)
    ax.axvline(values.mean(), color="#c0392b", linewidth=1, label=f"mean {values.mean():.4g}")
    ax.set_xlabel(f"{name} ({m + 1} bins of width {maximum / m if maximum > 0 else 0:.4g})")
    ax.set_ylabel("images")
    ax.set_title(f"{title}: {name}, min {values.min():.4g}, max {values.max():.4g}", fontsize=10)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


# --- the stage ----------------------------------------------------------------------------------


def tables_stage(
    features_art: Artifact, cfg: TablesConfig = TablesConfig(), *, dataset: str, refresh: bool = False
) -> StageResult:
    """Build (or find cached) the joint table of the features in ``features_art`` (``dataset``:
    the data set's name, for the summary and the pictures' titles)."""
    t0 = time.perf_counter()
    from pipeline.stages.features import load_features  # imports zarr: not needed to build or bin a Table

    key = tables_key(cfg, features_art)
    upstream = {"features": features_art.key}
    if not refresh and (hit := cached_result(STAGE, key, started=t0, upstream=upstream, dataset=dataset)) is not None:
        if hit.details.get("heatmap"):  # recorded as an absolute path: follow the artifact if $SUBSAMPLE_HOME moved
            hit.details["heatmap"] = str(Path(hit.path or "") / HEATMAP_FILE)
        return hit

    values, names = load_features(features_art)
    if len(cfg.bins) != len(names):
        raise SubsampleError(
            STAGE,
            f"--bins gives {len(cfg.bins)} bin counts but the features artifact has "
            f"{len(names)} features {list(names)}",
        )
    table = build_table(values, names, cfg.bins)
    with build_artifact(
        STAGE,
        key,
        params=cfg.key_params(),
        inputs={"features": features_art.content_hash},
        code_version=CODE_VERSION,
        upstream=upstream,
    ) as b:
        save_table(table, b.path / TABLE_FILE)
        final = b.final_path
        title = f"{dataset}, bins {' x '.join(str(m) for m in cfg.bins)}"
        heatmap = None
        if len(names) >= 2:
            plot_heatmap(table, b.path / HEATMAP_FILE, title)
            heatmap = str(final / HEATMAP_FILE)
        for j, name in enumerate(names):
            plot_histogram(
                values[:, j], name, cfg.bins[j], float(table.maxima[j]), b.path / f"hist_{_safe(name)}.png", dataset
            )
        summary: dict = {
            "stage": STAGE,
            "dataset": dataset,
            "key": key,
            "path": str(final),
            "cache_hit": False,
            "seconds": 0.0,
            "n_images": table.n,
            "features": list(names),
            "features_key": features_art.key,
            "bins": list(table.bins),
            "shape": list(table.shape),
            "maxima": [float(x) for x in table.maxima],
            "occupied_cells": int((table.counts > 0).sum()),
            "total_cells": int(table.counts.size),
            "largest_cell_share": round(float(table.counts.max()) / table.n, 6) if table.n else 0.0,
            "heatmap": heatmap,
        }
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        b.summary = summary
    return built_result(STAGE, key, summary, started=t0, upstream=upstream)


def run_tables(
    dataset: str,
    cfg: TablesConfig = TablesConfig(),
    features: FeaturesConfig = FeaturesConfig(),
    *,
    refresh: bool = False,
) -> dict:
    """``subsample tables``: the stage on the features of ``dataset`` (found by lineage); returns the summary."""
    fa = locate(STAGE, dataset, features=features).features
    assert fa is not None
    return tables_stage(fa, cfg, dataset=dataset, refresh=refresh).to_json()
