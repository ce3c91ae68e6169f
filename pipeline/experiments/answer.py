"""The report's answer, composed from the same records its sections print.

:func:`compose_answer` reads only the summary's structured results (the learning check, the
generator-level comparisons or, in the paper design, the paper's comparisons, the batch-level
comparisons, the floors, the power rows) and returns at most six lines, each naming the section
that shows it. The first line is the verdict, or why there is none (the smoke scale, generators that
did not learn, too few seeds). A comparison that involves a configuration whose generators did not
learn says so in the same clause and gives no better/worse verdict.
"""

from __future__ import annotations

from typing import Any, Optional

from pipeline.experiments.words import (
    SECTION_BATCHES,
    SECTION_DESIGN,
    SECTION_FLOORS,
    SECTION_LEARNING,
    SECTION_PAPER,
    SECTION_POWER,
    SECTION_SPREAD,
    fmt,
)

MAX_LINES = 6
BASELINE = "random"


def _line(text: str, *sections: str) -> dict[str, Any]:
    return {"text": text, "sections": list(sections)}


def answer_text(lines: list[dict[str, Any]]) -> str:
    """The answer as Markdown: "**Answer.**", one line per claim, each naming its section."""
    out = []
    for i, ln in enumerate(lines):
        see = "; ".join(f"“{s}”" for s in ln["sections"])
        out.append(("**Answer.** " if i == 0 else "") + ln["text"] + (f" (see {see})" if see else ""))
    return "  \n".join(out)


def _stuck_by_configuration(learning: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """configuration -> (runs that did not learn, runs judged)."""
    out: dict[str, list[int]] = {}
    for r in learning["runs"]:
        n = out.setdefault(r["configuration"], [0, 0])
        n[1] += 1
        n[0] += r["moved"] is False
    return {k: (v[0], v[1]) for k, v in out.items() if v[0]}


def _other_strategy(summary: dict[str, Any]) -> Optional[str]:
    others = [s for s in summary["strategies"] if s != BASELINE]
    others.sort(key=lambda s: s != "constructed")
    return others[0] if others else None


def _where(c: dict[str, Any], paper: bool) -> str:
    b = c.get("batch_size")
    if paper:
        return f"B={_b_of(c['configuration_a'])} (the paper's {c['paper_row_b']} vs {c['paper_row_a']})"
    return f"B={b}" + (f" ({c['preset']})" if c.get("multi_preset") else "")


def _b_of(configuration: str) -> str:
    return configuration.rsplit("B=", 1)[-1]


def _clause(c: dict[str, Any], paper: bool, s: str) -> tuple[str, str]:
    """(outcome, clause) for one generator-level comparison of ``s`` with random batches."""
    where = _where(c, paper)
    means = f"{fmt(c['a']['mean'], 3)} vs {fmt(c['b']['mean'], 3)}"
    if c.get("not_learned"):
        return "untrained", f"at {where} no verdict: {c['not_learned']} of the runs compared did not learn ({means})"
    if c["diff"] is None:
        return "unknown", f"at {where} too few seeds to judge"
    if not c["exceeds"]:
        return "within", f"at {where} no difference beyond the seed spread ({means})"
    word = "better" if c["better"] else "worse"
    return word, f"at {where} {s} {word} than {BASELINE}, beyond the seed spread ({means})"


def _generator_line(summary: dict[str, Any], s: str, paper: bool) -> Optional[dict[str, Any]]:
    if paper:
        comps = [c for c in summary["paper_comparisons"] if c["kind"] == "claim" and c["metric"] == "feature_kl"]
        comps.sort(key=lambda c: -int(_b_of(c["configuration_a"])))  # the method's B first
    else:
        multi = len(summary["presets"]) > 1
        comps = [c for c in summary["comparisons"] if c["strategy"] == s and c["metric"] == "feature_kl"]
        for c in comps:
            c["multi_preset"] = multi
    if not comps:
        return None
    outcomes = [_clause(c, paper, s) for c in comps]
    words = {w for w, _ in outcomes}
    judged = words - {"untrained", "unknown"}
    clauses = "; ".join(c for _, c in outcomes)
    if not judged:
        why = "generators that did not learn" if "untrained" in words else "too few finished seeds"
        head = f"No verdict on the generators: every comparison of {s} with {BASELINE} batches involves {why}"
        return _line(f"{head}: final feature KL (lower is better) {clauses}.", SECTION_LEARNING, SECTION_SPREAD)
    if paper:
        big = outcomes[0][0]
        lead = {
            "better": "Our runs support the paper's claim at its large batch size",
            "within": "Our runs do not show the paper's claim at its large batch size",
            "worse": "Our runs contradict the paper's claim at its large batch size",
            "untrained": "Our runs cannot test the paper's claim at its large batch size",
            "unknown": "Our runs cannot test the paper's claim at its large batch size",
        }[big]
        text = (
            f"{lead} (constructed batches better than random at B ≈ 2000, slightly worse at 1024; Tables 3-4): "
            f"final feature KL (lower is better) {clauses}; each pair at the same recipe and budget."
        )
        return _line(text, SECTION_PAPER, SECTION_SPREAD)
    if judged == {"better"}:
        lead = f"Generators trained on {s} batches are better than on {BASELINE} ones"
    elif judged == {"worse"}:
        lead = f"Generators trained on {s} batches are worse than on {BASELINE} ones"
    elif judged == {"within"}:
        lead = f"Generators trained on {s} and {BASELINE} batches do not differ beyond the seed spread"
    else:
        lead = f"Whether {s} batches make better generators than {BASELINE} ones depends on the batch size"
    return _line(f"{lead}: final feature KL (lower is better) {clauses}.", SECTION_SPREAD)


def _learning_line(summary: dict[str, Any]) -> dict[str, Any]:
    learning = summary["learning"]
    runs = learning["runs"]
    known = [r for r in runs if r["moved"] is not None]
    moved = [r for r in known if r["moved"]]
    text = f"{len(moved)} of {len(runs)} generators learned"
    if moved:
        init = sorted({round(r["feature_kl_initial"], 2) for r in known})
        lo, hi = min(r["feature_kl_last"] for r in moved), max(r["feature_kl_last"] for r in moved)
        text += (
            f" (training feature KL from {fmt(init[0], 3)}"
            + (f"–{fmt(init[-1], 3)}" if len(init) > 1 else "")
            + f" untrained to {fmt(lo, 3)}–{fmt(hi, 3)})"
        )
    stuck = _stuck_by_configuration(learning)
    if stuck:
        text += "; did not learn: " + ", ".join(f"{k} ({a} of {n} seeds)" for k, (a, n) in stuck.items())
    unknown = learning["unknown"]
    if unknown:
        text += f"; {len(unknown)} without an epoch-0 record, not judged"
    return _line(text + ".", SECTION_LEARNING)


def _batch_line(summary: dict[str, Any], s: str) -> Optional[dict[str, Any]]:
    bc = [c for c in summary.get("batch_comparisons") or [] if c["strategy"] == s]
    if not bc:
        return None
    parts = []
    for metric, better_words, worse_words in (
        (
            "batch_kl",
            "closer to the data set's feature distribution",
            "further from the data set's feature distribution",
        ),
        ("coverage", "covering more images per epoch", "covering fewer images per epoch"),
    ):
        cs = [c for c in bc if c["metric"] == metric and c["diff"] is not None]
        if not cs:
            continue
        per_b = []
        for c in cs:
            verdict = (
                (better_words if c["better"] else worse_words) if c["exceeds"] else "no difference beyond the spread"
            )
            per_b.append(f"{verdict} at B={c['batch_size']} ({fmt(c['a']['mean'], 3)} vs {fmt(c['b']['mean'], 3)})")
        parts.append("; ".join(per_b))
    if not parts:
        return None
    return _line(
        f"Batches, {s} vs {BASELINE} (batch KL lower is better, coverage higher): " + "; ".join(parts) + ".",
        SECTION_BATCHES,
        SECTION_SPREAD,
    )


def _method_line(summary: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The method (the constructed cell at the largest B) against (a)-(d), with both budgets."""
    comps = [c for c in summary["paper_comparisons"] if c["kind"] == "strategies" and c["metric"] == "feature_kl"]
    if not comps:
        return None
    big = max({c["configuration_a"] for c in comps}, key=lambda a: int(_b_of(a)))
    comps = [c for c in comps if c["configuration_a"] == big]
    parts = []
    for c in comps:
        name = c["paper_row_b"]
        budget = f"{c['g_updates_b']:,} G updates" if c.get("g_updates_b") is not None else "its budget"
        means = f"{fmt(c['a']['mean'], 3)} vs {fmt(c['b']['mean'], 3)}"
        if c["not_learned"]:
            parts.append(f"vs {name} ({budget}) no verdict, {c['not_learned']} of the runs compared did not learn")
        elif c["diff"] is None:
            parts.append(f"vs {name} ({budget}) too few seeds")
        elif not c["exceeds"]:
            parts.append(f"vs {name} ({budget}) no difference beyond the seed spread ({means})")
        else:
            parts.append(f"vs {name} ({budget}) the method {'better' if c['better'] else 'worse'} ({means})")
    own = comps[0].get("g_updates_a")
    text = (
        f"The method ({big}, {own:,} G updates) against (a)-(d), final feature KL (lower is better): "
        if own is not None
        else f"The method ({big}) against (a)-(d), final feature KL (lower is better): "
    )
    return _line(text + "; ".join(parts) + ".", SECTION_PAPER, SECTION_DESIGN)


def _floor_line(summary: dict[str, Any]) -> Optional[dict[str, Any]]:
    floors = [f for f in summary.get("kl_floors") or [] if f["eval"]["n"]]
    if not floors:
        return None
    with_ho = [f for f in floors if f["eval"].get("heldout") is not None]
    ev = floors[0]["eval"]
    size = ", ".join(k.split("feature_kl", 1)[-1].split("_", 1)[0] for k in ev["keys"]) or "?"
    if not with_ho:
        at = [f["configuration"] for f in floors if f["eval"]["at_floor"]]
        if ev["floor"] is None:
            return _line(f"Final feature KL at {size} samples: no floor was recorded for it.", SECTION_FLOORS)
        return _line(
            f"Final feature KL at {size} samples against its bootstrap floor ({fmt(ev['floor'], 3)}; no held-out "
            f"floor recorded): {len(at)} of {len(floors)} configurations at it.",
            SECTION_FLOORS,
        )
    same = with_ho[0]["eval"]
    at = [f["configuration"] for f in with_ho if f["eval"]["at_heldout"]]
    ratios = [f["eval"]["heldout_ratio"] for f in with_ho if not f["eval"]["at_heldout"] and f["eval"]["heldout_ratio"]]
    text = (
        f"Final feature KL at {size} samples: bootstrap floor {fmt(same['floor'], 3)}, held-out floor "
        f"{fmt(same['heldout'], 3)} ({same.get('heldout_source') or 'held-out'}); "
        f"{len(at)} of {len(with_ho)} configurations indistinguishable from held-out data"
        + (f" ({', '.join(at)})" if at and len(at) <= 3 else "")
        + (
            f", the others {min(ratios):.1f}–{max(ratios):.1f}× the held-out floor"
            if len(ratios) > 1
            else f", the other {ratios[0]:.1f}× the held-out floor"
            if ratios
            else ""
        )
        + "."
    )
    return _line(text, SECTION_FLOORS)


def _power_line(summary: dict[str, Any], s: str, paper: bool) -> Optional[dict[str, Any]]:
    if paper:
        comps = [c for c in summary["paper_comparisons"] if c["kind"] == "claim" and c["metric"] == "feature_kl"]
    else:
        comps = [c for c in summary["comparisons"] if c["strategy"] == s and c["metric"] == "feature_kl"]
    rows = [c for c in comps if c.get("power") and c["power"]["welch_detectable"] is not None]
    if not rows:
        return None
    det = [c["power"]["welch_detectable"] for c in rows]
    seeds = sorted({c["power"]["n_a"] for c in rows} | {c["power"]["n_b"] for c in rows})
    n_txt = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
    text = (
        f"With {n_txt} seeds per cell, the final feature KL comparisons detect (80 %, Welch p < 0.05) differences of "
        f"{fmt(min(det), 3)}" + (f" to {fmt(max(det), 3)}" if fmt(max(det), 3) != fmt(min(det), 3) else "")
    )
    need = [c for c in rows if c["power"].get("paper_delta") is not None]
    if need:
        c = max(need, key=lambda c: int(_b_of(c["configuration_a"])))
        n = c["power"]["seeds_needed"]
        text += (
            f"; the paper's {c['paper_row_b']} vs {c['paper_row_a']} difference "
            f"({fmt(abs(c['power']['paper_delta']), 3)}, {c['paper_a']['table']}) would need "
            + (f"{n:,} seeds per cell" if n else "more than 10,000 seeds per cell")
            + " at this spread"
        )
    return _line(text + ".", SECTION_POWER)


def compose_answer(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The answer's lines (at most :data:`MAX_LINES`), each ``{"text", "sections"}``: the verdict
    or why there is none first, then whether the generators learned, the batches, (paper design)
    the method against (a)-(d), the floors, the power."""
    paper = (summary.get("design") or {}).get("design") == "paper"
    s = _other_strategy(summary)
    learning = _learning_line(summary)
    lines: list[dict[str, Any]] = []
    if not summary["learning"]["runs"]:
        return [_line("No verdict: no run finished.", SECTION_LEARNING)]
    if BASELINE not in summary["strategies"] or s is None:
        lines.append(
            _line(
                f"No verdict: the question (do constructed batches help compared with {BASELINE} ones?) needs "
                f"{BASELINE} batches and at least one other strategy in the grid.",
                SECTION_DESIGN,
            )
        )
        return [*lines, learning]
    gen = _generator_line(summary, s, paper)
    if summary["scale"] == "smoke":
        stuck = len(summary["learning"]["not_moved"])
        lines.append(
            _line(
                f"No verdict: this is the smoke scale, tiny models trained for a few steps to check the machinery "
                f"({stuck} of {len(summary['learning']['runs'])} generators did not learn); its numbers say nothing "
                "about the method.",
                SECTION_LEARNING,
            )
        )
    elif gen is None:
        lines.append(
            _line(
                f"No verdict on the generators: no final feature KL was recorded for both {s} and {BASELINE} batches.",
                SECTION_SPREAD,
            )
        )
    else:
        lines.append(gen)
    lines.append(learning)
    extra = [_batch_line(summary, s), _method_line(summary) if paper else None, _floor_line(summary)]
    if summary["scale"] != "smoke":
        extra.append(_power_line(summary, s, paper))
    lines += [ln for ln in extra if ln is not None]
    return lines[:MAX_LINES]
