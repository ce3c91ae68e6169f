"""Tables for the terminal: what ``subsample presets`` prints (``--json`` has every field)."""

from __future__ import annotations

import shutil
import textwrap
from typing import Any

COLUMNS = ("preset", "strategy", "B", "epochs", "loss", "optimizer", "lr G/D", "what it is")


def _number(v: Any) -> str:
    return "" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def preset_row(r: dict[str, Any], kind_names: dict[str, str]) -> list[str]:
    """One preset's cells: its batches and training values (blank: the defaults, or the data set's),
    its one-line description and, after it, what differs per data set kind."""
    train, batches = r.get("train") or {}, r.get("batches") or {}
    lr = (train.get("lr_g"), train.get("lr_d"))
    per = [
        f"{kind_names.get(kind, kind)}: " + ", ".join(f"{k}={v}" for sec in values.values() for k, v in sec.items())
        for kind, values in (r.get("per_dataset") or {}).items()
    ]
    return [
        r["name"],
        batches.get("strategy", ""),
        _number(batches.get("batch_size")),
        _number(train.get("epochs")),
        train.get("method") or train.get("loss") or "",
        train.get("optimizer", ""),
        "/".join(f"{x:.3g}" if isinstance(x, float) else _number(x) for x in lr)
        if any(x is not None for x in lr)
        else "",
        r["description"] + (f" ({'; '.join(per)})" if per else ""),
    ]


def presets_lines(rows: list[dict[str, Any]], kind_names: dict[str, str], width: int | None = None) -> list[str]:
    """The presets as an aligned table whose last column (the description) wraps at ``width``
    (default: the terminal's, at least 100), nothing cut: every word of every description is printed."""
    width = width or max(100, shutil.get_terminal_size((140, 24)).columns)
    table = [list(COLUMNS)] + [preset_row(r, kind_names) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS) - 1)]
    lead = sum(widths) + 2 * len(widths)
    text_width = max(40, width - lead)
    lines = []
    for row in table:
        cells = "".join(f"{c:<{w}}  " for c, w in zip(row, widths))
        wrapped = textwrap.wrap(row[-1], text_width) or [""]
        lines.append(cells + wrapped[0])
        lines += [" " * lead + more for more in wrapped[1:]]
    return [line.rstrip() for line in lines]
