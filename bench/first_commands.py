"""How long a user's first mistakes take to be answered (issue: under 5 s with both cores busy).

    python bench/first_commands.py [--rounds 3] [--busy]

Times, in a fresh SUBSAMPLE_HOME holding the demo store (ingested first, not timed) and a fresh
PREFECT_HOME per command, ``subsample run --dataset nosuch`` and ``subsample train demo --batch-size
99999``: wall seconds, CPU seconds of the command (user + system, from the child's rusage) and its
exit code, then the medians. ``--busy`` keeps both cores of a 2-core machine busy with two spinning
processes meanwhile (as the newcomer check does). The checks run before torch is imported and
before Prefect's temporary server starts, so CPU time is mostly Python start-up and pydantic.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMANDS = (("run", "--dataset", "nosuch"), ("train", "demo", "--batch-size", "99999"))


def timed(args: tuple[str, ...], env: dict) -> tuple[float, float, int, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "flows.cli", *args], env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, r.returncode, (r.stderr.strip().splitlines() or [""])[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--busy", action="store_true", help="two spinning processes meanwhile")
    args = parser.parse_args(argv)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)] if args.busy else []
    try:
        with tempfile.TemporaryDirectory(prefix="first-commands-") as tmp:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SUBSAMPLE_"))}
            env.update(SUBSAMPLE_HOME=f"{tmp}/home", PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(REPO))
            subprocess.run(
                [sys.executable, "-m", "flows.cli", "ingest", str(REPO / "data" / "demo"), "--name", "demo"],
                env=env,
                cwd=REPO,
                capture_output=True,
                check=True,
            )
            print(
                f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
                f"{', 2 spinning processes' if hogs else ''}"
            )
            for command in COMMANDS:
                walls, cpus = [], []
                for i in range(args.rounds):
                    wall, cpu, rc, last = timed(command, {**env, "PREFECT_HOME": f"{tmp}/prefect-{i}-{command[0]}"})
                    walls.append(wall)
                    cpus.append(cpu)
                    print(
                        f"  subsample {' '.join(command)}: {wall:.2f} s wall, {cpu:.2f} s CPU, exit {rc}: {last[:110]}"
                    )
                print(
                    f"subsample {' '.join(command)}: median {statistics.median(walls):.2f} s wall, "
                    f"{statistics.median(cpus):.2f} s CPU over {args.rounds} rounds"
                )
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
