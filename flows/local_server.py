"""Prefect servers: a local server with a process worker, and the CLI's temporary server.

``make server`` runs ``python -m flows.local_server``: ``prefect server start`` in the background
(its UI told to call the API on the chosen port), then, once ``/api/health`` answers, ``prefect
worker start --pool subsample-process --type process``; Ctrl-C stops both.
``tests/test_deployment.py`` starts the same two processes with the same functions. The server
keeps its database under ``$PREFECT_HOME``.

:func:`start_temporary_server` is what ``subsample run/demo/compare`` call, after validating their
configuration, when no ``PREFECT_API_URL`` is set: Prefect's own temporary (ephemeral) server,
started with a longer start-up timeout than Prefect's 20 s and under a lock per ``PREFECT_HOME``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO, Callable, Iterator, Optional

from flows.config import REPO_ROOT

WORK_POOL = "subsample-process"


def prefect_exe() -> str:
    """The ``prefect`` next to this interpreter (the project's venv), else the one on PATH."""
    here = Path(sys.executable).with_name("prefect")
    return str(here) if here.exists() else (shutil.which("prefect") or "prefect")


def api_url(host: str, port: int) -> str:
    return f"http://{host}:{port}/api"


def server_env(host: str, port: int, env: Optional[dict] = None) -> dict:
    """The server's environment. Prefect's UI asks its API at ``PREFECT_UI_API_URL``, which
    defaults to ``PREFECT_API_URL`` or else to ``PREFECT_SERVER_API_HOST:PORT`` (4200), not to
    ``--port``: so the UI of a server on 4255 would call 4200. Set all three to this server."""
    out = dict(env if env is not None else os.environ)
    out.pop("PREFECT_API_URL", None)  # a server does not talk to another server
    out.update(
        PREFECT_SERVER_API_HOST=host,
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_UI_API_URL=api_url(host, port),
    )
    return out


def start_server(host: str, port: int, *, env: Optional[dict] = None, log: Optional[IO] = None) -> subprocess.Popen:
    """``prefect server start`` as a child process (its own process group, so it can be stopped
    with everything it starts); its UI calls the API on the same host and port."""
    return subprocess.Popen(
        [prefect_exe(), "server", "start", "--host", host, "--port", str(port)],
        env=server_env(host, port, env),
        stdout=log,
        stderr=subprocess.STDOUT if log else None,
        start_new_session=True,
    )


# --- the CLI's temporary server ---------------------------------------------------------------

# Prefect waits 20 s for its temporary server (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS).
# The first start in a fresh PREFECT_HOME creates and migrates its SQLite database, which took
# 13-40 s on the 2-core development machine with both cores busy: 20 s failed the README's first
# command. The CLI waits this long instead, unless the user set Prefect's setting.
TEMPORARY_SERVER_TIMEOUT_S = 300
LOCK_FILE = ".subsample-server-start.lock"
# Two commands at once on one PREFECT_HOME run two temporary servers on its one SQLite database,
# and a write of one can find the database locked by the other: the server logs a traceback and
# answers 500. So the server's output goes to this log (not the terminal), and the client retries a
# 500 as it retries a 502/503 (PREFECT_CLIENT_RETRY_EXTRA_CODES, unless the user set it; set before
# Prefect reads its settings, by :func:`client_defaults`).
SERVER_LOG = "temporary-server.log"
CLIENT_DEFAULTS = {"PREFECT_CLIENT_RETRY_EXTRA_CODES": "500"}


def client_defaults() -> None:
    """Set :data:`CLIENT_DEFAULTS` in the environment where the user has not (before Prefect loads)."""
    for k, v in CLIENT_DEFAULTS.items():
        os.environ.setdefault(k, v)


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """File descriptors 1 and 2 (what a child process started meanwhile inherits) go to ``path``
    (appended) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} temporary server of process {os.getpid()}\n".encode())
        log.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


@contextlib.contextmanager
def home_lock(path: Path, on_wait: Callable[[], None] = lambda: None) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing), released on exit or when the
    process dies, so a crashed holder never blocks the next run. ``on_wait`` is called once if
    another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def answers(api: str, timeout_s: float = 2.0) -> bool:
    """Whether a Prefect API answers ``<api>/health`` with 200 within ``timeout_s``."""
    try:
        with urllib.request.urlopen(f"{api.rstrip('/')}/health", timeout=timeout_s) as r:
            return r.status == 200
    except (OSError, ValueError):
        return False


LOCAL_API_MARK = "SUBSAMPLE_LOCAL_PREFECT_API"  # set by ./activate beside the PREFECT_API_URL it chose


def no_server_message(command: str, api: str) -> str:
    return (
        f"{command}: no Prefect server answers at {api}: start one with `make server` in another shell "
        "(the same PREFECT_PORT), or set PREFECT_API_URL to a running server's API"
    )


def choose_server(
    stage: str, note: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)
) -> Optional[str]:
    """Which Prefect server ``subsample run/demo/compare`` report to, decided before Prefect is
    imported (its settings are read once, at import) and before any stage runs: the API at
    ``PREFECT_API_URL`` when it answers; none (so Prefect's temporary server, see
    :func:`start_temporary_server`) when no URL is set, or when the one set by ``./activate`` (the
    local ``make server`` URL, marked by ``SUBSAMPLE_LOCAL_PREFECT_API``) does not answer, said in
    one line; a URL you set yourself that does not answer is one error line, before any work."""
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        return None
    if answers(api):
        return api
    if os.environ.get(LOCAL_API_MARK) == api:
        note(f"prefect: no server at {api} (`make server` starts one there); using Prefect's temporary server instead")
        os.environ.pop("PREFECT_API_URL")
        return None
    from storage.errors import SubsampleError

    raise SubsampleError(
        stage,
        f"no Prefect server answers at PREFECT_API_URL={api}: start one with `make server` (the same "
        "PREFECT_PORT), or unset PREFECT_API_URL to use Prefect's temporary server",
    )


def temporary_server_timeout() -> tuple[int, bool]:
    """``(seconds, set by the user)``: Prefect's start-up timeout setting when the user set it
    (environment or profile), else :data:`TEMPORARY_SERVER_TIMEOUT_S`."""
    from prefect.settings import get_current_settings

    eph = get_current_settings().server.ephemeral
    if "startup_timeout_seconds" in eph.model_fields_set:
        return int(eph.startup_timeout_seconds), True
    return TEMPORARY_SERVER_TIMEOUT_S, False


def start_temporary_server(
    note: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> Optional[str]:
    """Start Prefect's temporary server for this process, now, and return its API URL; None
    when a server is configured (``PREFECT_API_URL``) or Prefect's ephemeral mode is off.

    Prefect would start the same server on the flow's first API call, with a 20 s timeout. Here it
    is started with :func:`temporary_server_timeout` and under an exclusive lock on
    ``$PREFECT_HOME/.subsample-server-start.lock`` held until the server answers: two commands
    started at once on a fresh PREFECT_HOME would otherwise both create and migrate the one SQLite
    database and clash. The second waits, then starts its own server on the migrated database
    (both then share it, as any two Prefect processes on one PREFECT_HOME do). The flow engine
    reuses the started server: Prefect keeps one ``SubprocessASGIServer`` per process."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None
    server = SubprocessASGIServer()
    if server.running:
        return server.api_url
    timeout, by_user = temporary_server_timeout()
    home = Path(settings.home)
    db_url = settings.server.database.connection_url
    db_url = db_url.get_secret_value() if db_url is not None else ""
    db = Path(db_url.split(":///", 1)[1]) if db_url.startswith("sqlite") and ":///" in db_url else None
    first = db is not None and not db.exists()
    note(
        "prefect: starting Prefect's temporary server"
        f"{' (first start in this PREFECT_HOME: it creates its database)' if first else ''}; "
        f"waiting up to {timeout} s for it to answer"
        f"{' (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)' if by_user else ''}; PREFECT_HOME={home}"
    )
    waiting = lambda: note(
        f"prefect: waiting for another command that is starting a temporary server in PREFECT_HOME={home}"
    )  # noqa: E731
    with home_lock(home / LOCK_FILE, waiting):
        try:
            with output_to(home / SERVER_LOG):  # the server inherits these descriptors
                server.start(timeout=timeout)
        except RuntimeError as e:
            from storage.errors import SubsampleError

            detail = str(e).splitlines()[0][:300]
            raise SubsampleError(
                "prefect",
                f"the temporary server did not start within {timeout} s ({detail}; its log: {home / SERVER_LOG}); set "
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=600, or start one with `make server` and "
                "export PREFECT_API_URL=http://127.0.0.1:4200/api",
            ) from None
    return server.api_url


def wait_answering(
    url: str, timeout_s: float = 120.0, proc: Optional[subprocess.Popen] = None, what: str = "the server"
) -> None:
    """Poll ``url`` until it answers 200; raise if ``proc`` exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no answer from {url} after {timeout_s:.0f} s")


def wait_healthy(url: str, timeout_s: float = 120.0, proc: Optional[subprocess.Popen] = None) -> None:
    """Poll ``<api>/health`` until it answers; raise if ``proc`` exits or the time runs out."""
    wait_answering(f"{url}/health", timeout_s, proc, what="the Prefect server")


def worker_env(url: str, env: Optional[dict] = None) -> dict:
    """The worker's environment: the API, and SUBSAMPLE_REPO for prefect.yaml's pull step."""
    return {**(env if env is not None else os.environ), "PREFECT_API_URL": url, "SUBSAMPLE_REPO": str(REPO_ROOT)}


def start_worker(
    url: str, *, env: Optional[dict] = None, log: Optional[IO] = None, pool: str = WORK_POOL
) -> subprocess.Popen:
    """``prefect worker start --pool subsample-process --type process`` (creates the pool if new)."""
    return subprocess.Popen(
        [prefect_exe(), "worker", "start", "--pool", pool, "--type", "process"],
        env=worker_env(url, env),
        stdout=log,
        stderr=subprocess.STDOUT if log else None,
        start_new_session=True,
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
    parser = argparse.ArgumentParser(
        description="A local Prefect server and a process worker for prefect.yaml's deployments."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument(
        "--check", metavar="API", help="only check that a server answers at API (exit 1 with one line if not)"
    )
    parser.add_argument("--command", default="make server", help="the command named in --check's message")
    args = parser.parse_args(argv)
    if args.check:
        if not answers(args.check):
            print(no_server_message(args.command, args.check), file=sys.stderr)
            sys.exit(1)
        return
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
            try:  # a first start creates the database: 13-40 s on 2 busy cores, minutes under heavy load
                wait_healthy(url, timeout_s=TEMPORARY_SERVER_TIMEOUT_S, proc=server)
            except (RuntimeError, TimeoutError) as e:
                sys.exit(f"make server: {e} (its log: {home / 'server.log'})")
            print(f"Prefect server and UI: http://{args.host}:{args.port} (log: {home / 'server.log'})", flush=True)
            port = "" if args.port == 4200 else f"PREFECT_PORT={args.port} "
            print(
                f"In another shell: {port}source ./activate (PREFECT_API_URL={url}); make deploy; "
                "prefect deployment run train-subsample/demo",
                flush=True,
            )
            worker = start_worker(url)
            worker.wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop(worker)
            stop(server)


if __name__ == "__main__":
    main()
