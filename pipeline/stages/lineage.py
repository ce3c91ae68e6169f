"""The artifact graph: what each stage consumes, how the keys are made, and where a stage run
alone finds its inputs.

::

    store (ingest) ──► features ──► tables ──┬──► batches       (batches and train also read the store)
                                              └──► train ──► evaluate

In the flow each stage is handed the artifacts the stages before it returned. A stage run alone
(``subsample tables NAME``, ``subsample run --only train``) has configs instead: :func:`locate`
recomputes the keys of its inputs from them and opens those artifacts, or raises
:class:`~storage.errors.MissingArtifactError` naming the command that builds the missing one.
Every manifest records the keys of the artifacts it was built from (``upstream``), so going back
up from an artifact (:func:`upstream_artifact`: evaluate finds the table a generator was trained
on) needs no configs.

The key recipes of features, tables and train live here, with their code versions, so that a key
is computed by one function whoever asks for it (the stage itself, the flow, the comparison).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from pipeline.config import BatchesConfig, FeaturesConfig, TablesConfig, TrainConfig
from storage.artifacts import MANIFEST, Artifact, artifact_key, open_artifact
from storage.errors import MissingArtifactError, SubsampleError
from storage.paths import check_component, stage_dir

if TYPE_CHECKING:  # pragma: no cover
    from storage.store import DatasetStore

# Bump a stage's code version when its output changes for the same inputs and parameters.
CODE_VERSIONS = {
    "features": "features/1",
    "tables": "tables/1",
    "train": "train/2",  # 2: epoch-0 feature KL/JS, titled grids, loss curve on three axes
}

# what each stage consumes ("ingest": the data set store)
CONSUMES: dict[str, tuple[str, ...]] = {
    "ingest": (),
    "features": ("ingest",),
    "tables": ("features",),
    "batches": ("tables", "ingest"),
    "train": ("tables", "ingest"),
    "evaluate": ("train",),
}


# --- keys -----------------------------------------------------------------------------------------


def features_key(store: "DatasetStore", cfg: FeaturesConfig) -> str:
    return artifact_key("features", cfg.key_params(), {"store": store.content_hash}, CODE_VERSIONS["features"])


def tables_key(cfg: TablesConfig, features_art: Artifact) -> str:
    return artifact_key("tables", cfg.key_params(), {"features": features_art.content_hash}, CODE_VERSIONS["tables"])


def train_key_params(cfg: TrainConfig, batches: BatchesConfig) -> dict:
    # the batches' epochs count is the batches stage's business: training constructs its own epochs
    return {**cfg.key_params(), "batches": {k: v for k, v in batches.key_params().items() if k != "epochs"}}


def train_key(cfg: TrainConfig, batches: BatchesConfig, tables_hash: str, store_hash: str) -> str:
    """The train key: H(train parameters, batch parameters but their epochs, the table's and the
    store's content hashes, the code version). Every caller gets it from here."""
    return artifact_key(
        "train", train_key_params(cfg, batches), {"tables": tables_hash, "store": store_hash}, CODE_VERSIONS["train"]
    )


def store_key(store: "DatasetStore") -> str:
    """The store's ingest key, as an upstream key (stores made by ``write_store`` have none: their
    content hash)."""
    return str(store.attrs.get("key") or store.content_hash)


# --- the commands that build a missing artifact ---------------------------------------------------


def _feature_flags(features: FeaturesConfig) -> str:
    if tuple(features.features) == FeaturesConfig().features:
        return ""
    return " --feature " + " --feature ".join(features.features)


def features_command(dataset: str, cfg: FeaturesConfig) -> str:
    return f"subsample features {dataset}" + _feature_flags(cfg)


def tables_command(dataset: str, cfg: TablesConfig, features: FeaturesConfig) -> str:
    return f"subsample tables {dataset} --bins {' '.join(map(str, cfg.bins))}" + _feature_flags(features)


# --- finding artifacts by key ---------------------------------------------------------------------


def find_features(store: "DatasetStore", cfg: FeaturesConfig, *, dataset: str, needed_by: str) -> Artifact:
    """The features artifact of ``store`` for ``cfg``; MissingArtifactError (stage ``needed_by``)
    naming it and the command that builds it when it is missing or corrupt."""
    key = features_key(store, cfg)
    art = open_artifact("features", key)
    if art is None:
        raise MissingArtifactError(
            needed_by,
            f"the features artifact of data set {dataset!r} (stages/features/{key}, features "
            f"{list(cfg.features)}) is missing or corrupt; run `{features_command(dataset, cfg)}` first",
        )
    return art


def find_tables(
    features_art: Artifact, cfg: TablesConfig, *, dataset: str, features: FeaturesConfig, needed_by: str
) -> Artifact:
    """The tables artifact built from ``features_art`` with ``cfg``; MissingArtifactError naming
    the command when it is missing or corrupt."""
    key = tables_key(cfg, features_art)
    art = open_artifact("tables", key)
    if art is None:
        raise MissingArtifactError(
            needed_by,
            f"the table of data set {dataset!r} with bins {list(cfg.bins)} (stages/tables/{key}) is missing "
            f"or corrupt; run `{tables_command(dataset, cfg, features)}` first",
        )
    return art


def find_train(
    store: "DatasetStore",
    tables_art: Artifact,
    cfg: TrainConfig,
    batches: BatchesConfig,
    *,
    dataset: str,
    needed_by: str,
) -> Artifact:
    """The finished train artifact for these inputs and configs; MissingArtifactError if absent."""
    key = train_key(cfg, batches, tables_art.content_hash, store.content_hash)
    art = open_artifact("train", key)
    if art is None:
        raise MissingArtifactError(
            needed_by,
            f"no train artifact {key} for {dataset!r} with these settings; "
            f"run `subsample run --dataset {dataset} --only train` (same --set values) first",
        )
    return art


# --- a stage's inputs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    """The artifacts a stage consumes (those it does not consume are None)."""

    store: "DatasetStore | None" = None
    features: Artifact | None = None
    tables: Artifact | None = None
    train: Artifact | None = None

    def keys(self) -> dict[str, str]:
        """Their keys by stage: what the stage's manifest records as ``upstream``."""
        out = {
            s: a.key
            for s, a in (("features", self.features), ("tables", self.tables), ("train", self.train))
            if a is not None
        }
        if self.store is not None:
            out["ingest"] = store_key(self.store)
        return out


def _finder(
    dataset: str,
    features: FeaturesConfig,
    tables: TablesConfig,
    batches: BatchesConfig | None,
    train: TrainConfig | None,
    given: Mapping[str, Any] | None,
    needed_by: str,
):
    """``get(stage)``: the artifact of ``stage`` (``"ingest"``: the store), from ``given`` or by key."""
    from storage.store import open_store

    found: dict[str, Any] = {k: v for k, v in (given or {}).items() if v is not None}

    def get(s: str) -> Any:
        if s in found:
            return found[s]
        if s == "ingest":
            found[s] = open_store(dataset)
        elif s == "features":
            found[s] = find_features(get("ingest"), features, dataset=dataset, needed_by=needed_by)
        elif s == "tables":
            found[s] = find_tables(get("features"), tables, dataset=dataset, features=features, needed_by=needed_by)
        elif s == "train":
            if train is None or batches is None:
                raise ValueError("locating a train artifact needs the train and batches configs")
            found[s] = find_train(get("ingest"), get("tables"), train, batches, dataset=dataset, needed_by=needed_by)
        else:
            raise ValueError(f"cannot locate a {s!r} artifact from configs; stages: ingest, features, tables, train")
        return found[s]

    return get


def locate(
    stage: str,
    dataset: str,
    *,
    features: FeaturesConfig = FeaturesConfig(),
    tables: TablesConfig = TablesConfig(),
    batches: BatchesConfig | None = None,
    train: TrainConfig | None = None,
    given: Mapping[str, Any] | None = None,
    needed_by: str | None = None,
) -> Inputs:
    """The artifacts ``stage`` consumes (:data:`CONSUMES`) for data set ``dataset``: those in
    ``given`` (by stage, e.g. what the flow's earlier stages returned; ``"ingest"``: the store)
    as they are, the others found by the keys these configs give (``evaluate`` needs ``train`` and
    ``batches``). Raises MissingArtifactError (stage ``needed_by``, default ``stage``) naming the
    first missing artifact and the command that builds it."""
    if stage not in CONSUMES:
        raise ValueError(f"unknown stage {stage!r}; stages: {list(CONSUMES)}")
    get = _finder(dataset, features, tables, batches, train, given, needed_by or stage)
    got = {s: get(s) for s in CONSUMES[stage]}
    return Inputs(
        store=got.get("ingest"), features=got.get("features"), tables=got.get("tables"), train=got.get("train")
    )


def find(
    stage: str,
    dataset: str,
    *,
    features: FeaturesConfig = FeaturesConfig(),
    tables: TablesConfig = TablesConfig(),
    batches: BatchesConfig | None = None,
    train: TrainConfig | None = None,
    given: Mapping[str, Any] | None = None,
    needed_by: str | None = None,
) -> Any:
    """The artifact of ``stage`` itself for these configs (``"ingest"``: the store), found as
    :func:`locate` finds inputs; MissingArtifactError (stage ``needed_by``) when it is missing."""
    return _finder(dataset, features, tables, batches, train, given, needed_by or stage)(stage)


def train_key_for(
    dataset: str,
    train: TrainConfig,
    batches: BatchesConfig,
    tables: TablesConfig = TablesConfig(),
    features: FeaturesConfig = FeaturesConfig(),
    *,
    given: Mapping[str, Any] | None = None,
) -> str:
    """The key ``train`` would give a run with these configs (whether it finished or not): its
    inputs located as :func:`locate` does, then :func:`train_key`."""
    got = locate("train", dataset, features=features, tables=tables, given=given)
    assert got.tables is not None and got.store is not None
    return train_key(train, batches, got.tables.content_hash, got.store.content_hash)


# --- going back up from an artifact ---------------------------------------------------------------


def upstream_artifact(art: Artifact, stage: str) -> Artifact | None:
    """The ``stage`` artifact ``art`` was built from: by the key its manifest records; for an
    artifact made before manifests recorded keys, the one whose content hash its ``inputs`` name.
    None when it is gone or fails verification."""
    upstream = art.upstream if isinstance(art.upstream, dict) else {}
    key = upstream.get(stage)
    if key:
        try:
            check_component(key, f"{stage} key")
        except ValueError:
            raise SubsampleError(
                art.stage,
                f"{art.path / MANIFEST} names {stage} artifact {key!r} as its upstream, which is not an artifact key "
                f"(letters, digits, '.', '_', '-'); the manifest is damaged or was edited: rebuild {art.stage} "
                "(--refresh)",
            ) from None
        return open_artifact(stage, key)
    want = art.inputs.get(stage)
    if not want:
        return None
    for manifest in sorted(stage_dir(stage).glob("*/manifest.json")):
        try:
            if json.loads(manifest.read_text()).get("content_hash") != want:
                continue
        except (OSError, ValueError):
            continue
        found = open_artifact(stage, manifest.parent.name)
        if found is not None:
            return found
    return None
