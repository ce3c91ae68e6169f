"""Content-addressed stage artifacts.

A stage artifact is a directory ``$SUBSAMPLE_HOME/stages/<stage>/<key>/`` holding the stage's files
and a ``manifest.json``. The key is a hash of everything that determines the output:

    key = H(stage, its parameters, the content hashes of its inputs, the stage's CODE_VERSION)

so a changed input or parameter gives a new key (the old artifact stays valid for the old inputs),
and an unchanged re-run finds the artifact and skips the work. The manifest records the content
hash of the files; :func:`open_artifact` recomputes it, so a deleted or corrupted file is detected
and the stage rebuilds. Artifacts are built in a temporary directory and renamed into place when
complete: a killed stage never leaves a directory that looks finished.

Concurrency: two processes building the same key each build in their own temporary directory
(``.tmp-<key>-<pid>@<host>-<random>``); the first to finish renames it into place, the other finds
a finished artifact that was not there when it started and discards its copy
(:func:`replace_dir`). Temporary and trash directories of processes that are gone are removed by
the next build in the same stage folder.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from storage.locks import owner_tag, remove_stale
from storage.paths import check_component, inside_home, stage_dir

MANIFEST = "manifest.json"
KEY_LENGTH = 16


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def artifact_key(stage: str, params: Mapping[str, Any], inputs: Mapping[str, str], code_version: str) -> str:
    """The artifact key: a hash of the stage name, its parameters, its inputs' content hashes and
    its code version. Parameters must be JSON-serialisable (tuples become lists)."""
    payload = _canonical({"stage": stage, "params": dict(params), "inputs": dict(inputs), "code": code_version})
    return hashlib.sha256(payload.encode()).hexdigest()[:KEY_LENGTH]


def hash_tree(root: Path) -> str:
    """sha256 over every file under ``root`` (relative path and bytes, sorted), except the manifest."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST:
            continue
        h.update(rel.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class Artifact:
    stage: str
    key: str
    path: Path
    manifest: dict

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    @property
    def summary(self) -> dict:
        return self.manifest.get("summary", {})

    @property
    def params(self) -> dict:
        return self.manifest.get("params", {})

    @property
    def inputs(self) -> dict:
        """The content hashes of its inputs (part of the key)."""
        return self.manifest.get("inputs", {})

    @property
    def upstream(self) -> dict:
        """The keys of the artifacts it was built from, by stage (not part of the key: where the
        inputs whose hashes ``inputs`` holds can be opened). Empty for artifacts made before
        manifests recorded them."""
        return self.manifest.get("upstream", {})


def artifact_path(stage: str, key: str) -> Path:
    return inside_home(stage_dir(stage) / check_component(key, "artifact key"), what=f"{stage} artifact")


def open_artifact(stage: str, key: str, *, verify: bool = True) -> Artifact | None:
    """The finished artifact, or None when it is missing, unfinished or fails its content hash.
    A read that another process's replacement of the directory cut short is read again."""
    path = artifact_path(stage, key)
    for attempt in range(40):  # more than 5 only while another process keeps replacing it under the read
        before = dir_identity(path)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            ok = not verify or hash_tree(path) == manifest.get("content_hash")
        except (OSError, ValueError):
            ok = False
        after = dir_identity(path)
        if after == before and (after is not None or attempt >= 2):
            return Artifact(stage, key, path, manifest) if ok else None
        time.sleep(min(0.1, 0.02 * (attempt + 1)))  # None: between the two renames of a replacement
    return None


def cached_summary(stage: str, key: str, /, *, started: float, **fields: Any) -> dict | None:
    """A stage's result on a cache hit: the verified artifact's recorded summary, updated with
    ``fields`` (e.g. the data set name it was asked for: identical content under another name has
    the same key), its path, ``cache_hit: True`` and the seconds since ``started``
    (a ``time.perf_counter()`` value). None when the artifact must be built."""
    art = open_artifact(stage, key)
    if art is None:
        return None
    return {
        **art.summary,
        **fields,
        "path": str(art.path),
        "cache_hit": True,
        "seconds": round(time.perf_counter() - started, 3),
    }


def artifact_status(stage: str, key: str) -> str:
    """'ok', 'missing' or 'corrupt', for messages and the flow's cache report."""
    path = artifact_path(stage, key)
    if not (path / MANIFEST).exists():
        return "missing"
    return "ok" if open_artifact(stage, key) is not None else "corrupt"


@dataclass
class ArtifactBuilder:
    stage: str
    key: str
    path: Path
    params: dict
    inputs: dict
    code_version: str
    upstream: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)

    @property
    def final_path(self) -> Path:
        """Where the artifact will be once finished: use it for paths recorded in the summary."""
        return artifact_path(self.stage, self.key)


@contextmanager
def build_artifact(
    stage: str,
    key: str,
    *,
    params: Mapping[str, Any],
    inputs: Mapping[str, str],
    code_version: str,
    upstream: Mapping[str, str] | None = None,
) -> Iterator[ArtifactBuilder]:
    """Build an artifact atomically: write files under ``builder.path`` (a temporary directory),
    set ``builder.summary``; on normal exit the manifest is written and the directory renamed into
    place (replacing a corrupt one). On an exception the temporary directory is removed.
    ``upstream``: the keys of the artifacts it is built from, by stage, recorded in the manifest."""
    final = artifact_path(stage, key)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final.parent, STALE_PREFIXES)
    replaces = dir_identity(final)  # what a finished build may replace (a corrupt copy, or --refresh)
    tmp = final.parent / f".tmp-{key}-{owner_tag()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    builder = ArtifactBuilder(stage, key, tmp, dict(params), dict(inputs), code_version, dict(upstream or {}))
    try:
        yield builder
        manifest = {
            "stage": stage,
            "key": key,
            "params": builder.params,
            "inputs": builder.inputs,
            "upstream": builder.upstream,
            "code_version": code_version,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "summary": builder.summary,
            "content_hash": hash_tree(tmp),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        replace_dir(tmp, final, replaces=replaces)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


STALE_PREFIXES = (".tmp-", ".trash-")


def dir_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the directory at ``path``, or None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def exchange_dirs(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``), so a reader of
    ``b`` sees the old copy or the new one, never neither. False where the C library, the kernel or
    the file system cannot (then :func:`replace_dir` falls back to two renames and readers retry)."""
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))  # ENOENT: FileNotFoundError


def replace_dir(src: Path, dst: Path, *, replaces: tuple[int, int] | None | str = "current") -> bool:
    """Move ``src`` to ``dst``, never leaving ``dst`` half-written, safe against other processes
    doing the same. ``replaces`` is the :func:`dir_identity` of the ``dst`` the caller set out to
    replace (taken when its build started; ``"current"``: whatever is there now). A ``dst`` that is
    something else was put there by another process meanwhile: it wins, ``src`` is discarded and
    the result is False. Replacing a copy is one atomic swap where the file system allows it, else
    two renames; a rename that loses a race is retried, so no FileNotFoundError or ENOTEMPTY
    reaches the caller."""
    if replaces == "current":
        replaces = dir_identity(dst)
    for _ in range(100):
        try:
            os.rename(src, dst)  # atomic; fails when dst is a non-empty directory
            return True
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        current = dir_identity(dst)
        if current is None:
            continue  # moved away meanwhile: try again
        if current != replaces:  # another process's finished copy: keep it
            shutil.rmtree(src, ignore_errors=True)
            return False
        try:
            if exchange_dirs(src, dst):  # one atomic swap: readers never find dst missing
                shutil.rmtree(src, ignore_errors=True)  # the old copy, now at src
                return True
        except FileNotFoundError:
            continue  # another process moved it first
        trash = dst.parent / f".trash-{dst.name}-{owner_tag()}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(dst, trash)
        except FileNotFoundError:
            continue  # another process moved it first
        try:
            os.rename(src, dst)  # at once: readers see no store/artifact for two renames only
            return True
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        finally:
            shutil.rmtree(trash, ignore_errors=True)
    raise OSError(errno.EBUSY, f"could not move {src} to {dst}: it keeps changing")
