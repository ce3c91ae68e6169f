"""A local Prefect server and a process worker for the deployments in ``prefect.yaml``.

``make server`` runs ``python -m flows.local_server``: ``prefect server start`` in the background,
then, once ``/api/health`` answers, ``prefect worker start --pool subsample-process --type process``;
Ctrl-C stops both. ``tests/test_deployment.py`` starts the same two processes with the same
functions. The server keeps its database under ``$PREFECT_HOME``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO, Optional

from flows.config import REPO_ROOT

WORK_POOL = "subsample-process"


def prefect_exe() -> str:
    """The ``prefect`` next to this interpreter (the project's venv), else the one on PATH."""
    here = Path(sys.executable).with_name("prefect")
    return str(here) if here.exists() else (shutil.which("prefect") or "prefect")


def api_url(host: str, port: int) -> str:
    return f"http://{host}:{port}/api"


def start_server(host: str, port: int, *, env: Optional[dict] = None, log: Optional[IO] = None) -> subprocess.Popen:
    """``prefect server start`` as a child process (its own process group, so it can be stopped
    with everything it starts)."""
    return subprocess.Popen(
        [prefect_exe(), "server", "start", "--host", host, "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT if log else None, start_new_session=True,
    )


def wait_healthy(url: str, timeout_s: float = 120.0, proc: Optional[subprocess.Popen] = None) -> None:
    """Poll ``<api>/health`` until it answers; raise if ``proc`` exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no answer from {url}/health after {timeout_s:.0f} s")


def worker_env(url: str, env: Optional[dict] = None) -> dict:
    """The worker's environment: the API, and SUBSAMPLE_REPO for prefect.yaml's pull step."""
    return {**(env if env is not None else os.environ), "PREFECT_API_URL": url, "SUBSAMPLE_REPO": str(REPO_ROOT)}


def start_worker(url: str, *, env: Optional[dict] = None, log: Optional[IO] = None, pool: str = WORK_POOL) -> subprocess.Popen:
    """``prefect worker start --pool subsample-process --type process`` (creates the pool if new)."""
    return subprocess.Popen(
        [prefect_exe(), "worker", "start", "--pool", pool, "--type", "process"],
        env=worker_env(url, env), stdout=log, stderr=subprocess.STDOUT if log else None, start_new_session=True,
        cwd=REPO_ROOT,
    )


def stop(proc: Optional[subprocess.Popen], timeout_s: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4200)
    args = parser.parse_args(argv)
    url = api_url(args.host, args.port)
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect"))
    home.mkdir(parents=True, exist_ok=True)
    # Ctrl-C or a plain `kill` both end here, in the finally below that stops server and worker
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = worker = None
    with open(home / "server.log", "a") as log:
        try:
            server = start_server(args.host, args.port, log=log)
            wait_healthy(url, proc=server)
            print(f"Prefect server: http://{args.host}:{args.port} (log: {home / 'server.log'})", flush=True)
            print(f"In another shell: export PREFECT_API_URL={url}; make deploy; "
                  "prefect deployment run train-subsample/demo", flush=True)
            worker = start_worker(url)
            worker.wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop(worker)
            stop(server)


if __name__ == "__main__":
    main()
