"""A comparison's summary: every number the report shows (``report.json``) with the sentences that
word them: each strategy against the baseline per preset, batch size and metric, the answer
paragraph, the paper design's comparisons. Numbers come from :mod:`pipeline.experiments.stats`;
the report (``pipeline.experiments.report``) lays this summary out as Markdown and HTML.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from pipeline.experiments.stats import (
    BATCH_KEYS,
    BATCH_METRICS,
    EVAL_METRICS,
    KL_STATS,
    MOVE_TOLERANCE,
    SPREAD_FACTOR,
    MetricSpec,
    ReportData,
    _eval_kl_key,
    _kl_with_floor,
    _parent_json,
    compare_to_baseline,
    epoch_kl_key,
    fidelity_reason,
    learning_check,
    mean_sd,
    missing_metrics,
)

STAGE = "report"


def summarise(data: ReportData) -> dict[str, Any]:
    """Every number the report shows, from ``data`` (what MLflow holds)."""
    strategies, sizes, presets, seeds = data.axes()
    n = data.n_images

    coverage, kl = {}, {}
    for s in strategies:
        for b in sizes:
            runs = {m.cell.seed: m for m in data.select(strategy=s, batch_size=b)}  # one per batches seed
            per_seed = [[v for _, v in m.history.get("batches/coverage", [])] for m in runs.values()]
            values = [v for vs in per_seed for v in vs]
            coverage[f"{s}|{b}"] = {
                "mean": float(np.mean(values)) if values else None,
                "min": float(np.min(values)) if values else None,
                "max": float(np.max(values)) if values else None,
                "epochs": max((len(vs) for vs in per_seed), default=0),
                "seeds": len(per_seed),
            }
            kl[f"{s}|{b}"] = {"seeds": len(runs)}
            for stat in KL_STATS:
                vals = [m.metrics[f"batches/kl_{stat}"] for m in runs.values() if f"batches/kl_{stat}" in m.metrics]
                kl[f"{s}|{b}"][stat] = float(np.mean(vals)) if vals else None

    configurations = []
    for p in presets:
        for b in sizes:
            for s in strategies:
                planned = [r for r in data.grid if (r["preset"], int(r["batch_size"]), r["strategy"]) == (p, b, s)]
                ok = data.select(preset=p, batch_size=b, strategy=s)
                failed = [m for m in data.select(preset=p, batch_size=b, strategy=s, ok=False) if m not in ok]
                if not planned and not ok and not failed:
                    continue  # not a cell of this design (the paper design is not a full factorial)
                row: dict[str, Any] = {
                    "configuration": f"{p} {s} B={b}",
                    "preset": p,
                    "strategy": s,
                    "batch_size": b,
                    "planned": len(planned) or len(ok) + len(failed),
                    "ok": len(ok),
                    "failed": [{"seed": m.cell.seed, "run_id": m.run_id, "error": m.error or m.status} for m in failed]
                    + [
                        {"seed": r["seed"], "run_id": None, "error": r.get("error") or r.get("status")}
                        for r in planned
                        if r.get("status") in ("failed", "not run") and r.get("run_id") is None
                    ],
                    "metrics": {},
                }
                for spec in EVAL_METRICS:
                    vals = {m.cell.seed: v for m in ok if (v := m.eval_value(spec)) is not None}
                    keys = sorted({k for m in ok if (k := m.eval_key(spec))})
                    row["metrics"][spec.name] = {
                        **mean_sd(list(vals.values())),
                        "values": {str(k): v for k, v in vals.items()},
                        "mlflow_keys": keys,
                        "missing": None
                        if vals
                        else (fidelity_reason(ok) if spec.family == "fidelity" else "n/a (no finished run)"),
                    }
                configurations.append(row)

    comparisons = []
    baseline = "random"
    for p in presets:
        for b in sizes:
            base = data.select(preset=p, batch_size=b, strategy=baseline)
            for s in strategies:
                if s == baseline or not base:
                    continue
                runs = data.select(preset=p, batch_size=b, strategy=s)
                for spec in EVAL_METRICS:
                    a = [v for m in runs if (v := m.eval_value(spec)) is not None]
                    r = [v for m in base if (v := m.eval_value(spec)) is not None]
                    if not a or not r:
                        continue
                    res = compare_to_baseline(a, r, spec.lower_is_better)
                    comparisons.append(
                        {
                            "preset": p,
                            "batch_size": b,
                            "strategy": s,
                            "baseline": baseline,
                            "metric": spec.name,
                            "label": spec.label,
                            "lower_is_better": spec.lower_is_better,
                            **res,
                            "sentence": comparison_sentence(s, baseline, spec, b, p, res),
                        }
                    )
    settings = {
        section: {k[len(section) + 1 :]: v for k, v in data.params.items() if k.startswith(section + ".")}
        for section in ("scale_train", "train", "scale_evaluate", "evaluate")
    }
    learning = learning_check(data)
    out = {
        **paper_summary(data, configurations),
        "settings": settings,
        "parent_run_id": data.parent_run_id,
        "run_name": data.run_name,
        "status": data.status,
        "dataset": data.dataset,
        "scale": data.scale,
        "n_images": n,
        "experiment_id": data.experiment_id,
        "strategies": strategies,
        "batch_sizes": sizes,
        "presets": presets,
        "seeds": seeds,
        "runs": len(data.members),
        "runs_ok": len(data.select()),
        "coverage": coverage,
        "coverage_eq5": {str(b): (n - n % b) / n for b in sizes} if n else {},
        "kl": kl,
        "configurations": configurations,
        "comparisons": comparisons,
        "batch_comparisons": batch_comparisons(data),
        "learning": learning,
        "missing_metrics": missing_metrics(configurations),
    }
    for c in comparisons:  # a comparison of generators that did not learn says so
        c["not_learned"] = learning["not_moved_by_setting"].get(
            f"{c['preset']}|{c['batch_size']}|{c['strategy']}", 0
        ) + learning["not_moved_by_setting"].get(f"{c['preset']}|{c['batch_size']}|{c['baseline']}", 0)
        if c["not_learned"]:
            c["sentence"] += (
                f" Caution: {c['not_learned']} of these runs did not learn (feature KL within "
                f"{MOVE_TOLERANCE:.0%} of its untrained value)."
            )
    out["answer"], out["answer_details"] = _answer(out, "random")
    return out


def batch_comparisons(data: ReportData, baseline: str = "random") -> list[dict[str, Any]]:
    """Per batch size, each strategy's batches against ``baseline``'s over the batches seeds: the
    mean KL(f_Xi || f_X) over an epoch's batches (lower is better) and the coverage per epoch
    (higher is better). Batches do not depend on the preset: one value per (strategy, B, seed)."""
    strategies, sizes, _, _ = data.axes()
    out = []
    for b in sizes:
        base = {m.cell.seed: m for m in data.select(strategy=baseline, batch_size=b)}
        for s in strategies:
            if s == baseline or not base:
                continue
            runs = {m.cell.seed: m for m in data.select(strategy=s, batch_size=b)}
            for spec in BATCH_METRICS:
                key = BATCH_KEYS[spec.name]
                a = [m.metrics[key] for m in runs.values() if key in m.metrics]
                r = [m.metrics[key] for m in base.values() if key in m.metrics]
                if not a or not r:
                    continue
                res = compare_to_baseline(a, r, spec.lower_is_better)
                out.append(
                    {
                        "batch_size": b,
                        "strategy": s,
                        "baseline": baseline,
                        "metric": spec.name,
                        "label": spec.label,
                        "lower_is_better": spec.lower_is_better,
                        **res,
                        "sentence": comparison_sentence(s, baseline, spec, b, "", res),
                    }
                )
    return out


def paper_summary(data: ReportData, configurations: list[dict[str, Any]]) -> dict[str, Any]:
    """The numbers of the issue-14 sections: the design (design.json), every strategy's batches
    (batch_diagnostics.json), each configuration's feature KLs beside their floors, the never-drawn
    counts per run and epoch, and in the paper design the method against (a)-(d)."""
    design = _parent_json(data.parent_run_id, "design.json") or {}
    diagnostics = _parent_json(data.parent_run_id, "batch_diagnostics.json") or []

    floors = []
    for c in configurations:
        ok = data.select(preset=c["preset"], batch_size=c["batch_size"], strategy=c["strategy"])
        floors.append(
            {
                "configuration": c["configuration"],
                "preset": c["preset"],
                "strategy": c["strategy"],
                "batch_size": c["batch_size"],
                "epoch": _kl_with_floor(ok, lambda m: epoch_kl_key(m.metrics)),
                "eval": _kl_with_floor(ok, _eval_kl_key),
            }
        )

    batches: dict[str, dict[str, Any]] = {}
    for r in diagnostics:
        b = batches.setdefault(
            f"{r['strategy']}|{r['batch_size']}", {"strategy": r["strategy"], "batch_size": r["batch_size"], "rows": []}
        )
        b["rows"].append(r)
    for b in batches.values():
        rows = b.pop("rows")
        avg = lambda f, rows=rows: (
            float(np.mean([v for r in rows if (v := f(r)) is not None]))
            if any(f(r) is not None for r in rows)
            else None
        )
        b.update(
            seeds=len(rows),
            topup=rows[0].get("topup"),
            coverage=avg(lambda r: r["coverage"]["mean"]),
            n_batches=int(sum((r.get("m") or 0) * (r.get("epochs") or 0) for r in rows)),
            label_kl_random_sd=avg(lambda r: (r.get("label_kl_random_sample") or {}).get("sd")),
            label_kl_random_repeats=avg(lambda r: (r.get("label_kl_random_sample") or {}).get("repeats")),
            kl_mean=avg(lambda r: r["kl"]["mean"]),
            kl_sd=avg(lambda r: r["kl"]["std"]),
            kl_random=avg(lambda r: (r.get("kl_random_sample") or {}).get("mean")),
            label_kl_mean=avg(lambda r: (r.get("label_kl") or {}).get("mean")),
            label_kl_sd=avg(lambda r: (r.get("label_kl") or {}).get("std")),
            label_kl_random=avg(lambda r: (r.get("label_kl_random_sample") or {}).get("mean")),
            label_note=next((r.get("label_kl_note") for r in rows if r.get("label_kl_note")), None),
            never_drawn=[float(np.mean(v)) for v in zip(*[r.get("n_never_drawn_per_epoch") or [] for r in rows])],
        )

    never = []
    for m in sorted(data.members, key=lambda m: (m.cell.preset, m.cell.batch_size, m.cell.strategy, m.cell.seed)):
        hist = m.history.get("batches/never_drawn", [])
        if hist:
            never.append(
                {"configuration": m.cell.configuration, "seed": m.cell.seed, "per_epoch": [int(v) for _, v in hist]}
            )

    comparisons = []
    if design.get("design") == "paper":
        method = [c for c in configurations if c["strategy"] == "constructed"]
        others = [c for c in configurations if c["strategy"] == "random"]
        for a in method:
            for b in others:
                for spec in EVAL_METRICS:
                    va = [v for v in a["metrics"][spec.name]["values"].values()]
                    vb = [v for v in b["metrics"][spec.name]["values"].values()]
                    if not va or not vb:
                        continue
                    res = compare_to_baseline(va, vb, spec.lower_is_better)
                    comparisons.append(
                        {
                            "a": a["configuration"],
                            "b": b["configuration"],
                            "metric": spec.name,
                            **res,
                            "sentence": _paper_sentence(a, b, spec, res, floors),
                        }
                    )
    return {
        "design": design,
        "batch_diagnostics": sorted(batches.values(), key=lambda b: (b["batch_size"], b["strategy"])),
        "kl_floors": floors,
        "never_drawn_runs": never,
        "paper_comparisons": comparisons,
    }


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


def answer_paragraph(summary: dict[str, Any], baseline: str = "random") -> str:
    """The report's first paragraph: do constructed batches help compared with random ones, at
    the batch level (batch KL, coverage) and at the generator level (feature KL), with direction
    and whether the difference exceeds the seed spread; whether the generators learned; which
    metrics were not computed. The numbers behind it: :func:`answer_details`."""
    return _answer(summary, baseline)[0]


def answer_details(summary: dict[str, Any], baseline: str = "random") -> list[str]:
    """One sentence per strategy, level and metric: both means per setting, which is better (and
    whether lower or higher is better), and whether it exceeds the seed spread."""
    return _answer(summary, baseline)[1]


def _answer(summary: dict[str, Any], baseline: str) -> tuple[str, list[str]]:
    others = [s for s in summary["strategies"] if s != baseline]
    others.sort(key=lambda s: s != "constructed")  # the paper's strategy first
    if baseline not in summary["strategies"] or not others:
        return (
            f"**The question this comparison exists for** (do constructed batches help compared with {baseline} "
            f"ones?) **cannot be answered here**: the grid needs the {baseline} baseline and at least one other "
            "strategy. " + learning_sentence(summary["learning"]),
            [],
        )
    multi_preset = len(summary["presets"]) > 1
    for c in summary["comparisons"]:
        c["multi_preset"] = multi_preset
    unit_b = "batch size"
    unit_g = "configuration" if multi_preset else "batch size"
    details: list[str] = []
    lead = ""
    for s in others:
        bc = [c for c in summary["batch_comparisons"] if c["strategy"] == s]
        gc = [c for c in summary["comparisons"] if c["strategy"] == s]
        b_kl = [c for c in bc if c["metric"] == "batch_kl"]
        b_cov = [c for c in bc if c["metric"] == "coverage"]
        g_kl = [c for c in gc if c["metric"] == "feature_kl"]
        word_b, phrase_b = _verdict(b_kl, s, baseline, unit_b)
        word_cov, phrase_cov = _verdict(b_cov, s, baseline, unit_b)
        word_g, phrase_g = _verdict(g_kl, s, baseline, unit_g)
        untrained = sum(c.get("not_learned", 0) for c in g_kl)
        if s == others[0]:
            lead = _lead(
                s,
                baseline,
                word_b,
                word_cov,
                "untrained" if untrained else word_g,
                bool(b_kl),
                bool(g_kl),
                untrained,
                unit_b,
                unit_g,
                phrase_b,
                phrase_g.replace(": ", ", in final feature KL (lower is better): ", 1),
            )
        if b_kl:
            details.append(
                f"Batch level, {s} vs {baseline}: {BATCH_METRICS[0].label} (lower is better): {phrase_b} "
                f"({'; '.join(_clause(c, False) for c in b_kl)})."
            )
        if b_cov:
            details.append(
                f"Batch level, {s} vs {baseline}: coverage per epoch (higher is better): {phrase_cov} "
                f"({'; '.join(_clause(c, False) for c in b_cov)})."
            )
        for spec in EVAL_METRICS:
            cs = [c for c in gc if c["metric"] == spec.name]
            if not cs:
                continue
            _, phrase = _verdict(cs, s, baseline, unit_g)
            caution = sum(c.get("not_learned", 0) for c in cs)
            details.append(
                f"Generator level, {s} vs {baseline}: final {spec.label} ({direction(spec)}): {phrase} "
                f"({'; '.join(_clause(c, multi_preset) for c in cs)})"
                + (f"; {caution} of the runs compared did not learn, so this is no verdict" if caution else "")
                + "."
            )
    paragraph = ["**Answer.** " + lead, learning_sentence(summary["learning"])]
    missing = summary.get("missing_metrics") or {}
    if missing:
        paragraph.append(missing_sentence(missing))
    return " ".join(paragraph), details


def _lead(
    s: str,
    base: str,
    word_b: str,
    word_cov: str,
    word_g: str,
    have_b: bool,
    have_g: bool,
    untrained: int,
    unit_b: str,
    unit_g: str,
    phrase_b: str = "",
    phrase_g: str = "",
) -> str:
    """The answer in one sentence: batch level (with what it costs in coverage), then generator level."""
    every_b, every_g = f"at every {unit_b}", f"at every {unit_g}"
    b = (
        {
            "better": f"yes: {s} batches are closer to the data set's feature distribution than {base} ones, beyond "
            f"the seed spread {every_b}",
            "worse": f"no: {s} batches are further from the data set's feature distribution than {base} ones, beyond "
            f"the seed spread {every_b}",
            "within": f"no: {s} and {base} batches are equally close to the data set's feature distribution (no "
            "difference beyond the seed spread)",
            "mixed": phrase_b,
            "unknown": "too few seeds to say",
        }[word_b]
        if have_b
        else "no batch diagnostics were recorded"
    )
    if have_b and word_cov == "worse":
        b += f", but they cover fewer images per epoch ({base} better, beyond the seed spread)"
    elif have_b and word_cov == "better":
        b += f", and they cover more images per epoch ({s} better, beyond the seed spread)"
    g = (
        {
            "better": f"yes: generators trained on {s} batches reach a lower final feature KL than on {base} ones, "
            f"beyond the seed spread {every_g}",
            "worse": f"no: generators trained on {s} batches reach a higher (worse) final feature KL than on {base} "
            f"ones, beyond the seed spread {every_g}",
            "within": f"no: the generators' final feature KL does not differ between {s} and {base} batches beyond "
            "the seed spread",
            "mixed": phrase_g,
            "untrained": f"no verdict: {untrained} of the generators compared did not learn",
            "unknown": "too few seeds to say",
        }[word_g]
        if have_g
        else "no generator metric to compare"
    )
    return (
        f"Do {s} batches help? At the batch level, {b}. At the generator level, {g}. "
        "(KL and FID: lower is better; the numbers follow the paragraph.)"
    )


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


def comparison_sentence(s: str, base: str, spec: MetricSpec, b: int, p: str, r: dict[str, Any]) -> str:
    """One comparison in words: both means, which is better (and that lower or higher is better),
    and whether the difference exceeds twice the pooled seed s.d."""
    where = f"on {spec.label} at B={b}" + (f" ({p})" if p else "")
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


def _paper_sentence(a: dict, b: dict, spec: MetricSpec, r: dict[str, Any], floors: list[dict]) -> str:
    name = lambda c: f"{c['preset']} ({c['strategy']}, B={c['batch_size']})"  # noqa: E731
    head = f"{name(a)} vs {name(b)} on {spec.label}"
    if r["diff"] is None:
        return f"{head}: too few seeds to compare ({r['a']['n']} vs {r['b']['n']})."
    values = f"{fmt(r['a']['mean'])} vs {fmt(r['b']['mean'])}"
    welch = f"Welch t = {r['t']:.2f}, p = {r['p']:.3g}" if r["t"] is not None else "no seed-to-seed variation"
    verdict = (
        ("better" if r["better"] else "worse") + f" by {fmt(abs(r['diff']))}, > {SPREAD_FACTOR:g} × seed s.d."
        if r["exceeds"]
        else f"within seed spread (difference {fmt(abs(r['diff']))})"
    )
    text = f"{head}: {verdict} ({values}; {welch})."
    if spec.name == "feature_kl":
        fa = next((f["eval"] for f in floors if f["configuration"] == a["configuration"]), {})
        fb = next((f["eval"] for f in floors if f["configuration"] == b["configuration"]), {})
        if fa.get("at_floor") and fb.get("at_floor"):
            text += " Both are at their floor: this KL cannot tell them apart."
        elif fa.get("floor") is not None:
            text += f" Floor at this sample size: {fmt(fa['floor'])}."
    return text
