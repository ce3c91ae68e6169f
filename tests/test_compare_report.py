"""The comparison's pieces that need no Prefect and no training: the compare config's validation,
the report's wording against the seed spread, missing fidelity metrics, and the report's answer
from synthetic MLflow-like records. The flow itself and its report on real runs are in
``test_compare.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from storage.errors import SubsampleError

# --- pieces without Prefect ---------------------------------------------------------------------------


def test_compare_config_validation_names_the_field():
    from flows.compare import CompareConfig, build_compare_config

    cfg = build_compare_config({"dataset": "celeba", "scale": "paper"})
    assert cfg.ingest.size == 64 and cfg.ingest.crop == 178  # the data set's convention
    assert cfg.grid_batch_sizes == (128, 512, 1024, 2000) and len(cfg.cells()) == 3 * 4 * 5 * 3
    smoke = CompareConfig()
    assert smoke.scale == "smoke" and all(b <= 2000 for b in smoke.grid_batch_sizes)
    rc = smoke.cell_run_config(smoke.cells()[0])
    assert rc.train.ngf == 8 and rc.train.track and rc.evaluate.fidelity is False
    cpu = CompareConfig(scale="cpu")  # the scale whose generators learn on a CPU (docs/compare.md)
    assert len(cpu.cells()) == 3 * 2 * 1 * 3 and max(cpu.grid_batch_sizes) <= 2000
    rc = cpu.cell_run_config(cpu.cells()[-1])
    assert (rc.train.ngf, rc.train.epochs, rc.train.lr_d, rc.evaluate.samples, rc.evaluate.fidelity) == (
        16,
        40,
        2e-3,
        2000,
        False,
    )

    for fields, overrides, match in [
        ({"seeds": 2}, [], "seeds"),
        ({"strategies": ["random", "shuffled"]}, [], "strategies"),
        ({"presets": ["paper-999"]}, [], "presets"),
        ({"batch_sizes": [128, 128]}, [], "batch_sizes"),
        ({}, ["train.ngff=3"], "ngff"),
        ({}, ["evaluate.samples=1"], "samples"),
    ]:
        with pytest.raises(SubsampleError, match=match) as e:
            build_compare_config(fields, overrides)
        assert str(e.value).startswith("compare: ")


def test_comparison_wording_follows_the_seed_spread():
    from pipeline.experiments.stats import EVAL_METRICS, compare_to_baseline
    from pipeline.experiments.summary import comparison_sentence

    kl = EVAL_METRICS[0]
    far = compare_to_baseline([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], lower_is_better=True)
    assert far["exceeds"] and far["better"] and far["diff"] == pytest.approx(-1.0)
    assert far["pooled_sd"] == pytest.approx(0.1) and far["p"] < 0.01
    text = comparison_sentence("constructed", "random", kl, 2000, "paper-constructed", far)
    assert text.startswith("constructed beats random on feature KL at B=2000 (paper-constructed) by 1.000")
    assert "> 2 × seed s.d. (0.2000)" in text and "3 vs 3 seeds" in text

    near = compare_to_baseline([1.0, 1.3, 0.7], [1.1, 1.4, 0.8], lower_is_better=True)
    assert not near["exceeds"]
    assert "within seed spread" in comparison_sentence("dealt", "random", kl, 128, "paper-128a", near)

    from scipy import stats

    for a, b in (([1.0, 1.1, 0.9], [2.0, 2.1, 1.9]), ([6.14, 6.14, 6.14], [5.0, 5.4, 4.9])):  # one side flat
        r = compare_to_baseline(a, b, lower_is_better=True)
        with np.errstate(all="ignore"):
            welch = stats.ttest_ind(a, b, equal_var=False)
        assert (r["t"], r["p"]) == (pytest.approx(welch.statistic, rel=1e-9), pytest.approx(welch.pvalue, rel=1e-9))
    worse_is = compare_to_baseline([5.0, 5.1, 4.9], [7.0, 7.1, 6.9], lower_is_better=False)  # IS: higher is better
    assert worse_is["exceeds"] and worse_is["better"] is False
    assert compare_to_baseline([1.0], [2.0, 2.1], True)["diff"] is None  # one seed: no spread, no verdict
    flat = compare_to_baseline([1.0, 1.0], [2.0, 2.0], True)  # no spread at all: any difference exceeds it
    assert flat["exceeds"] and flat["t"] is None
    assert "no seed-to-seed variation" in comparison_sentence("dealt", "random", kl, 128, "paper-128a", flat)
    same = compare_to_baseline([7.4, 7.4, 7.4], [7.4, 7.4, 7.4], True)
    assert "identical, 7.400 for every seed of both" in comparison_sentence("dealt", "random", kl, 128, "p", same)


def test_missing_fidelity_metrics_say_why():
    from pipeline.experiments.compare import GridCell
    from pipeline.experiments.stats import Member, fidelity_reason

    def member(note: str) -> Member:
        return Member("r", GridCell("random", 64, "paper-128a", 0), "FINISHED", None, note, {})

    assert fidelity_reason([member("skipped: disabled (--no-fidelity)")]) == "n/a (fidelity off at this scale)"
    offline = (
        "skipped: Inception weights not available offline (tried to download weights-inception-2015-12-05-"
        "6726825d.pth into /root/.cache/torch/hub/checkpoints: [Errno -2] Name or service not known); "
        "pass --weights PATH to a local copy"
    )
    assert fidelity_reason([member(offline)]) == "n/a (weights unavailable)"
    assert fidelity_reason([]) == "n/a (no finished run)"


# --- the report's answer, from synthetic MLflow-like records ---------------------------------------------


def _member(strategy, b, seed, *, batch_kl, coverage, fkl, kl_history, preset="paper-constructed"):
    from pipeline.experiments.compare import GridCell
    from pipeline.experiments.stats import Member

    metrics = {
        "batches/kl_mean": batch_kl,
        "batches/coverage_mean": coverage,
        "eval/feature_kl2000_train": fkl,
        "feature_kl": kl_history[-1][1],
    }
    history = {"feature_kl": kl_history, "loss_d": [(1, 1.3), (30, 0.9)], "loss_g": [(1, 1.0), (30, 2.0)]}
    return Member(
        f"{strategy}-{b}-{seed}",
        GridCell(strategy, b, preset, seed),
        "FINISHED",
        None,
        "skipped: disabled (--no-fidelity)",
        metrics,
        history,
    )


def _synthetic(
    fkl_constructed=(1.2, 1.4, 1.6),
    fkl_random=(1.1, 1.3, 1.5),
    strategies=("random", "constructed"),
    stuck=(),
    fkl_constructed_500=None,
):
    """Two batch sizes × 3 seeds: constructed batches much closer to the data set than random ones
    (batch KL 0.05 vs 0.30, small spread) but covering less; the generators' feature KL as given;
    ``stuck`` (strategy, B, seed) cells whose generator never left its untrained feature KL."""
    from pipeline.experiments.stats import ReportData

    members = []
    for b in (128, 500):
        for seed in range(3):
            for s in strategies:
                fkl = (fkl_constructed if s == "constructed" else fkl_random)[seed]
                if s == "constructed" and b == 500 and fkl_constructed_500:
                    fkl = fkl_constructed_500[seed]
                hist = [(0, 7.436), (1, 3.0), (30, 7.40 if (s, b, seed) in stuck else fkl)]
                members.append(
                    _member(
                        s,
                        b,
                        seed,
                        fkl=fkl,
                        kl_history=hist,
                        batch_kl=(0.05 if s == "constructed" else 0.30) + 0.005 * seed,
                        coverage=0.60 + 0.01 * seed if s == "constructed" else (0.96 if b == 128 else 1.0),
                    )
                )
    return ReportData(
        "parent", "compare-demo-cpu", "FINISHED", "demo", {"scale": "cpu", "n_images": "2000"}, [], members, "1"
    )


def test_answer_paragraph_gives_direction_and_the_seed_spread():
    from pipeline.experiments.report import _blocks, render_markdown
    from pipeline.experiments.summary import summarise

    summary = summarise(_synthetic())
    answer, lines = summary["answer"], [ln["text"] for ln in summary["answer_lines"]]
    assert answer.startswith(
        "**Answer.** Generators trained on constructed and random batches do not differ beyond the seed spread: "
        "final feature KL (lower is better) at B=128 no difference beyond the seed spread (1.40 vs 1.30); at B=500 "
        "no difference beyond the seed spread (1.40 vs 1.30)."
    )
    assert lines[1].startswith("12 of 12 generators learned") and "did not learn" not in answer
    # the batches: both means, and that the batch KL is lower-is-better and coverage higher-is-better
    assert lines[2] == (
        "Batches, constructed vs random (batch KL lower is better, coverage higher): closer to the data set's "
        "feature distribution at B=128 (0.0550 vs 0.305); closer to the data set's feature distribution at B=500 "
        "(0.0550 vs 0.305); covering fewer images per epoch at B=128 (0.610 vs 0.960); covering fewer images per "
        "epoch at B=500 (0.610 vs 1.00)."
    )
    md = render_markdown(_blocks(summary, {}))
    assert md.split("\n\n")[1] == answer  # the first paragraph under the title
    # the per-comparison sentences live in their section, each saying which is better
    for c in summary["comparisons"] + summary["batch_comparisons"]:
        assert c["sentence"] in md and (
            "ahead" in c["sentence"] or "beats" in c["sentence"] or "worse" in c["sentence"]
        )
    assert "| preset | B | strategy | runs ok | feature KL |" in md  # no n/a columns


def test_answer_says_when_constructed_generators_are_worse_and_when_it_cannot_answer():
    from pipeline.experiments.summary import summarise

    worse = summarise(_synthetic(fkl_constructed=(2.0, 2.05, 2.1), fkl_random=(1.0, 1.05, 1.1)))
    assert worse["answer"].startswith(
        "**Answer.** Generators trained on constructed batches are worse than on random ones: final feature KL "
        "(lower is better) at B=128 constructed worse than random, beyond the seed spread (2.05 vs 1.05)"
    )

    better = summarise(_synthetic(fkl_constructed=(1.0, 1.05, 1.1), fkl_random=(2.0, 2.05, 2.1)))["answer"]
    assert better.startswith("**Answer.** Generators trained on constructed batches are better than on random ones")

    mixed = summarise(
        _synthetic(fkl_constructed=(2.0, 2.05, 2.1), fkl_random=(1.0, 1.05, 1.1), fkl_constructed_500=(1.0, 1.1, 1.2))
    )["answer"]
    assert mixed.startswith(
        "**Answer.** Whether constructed batches make better generators than random ones depends on the batch "
        "size: final feature KL (lower is better) at B=128 constructed worse than random, beyond the seed spread "
        "(2.05 vs 1.05); at B=500 no difference beyond the seed spread (1.10 vs 1.05)."
    )

    alone = summarise(_synthetic(strategies=("constructed",)))
    assert alone["answer"].startswith("**Answer.** No verdict: the question") and "random batches" in alone["answer"]


def test_generators_that_did_not_move_from_their_untrained_value_are_flagged():
    from pipeline.experiments.report import _blocks, render_markdown
    from pipeline.experiments.summary import summarise

    data = _synthetic(stuck={("constructed", 500, 2), ("random", 500, 0)})
    data.members[0].history["feature_kl"] = data.members[0].history["feature_kl"][1:]  # no epoch-0 record
    summary = summarise(data)
    learning = summary["learning"]
    assert {(r["strategy"], r["batch_size"], r["seed"]) for r in learning["not_moved"]} == {
        ("constructed", 500, 2),
        ("random", 500, 0),
    }
    assert [(r["strategy"], r["batch_size"], r["seed"]) for r in learning["unknown"]] == [("random", 128, 0)]
    assert "at B=500 no verdict: 2 of the runs compared did not learn" in summary["answer"]
    assert (
        "did not learn: paper-constructed constructed B=500 (1 of 3 seeds), paper-constructed random B=500 (1 of 3 "
        "seeds); 1 without an epoch-0 record, not judged"
    ) in summary["answer"]
    (c500,) = [c for c in summary["comparisons"] if c["batch_size"] == 500]
    assert c500["not_learned"] == 2 and "no verdict: 2 of these runs did not learn" in c500["sentence"]
    md = render_markdown(_blocks(summary, {}))
    assert (
        "- paper-constructed constructed B=500 seed 2: feature KL (lower is better) 7.44 untrained, 7.40 at epoch 30 "
        "(run `constructed-500-2`): **did not learn**"
    ) in md
    assert "| paper-constructed | 500 | constructed | 2/3 | 7.44 |" in md
