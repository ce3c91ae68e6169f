"""What every stage returns: one :class:`StageResult`.

A stage function takes the artifacts it consumes and its own config, and returns a StageResult:
its artifact's key and path, whether it was a cache hit, the seconds it took, the stage's own
figures (``details``), the keys of the artifacts it was built from (``upstream``, by stage) and the
artifact itself (``artifact``: the :class:`~storage.artifacts.Artifact`, or for ingest the
:class:`~storage.store.DatasetStore`), which the flow hands to the next stage.
:meth:`StageResult.to_json` is the summary ``subsample <stage> --json`` prints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from storage.artifacts import Artifact, open_artifact

if TYPE_CHECKING:  # pragma: no cover
    from storage.store import DatasetStore

CORE_FIELDS = ("stage", "key", "path", "cache_hit", "seconds")


@dataclass(frozen=True)
class StageResult:
    stage: str
    key: str
    path: str | None  # None only for a rank or node that did not write the artifact
    cache_hit: bool
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)  # the stage's figures: the rest of the summary
    upstream: dict[str, str] = field(default_factory=dict)  # keys of the artifacts it consumed, by stage
    artifact: "Artifact | DatasetStore | None" = field(default=None, compare=False, repr=False)

    @property
    def dataset(self) -> str | None:
        return self.details.get("dataset")

    def to_json(self) -> dict[str, Any]:
        """The summary the CLI prints: stage, dataset, key, path, cache_hit, seconds, then the details."""
        out: dict[str, Any] = {"stage": self.stage}
        if "dataset" in self.details:
            out["dataset"] = self.details["dataset"]
        out["key"] = self.key
        if self.path is not None:
            out["path"] = self.path
        out.update(cache_hit=self.cache_hit, seconds=self.seconds)
        out.update((k, v) for k, v in self.details.items() if k != "dataset")
        return out

    @classmethod
    def from_summary(
        cls,
        summary: Mapping[str, Any],
        *,
        upstream: Mapping[str, str] | None = None,
        artifact: "Artifact | DatasetStore | None" = None,
    ) -> "StageResult":
        """A result from a summary dict (the keys of :data:`CORE_FIELDS` and the details)."""
        return cls(
            stage=summary["stage"],
            key=summary["key"],
            path=None if summary.get("path") is None else str(summary["path"]),
            cache_hit=bool(summary.get("cache_hit", False)),
            seconds=float(summary.get("seconds", 0.0)),
            details={k: v for k, v in summary.items() if k not in CORE_FIELDS},
            upstream=dict(upstream or {}),
            artifact=artifact,
        )


def cached_result(
    stage: str, key: str, /, *, started: float, upstream: Mapping[str, str], **fields: Any
) -> StageResult | None:
    """A stage's result on a cache hit: the verified artifact's recorded summary updated with
    ``fields`` (e.g. the data set name it was asked for), its path, ``cache_hit`` and the seconds
    since ``started`` (a ``time.perf_counter()`` value). None when the artifact must be built."""
    art = open_artifact(stage, key)
    if art is None:
        return None
    summary = {
        **{k: _moved(v, art.path, f"/stages/{stage}/{key}") for k, v in art.summary.items()},
        **fields,
        "path": str(art.path),
        "cache_hit": True,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return StageResult.from_summary(summary, upstream=upstream, artifact=art)


def _moved(value: Any, path: Any, tail: str) -> Any:
    """A path the summary recorded inside its artifact (``.../stages/train/<key>/grids``), under the
    artifact's current path: the home may have moved since it was built."""
    if isinstance(value, str) and tail in value and not value.startswith(str(path)):
        return str(path) + value[value.index(tail) + len(tail) :]
    return value


def built_result(
    stage: str, key: str, summary: Mapping[str, Any], /, *, started: float, upstream: Mapping[str, str]
) -> StageResult:
    """A stage's result once it has built its artifact (``summary``: what it recorded)."""
    art = open_artifact(stage, key, verify=False)  # just built (or another process's identical copy)
    summary = {**summary, "cache_hit": False, "seconds": round(time.perf_counter() - started, 3)}
    return StageResult.from_summary(summary, upstream=upstream, artifact=art)
