"""A comparison's summary: every number the report shows (``report.json``) with the sentences that
word them: each strategy against the baseline per preset, batch size and metric, the paper
design's comparisons (:mod:`pipeline.experiments.paper_summary`), and the answer composed from
these same records (:mod:`pipeline.experiments.answer`). Numbers come from
:mod:`pipeline.experiments.stats`, words from :mod:`pipeline.experiments.words`; the report
(``pipeline.experiments.report``) lays this summary out as Markdown and HTML.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.experiments.answer import answer_text, compose_answer
from pipeline.experiments.paper_summary import paper_summary
from pipeline.experiments.stats import (
    BATCH_KEYS,
    BATCH_METRICS,
    EVAL_METRICS,
    KL_STATS,
    ReportData,
    compare_to_baseline,
    fidelity_reason,
    learning_check,
    mean_sd,
    missing_metrics,
    power_row,
)
from pipeline.experiments.words import (  # noqa: F401  (the report's and the tests' names for them)
    _compact,
    _run_label,
    comparison_sentence,
    direction,
    fmt,
    fmt_mean_sd,
    learning_sentence,
    missing_sentence,
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
        for section in ("scale_train", "scale_lr_factors", "train", "scale_evaluate", "evaluate")
    }
    learning = learning_check(data)
    stuck = learning["not_moved_by_setting"]
    for c in comparisons:  # a comparison of generators that did not learn says so, and gives no verdict
        c["not_learned"] = stuck.get(f"{c['preset']}|{c['batch_size']}|{c['strategy']}", 0) + stuck.get(
            f"{c['preset']}|{c['batch_size']}|{c['baseline']}", 0
        )
        spec = next(m for m in EVAL_METRICS if m.name == c["metric"])
        c["sentence"] = comparison_sentence(
            c["strategy"], c["baseline"], spec, c["batch_size"], c["preset"], c, c["not_learned"]
        )
        c["power"] = power_row(c)
    out = {
        **paper_summary(data, configurations, stuck),
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
    out["answer_lines"] = compose_answer(out)
    out["answer"] = answer_text(out["answer_lines"])
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
