"""Interruptions: Ctrl-C, SIGTERM and a closed terminal stop a command cleanly, in seconds.

The ``subsample`` command runs each long command (``run``, ``compare``, ``train``, ``ingest``, ...)
in a **worker** process under a small **supervisor** (:func:`supervise`, a ``fork`` before anything
heavy is imported). The worker starts its own session, so a terminal's Ctrl-C (SIGINT to the
foreground process group) reaches only the supervisor, never the processes the command started
(Prefect's temporary server, Dask workers, DDP ranks), which would otherwise each print a traceback
and stop in their own time. The libraries' own handlers do not matter either: Prefect replaces the
SIGTERM handler while a flow runs, torchrun's agent SIGINT's and SIGTERM's while it launches ranks.

On SIGINT, SIGTERM, SIGHUP or SIGQUIT the supervisor asks the worker to stop (SIGUSR1 for an
interrupt, SIGUSR2 for a termination, signals no library here handles). The worker's handler
(:func:`_worker_stop`) runs the registered :func:`on_interrupt` callbacks within
:data:`CALLBACK_BUDGET_S` (``storage.tracking`` marks its open MLflow runs ``KILLED``), stops every
process it started (SIGTERM, then SIGKILL after :data:`CHILDREN_GRACE_S`), reports what it did
through a pipe and exits at once (``os._exit``: no library's shutdown code runs, so nothing waits
on a server that is gone). A worker that has not exited after :data:`WORKER_GRACE_S` (stuck in a long
C call) is killed with everything under it. The supervisor is a child subreaper: a process
whose parent died is re-parented to it, so none escapes. Then the supervisor prints one line and
exits with 128 + the signal's number (130 for Ctrl-C).

Nothing left blocks the next run: locks are ``flock``s (released by the kernel), temporary
folders carry their owner's pid and are removed by the next build, a training ``.work`` folder
without a checkpoint is removed by the next run, one with a checkpoint kept for ``--resume``.
A worker whose supervisor dies (``kill -9``) gets SIGUSR2 from the kernel (``PR_SET_PDEATHSIG``)
and stops the same way; a run whose owner died without any of this (``kill -9`` of the worker,
power loss) is marked when the home is next opened (:func:`storage.tracking.mark_orphaned_runs`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from typing import Callable, Optional

INTERRUPT = signal.SIGUSR1  # supervisor -> worker: the user interrupted (Ctrl-C)
TERMINATE = signal.SIGUSR2  # supervisor -> worker: terminated (SIGTERM, SIGHUP, SIGQUIT, supervisor gone)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
CALLBACK_BUDGET_S = 3.0  # the worker's callbacks (MLflow runs marked KILLED) together
CHILDREN_GRACE_S = 2.0  # SIGTERM to SIGKILL for the processes a command started
WORKER_GRACE_S = 6.0  # the supervisor's wait for the worker to stop itself before it kills it
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
SUPERVISED_COMMANDS = frozenset(
    {"ingest", "features", "tables", "batches", "train", "evaluate", "run", "demo", "compare", "compare-report"}
)

_callbacks: dict[int, Callable[[str], Optional[str]]] = {}
_next_token = 0
_report_fd: Optional[int] = None  # the worker's end of the pipe to its supervisor
_stopping = False


def on_interrupt(fn: Callable[[str], Optional[str]]) -> int:
    """Call ``fn(reason)`` when this process is asked to stop (a supervised worker); what it
    returns (e.g. "MLflow run 1a2b... marked KILLED") goes into the one line the user sees. A token
    for :func:`discard`."""
    global _next_token
    _next_token += 1
    _callbacks[_next_token] = fn
    return _next_token


def discard(token: int) -> None:
    _callbacks.pop(token, None)


def signal_name(signum: int) -> str:
    name = signal.Signals(signum).name
    return f"{name} (Ctrl-C)" if signum == signal.SIGINT else name


def _prctl(option: int, value: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: no subreaper or death signal, the rest works
        pass


# --- the worker -----------------------------------------------------------------------------------


def run_callbacks(reason: str, budget_s: float = CALLBACK_BUDGET_S) -> list[str]:
    """Run the registered callbacks, newest first, in a thread, for at most ``budget_s`` together
    (one that hangs, e.g. on a tracking server that no longer answers, is left behind: the process
    is about to exit). What they returned, in order."""
    notes: list[str] = []

    def work() -> None:
        for fn in reversed(list(_callbacks.values())):
            try:
                note = fn(reason)
            except Exception as e:  # noqa: BLE001 - stopping must go on
                note = f"({type(e).__name__} in {getattr(fn, '__name__', 'a callback')})"
            if note:
                notes.append(note)

    t = threading.Thread(target=work, name="subsample-interrupt", daemon=True)
    t.start()
    t.join(budget_s)
    if t.is_alive():
        notes.append(f"(gave up on the bookkeeping after {budget_s:.0f} s)")
    return list(notes)


def describe(proc) -> str:  # proc: psutil.Process
    try:
        cmd = " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 - gone, or a zombie
        return "process"
    if "uvicorn" in cmd and "prefect" in cmd:
        return "the temporary Prefect server"
    if "prefect" in cmd and "server" in cmd:
        return "a Prefect server"
    if "distributed" in cmd or "dask" in cmd:
        return "a Dask process"
    if "torch" in cmd or "multiprocessing" in cmd:
        return "a worker process"
    return "process"


def stop_descendants(grace_s: float = CHILDREN_GRACE_S) -> list[str]:
    """Stop every descendant of this process (SIGTERM, then SIGKILL after ``grace_s``) and reap
    them; what each was (:func:`describe`), one entry per process."""
    import psutil

    try:
        procs = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    names = [describe(p) for p in procs]
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=2.0)
    for p in psutil.Process().children(recursive=True):  # started meanwhile, or re-parented to us
        try:
            p.kill()
            names.append(describe(p))
        except psutil.Error:
            pass
    return names


def _worker_stop(signum: int, frame: object) -> None:
    """The worker's handler: callbacks, descendants, a report to the supervisor, ``os._exit``."""
    global _stopping
    if _stopping:
        return
    _stopping = True
    interrupted = signum in (INTERRUPT, signal.SIGINT)
    reason = "interrupted (Ctrl-C)" if interrupted else "terminated"
    notes = run_callbacks(f"{reason} at {time.strftime('%Y-%m-%d %H:%M:%S')}")
    stopped = stop_descendants()
    if stopped:
        notes.append(summarise_processes(stopped))
    report = "; ".join(notes)
    if _report_fd is not None:
        try:
            os.write(_report_fd, report.encode(errors="replace")[:4000])
        except OSError:
            pass
    else:  # not supervised (a signal sent to the worker itself): say it here
        print(f"subsample: {reason}" + (f"; {report}" if report else ""), file=sys.stderr, flush=True)
    os._exit(130 if interrupted else 143)


def summarise_processes(names: list[str]) -> str:
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    parts = [n if c == 1 and n.startswith(("the ", "a ")) else f"{c} × {n}" for n, c in counts.items()]
    return f"stopped {len(names)} process{'es' if len(names) != 1 else ''} it started ({', '.join(parts)})"


def install_worker_handlers() -> None:
    """The stop handlers of a worker (also of an unsupervised process that wants them): SIGUSR1 and
    SIGINT stop it as an interrupt, SIGUSR2 and SIGTERM as a termination (a library may replace
    SIGINT's and SIGTERM's for a while; the supervisor's signals are SIGUSR1/SIGUSR2)."""
    import psutil  # noqa: F401 - imported now, not inside the handler

    for s in (INTERRUPT, TERMINATE, signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _worker_stop)


# --- the supervisor -------------------------------------------------------------------------------


def should_supervise(args: list[str]) -> bool:
    """Supervise a long command given on the command line, unless this process is a rank that
    torchrun started (its agent supervises it) or ``SUBSAMPLE_SUPERVISE=0``."""
    if os.environ.get("SUBSAMPLE_SUPERVISE", "1") == "0" or "TORCHELASTIC_RUN_ID" in os.environ:
        return False
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return False
    command = next((a for a in args if not a.startswith("-")), None)
    return command in SUPERVISED_COMMANDS and not ({"--help", "-h"} & set(args))


class _Signalled(Exception):
    pass


def supervise() -> Optional[int]:
    """Fork. In the worker (the child) return None, so the command goes on there; in the
    supervisor wait for it, handle the stop signals as the module says, and return the exit code."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    supervisor = os.getpid()
    pid = os.fork()
    if pid == 0:
        global _report_fd
        os.close(read_fd)
        _report_fd = write_fd
        os.setsid()  # out of the terminal's process group: Ctrl-C reaches the supervisor only
        _prctl(_PR_SET_PDEATHSIG, TERMINATE)
        install_worker_handlers()
        if os.getppid() != supervisor:  # the supervisor died before the death signal was set
            os.kill(os.getpid(), TERMINATE)
        return None
    os.close(write_fd)
    return _supervise(pid, read_fd)


def _supervise(pid: int, read_fd: int) -> int:
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    started = time.monotonic()
    received: list[int] = []
    deadline = [float("inf")]

    def handler(signum: int, frame: object) -> None:
        received.append(signum)
        if len(received) == 1:
            try:
                os.kill(pid, INTERRUPT if signum == signal.SIGINT else TERMINATE)
            except ProcessLookupError:
                pass
            deadline[0] = time.monotonic() + WORKER_GRACE_S
            raise _Signalled
        deadline[0] = min(deadline[0], time.monotonic() + 1.0)  # asked again: do not wait long

    for s in STOP_SIGNALS:
        signal.signal(s, handler)
    _forward_job_control(pid)
    status: Optional[int] = None
    killed = False
    while True:
        try:
            if not received:
                status = os.waitpid(pid, 0)[1]
                break
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                break
            if time.monotonic() > deadline[0] and not killed:
                _kill_tree(pid)
                killed = True
            time.sleep(0.05)
        except _Signalled:
            continue
        except ChildProcessError:
            break
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    leftovers = stop_descendants(grace_s=1.0)
    if not received:  # what it left behind (a Dask process a moment late) is stopped quietly
        code = os.waitstatus_to_exitcode(status) if status is not None else 1
        return 128 - code if code < 0 else code
    os.set_blocking(read_fd, False)
    try:
        report = os.read(read_fd, 4096).decode(errors="replace").strip()
    except OSError:
        report = ""
    os.close(read_fd)
    parts = [report] if report else []
    if killed:
        parts.append(f"the command did not stop within {WORKER_GRACE_S:.0f} s and was killed")
    if leftovers:
        parts.append(summarise_processes(leftovers))
    what = "interrupted" if received[0] == signal.SIGINT else "stopped"
    # a progress bar may have the line: clear it on a terminal, else start a new line
    fresh = "\r\x1b[K" if sys.stderr.isatty() else "\n"
    print(
        f"{fresh}subsample: {what} by {signal_name(received[0])} after {time.monotonic() - started:.1f} s"
        + (f"; {'; '.join(parts)}" if parts else ""),
        file=sys.stderr,
        flush=True,
    )
    return 128 + received[0]


def _forward_job_control(pid: int) -> None:
    """Ctrl-Z suspends the worker's session with the supervisor, ``fg``/``bg`` resume it."""

    def suspend(signum: int, frame: object) -> None:
        try:
            os.killpg(pid, signal.SIGSTOP)
        except (ProcessLookupError, PermissionError):
            pass
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)  # stops here until SIGCONT

    def resume(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTSTP, suspend)
        try:
            os.killpg(pid, signal.SIGCONT)
        except (ProcessLookupError, PermissionError):
            pass

    signal.signal(signal.SIGTSTP, suspend)
    signal.signal(signal.SIGCONT, resume)


def _kill_tree(pid: int) -> None:
    """SIGKILL the worker and everything under it (its session, and its descendants elsewhere)."""
    import psutil

    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        procs = []
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    try:
        os.killpg(pid, signal.SIGKILL)  # the worker is its session's and group's leader
    except (ProcessLookupError, PermissionError):
        pass
