"""The flow ``compare-strategies`` and its report, on 192 real CIFAR-10 images from the embedded
demo data: random vs constructed batches, B=64, preset paper-128a widened down to a 4-channel DCGAN,
two epochs of three steps, three seeds (6 training runs).

One Prefect test harness serves the file. The first comparison trains the 6 runs; the second
repeats it through the CLI with one cell made to fail, so its 5 other cells are cache hits (their
child runs are copies of the first comparison's runs) and the failure is reported, not fatal.
Every report number is checked against what MLflow holds, read back with ``MlflowClient``.
The pieces that need no Prefect (config validation, the report's wording and answer) are in
``test_compare_report.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from storage.errors import SubsampleError

SEEDS = (0, 1, 2)
TINY = [
    "tables.bins=[8,8]",
    "train.ngf=4",
    "train.ndf=4",
    "train.epochs=2",
    "train.kl_samples=64",
    "train.sample_grid=16",
    "evaluate.samples=64",
    "evaluate.grid=16",
]
N_IMAGES = 192  # what the tiny_cifar_source fixture (conftest.py) holds
GRID = {
    "dataset": "tiny",
    "scale": "smoke",
    "strategies": ["random", "constructed"],
    "batch_sizes": [64],
    "presets": ["paper-128a"],
    "seeds": 3,
}
FEATURE_KL = "eval/feature_kl64_train"
EPOCH_KL = "feature_kl64"  # training's per-epoch KL at kl_samples = 64 (named apart from the evaluation's)


@pytest.fixture(scope="module")
def first(flow_home, tiny_cifar_source) -> dict:
    from flows.compare import build_compare_config, run

    return run(build_compare_config({**GRID, "source": str(tiny_cifar_source)}, TINY))


def client():
    from storage import tracking

    return tracking.client()


def children(parent: str) -> dict[tuple[str, int], object]:
    from storage import tracking

    runs = tracking.child_runs(parent)
    return {(r.data.tags["compare.strategy"], int(r.data.tags["compare.seed"])): r for r in runs}


def report_json(summary: dict) -> dict:
    return json.loads((Path(summary["report_dir"]) / "report.json").read_text())


# --- the grid and its MLflow runs -------------------------------------------------------------------


@pytest.mark.slow  # the comparison flow: 6 training runs and a Prefect server
def test_grid_runs_are_nested_under_one_parent(first):
    assert first["cells"] == 6 and first["cells_failed"] == 0 and first["cells_trained_now"] == 6
    parent = client().get_run(first["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["subsample.compare"] == "parent"
    assert parent.data.params["grid.presets"] == "['paper-128a']" and parent.data.params["n_images"] == str(N_IMAGES)

    kids = children(first["parent_run_id"])
    assert set(kids) == {(s, seed) for s in ("random", "constructed") for seed in SEEDS}
    for (strategy, seed), run in kids.items():
        tags, params = run.data.tags, run.data.params
        assert tags["mlflow.parentRunId"] == first["parent_run_id"]
        assert "subsample.copied_from" not in tags  # trained now: the training run itself is the child
        # what was trained is what the cell says: the batches and the seeds
        assert (params["batches.strategy"], params["batches.batch_size"]) == (strategy, "64")
        assert params["train.seed"] == params["batches.seed"] == str(seed)
        assert params["train.preset"] == "paper-128a" and params["train.ngf"] == "4"
        assert run.info.status == "FINISHED" and tags["eval/fidelity"].startswith("skipped: disabled")
        # the batches diagnostics and the evaluation are on the child run
        m = run.data.metrics
        assert {
            "batches/kl_mean",
            "batches/kl_std",
            "batches/kl_min",
            "batches/kl_median",
            "batches/kl_max",
            "batches/label_kl_mean",
            "batches/kl_random_sample",
            "batches/label_kl_random_sample",
            FEATURE_KL,
            f"{FEATURE_KL}_floor",
            EPOCH_KL,
            f"{EPOCH_KL}_floor",
        } <= set(m)
        assert "feature_kl" not in m  # the two sample sizes are never under one name
        assert 0 < m[f"{FEATURE_KL}_floor"] and 0 < m[f"{EPOCH_KL}_floor"]
        for key in ("batches/coverage", "batches/never_drawn"):
            assert [h.step for h in client().get_metric_history(run.info.run_id, key)] == [1, 2]
        # the training's feature KL from epoch 0 (the untrained generator), then after each epoch
        assert [h.step for h in client().get_metric_history(run.info.run_id, EPOCH_KL)] == [0, 1, 2]
    # random batches cover (n - n mod B)/n = 1 here; constructed ones do not (rare cells get no draws)
    assert kids[("random", 0)].data.metrics["batches/coverage_mean"] == 1.0
    assert kids[("constructed", 0)].data.metrics["batches/coverage_mean"] < 1.0


# --- the report: every configuration, the numbers MLflow holds ------------------------------------


@pytest.mark.slow  # the comparison flow: 6 training runs and a Prefect server
def test_report_numbers_are_what_mlflow_recorded(first):
    rep = report_json(first)
    kids = children(first["parent_run_id"])
    assert rep["parent_run_id"] == first["parent_run_id"] and rep["runs"] == rep["runs_ok"] == 6
    assert [(c["preset"], c["batch_size"], c["strategy"]) for c in rep["configurations"]] == [
        ("paper-128a", 64, "random"),
        ("paper-128a", 64, "constructed"),
    ]
    for conf in rep["configurations"]:
        values = [kids[(conf["strategy"], seed)].data.metrics[FEATURE_KL] for seed in SEEDS]
        fkl = conf["metrics"]["feature_kl"]
        assert conf["ok"] == conf["planned"] == 3 and fkl["n"] == 3
        assert fkl["values"] == {str(seed): v for seed, v in zip(SEEDS, values)}
        assert fkl["mean"] == pytest.approx(np.mean(values), rel=1e-12)
        assert fkl["sd"] == pytest.approx(np.std(values, ddof=1), rel=1e-12)
        for name in ("fid", "kid", "is"):
            assert (
                conf["metrics"][name]["n"] == 0
                and conf["metrics"][name]["missing"] == "n/a (fidelity off at this scale)"
            )
    for strategy in ("random", "constructed"):
        runs = [kids[(strategy, seed)] for seed in SEEDS]
        cov = [h.value for r in runs for h in client().get_metric_history(r.info.run_id, "batches/coverage")]
        assert rep["coverage"][f"{strategy}|64"]["mean"] == pytest.approx(np.mean(cov), rel=1e-12)
        for stat in ("mean", "std", "min", "median", "max"):
            assert rep["kl"][f"{strategy}|64"][stat] == pytest.approx(
                np.mean([r.data.metrics[f"batches/kl_{stat}"] for r in runs]), rel=1e-12
            )
    # the comparison with random is the Welch test of those seed values
    (comp,) = rep["comparisons"]
    from scipy import stats

    a = [kids[("constructed", s)].data.metrics[FEATURE_KL] for s in SEEDS]
    b = [kids[("random", s)].data.metrics[FEATURE_KL] for s in SEEDS]
    assert comp["metric"] == "feature_kl" and comp["diff"] == pytest.approx(np.mean(a) - np.mean(b), rel=1e-12)
    # Welch's test whenever either side has a seed spread (these tiny generators can give one
    # strategy the same KL for every seed); with none on either side, no test, and no numbers
    if np.std(a, ddof=1) > 0 or np.std(b, ddof=1) > 0:
        with np.errstate(all="ignore"):
            welch = stats.ttest_ind(a, b, equal_var=False)
        assert comp["t"] == pytest.approx(welch.statistic, rel=1e-9)
        assert comp["p"] == pytest.approx(welch.pvalue, rel=1e-9)
    else:
        assert comp["t"] is None and comp["p"] is None


@pytest.mark.slow  # the comparison flow: 6 training runs and a Prefect server
def test_report_documents(first):
    from pipeline.experiments.summary import fmt_mean_sd

    rep = report_json(first)
    md = Path(first["report_md"]).read_text()
    html = Path(first["report_html"]).read_text()
    for conf in rep["configurations"]:
        row = f"| paper-128a | 64 | {conf['strategy']} | 3/3 | {fmt_mean_sd(conf['metrics']['feature_kl'])} |"
        assert row in md
    # IS/FID/KID were off for every run: one sentence, no columns of "n/a"
    assert "FID, KID and IS were not computed for any run (fidelity off at this scale)" in md
    assert "| FID |" not in md and "n/a (fidelity off" not in md
    assert rep["comparisons"][0]["sentence"] in md
    # the first paragraph answers the question; every run is judged on whether its generator learned
    first_paragraph = md.split("\n\n")[1]
    assert first_paragraph == rep["answer"] and first_paragraph.startswith("**Answer.** No verdict: this is the smoke")
    assert len(rep["learning"]["runs"]) == 6 and not rep["learning"]["unknown"]
    assert "## Did the generators learn?" in md
    assert "Table 1" in md and "Table 2" in md and "Eq. 5" in md
    # markdown links the plots; the HTML embeds them (self-contained)
    plots = {"feature_kl_curves.png", "metrics_vs_batch_size.png", "samples.png", "never_drawn.png"}
    assert plots <= set(rep["plots"])
    for name in plots:
        assert f"(plots/{name})" in md and (Path(first["report_dir"]) / "plots" / name).stat().st_size > 1000
    assert html.count('src="data:image/png;base64,') == len(rep["plots"]) and 'src="plots/' not in html
    # and the parent run holds them
    logged = {f.path for f in client().list_artifacts(first["parent_run_id"], "report")}
    assert {"report/report.html", "report/report.md", "report/report.json", "report/plots"} <= logged


@pytest.mark.slow  # the comparison flow: 6 training runs and a Prefect server
def test_compare_report_rebuilds_the_report_from_mlflow_alone(first, capsys):
    """`subsample compare-report PARENT` (the CLI) with the local report gone, as on another machine:
    the same numbers, documents and plots again, from what MLflow holds."""
    import shutil

    from flows.cli import main

    before = report_json(first)
    md_before = Path(first["report_md"]).read_text()
    shutil.rmtree(first["report_dir"])
    with pytest.raises(SystemExit) as e:
        main(["compare-report", first["parent_run_id"], "--json"])
    assert e.value.code in (0, None)
    out = json.loads(capsys.readouterr().out)
    assert (out["parent_run_id"], out["runs"], out["runs_ok"], out["comparisons"]) == (
        first["parent_run_id"],
        6,
        6,
        len(before["comparisons"]),
    )
    assert out["dir"] == first["report_dir"] and Path(out["html"]).stat().st_size > 1000
    after = report_json(first)
    for part in ("configurations", "comparisons", "kl_floors", "coverage", "kl", "answer", "never_drawn_runs"):
        assert after[part] == before[part], part
    assert Path(first["report_md"]).read_text() == md_before
    assert sorted(after["plots"]) == sorted(before["plots"])


@pytest.mark.slow  # the comparison flow: 6 training runs and a Prefect server
def test_report_puts_each_kl_beside_its_floor_and_checks_the_labels(first):
    rep = report_json(first)
    kids = children(first["parent_run_id"])
    md = Path(first["report_md"]).read_text()
    for row in rep["kl_floors"]:
        runs = [kids[(row["strategy"], seed)] for seed in SEEDS]
        assert row["eval"]["floor"] == pytest.approx(np.mean([r.data.metrics[f"{FEATURE_KL}_floor"] for r in runs]))
        assert row["eval"]["mean"] == pytest.approx(np.mean([r.data.metrics[FEATURE_KL] for r in runs]))
        assert row["epoch"]["floor"] == pytest.approx(np.mean([r.data.metrics[f"{EPOCH_KL}_floor"] for r in runs]))
        assert row["eval"]["keys"] == [FEATURE_KL] and row["epoch"]["keys"] == [EPOCH_KL]
        # at the floor: mean - floor <= 2 sqrt(sd_seeds² + floor_sd²) (pipeline.metrics.at_floor's rule,
        # whose boundary tests/test_metrics.py checks; these untrained generators are far above it)
        kl = [r.data.metrics[FEATURE_KL] for r in runs]
        floor = np.mean([r.data.metrics[f"{FEATURE_KL}_floor"] for r in runs])
        floor_sd = np.mean([r.data.metrics[f"{FEATURE_KL}_floor_sd"] for r in runs])
        margin = 2 * np.sqrt(np.var(kl, ddof=1) + floor_sd**2)
        assert row["eval"]["at_floor"] is bool(np.mean(kl) - floor <= margin)
    assert "## Each feature KL beside its floor" in md and "its floor" in md and f"`{EPOCH_KL}`" in md
    # every strategy's batches at the design's batch size, with the label check (CIFAR-10 has labels)
    diag = {d["strategy"]: d for d in rep["batch_diagnostics"]}
    assert set(diag) == {"random", "constructed"} and all(d["seeds"] == 3 for d in diag.values())
    assert all(d["label_kl_mean"] > 0 and d["label_kl_random"] > 0 for d in diag.values())
    assert diag["constructed"]["kl_mean"] < diag["constructed"]["kl_random"]  # built to match the table
    assert "an independent check on the labels" in md and "label KL" in md
    # the never-drawn count per run and epoch, from the runs' histories
    never = {(r["configuration"], r["seed"]): r["per_epoch"] for r in rep["never_drawn_runs"]}
    assert len(never) == 6 and all(len(v) == 2 for v in never.values())
    run = kids[("constructed", 0)]
    want = [int(h.value) for h in client().get_metric_history(run.info.run_id, "batches/never_drawn")]
    assert never[("paper-128a constructed B=64", 0)] == want
    assert "## Images never drawn, per run and epoch" in md
    # the design's budgets
    (conf, *_) = rep["design"]["configurations"]
    assert rep["design"]["design"] == "factorial" and conf["g_updates"] == 2 * (N_IMAGES // 64)


# --- a second comparison: cached cells become copies, a failing cell is reported -------------------


@pytest.mark.slow  # the comparison flow: 6 training runs and a Prefect server
def test_second_comparison_copies_cached_runs_and_reports_a_failed_cell(first, tiny_cifar_source, capfd, monkeypatch):
    import pipeline.stages.train
    from flows.cli import main

    real = pipeline.stages.train.train_stage

    def flaky(store, tables_art, batches, cfg, *args, **kwargs):
        if batches.strategy == "constructed" and cfg.seed == 2:
            raise SubsampleError("train", "non-finite D loss at epoch 1 step 2 (injected by the test)")
        return real(store, tables_art, batches, cfg, *args, **kwargs)

    monkeypatch.setattr(pipeline.stages.train, "train_stage", flaky)
    capfd.readouterr()
    args = [
        "compare",
        "--dataset",
        "tiny",
        "--source",
        str(tiny_cifar_source),
        "--strategies",
        "random,constructed",
        "--batch-sizes",
        "64",
        "--presets",
        "paper-128a",
        "--seeds",
        "3",
        "--json",
    ]
    with pytest.raises(SystemExit) as done:  # typer exits, 0 on success
        main(args + [a for item in TINY for a in ("--set", item)])
    assert done.value.code in (0, None)
    out = capfd.readouterr().out
    second = json.loads(out)  # stdout is exactly one JSON object
    assert second["cells"] == 6 and second["cells_failed"] == 1 and second["cells_trained_now"] == 0
    assert second["parent_run_id"] != first["parent_run_id"]

    old, new = children(first["parent_run_id"]), children(second["parent_run_id"])
    assert len(old) == 6  # the first comparison keeps its runs
    assert set(new) == set(old) - {("constructed", 2)}
    for key, run in new.items():
        src = old[key]
        assert run.data.tags["mlflow.parentRunId"] == second["parent_run_id"]
        assert run.data.tags["subsample.copied_from"] == src.info.run_id
        assert run.data.params == src.data.params
        hist = lambda r, k: [(h.step, h.value) for h in client().get_metric_history(r.info.run_id, k)]  # noqa: E731
        assert hist(run, EPOCH_KL) == hist(src, EPOCH_KL)
        assert hist(run, FEATURE_KL) == hist(src, FEATURE_KL)  # logged once, not copied and logged again
        assert hist(run, "batches/coverage") == hist(src, "batches/coverage")
        assert [f.path for f in client().list_artifacts(run.info.run_id, "grids")] == ["grids/epoch_0002.png"]

    rep, rep1 = report_json(second), report_json(first)
    assert rep["runs"] == 5 and rep["runs_ok"] == 5
    random1, random2 = rep1["configurations"][0], rep["configurations"][0]
    assert random2["metrics"]["feature_kl"] == random1["metrics"]["feature_kl"]
    constructed = rep["configurations"][1]
    assert constructed["ok"] == 2 and constructed["planned"] == 3 and constructed["metrics"]["feature_kl"]["n"] == 2
    (failure,) = constructed["failed"]
    assert failure["seed"] == 2 and "injected by the test" in failure["error"]
    md = Path(second["report_md"]).read_text()
    assert "| paper-128a | 64 | constructed | 2/3 |" in md and "injected by the test" in md
    assert client().get_run(second["parent_run_id"]).data.metrics["cells_failed"] == 1


# --- the paper design on the tiny data --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_paper_design_runs_only_the_papers_cells(flow_home, tiny_cifar_source):
    """``--design paper`` with the paper's batch sizes × 0.05 (they fit 192 images): the eight cells of
    the paper's tables × 3 seeds, (b) with 5× the epochs, and the paper's own comparisons. Each run
    stops after 3 D steps (max_steps): 24 runs through the flow, MLflow and the report."""
    from flows.compare import build_compare_config, run
    from pipeline.experiments.compare import PAPER_DESIGN

    tiny = [o for o in TINY if not o.startswith("train.epochs")] + ["train.epochs=1", "train.max_steps=3"]
    summary = run(
        build_compare_config(
            {"dataset": "tiny", "source": str(tiny_cifar_source), "design": "paper", "batch_scale": 0.05, "seeds": 3},
            tiny,
        )
    )
    assert summary["design"] == "paper" and summary["cells"] == 24 and summary["cells_failed"] == 0
    runs = client().search_runs(
        [client().get_run(summary["parent_run_id"]).info.experiment_id],
        f"tags.mlflow.parentRunId = '{summary['parent_run_id']}'",
    )
    got = {
        (r.data.tags["compare.preset"], r.data.tags["compare.strategy"], int(r.data.tags["compare.batch_size"]))
        for r in runs
    }
    assert got == {(c.preset, c.strategy, b) for c, b in zip(PAPER_DESIGN, (51, 51, 102, 102, 6, 6, 6, 6))}
    epochs = {r.data.tags["compare.preset"]: r.data.params["train.epochs"] for r in runs}
    assert epochs["paper-128b"] == "5" and epochs["paper-128a"] == "1"
    rep = report_json(summary)
    assert {c["configuration"] for c in rep["configurations"]} == {
        f"{c.preset} {c.strategy} B={b}" for c, b in zip(PAPER_DESIGN, (51, 51, 102, 102, 6, 6, 6, 6))
    }
    # the claim (constructed vs random at each of the method's B), then the method's two cells against (a)-(d)
    assert len(rep["paper_comparisons"]) == 2 + 2 * 4
    md = Path(summary["report_md"]).read_text()
    assert "## The design (paper)" in md and "(equalised)" in md and "The paper's comparisons" in md
    assert md.count("held-out floor") >= 6
