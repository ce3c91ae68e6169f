"""The report's sections on the paper's design, the batches, the floors, the paper's comparisons and
power (issues 14 and 19), as blocks for :mod:`pipeline.experiments.report`: ("h", level, text),
("p", text), ("ul", items), ("table", head, rows). Each reads the summary
(:func:`pipeline.experiments.summary.summarise`) and nothing else.
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.experiments.stats import SPREAD_FACTOR
from pipeline.experiments.words import SECTION_DESIGN, SECTION_FLOORS, SECTION_PAPER, SECTION_POWER, fmt


def design_blocks(summary: dict[str, Any]) -> list[tuple]:
    design = summary.get("design") or {}
    confs = design.get("configurations") or []
    if not confs:
        return []
    out: list[tuple] = [("h", 2, f"{SECTION_DESIGN} ({design.get('design', '?')})")]
    if design.get("design") == "paper":
        out.append(
            (
                "p",
                "The paper's cells only, not a factorial: its Tables 3-4 (random and constructed batches at each "
                "of the method's two batch sizes, same recipe and epochs) and strategies (a)-(d) at B = 128 "
                "(Tables 5-6), each at its preset's batch size and epochs for this data set"
                + (
                    f", the batch sizes × {design['batch_scale']:.4g} to fit this data set"
                    if design.get("batch_scale", 1) not in (None, 1, 1.0)
                    else ""
                )
                + (
                    f", the epochs × {design['epoch_factor']:g} (the scale's)"
                    if design.get("epoch_factor") not in (None, 1, 1.0)
                    else ""
                )
                + ". Budgets: the paper compares (a)-(d) at equal epochs; (b) takes 5 "
                "critic steps per G step, each on its own batch, so it trains 5× the epochs and makes the "
                "same number of G updates as (a), (c) and (d). The method's runs keep their own epochs, as "
                "the paper ran them; their G updates are in the table.",
            )
        )
    else:
        out.append(
            (
                "p",
                "Every strategy × batch size × preset; each cell trains at its preset's epochs, so D steps "
                "per G step change the G updates (see the table).",
            )
        )
    rows = [
        [
            c["configuration"],
            c.get("reproduces") or "",
            f"{c['optimizer']} {fmt(c['lr_g'], 2)}" + ("" if c["lr_d"] == c["lr_g"] else f" / {fmt(c['lr_d'], 2)}")
            if c.get("optimizer")
            else "–",
            str(c["batch_size"]),
            str(c["epochs"]),
            str(c["d_steps"]),
            str(c["batches_per_epoch"]),
            f"{c['g_updates']:,}" + (" (equalised)" if c.get("equal_g_updates") else ""),
            f"{c['images_seen']:,}",
        ]
        for c in confs
    ]
    out.append(
        (
            "table",
            [
                "configuration",
                "reproduces",
                "optimiser, lr",
                "B",
                "epochs",
                "D steps per G step",
                "batches per epoch",
                "G updates",
                "images seen by D",
            ],
            rows,
        )
    )
    return out


def batch_check_blocks(summary: dict[str, Any]) -> list[tuple]:
    diag = summary.get("batch_diagnostics") or []
    if not diag:
        return []
    out: list[tuple] = [("h", 2, "Every strategy's batches, with an independent check on the labels")]
    out.append(
        (
            "p",
            "The batches of every strategy at every batch size of the design (cached batches artifacts; "
            "trained or not), each averaged over the seeds' constructions: coverage per epoch (Table 1), "
            "the feature KL(f_Xi || f_X) of the batches, mean ± s.d. over the batches (Table 2's mean and "
            "spread), beside what a uniformly random sample of B images scores on the same estimator. "
            "Constructed batches are built to match this very histogram, so they beat the random sample by "
            "design. The label KL (each batch's class mix against the data set's) is a property the "
            "sampler never sees: a strategy at the random-sample value is no closer to the data set's class "
            "mix than random batches.",
        )
    )
    rows = []
    sd0 = lambda v: 0.0 if v is not None and abs(v) < 1e-12 else v  # noqa: E731  (floating-point "spread")
    for d in diag:
        never = " / ".join(f"{v:.0f}" for v in d["never_drawn"]) or "–"
        label = (
            f"{fmt(d['label_kl_mean'])} ± {fmt(sd0(d['label_kl_sd']))}"
            if d["label_kl_mean"] is not None
            else "n/a (no labels)"
        )
        rows.append(
            [
                d["strategy"] + (f" (top-up {d['topup']})" if d.get("topup") else ""),
                str(d["batch_size"]),
                fmt(d["coverage"]),
                f"{fmt(d['kl_mean'])} ± {fmt(sd0(d['kl_sd']))}",
                fmt(d["kl_random"]),
                label,
                fmt(d["label_kl_random"]),
                never,
            ]
        )
    out.append(
        (
            "table",
            [
                "strategy",
                "B",
                "coverage",
                "feature KL (mean ± s.d. over batches)",
                "random sample of B",
                "label KL (mean ± s.d.)",
                "random sample of B",
                "never drawn per epoch",
            ],
            rows,
        )
    )
    sentences = []
    for d in diag:
        if d["strategy"] == "random" or d["label_kl_mean"] is None or not d["label_kl_random"]:
            continue
        ratio = d["label_kl_mean"] / d["label_kl_random"]
        # the difference against the standard error of both means (the batches', the reference's samples)
        se = math.sqrt(
            (d["label_kl_sd"] or 0.0) ** 2 / max(d.get("n_batches") or 1, 1)
            + (d.get("label_kl_random_sd") or 0.0) ** 2 / max(d.get("label_kl_random_repeats") or 1, 1)
        )
        diff = d["label_kl_mean"] - d["label_kl_random"]
        words = (
            "no closer to the data set's class mix than random sampling, and no further (within 2 standard errors)"
            if abs(diff) <= 2 * se
            else "closer to the data set's class mix than random sampling"
            if diff < 0
            else "further from the data set's class mix than random sampling"
        )
        sentences.append(
            f"{d['strategy']} batches at B={d['batch_size']}: label KL {fmt(d['label_kl_mean'])}, "
            f"{ratio:.2f}× a random sample's ({fmt(d['label_kl_random'])}; {d.get('n_batches')} batches): "
            f"{words}; their feature KL is {fmt(d['kl_mean'])} against {fmt(d['kl_random'])}."
        )
    if sentences:
        out.append(("ul", sentences))
    elif any(d.get("label_note") for d in diag):
        out.append(("p", "No label check: " + next(d["label_note"] for d in diag if d.get("label_note")) + "."))
    return out


def never_drawn_blocks(summary: dict[str, Any]) -> list[tuple]:
    runs = summary.get("never_drawn_runs") or []
    if not runs:
        return []
    epochs = max(len(r["per_epoch"]) for r in runs)
    n = summary.get("n_images")
    out: list[tuple] = [("h", 2, "Images never drawn, per run and epoch")]
    out.append(
        (
            "p",
            "How many of the " + (f"{n:,} " if n else "") + "training images no batch of the epoch held, for "
            "every training run (the batches it trained on): those images were not trained on in that "
            "epoch. Random batches leave out n mod B; constructed batches leave out the cells whose quota "
            "rounds to 0 (spec §3).",
        )
    )
    rows = [
        [r["configuration"], str(r["seed"])]
        + [f"{v:,}" + (f" ({v / n:.1%})" if n else "") for v in r["per_epoch"]]
        + ["–"] * (epochs - len(r["per_epoch"]))
        for r in runs
    ]
    out.append(("table", ["configuration", "seed"] + [f"epoch {e}" for e in range(1, epochs + 1)], rows))
    return out


def floor_blocks(summary: dict[str, Any]) -> list[tuple]:
    floors = [f for f in summary.get("kl_floors") or [] if f["epoch"]["n"] or f["eval"]["n"]]
    if not floors:
        return []

    def cell(k: dict[str, Any]) -> list[str]:
        if not k["n"]:
            return ["–", "–", "–", ""]
        value = fmt(k["mean"]) + (f" ± {fmt(k['sd'])}" if k["sd"] is not None else "") + f" (n={k['n']})"
        boot = (
            fmt(k["floor"]) + (f" ± {fmt(k['floor_sd'])}" if k["floor_sd"] is not None else "")
            if k["floor"] is not None
            else "n/a (not recorded)"
        )
        held = (
            fmt(k["heldout"]) + (f" ± {fmt(k['heldout_sd'])}" if k.get("heldout_sd") is not None else "")
            if k.get("heldout") is not None
            else "n/a (not recorded)"
        )
        if k.get("at_heldout"):
            words = "indistinguishable from held-out data"
        elif k.get("heldout_ratio") is not None:
            words = f"{k['heldout_ratio']:.2f}× the held-out floor"
        elif k["at_floor"]:
            words = "at its bootstrap floor"
        elif k["ratio"] is not None:
            words = f"{k['ratio']:.2f}× its bootstrap floor"
        else:
            words = "above its floor"
        return [value, boot, held, words]

    epoch_keys = sorted({key for f in floors for key in f["epoch"]["keys"]})
    eval_keys = sorted({key for f in floors for key in f["eval"]["keys"]})
    source = (summary.get("floors") or {}).get("heldout_source")
    out: list[tuple] = [("h", 2, SECTION_FLOORS)]
    out.append(
        (
            "p",
            "A perfect generator does not score 0: the feature KL of N samples has a floor. Two are given, each at "
            "the KL's own sample size (mean ± s.d. over 10 draws). The *bootstrap* floor draws N training images "
            "again, the table's own images: it is the floor of memorising the training set. The *held-out* floor "
            "draws N real images the table was not built from ("
            + (source or "not recorded for this comparison")
            + "): a generator that generalises perfectly scores about this, above the bootstrap floor, so it is "
            "the one to judge by. A KL within 2 × √(seed s.d.² + floor s.d.²) of the held-out floor is "
            '"indistinguishable from held-out data", and differences between such generators mean nothing. '
            "The two KLs below use different sample sizes and have different floors; never compare one with the "
            f"other. Per-epoch: training's fixed-z samples after the last epoch (MLflow "
            f"{', '.join(f'`{k}`' for k in epoch_keys) or '–'}); evaluation: the final generator's samples (MLflow "
            f"{', '.join(f'`{k}`' for k in eval_keys) or '–'}, bootstrap floor `<key>_floor`; both floors on the "
            "parent run as `floor/feature_kl<N>_bootstrap` and `floor/feature_kl<N>_heldout`).",
        )
    )
    rows = [[f["configuration"], *cell(f["epoch"]), *cell(f["eval"])] for f in floors]
    head = ["configuration", "per-epoch KL", "bootstrap floor", "held-out floor", ""]
    out.append(("table", head + ["evaluation KL", "bootstrap floor", "held-out floor", ""], rows))
    judged = [f for f in floors if f["eval"].get("heldout") is not None]
    if judged:
        at = [f["configuration"] for f in judged if f["eval"]["at_heldout"]]
        out.append(
            (
                "p",
                f"{len(at)} of {len(judged)} configurations have an evaluation KL indistinguishable from held-out "
                "data" + (f": {', '.join(at)}." if at else "."),
            )
        )
    return out


def paper_comparison_blocks(summary: dict[str, Any]) -> list[tuple]:
    comps = summary.get("paper_comparisons") or []
    if not comps:
        return []
    from pipeline.experiments.paper import CLAIM_QUOTE, STRATEGIES_QUOTE

    out: list[tuple] = [("h", 2, SECTION_PAPER)]
    claim = [c for c in comps if c["kind"] == "claim"]
    strat = [c for c in comps if c["kind"] == "strategies"]
    intro = (
        f"Per metric: the difference of the means over seeds against {SPREAD_FACTOR:g} × the pooled seed s.d., "
        "Welch's t-test, and the paper's own figures for the same rows (its tables name the rows; its KL is "
        "measured on its own data at a sample size it does not give, so compare directions, not values). A "
        "comparison involving a configuration whose generators did not learn gives no verdict."
    )
    out.append(("p", intro))
    if claim:
        out.append(("h", 3, "The claim: constructed against random batches at the same B and budget (Tables 3-4)"))
        out.append(("p", "The paper: " + CLAIM_QUOTE))
        out.append(("ul", [c["sentence"] for c in claim]))
    if strat:
        out.append(("h", 3, "The method against strategies (a)-(d) (Tables 5-6)"))
        out.append(
            (
                "p",
                "The paper: " + STRATEGIES_QUOTE + " The budgets differ: each sentence gives both sides' G updates.",
            )
        )
        out.append(("ul", [c["sentence"] for c in strat]))
    return out


def power_blocks(summary: dict[str, Any]) -> list[tuple]:
    """What each comparison's seeds could detect, and the seeds the paper's difference would need."""
    from pipeline.experiments.stats import ALPHA, POWER

    paper = [c for c in summary.get("paper_comparisons") or [] if c.get("power")]
    rows_src = paper or [c for c in summary.get("comparisons") or [] if c.get("power")]
    rows_src = [c for c in rows_src if c["power"]["pooled_sd"] is not None]
    if not rows_src:
        return []
    out: list[tuple] = [("h", 2, SECTION_POWER)]
    out.append(
        (
            "p",
            f"For each comparison: the pooled seed s.d. and the smallest true difference the seeds would detect "
            f"with probability {POWER:.0%}, at the report's rule (|difference| > {SPREAD_FACTOR:g} × seed s.d.: "
            f"{SPREAD_FACTOR:g} s + z·s·√(1/n_a + 1/n_b); never below {SPREAD_FACTOR:g} s, however many seeds) and "
            f"at Welch's test, p < {ALPHA:g} two-sided ((t_(1−α/2, df) + t_(power, df)) · s · √(1/n_a + 1/n_b), "
            "df = n_a + n_b − 2). Where the paper gives the same pair, its difference and the seeds per cell Welch's "
            "test would need to see it at our spread (the paper's KL is on its own data and sample size: at "
            "`--scale paper` on its data set the two are comparable; at other scales the figure only says how "
            "small the paper's effect is against our spread).",
        )
    )
    rows = []
    for c in rows_src:
        p = c["power"]
        name = (
            f"{c['configuration_a']} vs {c['configuration_b']}"
            if "kind" in c
            else f"{c['strategy']} vs {c['baseline']}, {c['preset']} B={c['batch_size']}"
        )
        need = (
            (f"{p['seeds_needed']:,}" if p["seeds_needed"] else "> 10,000")
            + ("" if p["rule_can_see_paper"] else f" (the {SPREAD_FACTOR:g} × s.d. rule: never)")
            if p["paper_delta"] is not None
            else "–"
        )
        rows.append(
            [
                name,
                c["label"],
                f"{p['n_a']} / {p['n_b']}",
                fmt(p["pooled_sd"], 3),
                fmt(p["rule_detectable"], 3),
                fmt(p["welch_detectable"], 3),
                fmt(abs(p["paper_delta"]), 3) + f" ({c['paper']['cite']})" if p["paper_delta"] is not None else "–",
                need,
            ]
        )
    out.append(
        (
            "table",
            [
                "comparison",
                "metric",
                "seeds",
                "pooled seed s.d.",
                f"detectable, {SPREAD_FACTOR:g} × s.d. rule",
                "detectable, Welch",
                "the paper's difference",
                "seeds per cell to see it (Welch)",
            ],
            rows,
        )
    )
    return out
