"""Writing inside ``$SUBSAMPLE_HOME``: the one way every writer of the project opens a file.

- :func:`writable` resolves a path and refuses it (one :class:`~storage.errors.SubsampleError`
  line naming the link) when it, or any folder on the way, is a symbolic link leading outside the
  home; a file that is itself a symbolic link is never written through, wherever it points.
- :func:`make_dirs`, :func:`open_write` (``O_NOFOLLOW``), :func:`write_atomic` and
  :func:`atomic_path` (a temporary name in the checked folder, renamed over the file when the
  writer finished: a reader, or a process killed half-way, never sees half a file; ``os.replace``
  replaces a planted link itself, never its target) are what writers call.
- :func:`fault` turns the file-system errors a user can meet (read-only home, disk full, the
  file-size limit, the home a file, permission denied) into one line naming the path and what it
  needs; the CLI and the flows print that line instead of a traceback.

Python ignores SIGXFSZ (CPython sets it to SIG_IGN at start-up), so a write past ``ulimit -f``
fails with ``EFBIG`` like any other write error rather than killing the process.
"""

from __future__ import annotations

import errno
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from storage.errors import SubsampleError
from storage.paths import home

_STAGE = "home"


def _root() -> Path:
    return home().resolve()


def _outside(resolved: Path, root: Path) -> bool:
    return resolved != root and root not in resolved.parents


def _leaving_link(path: Path, root: Path) -> Path | None:
    """The first symbolic link on ``path`` (below the home) whose target lies outside the home."""
    base = home()
    try:
        rel = path.relative_to(base)
    except ValueError:
        try:
            rel = path.relative_to(root)
            base = root
        except ValueError:
            return None
    cur = base
    for part in rel.parts:
        cur = cur / part
        if cur.is_symlink() and _outside(cur.resolve(), root):
            return cur
    return None


def writable(path: str | os.PathLike, *, what: str = "file") -> Path:
    """``path`` (relative paths are under the home) with its folders resolved, or SubsampleError
    when it resolves outside the home: naming the symbolic link that leads out, when one does. The
    last component is kept as it is (not followed): open it with :func:`open_write` or replace it
    with :func:`write_atomic`, which never write through a link."""
    root = _root()
    p = Path(path)
    p = p if p.is_absolute() else home() / p
    parent = p.parent.resolve()
    full = parent / p.name
    if _outside(full, root) or (p.is_symlink() and _outside(p.resolve(), root)):
        link = _leaving_link(p, root)
        if link is not None:
            raise SubsampleError(
                _STAGE,
                f"{link} is a symbolic link to {link.resolve()}, outside $SUBSAMPLE_HOME ({root}); refusing to write "
                f"the {what} {p} through it (remove the link)",
            )
        raise SubsampleError(
            _STAGE, f"{what} {p} resolves to {full}, outside $SUBSAMPLE_HOME ({root}); refusing to write there"
        )
    return full


def _norm(path: str | os.PathLike) -> Path:
    """The absolute path as written (nothing followed), with POSIX's leading ``//`` (what a
    ``sqlite:////abs/path`` URI parses to) made one ``/``."""
    p = os.path.abspath(path)
    return Path("/" + p.lstrip("/")) if p.startswith("//") else Path(p)


def under_home(path: str | os.PathLike) -> bool:
    """Whether ``path`` is, as written (nothing followed), the home or a path under it."""
    p = _norm(path)
    return any(p == b or b in p.parents for b in {home(), _root()})


def checked(path: str | os.PathLike, *, what: str = "file") -> Path:
    """:func:`writable` for a path under the home; a path elsewhere (one a caller chose outside
    it: a test's folder, a bench script's output) as it is. The helpers below use it, and never
    write through a link in the last component either way."""
    return writable(_norm(path), what=what) if under_home(path) else _norm(path)


def make_dirs(path: str | os.PathLike, *, what: str = "folder") -> Path:
    """``mkdir -p`` of a folder checked by :func:`writable` (a link to a folder inside the home is
    followed; one leading out is refused)."""
    p = checked(path, what=what)
    if p.is_symlink():
        p = p.resolve()
        checked(p, what=what)
    p.mkdir(parents=True, exist_ok=True)
    return p


def _refuse_link(p: Path, what: str) -> SubsampleError:
    target = os.path.realpath(p)
    return SubsampleError(
        _STAGE, f"{p} is a symbolic link (to {target}); refusing to write the {what} through it (remove the link)"
    )


def open_fd(path: str | os.PathLike, flags: int, *, what: str = "file", mode: int = 0o644) -> int:
    """``os.open`` with ``O_NOFOLLOW`` (a link in its place is refused) of a path checked by
    :func:`writable` when it lies under the home (a path elsewhere is one the user configured, an
    ``MLFLOW_TRACKING_URI`` database's lock)."""
    p = checked(path, what=what)
    try:
        return os.open(p, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _refuse_link(p, what) from None
        raise


def open_write(path: str | os.PathLike, mode: str = "w", *, what: str = "file") -> IO:
    """``open(path, mode)`` for ``w``/``a`` (text or binary) on a checked path, never through a link."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = open_fd(path, flags, what=what)
    return os.fdopen(fd, mode)


@contextmanager
def atomic_path(path: str | os.PathLike, *, what: str = "file", suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` (checked) for a library that writes by name (``np.savez``,
    ``torch.save``, ``savefig``); renamed over ``path`` when the block ends normally, removed
    otherwise. ``suffix``: what the writer needs the name to end with (``.npz``)."""
    final = checked(path, what=what)
    make_dirs(final.parent, what=what + "'s folder")
    tmp = final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp{suffix}")
    try:
        try:
            yield tmp
        except Exception as e:  # a library's write failure without a path (torch: "file write failed")
            found = _errno_of(e)
            if found is not None and found[1] is None:
                raise OSError(found[0], os.strerror(found[0]), str(final)) from e
            raise
        if tmp.is_symlink():  # not ours: planted between the writer's open and now
            raise _refuse_link(tmp, what)
        os.replace(tmp, final)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def write_atomic(path: str | os.PathLike, data: str | bytes, *, what: str = "file") -> Path:
    """Write ``data`` to a fresh temporary file (``O_EXCL``) beside ``path`` and rename it over
    ``path``: never through a link, never half a file."""
    with atomic_path(path, what=what) as tmp:
        fd = open_fd(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, what=what)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
    return Path(path)


def links_in(folder: Path) -> list[Path]:
    """The symbolic links anywhere under ``folder`` (not followed)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                out.append(p)
    return out


# --- file-system faults as one line ----------------------------------------------------------------

_NEEDS = {
    errno.EROFS: "the file system is read-only; {stage} needs to write there: remount it read-write or point "
    "SUBSAMPLE_HOME at a writable folder",
    errno.ENOSPC: "no space left on the device; free space there or point SUBSAMPLE_HOME at a larger disk",
    errno.EDQUOT: "disk quota exceeded; free space there or point SUBSAMPLE_HOME at a larger disk",
    errno.EFBIG: "the file would exceed the file-size limit (ulimit -f); raise the limit",
    errno.EACCES: "permission denied; {stage} needs access there (write access, under the home)",
    errno.EPERM: "operation not permitted; {stage} needs access there (write access, under the home)",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "is a folder where a file is needed",
    errno.ELOOP: "too many symbolic links (or a link where none may be)",
    errno.ENAMETOOLONG: "the path is too long",
}
FAULT_ERRNOS = frozenset(_NEEDS)


# what libraries say when a write failed without handing on the OSError (torch's zip writer,
# SQLite through SQLAlchemy and MLflow), and the errno each means
_MESSAGES = (
    ("database or disk is full", errno.ENOSPC),
    ("no space left on device", errno.ENOSPC),
    ("disk quota exceeded", errno.EDQUOT),
    ("file too large", errno.EFBIG),
    ("readonly database", errno.EROFS),
    ("read-only file system", errno.EROFS),
)
_WRITE_FAILED = ("file write failed", "unexpected pos", "disk i/o error")


def _errno_of(exc: BaseException) -> tuple[int, str | None] | None:
    """``(errno, path)`` of the file-system fault behind ``exc`` (itself, its cause or context, or
    a library's message that names one), or None."""
    for _ in range(6):
        if exc is None:
            return None
        if isinstance(exc, OSError) and exc.errno in _NEEDS:
            return exc.errno, exc.filename
        text = str(exc).lower()
        for needle, code in _MESSAGES:
            if needle in text:
                return code, None
        if any(needle in text for needle in _WRITE_FAILED):  # no errno given: find out why
            return _why_write_failed(), None
        exc = exc.__cause__ or exc.__context__
    return None


def _why_write_failed() -> int:
    import resource
    import shutil

    try:
        if shutil.disk_usage(_existing(home())).free < (1 << 20):
            return errno.ENOSPC
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return errno.EFBIG if soft != resource.RLIM_INFINITY else errno.ENOSPC


def _existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def fault(exc: BaseException, stage: str = "subsample") -> SubsampleError | None:
    """The one-line error for a file-system fault (an OSError with one of :data:`FAULT_ERRNOS`,
    also when it is the cause or context of ``exc``, or a library's message that reports one:
    SQLite's "database or disk is full", torch's "file write failed"), or None for anything else."""
    if isinstance(exc, SubsampleError):
        return None
    h = home()
    if isinstance(exc, OSError) and h.exists() and not h.is_dir():
        return SubsampleError(stage, f"SUBSAMPLE_HOME={h} is a file, not a folder; point SUBSAMPLE_HOME at a folder")
    found = _errno_of(exc)
    if found is None:
        return None
    code, path = found
    where = f"{path}: " if path else f"writing under {h}: "
    return SubsampleError(stage, where + _NEEDS[code].format(stage=stage))


def local_artifact_dir(uri: str) -> Path | None:
    """The folder of a ``file:`` (or plain path) MLflow artifact URI; None for a remote store."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and uri.startswith("/"):
        return Path(uri)
    return None


def check_artifact_copies(artifact_uri: str, paths: list[tuple[Path, str | None]]) -> None:
    """Before MLflow copies ``paths`` (``(local file or folder, artifact sub-path)``) into a run's
    local artifact folder (``shutil.copy2`` / ``copytree``, which follow links at the destination):
    every destination under the home is checked by :func:`writable`, and one that is already a
    symbolic link is refused wherever it lies."""
    base = local_artifact_dir(artifact_uri)
    if base is None:
        return
    for src, dest in paths:
        src = Path(src)
        folder = base / dest if dest else base
        if src.is_dir():
            targets = [folder / rel for rel in (p.relative_to(src) for p in src.rglob("*"))]
        else:
            targets = [folder / src.name]
        for target in [folder, *targets]:
            if under_home(target):
                writable(target, what="MLflow artifact")
            if target.is_symlink():
                raise _refuse_link(target, "MLflow artifact")


def check_sqlite_files(db: Path) -> None:
    """SQLite creates ``<db>-journal``, ``-wal`` and ``-shm`` beside a database: none of them may be
    a symbolic link (SQLite would write through it)."""
    db = _norm(db)
    for suffix in ("", "-journal", "-wal", "-shm", ".lock"):
        p = db.with_name(db.name + suffix)
        if p.is_symlink() and (suffix or _outside(p.resolve(), _root())):
            raise _refuse_link(p, "MLflow database file")


class _FaultTracebacks:
    """A logging filter dropping a library's record of an exception that is a file-system fault
    (MLflow logs "SQLAlchemy database error" with its traceback before raising it again): the
    exception itself reaches the command, which says it in one line."""

    def filter(self, record) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or fault(exc) is None


def quiet_fault_tracebacks(*loggers: str) -> None:
    """Install :class:`_FaultTracebacks` on ``loggers`` (default: MLflow's database session logger)."""
    import logging

    for name in loggers or ("mlflow.store.db.utils",):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _FaultTracebacks) for f in logger.filters):
            logger.addFilter(_FaultTracebacks())
