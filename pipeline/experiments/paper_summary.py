"""The numbers of the paper's sections of a comparison's report: the design (``design.json``),
every strategy's batches (``batch_diagnostics.json``), each configuration's feature KLs beside their
two floors (the children's bootstrap floors, the parent's ``floors.json`` held-out floors), the
never-drawn counts per run and epoch, and in the paper design the paper's own comparisons: its
claim (random against constructed batches at the same B and budget, Tables 3-4) first, then the
method against strategies (a)-(d) (Tables 5-6), each with the paper's figure beside ours and what
the seeds could detect (:func:`pipeline.experiments.stats.power_row`).
"""

from __future__ import annotations

import re
from typing import Any, Optional

import numpy as np

from pipeline.experiments.compare import design_cell
from pipeline.experiments.kl_floors import FLOORS_ARTIFACT
from pipeline.experiments.paper import paper_difference, paper_figures, paper_row_label
from pipeline.experiments.stats import (
    EVAL_METRICS,
    SPREAD_FACTOR,
    MetricSpec,
    ReportData,
    _count,
    _eval_kl_key,
    _kl_with_floor,
    _parent_json,
    compare_to_baseline,
    epoch_kl_key,
    power_row,
)
from pipeline.experiments.words import fmt, not_learned_clause


def data_kind(dataset: str) -> Optional[str]:
    from pipeline.presets import dataset_kind

    return dataset_kind(dataset)


def _heldout(floors: dict[str, Any], keys: list[str]) -> Optional[dict[str, Any]]:
    """The held-out floor (``floors.json``) at the sample size of the KL keys (``feature_kl2k``)."""
    for k in keys:
        m = re.search(r"feature_kl(\d+k?)", k)
        if not m:
            continue
        size = _count(m.group(1))
        for r in floors.get("sizes") or []:
            if int(r["size"]) == size:
                return r["heldout"]
    return None


def with_heldout(k: dict[str, Any], floors: dict[str, Any]) -> dict[str, Any]:
    """A KL summary (:func:`_kl_with_floor`) with its held-out floor, and whether the KL is
    indistinguishable from held-out data (within 2 × √(seed s.d.² + floor s.d.²) of that floor)."""
    from pipeline.metrics import at_floor

    ho = _heldout(floors, k.get("keys") or [])
    k = {**k, "heldout": None, "heldout_sd": None, "at_heldout": None, "heldout_ratio": None}
    if ho is not None and k.get("n"):
        k.update(
            heldout=ho["mean"],
            heldout_sd=ho["sd"],
            heldout_source=ho.get("source"),
            at_heldout=bool(at_floor(k["mean"], ho, k["sd"])),
            heldout_ratio=k["mean"] / ho["mean"] if ho["mean"] > 0 else None,
        )
    return k


def _batch_rows(diagnostics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    batches: dict[str, dict[str, Any]] = {}
    for r in diagnostics:
        b = batches.setdefault(
            f"{r['strategy']}|{r['batch_size']}", {"strategy": r["strategy"], "batch_size": r["batch_size"], "rows": []}
        )
        b["rows"].append(r)
    for b in batches.values():
        rows = b.pop("rows")
        avg = lambda f, rows=rows: (  # noqa: E731
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
    return sorted(batches.values(), key=lambda b: (b["batch_size"], b["strategy"]))


def paper_summary(
    data: ReportData, configurations: list[dict[str, Any]], not_learned: Optional[dict[str, int]] = None
) -> dict[str, Any]:
    """The numbers of the issue-14 and issue-19 sections (see the module docstring).
    ``not_learned``: "preset|B|strategy" -> runs whose generator did not learn."""
    design = _parent_json(data.parent_run_id, "design.json") or {}
    diagnostics = _parent_json(data.parent_run_id, "batch_diagnostics.json") or []
    floors_json = _parent_json(data.parent_run_id, FLOORS_ARTIFACT) or {}
    not_learned = not_learned or {}

    floors = []
    for c in configurations:
        ok = data.select(preset=c["preset"], batch_size=c["batch_size"], strategy=c["strategy"])
        floors.append(
            {
                "configuration": c["configuration"],
                "preset": c["preset"],
                "strategy": c["strategy"],
                "batch_size": c["batch_size"],
                "epoch": with_heldout(_kl_with_floor(ok, lambda m: epoch_kl_key(m.metrics)), floors_json),
                "eval": with_heldout(_kl_with_floor(ok, _eval_kl_key), floors_json),
            }
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
        comparisons = paper_comparisons(data.dataset, design, configurations, floors, not_learned)
    return {
        "design": design,
        "batch_diagnostics": _batch_rows(diagnostics),
        "kl_floors": floors,
        "floors": floors_json,
        "never_drawn_runs": never,
        "paper_comparisons": comparisons,
    }


def _budget(design: dict[str, Any], configuration: str) -> Optional[int]:
    return next(
        (c.get("g_updates") for c in design.get("configurations") or [] if c["configuration"] == configuration), None
    )


def paper_comparisons(
    dataset: str,
    design: dict[str, Any],
    configurations: list[dict[str, Any]],
    floors: list[dict[str, Any]],
    not_learned: dict[str, int],
) -> list[dict[str, Any]]:
    """The paper's comparisons, its claim first: constructed against random batches at each of the
    method's batch sizes (same recipe, epochs and G updates; Tables 3-4), then each of the method's
    cells against strategies (a)-(d) (Tables 5-6, mixed budgets: each side's G updates given). Each
    with the paper's rows and figures, and :func:`power_row`."""
    kind = data_kind(dataset)
    by_key = {(c["preset"], c["strategy"]): c for c in configurations}
    pairs: list[tuple[str, dict, dict]] = []
    for preset in dict.fromkeys(c["preset"] for c in configurations):
        a, b = by_key.get((preset, "constructed")), by_key.get((preset, "random"))
        if a and b and design_cell(preset, "constructed") and design_cell(preset, "random"):
            pairs.append(("claim", a, b))
    method = [c for c in configurations if c["strategy"] == "constructed"]
    others = [c for c in configurations if (dc := design_cell(c["preset"], c["strategy"])) and dc.group == "128"]
    pairs += [("strategies", a, b) for a in method for b in others]
    out = []
    for kind_of, a, b in pairs:
        row_a, row_b = (paper_row_label(design_cell(c["preset"], c["strategy"]).paper_row, kind) for c in (a, b))
        for spec in EVAL_METRICS:
            va = list(a["metrics"][spec.name]["values"].values())
            vb = list(b["metrics"][spec.name]["values"].values())
            if not va or not vb:
                continue
            res = compare_to_baseline(va, vb, spec.lower_is_better)
            paper_metric = {"feature_kl": "feature_kl", "is": "is"}.get(spec.name)
            pd = paper_difference(row_a, row_b, kind, paper_metric) if paper_metric else None
            stuck = not_learned.get(_setting(a), 0) + not_learned.get(_setting(b), 0)
            row = {
                "kind": kind_of,
                "configuration_a": a["configuration"],
                "configuration_b": b["configuration"],
                "paper_row_a": row_a,
                "paper_row_b": row_b,
                "g_updates_a": _budget(design, a["configuration"]),
                "g_updates_b": _budget(design, b["configuration"]),
                "metric": spec.name,
                "label": spec.label,
                "lower_is_better": spec.lower_is_better,
                "not_learned": stuck,
                "paper": pd,
                "paper_a": paper_figures(row_a, kind),
                "paper_b": paper_figures(row_b, kind),
                **res,
                "power": power_row(res, pd["diff"] if pd else None),
            }
            row["sentence"] = paper_sentence(row, a, b, spec, floors)
            out.append(row)
    return out


def _setting(c: dict[str, Any]) -> str:
    return f"{c['preset']}|{c['batch_size']}|{c['strategy']}"


def cell_name(c: dict[str, Any], row: Optional[str] = None) -> str:
    return f"{c['preset']} ({c['strategy']}, B={c['batch_size']}" + (f"; the paper's {row}" if row else "") + ")"


def paper_sentence(r: dict[str, Any], a: dict, b: dict, spec: MetricSpec, floors: list[dict]) -> str:
    """One of the paper's comparisons in words: ours (verdict against the seed spread, or why there
    is none), the budgets when they differ, the paper's figures with table and row, the floor."""
    head = f"{cell_name(a, r['paper_row_a'])} vs {cell_name(b, r['paper_row_b'])} on {spec.label}"
    budget = ""
    if r["g_updates_a"] is not None and r["g_updates_b"] is not None and r["g_updates_a"] != r["g_updates_b"]:
        budget = f" Budgets differ: {r['g_updates_a']:,} vs {r['g_updates_b']:,} G updates."
    elif r["g_updates_a"] is not None and r["kind"] == "claim":
        budget = f" Same budget: {r['g_updates_a']:,} G updates each."
    paper = ""
    if r["paper"]:
        p, pa = r["paper"], r["paper_a"]
        tables = pa["table"] if pa["table"] == r["paper_b"]["table"] else f"{pa['table']}, {r['paper_b']['table']}"
        ahead = r["paper_row_a"] if (p["diff"] < 0) == spec.lower_is_better else r["paper_row_b"]
        paper = (
            f" The paper ({tables}): {r['paper_row_a']} {p['a']:g} vs {r['paper_row_b']} {p['b']:g}, "
            f"{ahead} better by {fmt(abs(p['diff']), 3)}."
        )
    if r["diff"] is None:
        return f"{head}: too few seeds to compare ({r['a']['n']} vs {r['b']['n']}).{budget}{paper}"
    values = f"{fmt(r['a']['mean'])} vs {fmt(r['b']['mean'])}"
    if r["not_learned"]:
        return f"{head}: {not_learned_clause(r['not_learned'])}; means {values}.{budget}{paper}"
    welch = f"Welch t = {r['t']:.2f}, p = {r['p']:.3g}" if r["t"] is not None else "no seed-to-seed variation"
    verdict = (
        ("better" if r["better"] else "worse") + f" by {fmt(abs(r['diff']))}, > {SPREAD_FACTOR:g} × seed s.d."
        if r["exceeds"]
        else f"within seed spread (difference {fmt(abs(r['diff']))})"
    )
    text = f"{head}: {verdict} ({values}; {welch}).{budget}{paper}"
    if spec.name == "feature_kl":
        fa = next((f["eval"] for f in floors if f["configuration"] == a["configuration"]), {})
        fb = next((f["eval"] for f in floors if f["configuration"] == b["configuration"]), {})
        if fa.get("at_heldout") and fb.get("at_heldout"):
            text += " Both are indistinguishable from held-out data: this KL cannot tell them apart."
        elif fa.get("at_floor") and fb.get("at_floor"):
            text += " Both are at their bootstrap floor: this KL cannot tell them apart."
    return text
