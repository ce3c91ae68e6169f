"""The feature extractor's weights, handled as hostile files: found on disk (``--weights``, the
torch hub cache, ``$SUBSAMPLE_HOME/weights``) or downloaded once, loaded weights-only, checked to be
the extractor's state dict, and handed to torch-fidelity as bytes this process wrote.

torch-fidelity 0.4.0 loads a weights file with torch.load(weights_only=False) (Inception, VGG16),
torch.jit.load (CLIP) or torch.hub.load (DINOv2, code from GitHub), and torchvision's default
VGG16 weights through torch.hub.load_state_dict_from_url(weights_only=False): each can run code
from a file. So the project loads every weights file itself, weights-only, checks it is the
extractor's state dict, and hands torch-fidelity those tensors re-serialised in memory: the bytes
torch-fidelity unpickles are ones this process wrote. Extractors whose weights cannot be loaded
weights-only (TorchScript archives, hub code) are refused.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import socket
import sys
import urllib.error
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from pipeline.config import EvaluateConfig
from storage.errors import SubsampleError, brief
from storage.paths import home, inside_home
from storage.safe_io import checked, make_dirs

STAGE = "evaluate"
INCEPTION = "inception-v3-compat"


class WeightsUnavailable(Exception):
    """The feature extractor's weights are neither local nor downloadable; ``str`` is the reason."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout)


def _check_inception(sd: dict) -> bool:
    return "Conv2d_1a_3x3.conv.weight" in sd and "fc.weight" in sd and tuple(sd["fc.weight"].shape)[:1] == (1008,)


def _check_vgg16(sd: dict) -> bool:
    return (
        "features.0.weight" in sd
        and "classifier.6.weight" in sd
        and tuple(sd["classifier.6.weight"].shape) == (1000, 4096)
    )


@dataclass(frozen=True)
class ExtractorWeights:
    """An extractor whose weights the project loads itself: the file torch-fidelity would fetch
    (``url``; the sha256 prefix in its name is checked on download), what its state dict looks like."""

    label: str
    url: Callable[[], str]
    check: Callable[[dict], bool]


def _inception_url() -> str:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return URL_INCEPTION_V3


def _vgg16_url() -> str:
    import torchvision

    return torchvision.models.VGG16_Weights.IMAGENET1K_V1.url


SAFE_EXTRACTORS: dict[str, ExtractorWeights] = {
    INCEPTION: ExtractorWeights("Inception", _inception_url, _check_inception),
    "vgg16": ExtractorWeights("VGG16", _vgg16_url, _check_vgg16),
}


def _unsafe_extractor(name: str) -> str | None:
    """Why torch-fidelity's extractor ``name`` can run code from a file, or None."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    cls = FEATURE_EXTRACTORS_REGISTRY.get(name)
    mod = getattr(cls, "__module__", "")
    if mod.endswith("feature_extractor_clip"):
        return "its weights are a TorchScript archive (torch.jit.load)"
    if mod.endswith("feature_extractor_dinov2"):
        return "it runs model code fetched with torch.hub.load"
    return None


def weights_dir() -> Path:
    """Where downloaded extractor weights go: under the home, like everything the project writes."""
    return inside_home(home() / "weights", what="weights folder")


def default_weights(extractor: str, *, timeout_s: float = 20.0, progress: bool = False) -> Path:
    """The default weights file of a :data:`SAFE_EXTRACTORS` extractor: torch hub's cache copy when
    present, else ``$SUBSAMPLE_HOME/weights/`` (downloaded if missing, socket timeout
    ``timeout_s``, so a dead network fails instead of hanging; the sha256 prefix in the file name
    is checked). Raises :class:`WeightsUnavailable` with the one-line reason when that fails."""
    spec = SAFE_EXTRACTORS[extractor]
    url = spec.url()
    fname = url.rsplit("/", 1)[-1]
    for cached in (Path(torch.hub.get_dir()) / "checkpoints" / fname, weights_dir() / fname):
        if cached.is_file():
            return cached
    dest = weights_dir() / fname
    old = socket.getdefaulttimeout()
    try:
        make_dirs(dest.parent, what="weights folder")
        checked(dest, what="downloaded weights")  # inside the home; torch.hub renames its temporary file onto it
        socket.setdefaulttimeout(timeout_s)
        prefix = torch.hub.HASH_REGEX.search(fname)
        with redirect_stdout(sys.stderr):  # torch.hub announces downloads on stdout
            torch.hub.download_url_to_file(
                url, str(dest), hash_prefix=prefix.group(1) if prefix else None, progress=progress
            )
    except (*_NETWORK_ERRORS, OSError, RuntimeError) as e:
        reason = getattr(e, "reason", None) or e
        raise WeightsUnavailable(
            f"{spec.label} weights not available offline (tried to download {fname} into {dest.parent}: {reason}); "
            "pass --weights PATH to a local copy"
        ) from None
    finally:
        socket.setdefaulttimeout(old)
    return dest


def inception_weights(*, timeout_s: float = 20.0, progress: bool = False) -> Path:
    """Path of torch-fidelity's Inception weights (:func:`default_weights`)."""
    return default_weights(INCEPTION, timeout_s=timeout_s, progress=progress)


def load_state_dict_safely(
    path: str | Path | io.BytesIO, extractor: str | None = None, *, name: str | Path | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, loaded weights-only (a file that would run code when
    unpickled is refused: one :class:`SubsampleError` line), checked to be a flat state dict and,
    for a :data:`SAFE_EXTRACTORS` extractor, that extractor's. ``name``: the file's name for
    messages when ``path`` is its bytes."""
    source, path = path, name if name is not None else path
    try:
        sd = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for code, and every kind of garbled file
        raise SubsampleError(
            STAGE,
            f"weights {path} cannot be loaded weights-only ({brief(e)}); refusing it "
            "(a weights file must be a plain state dict of tensors)",
        ) from None
    if (
        not isinstance(sd, dict)
        or not sd
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items())
    ):
        raise SubsampleError(STAGE, f"weights {path} are not a state dict (a dict of named tensors)")
    spec = SAFE_EXTRACTORS.get(extractor or "")
    if spec is not None and not spec.check(sd):
        fname = spec.url().rsplit("/", 1)[-1]
        raise SubsampleError(STAGE, f"weights {path} are not torch-fidelity's {spec.label} state dict ({fname})")
    return sd


def check_inception_weights(path: Path) -> None:
    """Refuse a file that is not torch-fidelity's Inception state dict (rather than letting a
    load_state_dict traceback surface in the middle of the evaluation)."""
    load_state_dict_safely(path, INCEPTION)


def weights_handover(path: str | Path, extractor: str) -> tuple[io.BytesIO, str]:
    """What torch-fidelity gets as ``feature_extractor_weights_path``: the file's tensors, loaded
    weights-only and re-serialised in memory by this process (torch.load accepts a file object),
    and the sha256 of the bytes they were loaded from. The file is read once, so the hash names
    exactly the weights the extractor is built from (a file swapped after an earlier check is
    hashed as what it now is: caches keyed by it never mix two files' statistics)."""
    with open(path, "rb") as f:
        data = f.read()
    sd = load_state_dict_safely(io.BytesIO(data), extractor, name=path)
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return buf, hashlib.sha256(data).hexdigest()


def resolve_weights(cfg: EvaluateConfig, *, progress: bool = False) -> tuple[str | None, str]:
    """``(weights path or None, weights tag)``, the file checked (weights-only load, the
    extractor's state dict). The tag (sha256 prefix of the weights file, or ``default`` for a
    registered extractor that needs none) names the reference cache and enters the artifact key,
    so other weights never reuse cached statistics. An extractor torch-fidelity would load unsafely
    is refused."""
    fe = cfg.feature_extractor
    why = _unsafe_extractor(fe)
    if why is not None:
        raise SubsampleError(
            STAGE,
            f"feature extractor {fe!r} is refused: {why}, which can run code from a file; use "
            f"{' or '.join(SAFE_EXTRACTORS)} (weights loaded weights-only)",
        )
    if cfg.weights is not None:
        path = Path(cfg.weights).expanduser()
        if not path.is_file():
            raise SubsampleError(STAGE, f"--weights {path}: no such file; pass a local copy of the extractor's weights")
    elif fe in SAFE_EXTRACTORS:
        path = default_weights(fe, timeout_s=cfg.download_timeout_s, progress=progress)
    else:
        return None, "default"  # an extractor registered in-process (code, not a file) that needs no weights
    load_state_dict_safely(path, fe)
    return str(path.absolute()), sha256_file(path)[:16]


def cached_inception_weights() -> Path | None:
    """torch-fidelity's Inception weights in the torch hub cache, if they are there (no download)."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    path = Path(torch.hub.get_dir()) / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[-1]
    return path if path.is_file() else None
