"""The words of a comparison's report: numbers formatted, and the sentences every section and the
answer share (a comparison against the baseline, whether the generators learned, a verdict over
several batch sizes). Numbers come from :mod:`pipeline.experiments.stats`.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from pipeline.experiments.stats import SPREAD_FACTOR, MetricSpec

# The report's sections, by title: the answer names the one that shows each of its claims.
SECTION_LEARNING = "Did the generators learn?"
SECTION_SPREAD = "Which differences exceed the seed-to-seed spread"
SECTION_BATCHES = "Batch diagnostics (the paper's Tables 1 and 2)"
SECTION_DESIGN = "The design"
SECTION_FLOORS = "Each feature KL beside its floors"
SECTION_PAPER = "The paper's comparisons"
SECTION_POWER = "What these seeds can detect"
SECTION_RESULTS = "Results per configuration (mean ± s.d. over seeds)"

# words that give a verdict; a sentence about a generator that did not learn has none of them
VERDICT_WORDS = ("beats", "is worse than", "better by", "worse by", "better than", "worse than", "is ahead")


def learning_sentence(learning: dict[str, Any]) -> str:
    """One sentence: did every generator move from its untrained feature KL?"""
    runs, bad, unknown = learning["runs"], learning["not_moved"], learning["unknown"]
    if not runs:
        return "No finished run: nothing learned."
    known = [r for r in runs if r["moved"] is not None]
    tol = f"{learning['tolerance']:.0%}"
    parts = []
    if known:
        init = sorted({round(r["feature_kl_initial"], 3) for r in known})
        init_txt = fmt(init[0], 3) if len(init) == 1 else f"{fmt(init[0], 3)}–{fmt(init[-1], 3)}"
        moved = [r for r in known if r["moved"]]
        if moved:
            lo, hi = min(r["feature_kl_last"] for r in moved), max(r["feature_kl_last"] for r in moved)
            epochs = sorted({r["last_epoch"] for r in moved})
            ep = f"epoch {epochs[0]}" if len(epochs) == 1 else f"epochs {epochs[0]}–{epochs[-1]}"
            parts.append(
                f"{len(moved)} of {len(runs)} generators learned: their training feature KL (lower is "
                f"better) went from {init_txt} untrained (epoch 0) to {fmt(lo, 3)}–{fmt(hi, 3)} at {ep}"
            )
        if bad:
            parts.append(
                f"**{len(bad)} of {len(runs)} did not learn**: their feature KL stayed within {tol} of the "
                f"untrained value ({init_txt}), so their numbers describe untrained generators "
                f"({'; '.join(_run_label(r) for r in bad[:6])}{'; …' if len(bad) > 6 else ''})"
            )
    if unknown:
        parts.append(f"{len(unknown)} run(s) have no epoch-0 record (trained before it was logged): not judged")
    return "; ".join(parts) + "."


def _compact(m: dict[str, Any]) -> str:
    """``1.23 ± 0.05``: mean and seed s.d. to 3 digits (no s.d. when it is 0 or unknown)."""
    if not m["n"]:
        return "–"
    return fmt(m["mean"], 3) + (f" ± {fmt(m['sd'], 2)}" if m["sd"] else "")


def _run_label(r: dict[str, Any]) -> str:
    return (
        f"{r['configuration']} seed {r['seed']}: feature KL (lower is better) {fmt(r['feature_kl_initial'], 3)} "
        f"untrained, {fmt(r['feature_kl_last'], 3)} at epoch {r['last_epoch']}"
    )


def _clause(c: dict[str, Any], with_preset: bool) -> str:
    """``0.05 vs 0.29 at B=128 (constructed better)``: both means, where, and which is better."""
    where = f"B={c['batch_size']}" + (f", {c['preset']}" if with_preset and c.get("preset") else "")
    if c["diff"] is None:
        return f"{where}: too few seeds"
    if c["diff"] == 0:
        return f"{fmt(c['a']['mean'], 3)} for both at {where}"
    ahead = c["strategy"] if c["better"] else c["baseline"]
    spread = "" if c["exceeds"] else ", within the spread"
    return f"{fmt(c['a']['mean'], 3)} vs {fmt(c['b']['mean'], 3)} at {where} ({ahead} better{spread})"


def _verdict(comps: list[dict[str, Any]], s: str, base: str, unit: str) -> tuple[str, str]:
    """(a short verdict word, a phrase) for one metric's comparisons of ``s`` with ``base``."""
    judged = [c for c in comps if c["diff"] is not None]
    better = [c for c in judged if c["exceeds"] and c["better"]]
    worse = [c for c in judged if c["exceeds"] and c["better"] is False]
    n = len(judged)
    every = f"at every {unit}" if n > 1 else f"at this {unit}"
    if not judged:
        return "unknown", "too few seeds to judge"
    if len(better) == n:
        return "better", f"{s} better than {base}, beyond the seed spread {every}"
    if len(worse) == n:
        return "worse", f"{s} worse than {base}, beyond the seed spread {every}"
    if not better and not worse:
        return "within", f"no difference between {s} and {base} exceeds the seed spread"
    within = [c for c in judged if c not in better and c not in worse]
    where = lambda cs: ", ".join(_where(c) for c in cs)  # noqa: E731
    parts = (
        ([f"{s} better than {base} beyond the seed spread at {where(better)}"] if better else [])
        + ([f"{s} worse than {base} beyond the seed spread at {where(worse)}"] if worse else [])
        + ([f"no difference beyond the spread at {where(within)}"] if within else [])
    )
    answer = "partly" if not worse else "no" if not better else "it depends"
    return "mixed", f"{answer}: " + "; ".join(parts)


def _where(c: dict[str, Any]) -> str:
    return f"B={c['batch_size']}" + (f" ({c['preset']})" if c.get("multi_preset") and c.get("preset") else "")


def missing_sentence(missing: dict[str, str]) -> str:
    by_reason: dict[str, list[str]] = {}
    for label, reason in missing.items():
        by_reason.setdefault(reason, []).append(label)
    parts = []
    for reason, labels in by_reason.items():
        names = ", ".join(labels[:-1]) + " and " + labels[-1] if len(labels) > 1 else labels[0]
        why = reason[len("n/a (") : -1] if reason.startswith("n/a (") and reason.endswith(")") else reason
        parts.append(f"{names} {'were' if len(labels) > 1 else 'was'} not computed for any run ({why})")
    return "; ".join(parts)[0].upper() + "; ".join(parts)[1:] + "."


def fmt(v: Optional[float], digits: int = 4) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    if v == 0:
        return "0"
    mag = math.floor(math.log10(abs(v)))
    if mag >= digits + 2 or mag < -4:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{max(digits - 1 - mag, 0)}f}"


def fmt_mean_sd(m: dict[str, Any]) -> str:
    if not m["n"]:
        return m.get("missing") or "n/a"
    sd = f" ± {fmt(m['sd'])}" if m["sd"] is not None else ""
    return f"{fmt(m['mean'])}{sd} (n={m['n']})"


def direction(spec: MetricSpec) -> str:
    return "lower is better" if spec.lower_is_better else "higher is better"


def winner(s: str, base: str, r: dict[str, Any]) -> Optional[str]:
    """The strategy ahead on the means (``None`` when they are equal)."""
    return None if r["better"] is None else (s if r["better"] else base)


def not_learned_clause(n: int, total: Optional[int] = None) -> str:
    """``no verdict: 2 of these runs did not learn``: what replaces a verdict on untrained generators."""
    of = f" of the {total}" if total else " of these"
    return f"no verdict: {n}{of} runs did not learn (feature KL within 5 % of its untrained value)"


def comparison_sentence(
    s: str, base: str, spec: MetricSpec, b: int, p: str, r: dict[str, Any], not_learned: int = 0
) -> str:
    """One comparison in words: both means, which is better (and that lower or higher is better),
    and whether the difference exceeds twice the pooled seed s.d.; with ``not_learned`` runs among
    them (generators that did not learn), no verdict, and the sentence says why."""
    where = f"on {spec.label} at B={b}" + (f" ({p})" if p else "")
    if not_learned:
        return (
            f"{s} vs {base} {where}: {not_learned_clause(not_learned)}; means {fmt(r['a']['mean'])} vs "
            f"{fmt(r['b']['mean'])} ({r['a']['n']} vs {r['b']['n']} seeds)."
        )
    if r["diff"] is None:
        return f"{s} vs {base} {where}: too few seeds to compare ({r['a']['n']} vs {r['b']['n']})."
    values = f"{fmt(r['a']['mean'])} vs {fmt(r['b']['mean'])}, {direction(spec)}"
    if r["diff"] == 0 and r["pooled_sd"] == 0:
        return (
            f"{s} vs {base} {where}: identical, {fmt(r['a']['mean'])} for every seed of both "
            f"({r['a']['n']} vs {r['b']['n']} seeds): no difference and no spread to judge."
        )
    welch = f"Welch t = {r['t']:.2f}, p = {r['p']:.3g}" if r["t"] is not None else "no seed-to-seed variation"
    seeds = f"{r['a']['n']} vs {r['b']['n']} seeds"
    bound = f"{SPREAD_FACTOR:g} × seed s.d. ({fmt(SPREAD_FACTOR * r['pooled_sd'])})"
    if r["exceeds"]:
        verb = "beats" if r["better"] else "is worse than"
        return f"{s} {verb} {base} {where} by {fmt(abs(r['diff']))}: {values}, > {bound}; {welch}; {seeds}."
    ahead = winner(s, base, r)
    lead = f"{ahead} is ahead by {fmt(abs(r['diff']))}" if ahead else "equal means"
    return f"{s} vs {base} {where}: within seed spread ({values}: {lead}, ≤ {bound}; {welch}; {seeds})."
