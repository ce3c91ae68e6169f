"""Wall-clock timings of the flow from the command line, on the embedded demo data:

1. cold          ``subsample demo --json`` in an empty ``$SUBSAMPLE_HOME`` (every stage builds)
2. all cached    the same command again (every stage a cache hit)
3. train only    ``subsample demo --set train.seed=1 --json`` (a changed training parameter:
                 train and evaluate re-run, the rest hit)

Each is a fresh process, so each includes Python start-up, imports and Prefect's ephemeral server
(started per process when no PREFECT_API_URL is set); the per-stage seconds are the stages' own.

    .venv/bin/python bench/flow_timings.py [--keep DIR] [--set section.field=value ...]

Prints a table and writes ``bench/out/flow_timings.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed_run(label: str, extra: list[str], env: dict) -> dict:
    cmd = [sys.executable, "-m", "flows.cli", "demo", "--json", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{label}: `{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout)
    return {
        "label": label,
        "wall_seconds": round(wall, 1),
        "flow_seconds": report["seconds"],
        "stages": {s["stage"]: {"cache_hit": s["cache_hit"], "seconds": s["seconds"]} for s in report["stages"]},
        "mlflow_run_id": report.get("mlflow_run_id"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="use (and keep) this SUBSAMPLE_HOME instead of a temporary one")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra demo setting")
    args = parser.parse_args()
    home = args.keep or Path(tempfile.mkdtemp(prefix="flow-timings-"))
    env = {**os.environ, "SUBSAMPLE_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    extra = [a for o in args.overrides for a in ("--set", o)]

    results = [
        timed_run("cold", extra, env),
        timed_run("all cached", extra, env),
        timed_run("train only", [*extra, "--set", "train.seed=1"], env),
    ]
    stages = list(results[0]["stages"])
    print(f"{'run':<12}{'wall s':>8}{'flow s':>8}  " + "  ".join(f"{s:>10}" for s in stages))
    for r in results:
        cells = [f"{r['stages'][s]['seconds']:>7.1f}{' h' if r['stages'][s]['cache_hit'] else ' b'}" for s in stages]
        print(
            f"{r['label']:<12}{r['wall_seconds']:>8.1f}{r['flow_seconds']:>8.1f}  "
            + "  ".join(f"{c:>10}" for c in cells)
        )
    print("(per stage: seconds, h = cache hit, b = built)")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "flow_timings.json").write_text(json.dumps({"home": str(home), "results": results}, indent=2))


if __name__ == "__main__":
    main()
