"""What this machine can run: whether torch sees a CUDA device (:func:`cuda_available`, without
importing torch where there is no GPU), where a run trains (:func:`run_device`), the defaults that
fit it (:func:`machine_defaults`: a CPU-sized preset and evaluation on a CPU, the paper's on a GPU),
and the check that a CUDA device asked for exists here (:func:`check_devices`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from flows.config import effective
from storage.errors import SubsampleError


def cuda_available() -> bool:
    """Whether torch sees a CUDA (or ROCm) device. Without an NVIDIA or AMD device node the answer
    is no without importing torch (2-5 s), so the checks before a run stay fast on a CPU."""
    if not any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version", "/dev/kfd")):
        return False
    import torch

    return bool(torch.cuda.is_available())


def run_device(requested: Optional[str]) -> str:
    """``cpu`` or ``cuda``: where a run with ``device=requested`` (auto, cpu, cuda) trains."""
    if requested in ("cpu", "cuda"):
        return requested
    return "cuda" if cuda_available() else "cpu"


def check_devices(data: dict[str, Any], stage: str) -> None:
    """A CUDA device asked for (``train.device``, ``evaluate.device``, ``ingest.decode_device``, by
    ``--set``, a flag, a preset or a data set) that this machine lacks is one line, before any
    stage runs or any cached result is returned: a cache hit would otherwise hide it."""
    instead = {
        ("train", "device"): "train.device=auto (CUDA when there is one) or cpu",
        ("evaluate", "device"): "cpu, or leave the device out (CUDA when there is one)",
        ("ingest", "decode_device"): "ingest.decode_device=cpu",
    }
    for (section, field), hint in instead.items():
        value = effective(data, section, field)
        if isinstance(value, str) and value.startswith("cuda") and not cuda_available():
            raise SubsampleError(
                stage,
                f"{section}.{field}={value} asked for, but this machine has no CUDA device (torch sees none): "
                f"use {hint}, or run on a GPU machine",
            )


def machine_defaults(device: str) -> tuple[dict[str, Any], str]:
    """What a command runs on this machine when nothing says otherwise, and a one-line note: on a
    CPU the demo-sized preset and 2,000 evaluation samples with the feature-space metrics only
    (Inception ran at ~2 images/s on the 2-core development CPU: 10,000 samples take 1.5 hours);
    on a GPU the paper's preset and the full protocol (10,000 samples, IS/FID/KID)."""
    from pipeline.presets import DEVICE_PRESETS

    preset = DEVICE_PRESETS[device]
    if device == "cuda":
        return {"preset": preset, "evaluate": {}}, f"GPU found: preset {preset!r} (the paper's)"
    return (
        {"preset": preset, "evaluate": {"samples": 2000, "fidelity": False}},
        f"no GPU: preset {preset!r} (CPU-sized; the paper's is paper-constructed, days on a CPU; --preset P picks one)"
        "; an evaluation of 2,000 samples without IS/FID/KID (--set evaluate.fidelity=true adds them)",
    )


def evaluate_machine_defaults(device: str) -> tuple[dict[str, Any], Optional[str]]:
    """``subsample evaluate``'s defaults here: on a CPU 2,000 samples, feature-space metrics only."""
    layer, _ = machine_defaults(device)
    if device == "cuda":
        return {}, None
    return layer["evaluate"], (
        "evaluate: no GPU: 2,000 samples and the feature-space metrics only (IS/FID/KID run Inception at "
        "~2 images/s on a CPU); --samples N and --fidelity change that"
    )
