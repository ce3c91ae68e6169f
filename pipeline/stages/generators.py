"""A trained generator read back: the train artifact a RUN names (a train key, or the MLflow run id
of a finished ``subsample train`` run; never a path) and the generator in it, checked against its
own record. ``subsample evaluate`` and the sampler scripts use this; ``pipeline.stages.train``
writes what it reads.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from pipeline.gan.models import ModelSpec, build_generator
from storage.artifacts import Artifact, open_artifact
from storage.errors import SubsampleError, brief
from storage.paths import check_name, is_run_id, is_train_key, stage_dir

STAGE = "train"


def find_train_artifact(run: str, stage: str = STAGE):
    """The train artifact for ``run``: a train key, or an MLflow run id (found by the manifests'
    ``mlflow_run_id``, else by the MLflow run's ``subsample.train_key`` tag). ``run`` is never a
    path: anything but 16 or 32 hex digits is refused before it is joined to one. ``stage`` names
    the command in the error lines (``evaluate`` for ``subsample evaluate``)."""
    from storage.paths import home

    root = stage_dir(STAGE)
    if not (is_train_key(run) or is_run_id(run)):
        raise SubsampleError(
            stage,
            f"RUN {run!r} is neither a train key (16 hex digits) nor an MLflow run id (32 hex digits); "
            f"RUN names a finished `subsample train` run under {home()}, never a path",
        )
    if is_train_key(run) and (root / run / "manifest.json").exists():
        art = open_artifact(STAGE, run)
        if art is None:
            raise SubsampleError(
                stage, f"train artifact {root / run} fails its content hash; re-run the training with --refresh"
            )
        return art
    if is_run_id(run):
        for manifest in root.glob("*/manifest.json"):
            try:
                if json.loads(manifest.read_text()).get("summary", {}).get("mlflow_run_id") == run and is_train_key(
                    manifest.parent.name
                ):
                    return find_train_artifact(manifest.parent.name, stage)
            except (OSError, ValueError):
                continue
        from storage import tracking

        key = tracking.run_tag(run, tracking.TRAIN_KEY_TAG)
        if key and is_train_key(key) and (root / key / "manifest.json").exists():
            return find_train_artifact(key, stage)
    raise SubsampleError(
        stage,
        f"no finished training run {run!r} under {home()}: give a train key (a directory of {root}) or the MLflow "
        "run id of a finished `subsample train` run",
    )


def load_generator(run: str, *, map_location: str | torch.device = "cpu", stage: str = STAGE) -> tuple[nn.Module, dict]:
    """The trained generator of ``run`` (train key or MLflow run id), in eval mode, and its info:
    ``dataset, key, mlflow_run_id, z_dim, image_size, tables, features, batches, train, model, path``.
    G maps z (N, z_dim) to images (N, 3, S, S) in [-1, 1]. ``generator.pt`` is loaded weights-only
    and its contents checked: the key it names must be its artifact's, the data set a valid name."""
    return open_generator(find_train_artifact(run, stage), map_location=map_location, stage=stage)


def open_generator(
    art: Artifact, *, map_location: str | torch.device = "cpu", stage: str = STAGE
) -> tuple[nn.Module, dict]:
    """:func:`load_generator` for a train artifact already found."""
    path = art.path / "generator.pt"

    def refuse(why: str) -> SubsampleError:
        return SubsampleError(stage, f"{path}: {why}; refusing to load it (re-run `subsample train` with --refresh)")

    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError for a file that would run code, and any garbled file
        raise refuse(f"not a generator this project wrote ({brief(e)})") from None
    if not (
        isinstance(ck, dict)
        and isinstance(ck.get("info"), dict)
        and isinstance(ck.get("model"), dict)
        and isinstance(ck.get("state_dict"), dict)
    ):
        raise refuse("expected a dict with state_dict, model and info")
    info = ck["info"]
    if info.get("key") != art.key:
        raise refuse(f"it names train key {info.get('key')!r} but lies in artifact {art.key}")
    try:
        check_name(info.get("dataset"))
        G = build_generator(ModelSpec(**ck["model"]))
        G.load_state_dict(ck["state_dict"])
    except Exception as e:  # a bad name, spec or state dict: the file is not what train writes
        raise refuse(f"inconsistent contents ({brief(e)})") from None
    G.to(map_location).eval()
    return G, {**info, "path": str(art.path)}
