"""The paper's comparison (spec §6) as a grid of training runs, and what each run leaves in MLflow.

A comparison trains every cell of its *design* × seeds (one ``train-subsample`` run each: batches →
train → evaluate on the shared, cached ingest, features and tables) under one MLflow *parent* run.
Two designs (:data:`DESIGNS`): ``factorial``, every cell of ``strategies × batch sizes × presets``,
and ``paper``, exactly the cells of the paper's tables (:data:`PAPER_DESIGN`: the method at
B = 2000/2048 and at 1024, strategies (a)-(d) at B = 128), each at its preset's batch size and
epochs for the data set, with (b)'s epochs scaled so its G updates equal (a), (c), (d)'s.
Before training, every strategy's batches at every batch size of the design are diagnosed
(:func:`batch_diagnostics`, the paper's Tables 1-2 with the label check) and logged to the
parent; :mod:`pipeline.experiments.report` then reads the parent's children
back from MLflow and writes the report. This module is the plain-Python part the flow
``compare-strategies`` (``flows/compare.py``) wires: the scales, the grid, and
:func:`record_cell`, which makes each cell's child run complete:

- the training run itself when it was trained now (``run_train`` starts it inside
  :func:`storage.tracking.nested_under`, so it is nested under the parent);
- a copy of the cached training run's params, tags and metric histories otherwise (a cached
  artifact was trained earlier, its run already has a parent or none; an MLflow run has one parent),
  with its last sample grid and loss curve;
- plus, on either, the cell's tags (``compare.*``), the batches stage's diagnostics (the paper's
  Tables 1 and 2: ``batches/coverage`` per epoch, ``batches/kl_{mean,std,min,median,max}``, the
  never-drawn images grid), and the evaluation's metrics (``eval/*``) and fidelity status.

Seeds: cell seed s sets both the training seed (init, z) and the batches seed (the construction of
every epoch), so the seed-to-seed spread covers both sources of variation.
"""

from __future__ import annotations

import itertools
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from pipeline.config import STRATEGY_NAMES as STRATEGIES  # noqa: F401  (every registered batch strategy; flows.compare reads it here)

DEFAULT_SEEDS = 3  # seeds 0..2 per configuration: the fewest that give a spread
PAPER_PRESETS = ("paper-constructed", "paper-128a", "paper-128b", "paper-128c", "paper-128d")
DESIGNS = ("factorial", "paper")
DESIGN_ARTIFACT = "design.json"  # on the parent: each configuration's resolved B, epochs, D steps, G updates
DIAGNOSTICS_ARTIFACT = "batch_diagnostics.json"  # on the parent: every strategy's batches at every B

PARENT_TAG = "subsample.compare"  # "parent" on the comparison's parent run
CELL_TAGS = ("compare.strategy", "compare.batch_size", "compare.preset", "compare.seed")
FIDELITY_TAG = "eval/fidelity"  # the evaluation's IS/FID/KID status: "ok" or "skipped: <reason>"
ERROR_TAG = "compare.error"
GRID_ARTIFACT = "grid.json"  # on the parent: the planned cells, then each cell's run id or error


@dataclass(frozen=True)
class Scale:
    """Grid defaults and what the scale changes in every cell's recipe, plus the epochs of batches
    the diagnostics cover. What it lays over every preset (``train``: model width, sample sizes,
    the factorial grid's epochs) never names an optimiser's setting; a learning rate is changed per
    optimiser, as a factor on the preset's own (``lr_factors``: an RMSProp recipe never gets an
    Adam learning rate), and the paper design's epochs as a factor on each preset's
    (``paper_epoch_factor``), so the paper's budgets keep their ratios."""

    name: str
    description: str
    batch_sizes: tuple[int, ...]
    presets: tuple[str, ...]
    train: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    diagnostic_epochs: int = 1
    batch_scale: float = 1.0  # paper design: the paper's batch sizes × this (so they fit a small data set)
    lr_factors: dict[str, float] = field(default_factory=dict)  # optimiser -> factor on the preset's lr_g and lr_d
    paper_epoch_factor: Optional[float] = None  # paper design: each preset's epochs × this (None: train["epochs"])

    def recipe_train(self, recipe: Any, design: str, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The scale's training values for one cell whose preset resolves to ``recipe`` (a
        TrainConfig): ``train``, the preset's learning rates × its optimiser's factor, and in the
        paper design with ``paper_epoch_factor`` the preset's epochs × it (at least 1). ``given``:
        the user's values, which the caller lays on top (its optimiser picks the factor)."""
        out = dict(self.train)
        optimizer = dict(given or {}).get("optimizer", recipe.optimizer)
        factor = self.lr_factors.get(optimizer, 1.0)
        if factor != 1.0:
            out.update(lr_g=recipe.lr_g * factor, lr_d=recipe.lr_d * factor)
        if design == "paper" and self.paper_epoch_factor is not None:
            out["epochs"] = max(1, int(round(recipe.epochs * self.paper_epoch_factor)))
        return out

    def params(self) -> dict[str, Any]:
        """What the scale changes, for the parent run's params and the report."""
        return {
            "train": self.train,
            "lr_factors": self.lr_factors,
            "paper_epoch_factor": self.paper_epoch_factor,
            "batch_scale": self.batch_scale,
        }


# The cpu scale's paper design: B = 2048 × 500/2048 = 500 (the factorial cpu scale's B, dividing the demo's
# 2,000 images: random batches cover every image), 1024 -> 250, 128 -> 31; each preset's epochs × 0.12 (the
# method 24 epochs, 96 G updates; 1024* 12, 96; (a), (c), (d) 3, 192; (b) 3 × 5 = 15, 192): measured on the
# demo data, every recipe at its own optimiser and learning rate moves from its untrained feature KL within
# these budgets (docs/compare.md, "The cpu scale").
CPU_BATCH_SCALE = 500 / 2048


SCALES: dict[str, Scale] = {
    "smoke": Scale(
        "smoke",
        "tiny DCGANs (ngf=ndf=8) for 2 epochs, feature metrics only: checks the machinery on a CPU in "
        "minutes; its numbers say nothing about the method",
        batch_sizes=(128, 1000),  # a small and a large batch that both fit the demo's 2,000 images
        presets=("paper-constructed", "paper-128a"),
        train={"ngf": 8, "ndf": 8, "epochs": 2, "sample_grid": 16, "kl_samples": 256},
        evaluate={"samples": 500, "grid": 16, "fidelity": False},
        diagnostic_epochs=2,
        batch_scale=0.5,  # paper design on the demo's 2,000 images: B = 1024, 512, 64 for 2048, 1024, 128
    ),
    "cpu": Scale(
        "cpu",
        "small DCGANs (ngf=ndf=16) on the demo's 2,000 images, each recipe's own optimiser and learning rate, "
        "feature metrics only: generators that learn (their feature KL falls from the untrained value); "
        "factorial 40 epochs (about 7 minutes on an idle 2-core CPU), paper design B × 500/2048 and each preset's "
        "epochs × 0.12 (about 10 minutes on an idle 2-core CPU)",
        # chosen by measurement on the demo data (docs/compare.md, "The cpu scale"): B = 128 and 500 (500 divides
        # 2,000, so random batches cover every image); the paper's DCGAN and Adam beta1 0.5 at its lr 2e-3
        batch_sizes=(128, 500),
        presets=("paper-constructed",),
        train={"ngf": 16, "ndf": 16, "epochs": 40, "sample_grid": 64, "kl_samples": 1000},
        evaluate={"samples": 2000, "grid": 64, "fidelity": False},
        diagnostic_epochs=3,
        batch_scale=CPU_BATCH_SCALE,
        lr_factors={"adam": 1.0, "rmsprop": 1.0},
        paper_epoch_factor=0.12,
    ),
    "paper": Scale(
        "paper",
        "the paper's models, epochs and batch sizes (spec §6), IS/FID/KID on 10,000 samples: for a GPU machine",
        batch_sizes=(128, 512, 1024, 2000),  # the paper's 2000 is 2048 for CIFAR-10 (--batch-sizes)
        presets=PAPER_PRESETS,
        train={},
        evaluate={"samples": 10_000, "fidelity": True},
        diagnostic_epochs=5,
    ),
}


@dataclass(frozen=True)
class DesignCell:
    """A configuration of the paper's tables: a preset and a strategy (B from the preset)."""

    preset: str
    strategy: str
    reproduces: str  # what of the paper it stands for
    group: str  # "claim": Tables 3-4, random vs constructed at one B; "128": Tables 5-6's (a)-(d)
    paper_row: str  # its row in the paper's tables ("{B}": 2048 on CIFAR-10, 2000 elsewhere)
    equal_g_updates: bool = False  # epochs × d_steps, so its G updates equal its group's 1-D-step cells'


# The paper's cells (§3.2): Tables 3-4 compare random and constructed batches at the same B and epochs
# ("1024" vs "1024*", "2048" vs "2048*"; cartoon faces 2000), the claim; Tables 5-6 the method with
# strategies (a)-(d) at B = 128. The paper compares (a)-(d) at equal epochs (25); (b)'s 5 critic steps each
# take a batch, so it is given 5× the epochs: equal G updates. The method's runs (200 / 100-135 epochs at
# B = 2000 / 1024) are compared with (a)-(d) as the paper ran them, at their own epochs.
PAPER_DESIGN: tuple[DesignCell, ...] = (
    DesignCell(
        "paper-constructed-1024",
        "random",
        "row 1024 of Tables 3-4: random batches at B = 1024, the 1024* runs' recipe and epochs",
        "claim",
        "1024",
    ),
    DesignCell(
        "paper-constructed-1024",
        "constructed",
        "row 1024* of Tables 3-4: constructed batches at B = 1024 (the paper finds them slightly worse than random)",
        "claim",
        "1024*",
    ),
    DesignCell(
        "paper-constructed",
        "random",
        "row 2048 (2000) of Tables 3-4: random batches at the method's B, recipe and epochs",
        "claim",
        "{B}",
    ),
    DesignCell(
        "paper-constructed",
        "constructed",
        "the method, row 2048* (2000*) of Tables 3-6: constructed batches at B = 2048 on CIFAR-10, else 2000 "
        "(the paper finds them better than random)",
        "claim",
        "{B}*",
    ),
    DesignCell(
        "paper-128a", "random", "row 128 (a) of Tables 5-6: DCGAN as published, random B = 128", "128", "128 (a)"
    ),
    DesignCell(
        "paper-128b",
        "random",
        "row 128 (b) of Tables 5-6: clipping + 1-centred penalty, random B = 128",
        "128",
        "128 (b)",
        equal_g_updates=True,
    ),
    DesignCell(
        "paper-128c", "random", "row 128 (c) of Tables 5-6: L2 on D's weights, random B = 128", "128", "128 (c)"
    ),
    DesignCell("paper-128d", "random", "row 128 (d) of Tables 5-6: R1 on real data, random B = 128", "128", "128 (d)"),
)


def design_cell(preset: str, strategy: str) -> Optional[DesignCell]:
    return next((c for c in PAPER_DESIGN if (c.preset, c.strategy) == (preset, strategy)), None)


def scaled_batch_size(b: int, batch_scale: float) -> int:
    return max(1, int(round(b * batch_scale)))


def paper_configurations(dataset: str, batch_scale: float = 1.0) -> list[tuple[DesignCell, int]]:
    """The paper design's configurations for ``dataset``: each cell with its batch size (its
    preset's for the data set's kind, × ``batch_scale``)."""
    from pipeline.presets import resolve_batches_config

    return [
        (c, scaled_batch_size(resolve_batches_config(c.preset, dataset=dataset).batch_size, batch_scale))
        for c in PAPER_DESIGN
    ]


@dataclass(frozen=True)
class GridCell:
    """One training run of the comparison."""

    strategy: str
    batch_size: int
    preset: str
    seed: int

    @property
    def configuration(self) -> str:
        """The cell without its seed: what the report averages over seeds."""
        return f"{self.preset} {self.strategy} B={self.batch_size}"

    @property
    def label(self) -> str:
        return f"{self.configuration} seed={self.seed}"

    def tags(self) -> dict[str, str]:
        return dict(zip(CELL_TAGS, (self.strategy, str(self.batch_size), self.preset, str(self.seed))))

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Optional["GridCell"]:
        if not all(t in tags for t in CELL_TAGS):
            return None
        s, b, p, seed = (tags[t] for t in CELL_TAGS)
        return cls(s, int(b), p, int(seed))


def expand_grid(
    strategies: tuple[str, ...], batch_sizes: tuple[int, ...], presets: tuple[str, ...], seeds: tuple[int, ...]
) -> list[GridCell]:
    """Every cell, preset-major then batch size, strategy and seed (the order they train in)."""
    return [GridCell(s, b, p, seed) for p, b, s, seed in itertools.product(presets, batch_sizes, strategies, seeds)]


def paper_grid(dataset: str, seeds: tuple[int, ...], batch_scale: float = 1.0) -> list[GridCell]:
    """The paper design's cells × seeds, in :data:`PAPER_DESIGN`'s order."""
    return [
        GridCell(c.strategy, b, c.preset, seed) for c, b in paper_configurations(dataset, batch_scale) for seed in seeds
    ]


def cell_sections(
    cell: GridCell,
    scale: Scale,
    train: Mapping[str, Any],
    evaluate: Mapping[str, Any],
    diagnostic_epochs: int,
    batches: Mapping[str, Any] | None = None,
    scale_train: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The run-config sections of one cell, the layers a cell adds between its preset's values and
    :func:`flows.resolve.resolve_config`'s validation: the user's batches values (top-k, fill, top-up)
    under the cell's (strategy, B, seed, epochs of diagnostics); the scale's (``scale_train``, the
    cell's recipe as the scale changes it, :meth:`Scale.recipe_train`; else ``scale.train``) then the user's
    training values, then the cell's seed (tracked, so the child run exists); the scale's then the
    user's evaluation."""
    return {
        "preset": cell.preset,
        "batches": {
            **dict(batches or {}),
            "strategy": cell.strategy,
            "batch_size": cell.batch_size,
            "seed": cell.seed,
            "epochs": diagnostic_epochs,
        },
        "train": {
            **(scale_train if scale_train is not None else scale.train),
            **dict(train),
            "seed": cell.seed,
            "track": True,
        },
        "evaluate": {**scale.evaluate, **dict(evaluate)},
    }


# --- MLflow records -----------------------------------------------------------------------------


def start_parent(dataset: str, name: str, params: Mapping[str, Any], cells: list[GridCell]) -> str:
    """The comparison's parent run, with its parameters and the planned grid (``grid.json``)."""
    from storage import tracking

    run_id = tracking.start_run(dataset, run_name=name, tags={PARENT_TAG: "parent"}, params=params)
    log_grid(run_id, [{**asdict(c), "configuration": c.configuration, "status": "planned"} for c in cells])
    return run_id


def log_grid(parent_run_id: str, rows: list[dict[str, Any]]) -> None:
    import tempfile

    from storage import tracking
    from storage.paths import scratch_dir

    scratch_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch_dir()) as tmp:  # under the home, like every write
        path = Path(tmp) / GRID_ARTIFACT
        path.write_text(json.dumps(rows, indent=1))
        tracking.log_artifacts(parent_run_id, [(path, None)])


def find_child(parent_run_id: str, train_key: str) -> Optional[str]:
    """The child of ``parent_run_id`` that trained ``train_key`` (e.g. one whose training failed)."""
    from storage import tracking

    for run in tracking.child_runs(parent_run_id):
        if run.data.tags.get(tracking.TRAIN_KEY_TAG) == train_key:
            return run.info.run_id
    return None


def record_cell(
    parent_run_id: str,
    cell: GridCell,
    summaries: Mapping[str, dict],
    *,
    error: Optional[str] = None,
    train_key: Optional[str] = None,
) -> dict[str, Any]:
    """Make the cell's child run of ``parent_run_id`` complete (see the module docstring) and
    return the cell's row of ``grid.json``: the cell, its status, child run id, error."""
    from storage import tracking

    row: dict[str, Any] = {**asdict(cell), "configuration": cell.configuration}
    train = summaries.get("train")
    run_id: Optional[str] = None
    if train and train.get("mlflow_run_id"):
        src = train["mlflow_run_id"]
        if tracking.run_tag(src, tracking.PARENT_RUN_TAG) == parent_run_id:
            run_id = src
        else:
            # this comparison's diagnostics and evaluation are logged below, not an earlier one's
            run_id = tracking.copy_run(src, parent_run_id=parent_run_id, exclude_metric_prefixes=("batches/", "eval/"))
            _log_train_files(run_id, train)
    elif train_key:
        run_id = find_child(parent_run_id, train_key)  # training started and failed
    if run_id is not None:
        tags = {**cell.tags(), "compare.source_run": train["mlflow_run_id"] if train else run_id}
        if error:
            tags[ERROR_TAG] = error[:5000]
        tracking.set_tags(run_id, tags)
        if "batches" in summaries:
            _log_batches(run_id, summaries["batches"])
        if "evaluate" in summaries:
            _log_evaluate(run_id, summaries["evaluate"], train)
    row.update(
        status="failed" if error else "ok",
        run_id=run_id,
        error=error,
        train_cache_hit=bool(train and train.get("cache_hit")),
    )
    return row


def _log_train_files(run_id: str, train: dict) -> None:
    """A copied run's last sample grid and loss curve, from the cached train artifact."""
    from storage import tracking

    path = Path(train.get("path", ""))
    grids = sorted((path / "grids").glob("epoch_*.png"))
    files: list[tuple[Path, Optional[str]]] = [(grids[-1], "grids")] if grids else []
    files.append((path / "loss_curve.png", None))
    tracking.log_artifacts(run_id, files)


def _log_batches(run_id: str, batches: dict) -> None:
    """The batches stage's diagnostics (spec §4) on the child run: coverage and the count of
    never-drawn images per epoch (``batches/coverage``, ``batches/never_drawn``; step = training
    epoch, 1-based), the KL(f_Xi || f_X) statistics over all the epochs' batches, the label KL's
    (``batches/label_kl_*``, when the store has labels), both KLs for a uniformly random sample of B
    (``batches/*_random_sample``), the count of images never drawn in epoch 1, and its files
    (diagnostics.json/.md, never_drawn.png)."""
    from storage import tracking

    never = batches.get("n_never_drawn_per_epoch") or []
    for e, cov in enumerate(batches["coverage"]["per_epoch"], start=1):
        per_epoch = {"batches/coverage": cov}
        if len(never) >= e:
            per_epoch["batches/never_drawn"] = never[e - 1]
        tracking.log_metrics(run_id, per_epoch, step=e)
    stats = {f"batches/kl_{k}": v for k, v in batches["kl"].items()}
    stats.update({f"batches/label_kl_{k}": v for k, v in (batches.get("label_kl") or {}).items()})
    for name in ("kl_random_sample", "label_kl_random_sample"):
        ref = batches.get(name) or {}
        stats.update({f"batches/{name}": ref.get("mean"), f"batches/{name}_sd": ref.get("sd")})
    tracking.log_metrics(
        run_id,
        {
            **stats,
            "batches/coverage_mean": batches["coverage"]["mean"],
            "batches/n_never_drawn": batches["n_never_drawn"],
        },
        step=0,
    )
    tracking.set_tags(run_id, {"batches/key": batches["key"]})
    path = Path(batches["path"])
    tracking.log_artifacts(
        run_id, [(path / f, "batches") for f in ("diagnostics.json", "diagnostics.md", "never_drawn.png")]
    )


def _log_evaluate(run_id: str, evaluate: dict, train: Optional[dict]) -> None:
    """``eval/<metric>`` values the child run does not hold yet (a cached evaluation logged them
    to the run that trained the generator, or not at all), and the fidelity status as a tag."""
    from storage import tracking

    have = tracking.client().get_run(run_id).data.metrics
    missing = {f"eval/{k}": v for k, v in evaluate.get("metrics", {}).items() if f"eval/{k}" not in have}
    if missing:
        tracking.log_metrics(run_id, missing, step=int((train or {}).get("epochs") or 0))
    tracking.set_tags(
        run_id, {FIDELITY_TAG: str(evaluate.get("fidelity") or "unknown")[:5000], "eval/key": evaluate.get("key", "")}
    )


def log_json(parent_run_id: str, name: str, payload: Any) -> None:
    """A JSON artifact on the parent run (``design.json``, ``batch_diagnostics.json``)."""
    import tempfile

    from storage import tracking
    from storage.paths import scratch_dir

    scratch_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch_dir()) as tmp:  # under the home, like every write
        path = Path(tmp) / name
        path.write_text(json.dumps(payload, indent=1, default=str))
        tracking.log_artifacts(parent_run_id, [(path, None)])


def diagnostics_row(summary: dict) -> dict[str, Any]:
    """One batches stage summary as a row of ``batch_diagnostics.json``."""
    keep = (
        "strategy",
        "batch_size",
        "m",
        "epochs",
        "topup",
        "coverage",
        "kl",
        "label_kl",
        "kl_random_sample",
        "label_kl_random_sample",
        "label_kl_note",
        "n_never_drawn_per_epoch",
        "key",
    )
    return {k: summary.get(k) for k in keep}


def batch_diagnostics(table_art: Any, store: Any, configs: list[Any]) -> list[dict[str, Any]]:
    """The batches stage (cached artifacts) on the comparison's table ``table_art`` of ``store``
    for each of ``configs`` (BatchesConfig: every strategy at every batch size and seed of the
    design, trained or not): the paper's Tables 1-2 for all strategies, with the label check and the
    never-drawn counts per epoch."""
    from pipeline.stages.batches import batches_stage

    rows = []
    for bc in configs:
        result = batches_stage(table_art, store, bc, dataset=store.name, progress=False)
        rows.append({**diagnostics_row(result.to_json()), "seed": bc.seed})
    return rows


def finish_parent(parent_run_id: str, rows: list[dict[str, Any]], status: str = "FINISHED") -> None:
    from storage import tracking

    log_grid(parent_run_id, rows)
    failed = sum(r.get("status") == "failed" for r in rows)
    tracking.log_metrics(parent_run_id, {"cells": len(rows), "cells_failed": failed}, step=0)
    tracking.end_run(parent_run_id, status)


def note(message: str) -> None:
    print(f"compare: {message}", file=sys.stderr)
