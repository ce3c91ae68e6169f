"""Locks and ownership for concurrent processes sharing one ``$SUBSAMPLE_HOME``.

- :func:`file_lock`: an exclusive ``flock`` on a lock file (released by the kernel when the holder
  exits, ``kill -9`` included), optionally telling the user who holds it while it waits.
- :func:`owner_tag` / :func:`owner_gone`: the ``<pid>@<host>`` a temporary directory's name
  carries, and whether that process is known to be gone. A process on another host (a home shared
  over NFS) is never judged gone: its directories are left alone.
- :func:`remove_stale`: temporary and trash directories whose owner is gone, removed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_HOST = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:64] or "localhost"
# `<anything>-<pid>@<host>-<8 hex>` (current names) or `<anything>-<pid>-<8 hex>` (names before hosts were recorded)
_OWNER_RE = re.compile(r"-(?P<pid>\d+)(?:@(?P<host>[A-Za-z0-9.-]+))?-[0-9a-f]{8}$")


def owner_tag() -> str:
    """``<pid>@<host>`` of this process, for temporary directory names."""
    return f"{os.getpid()}@{_HOST}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def owner_gone(name: str) -> bool:
    """True when ``name`` (a temporary directory's name) carries an owner on this host whose
    process no longer runs; False when it is alive, on another host, or the name has no owner."""
    m = _OWNER_RE.search(name)
    if m is None:
        return False
    if m["host"] is not None and m["host"] != _HOST:
        return False
    return not pid_alive(int(m["pid"]))


def remove_stale(parent: Path, prefixes: tuple[str, ...]) -> list[Path]:
    """Remove the directories of ``parent`` whose name starts with one of ``prefixes`` and whose
    owner (from the name) is gone; the removed paths."""
    removed = []
    try:
        entries = list(parent.iterdir())
    except FileNotFoundError:
        return removed
    for p in entries:
        if p.name.startswith(prefixes) and owner_gone(p.name):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


class LockBusy(Exception):
    """The lock is held by another process (only with ``wait=False``); ``holder`` says who."""

    def __init__(self, path: Path, holder: dict):
        super().__init__(path, holder)
        self.path, self.holder = path, holder


def describe_holder(holder: dict) -> str:
    if not holder:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"process {holder.get('pid', '?')} on {holder.get('host', '?')} (since {since})"


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096) or b"{}")
    except (OSError, ValueError):
        return {}


@contextmanager
def file_lock(path: Path, *, wait: bool = True, message: str | None = None, poll_s: float = 0.5) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the block. Another holder: with
    ``wait`` block until it is released (printing ``message``, with who holds it, once on
    stderr), else raise :class:`LockBusy`. The holder's pid and host are written into the file.
    The file is opened with ``O_NOFOLLOW`` (a symbolic link in its place is refused in one line,
    never truncated through) and, under ``$SUBSAMPLE_HOME``, checked by
    :func:`storage.safe_io.writable`."""
    from storage.safe_io import make_dirs, open_fd, under_home

    if under_home(path.parent):
        make_dirs(path.parent, what="lock folder")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_fd(path, os.O_RDWR | os.O_CREAT, what="lock file")
    try:
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                holder = _read_holder(fd)
                if not wait:
                    raise LockBusy(path, holder) from None
                if message and not told:
                    print(f"{message} (held by {describe_holder(holder)}; lock {path})", file=sys.stderr)
                    told = True
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": _HOST, "since": time.time()}).encode())
        try:
            yield
        finally:
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def lock_is_free(path: Path) -> bool:
    """True when nobody holds ``path``'s lock (a missing file is free)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        return True
    except OSError:  # a link in its place (ELOOP): not ours to judge free
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)
