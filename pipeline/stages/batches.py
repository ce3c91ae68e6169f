"""Batches: construct an epoch's mini-batches from the joint table, and diagnose them (spec §3, §4).

The strategies (``random``, the paper's ``constructed``, ``dealt``) are pure functions of the table,
``B``, ``seed`` and epoch in ``pipeline.data.strategies``; this stage stores ``epochs`` of them as
``batches.npy`` with their diagnostics, so a training run and a reader see the same batches.

Diagnostics (the paper's Tables 1 and 2): :func:`coverage_per_epoch`, :func:`kl_batch_vs_dataset`
(Eq. 10) with :func:`kl_stats`, and :func:`never_drawn` (the paper's Fig. 5); beyond the paper, an
independent check on a property the sampler never sees, :func:`label_kl_batch_vs_dataset` (each
batch's class mix against the data set's, when the store has labels), and each KL's value for a
uniformly random sample of B images (:func:`random_sample_reference`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from pipeline.config import BatchesConfig, FeaturesConfig, TablesConfig
from pipeline.data.strategies import TableLike, construct_epoch
from pipeline.stages.lineage import locate, store_key
from pipeline.stages.result import StageResult, built_result, cached_result
from storage.artifacts import Artifact, artifact_key, build_artifact, open_artifact
from storage.errors import MissingArtifactError, SubsampleError
from storage.paths import stage_dir

if TYPE_CHECKING:  # pragma: no cover
    from storage.store import DatasetStore

STAGE = "batches"
# 2: label KL and random-sample references in the diagnostics; top-up modes; never_drawn.png titled, >= 512 px wide
CODE_VERSION = "2"
REFERENCE_REPEATS = 20  # random samples behind each random-sample reference
GRID_MAX_IMAGES = 64


# --- diagnostics (spec §4) -------------------------------------------------------------------


def coverage_per_epoch(batches: np.ndarray, n: int) -> float | np.ndarray:
    """Distinct images drawn / n, for one epoch ``(m, B)`` (a float) or several ``(E, m, B)``
    (an array, one per epoch). Random batches reach Eq. 5's ``(n - n mod B) / n``."""
    batches = np.asarray(batches)
    if batches.ndim == 3:
        return np.array([coverage_per_epoch(b, n) for b in batches])
    seen = np.zeros(n, bool)
    seen[batches.ravel()] = True
    return float(seen.sum()) / n


def never_drawn(batches: np.ndarray, n: int) -> np.ndarray:
    """Indices (sorted) of the images no batch of the epoch ``(m, B)`` holds (the paper's Fig. 5)."""
    seen = np.zeros(n, bool)
    seen[np.asarray(batches).ravel()] = True
    return np.flatnonzero(~seen)


def kl_batch_vs_dataset(table: TableLike, batches: np.ndarray) -> np.ndarray:
    """Eq. 10: ``KL(f_Xi || f_X) = sum_c f_Xi(c) log(f_Xi(c) / f_X(c))`` (natural log) on the
    table's cells, for every batch of an epoch ``(m, B)``; returns ``(m,)``. Finite, since a
    batch's cells all hold images of X. Counts come from one sort of ``batch·n_cells + cell``
    codes, so memory stays O(m·B) whatever the table size."""
    batches = np.asarray(batches)
    m, b = batches.shape
    counts = np.asarray(table.counts, dtype=np.int64).ravel()
    n_cells = len(counts)
    p = counts / float(table.n)
    cells = np.asarray(table.cells, dtype=np.int64)[batches]
    codes = (np.arange(m, dtype=np.int64)[:, None] * n_cells + cells).ravel()
    pair, cnt = np.unique(codes, return_counts=True)
    q = cnt / float(b)
    contrib = q * np.log(q / p[pair % n_cells])
    return np.bincount(pair // n_cells, weights=contrib, minlength=m)


def kl_stats(kl: np.ndarray) -> dict[str, float]:
    """Mean, (population) standard deviation, minimum, median and maximum: the paper's Tables 1-2."""
    kl = np.asarray(kl, dtype=np.float64).ravel()
    return {
        "mean": float(kl.mean()),
        "std": float(kl.std()),
        "min": float(kl.min()),
        "median": float(np.median(kl)),
        "max": float(kl.max()),
    }


def label_kl_batch_vs_dataset(labels: np.ndarray, batches: np.ndarray) -> np.ndarray:
    """Beyond the paper (spec §4): ``KL(label mix of batch j || label mix of the data set)``
    (natural log) for every batch of an epoch ``(m, B)``; returns ``(m,)``. An independent check:
    the batches are built to match the feature table, never the labels. Finite, since a batch's
    labels all occur in the data set. Any integer labels (classes are their distinct values)."""
    batches = np.asarray(batches)
    m, b = batches.shape
    classes, inverse = np.unique(np.asarray(labels), return_inverse=True)
    k = len(classes)
    p = np.bincount(inverse, minlength=k) / float(len(inverse))
    codes = (np.arange(m, dtype=np.int64)[:, None] * k + inverse[batches]).ravel()
    q = np.bincount(codes, minlength=m * k).reshape(m, k) / float(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        contrib = np.where(q > 0, q * np.log(q / p), 0.0)
    return contrib.sum(axis=1)


def random_sample_reference(
    estimator: Callable[[np.ndarray], np.ndarray],
    n: int,
    size: int,
    *,
    seed: int = 0,
    repeats: int = REFERENCE_REPEATS,
) -> dict[str, Any]:
    """What a uniformly random sample of ``size`` of the n images scores on a batch estimator
    (``estimator(batches (r, size)) -> (r,)``): mean and s.d. over ``repeats`` samples drawn
    without replacement, as a random batch is. Constructed batches are stratified on the feature
    table, so their feature KL goes below it by design; on the labels, a strategy at this value is
    no closer to the data set's class mix than random sampling."""
    rng = np.random.default_rng([seed, size, 0x5EED])
    samples = np.stack([rng.choice(n, size, replace=False) for _ in range(repeats)])
    v = np.asarray(estimator(samples), dtype=np.float64)
    return {
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
        "size": int(size),
        "repeats": int(repeats),
    }


def diagnose_epoch(table: TableLike, batches: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
    """Coverage, KL per batch and its statistics, the never-drawn images of one epoch and, with
    ``labels``, the label KL per batch and its statistics."""
    n = int(table.n)
    kl = kl_batch_vs_dataset(table, batches)
    nd = never_drawn(batches, n)
    out: dict[str, Any] = {
        "coverage": coverage_per_epoch(batches, n),
        "kl": kl_stats(kl),
        "kl_per_batch": kl.tolist(),
        "n_never_drawn": int(len(nd)),
        "never_drawn": nd,
    }
    if labels is not None:
        lkl = label_kl_batch_vs_dataset(labels, batches)
        out.update(label_kl=kl_stats(lkl), label_kl_per_batch=lkl.tolist())
    return out


# --- the stage -------------------------------------------------------------------------------


def _upstream(dataset: str, tables: TablesConfig, features: FeaturesConfig) -> tuple[Artifact, "DatasetStore"]:
    got = locate(STAGE, dataset, features=features, tables=tables)
    assert got.tables is not None and got.store is not None
    return got.tables, got.store


def batches_key(table_art: Artifact, store: "DatasetStore", cfg: BatchesConfig) -> str:
    """Key = H(batch parameters, the table's content hash, the store's content hash (the
    never-drawn grid shows its images), CODE_VERSION)."""
    return artifact_key(
        STAGE, cfg.key_params(), {"tables": table_art.content_hash, "store": store.content_hash}, CODE_VERSION
    )


def batches_artifact(
    dataset: str,
    cfg: BatchesConfig,
    tables: TablesConfig = TablesConfig(),
    features: FeaturesConfig = FeaturesConfig(),
) -> Artifact:
    """The cached batches artifact for these configs; :class:`MissingArtifactError` naming the
    command to run when it is not there (or fails verification)."""
    table_art, store = _upstream(dataset, tables, features)
    key = batches_key(table_art, store, cfg)
    art = open_artifact(STAGE, key)
    if art is None:
        raise MissingArtifactError(
            STAGE,
            f"no batches artifact {key} for {dataset!r}; run `subsample batches {dataset} "
            f"--batch-size {cfg.batch_size} --strategy {cfg.strategy} --epochs {cfg.epochs} --seed {cfg.seed}"
            + (f" --top-k {cfg.top_k} --fill {cfg.fill} --topup {cfg.topup}" if cfg.strategy == "constructed" else "")
            + f" --bins {' '.join(map(str, tables.bins))}"
            + "".join(f" --feature {f}" for f in features.features if features.features != FeaturesConfig().features)
            + "`",
        )
    return art


def built_batches(
    dataset: str, tables: TablesConfig = TablesConfig(), features: FeaturesConfig = FeaturesConfig()
) -> list[tuple[BatchesConfig, str]]:
    """The batches ``subsample batches`` built from this data set's current table, newest first:
    ``(config, artifact key)``. What ``subsample train`` trains on when not told otherwise. Only
    manifests are read (an artifact that fails verification is rebuilt by training's own check)."""
    try:
        table_art, store = _upstream(dataset, tables, features)
    except SubsampleError:
        return []
    want = {"tables": table_art.content_hash, "store": store.content_hash}
    found: list[tuple[float, BatchesConfig, str]] = []
    for manifest in stage_dir(STAGE).glob("*/manifest.json"):
        try:
            m = json.loads(manifest.read_text())
            if m.get("inputs") != want or m.get("code_version") != CODE_VERSION:
                continue
            cfg = BatchesConfig(**m["params"])
            found.append((manifest.stat().st_mtime, cfg, manifest.parent.name))
        except (OSError, ValueError, TypeError, KeyError):
            continue
    return [(cfg, key) for _, cfg, key in sorted(found, key=lambda x: x[0], reverse=True)]


def load_batches(artifact: Artifact) -> np.ndarray:
    """The stored batches: int64 ``(epochs, m, B)``."""
    return np.load(artifact.path / "batches.npy", allow_pickle=False).astype(np.int64)


def stored_sampler(
    dataset: str,
    batches_cfg: BatchesConfig,
    tables_cfg: TablesConfig = TablesConfig(),
    features_cfg: FeaturesConfig = FeaturesConfig(),
    *,
    num_replicas: int | None = None,
    rank: int | None = None,
    cycle: bool = False,
) -> Any:
    """A :class:`pipeline.data.sampler.SubsampleBatchSampler` over this stage's stored batches for
    these configs (raises :class:`~storage.errors.MissingArtifactError` naming the command when
    they are not built yet); it yields what a fresh sampler with the same configs constructs."""
    from pipeline.data.sampler import SubsampleBatchSampler

    sampler = SubsampleBatchSampler.from_array(
        load_batches(batches_artifact(dataset, batches_cfg, tables_cfg, features_cfg)),
        num_replicas=num_replicas,
        rank=rank,
        cycle=cycle,
    )
    sampler.strategy, sampler.seed = batches_cfg.strategy, batches_cfg.seed
    sampler.top_k, sampler.fill, sampler.topup = batches_cfg.top_k, batches_cfg.fill, batches_cfg.topup
    return sampler


def batches_stage(
    table_art: Artifact,
    store: "DatasetStore",
    cfg: BatchesConfig,
    *,
    dataset: str | None = None,
    refresh: bool = False,
    progress: bool = True,
) -> StageResult:
    """Construct ``cfg.epochs`` epochs of batches from the table ``table_art`` of ``store``'s
    images, with diagnostics. Writes ``batches.npy`` (int32 epochs×m×B), ``diagnostics.json``,
    ``diagnostics.md`` and ``never_drawn.png``."""
    from pipeline.stages.tables import load_table

    t0 = time.perf_counter()
    dataset = dataset or store.name
    key = batches_key(table_art, store, cfg)
    upstream = {"tables": table_art.key, "ingest": store_key(store)}
    if not refresh and (hit := cached_result(STAGE, key, started=t0, upstream=upstream, dataset=dataset)) is not None:
        hit.details["never_drawn_grid"] = str(Path(hit.path or "") / "never_drawn.png")
        return hit

    table = load_table(table_art)
    n = int(table.n)
    if n != store.n:
        raise SubsampleError(
            STAGE, f"table {table_art.path} covers {n} images but store {store.path} holds {store.n}; re-run tables"
        )
    from tqdm.auto import tqdm

    labels = None if store.labels is None else np.asarray(store.labels[:], dtype=np.int64)
    epochs_out, per_epoch, kl_all, label_kl_all = [], [], [], []
    never0: np.ndarray | None = None
    for e in tqdm(range(cfg.epochs), desc="batches", unit="epoch", disable=not progress):
        b = construct_epoch(
            table,
            batch_size=cfg.batch_size,
            strategy=cfg.strategy,
            seed=cfg.seed,
            epoch=e,
            top_k=cfg.top_k,
            fill=cfg.fill,
            topup=cfg.topup,
        )
        d = diagnose_epoch(table, b, labels)
        if e == 0:
            never0 = d["never_drawn"]
        epochs_out.append(b.astype(np.int32))
        kl_all.append(np.asarray(d["kl_per_batch"]))
        row = {
            "epoch": e,
            "coverage": d["coverage"],
            "kl": d["kl"],
            "n_never_drawn": d["n_never_drawn"],
            "kl_per_batch": d["kl_per_batch"],
        }
        if labels is not None:
            label_kl_all.append(np.asarray(d["label_kl_per_batch"]))
            row.update(label_kl=d["label_kl"], label_kl_per_batch=d["label_kl_per_batch"])
        per_epoch.append(row)
    assert never0 is not None
    coverage = [p["coverage"] for p in per_epoch]
    kl = kl_stats(np.concatenate(kl_all))
    m = int(epochs_out[0].shape[0])
    # the same estimators on uniformly random samples of B images (random batches' expected values)
    kl_random = random_sample_reference(lambda s: kl_batch_vs_dataset(table, s), n, cfg.batch_size)
    label_kl: dict[str, Any] | None = None
    label_kl_random: dict[str, Any] | None = None
    if labels is not None:
        label_kl = kl_stats(np.concatenate(label_kl_all))
        label_kl_random = random_sample_reference(lambda s: label_kl_batch_vs_dataset(labels, s), n, cfg.batch_size)
    never_per_epoch = [p["n_never_drawn"] for p in per_epoch]
    refs = {"label_kl": label_kl, "kl_random_sample": kl_random, "label_kl_random_sample": label_kl_random}
    if labels is None:
        refs["label_kl_note"] = f"the store {store.path} has no labels: no label KL"

    with build_artifact(
        STAGE,
        key,
        params=cfg.key_params(),
        inputs={"tables": table_art.content_hash, "store": store.content_hash},
        code_version=CODE_VERSION,
        upstream=upstream,
    ) as builder:
        np.save(builder.path / "batches.npy", np.stack(epochs_out))
        diag = {
            "strategy": cfg.strategy,
            "batch_size": cfg.batch_size,
            "m": m,
            "n": n,
            "bins": list(table.bins),
            "topup": cfg.topup if cfg.strategy == "constructed" else None,
            "coverage_eq5": (n - n % cfg.batch_size) / n,
            "kl": kl,
            **refs,
            "epochs": per_epoch,
        }
        (builder.path / "diagnostics.json").write_text(json.dumps(diag, indent=1))
        (builder.path / "diagnostics.md").write_text(diagnostics_markdown(cfg, m, n, per_epoch, kl, refs))
        write_never_drawn_grid(
            store,
            never0,
            builder.path / "never_drawn.png",
            title=f"{dataset} · never drawn · {cfg.strategy} B={cfg.batch_size} · batches seed {cfg.seed}",
        )
        builder.summary = {
            "stage": STAGE,
            "dataset": dataset,
            "key": key,
            "path": str(builder.final_path),
            "cache_hit": False,
            "seconds": 0.0,
            "strategy": cfg.strategy,
            "batch_size": cfg.batch_size,
            "m": m,
            "epochs": cfg.epochs,
            **({"top_k": cfg.top_k, "fill": cfg.fill, "topup": cfg.topup} if cfg.strategy == "constructed" else {}),
            "coverage": {"per_epoch": coverage, "mean": float(np.mean(coverage))},
            "kl": kl,
            **refs,
            "n_never_drawn": int(len(never0)),
            "n_never_drawn_per_epoch": never_per_epoch,
            "never_drawn_grid": str(builder.final_path / "never_drawn.png"),
        }
        summary = builder.summary
    return built_result(STAGE, key, summary, started=t0, upstream=upstream)


def run_batches(
    dataset: str,
    cfg: BatchesConfig,
    tables: TablesConfig = TablesConfig(),
    features: FeaturesConfig = FeaturesConfig(),
    *,
    refresh: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """``subsample batches``: the stage on the table and store of ``dataset`` (found by lineage);
    returns the summary."""
    table_art, store = _upstream(dataset, tables, features)
    return batches_stage(table_art, store, cfg, dataset=dataset, refresh=refresh, progress=progress).to_json()


def diagnostics_markdown(
    cfg: BatchesConfig,
    m: int,
    n: int,
    per_epoch: list[dict],
    kl: dict[str, float],
    refs: dict[str, Any] | None = None,
) -> str:
    """The paper's Tables 1-2 layout: coverage and KL(f_Xi || f_X) statistics, one row per epoch,
    with the label KL (mean ± s.d. over the epoch's batches) beside it when the store has labels."""
    refs = refs or {}
    labelled = refs.get("label_kl") is not None
    head = (
        f"# Batches: {cfg.strategy}, B = {cfg.batch_size}, m = {m} batches/epoch, n = {n}\n\n"
        "| epoch | coverage | KL mean | KL std | KL min | KL median | KL max |"
        + (" label KL mean | label KL std |" if labelled else "")
        + " never drawn |\n"
        "|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if labelled else "") + "---:|\n"
    )

    def label_cols(stats: dict | None) -> str:
        return f" {stats['mean']:.5f} | {stats['std']:.5f} |" if labelled and stats else ""

    rows = [
        f"| {p['epoch']} | {p['coverage']:.4f} | {p['kl']['mean']:.5f} | {p['kl']['std']:.5f} | "
        f"{p['kl']['min']:.5f} | {p['kl']['median']:.5f} | {p['kl']['max']:.5f} |{label_cols(p.get('label_kl'))} "
        f"{p['n_never_drawn']} |"
        for p in per_epoch
    ]
    mean_cov = float(np.mean([p["coverage"] for p in per_epoch]))
    rows.append(
        f"| all | {mean_cov:.4f} | {kl['mean']:.5f} | {kl['std']:.5f} | {kl['min']:.5f} | "
        f"{kl['median']:.5f} | {kl['max']:.5f} |{label_cols(refs.get('label_kl'))} |"
    )
    text = (
        head
        + "\n".join(rows)
        + f"\n\nRandom batches would cover (n - n mod B)/n = {(n - n % cfg.batch_size) / n:.4f} (Eq. 5).\n"
    )
    if refs.get("kl_random_sample"):
        r = refs["kl_random_sample"]
        text += (
            f"\nA uniformly random sample of B images has feature KL {r['mean']:.5f} ± {r['sd']:.5f} "
            f"(mean ± s.d. over {r['repeats']} samples): the batches' KL above is "
            f"{_ratio(kl['mean'], r['mean'])} that. Constructed batches are built to match this very table.\n"
        )
    if labelled and refs.get("label_kl_random_sample"):
        r, lk = refs["label_kl_random_sample"], refs["label_kl"]
        text += (
            f"\nIndependent check (labels, never seen by the sampler): label KL {lk['mean']:.5f} against "
            f"{r['mean']:.5f} ± {r['sd']:.5f} for a uniformly random sample of B images "
            f"({_ratio(lk['mean'], r['mean'])}).\n"
        )
    elif refs.get("label_kl_note"):
        text += f"\n{refs['label_kl_note']}.\n"
    return text


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b > 0 else "n/a (the reference is 0)"


def write_never_drawn_grid(
    store: "DatasetStore", indices: np.ndarray, path: Path, nrow: int = 8, title: str = ""
) -> None:
    """An image grid of (up to 64 of) the never-drawn images, read from the store by index, under a
    title (``title``: data set, strategy, B, seed) and a line saying how many there are
    (``pipeline.pictures``: at least 512 px wide; PIL only, no torch import for a picture)."""
    from PIL import Image

    from pipeline.pictures import MIN_WIDTH, save, titled, titled_grid

    shown = np.asarray(indices[:GRID_MAX_IMAGES], dtype=np.int64)
    count = f"{len(indices)} of {store.n} images never drawn in the first epoch of batches" + (
        f" (first {len(shown)} shown)" if len(indices) > len(shown) else ""
    )
    title = title or f"{store.name}: images no batch drew"
    if len(shown):
        images = np.asarray(store.images.get_orthogonal_selection((shown,)))
        picture = titled_grid(images, title, columns=nrow, lines=[count], background=255)
    else:
        picture = titled(Image.new("RGB", (MIN_WIDTH, 40), "white"), title, lines=[count + ": every image was drawn"])
    save(picture, path)
