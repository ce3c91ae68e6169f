"""What a training run records as it goes, apart from running it: the up-front time estimate
(:class:`RunClock`), each epoch's metrics (the feature KL/JS of the fixed-z samples against the
training table, D's scores, timing), the fixed-z grids, the loss figure, and the metrics' lines in
``metrics.jsonl`` and in MLflow. The train stage (``pipeline.stages.train``) calls these; the
trained generator is read back by ``pipeline.stages.generators``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pipeline.config import BatchesConfig, TrainConfig
from pipeline.gan.trainer import Trainer, generate, to_uint8

STAGE = "train"
ESTIMATE_STEPS = 10  # steps timed (after the first, which warms up) for the up-front time estimate
LONG_RUN_S = 180  # a run estimated to take longer says so, with the estimate, after those steps


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


@dataclass
class RunClock:
    """Times the first :data:`ESTIMATE_STEPS` steps after the first (which warms up: allocations,
    kernel selection) and, when the whole run would take longer than :data:`LONG_RUN_S`, says how
    long on stderr before the run goes on: steps, images/s measured, and the estimate. Training
    steps only: the per-epoch samples and checkpoints add a little."""

    total_steps: int  # D steps this invocation will take
    steps_per_epoch: int
    epochs: int
    batch_size: int
    device: torch.device
    note: Any = None  # callable(str); default: print to stderr
    first_step: int = -1
    t0: float = 0.0
    estimate_s: float | None = None  # set once measured

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # once or twice per run: the queued steps must finish
        return time.perf_counter()

    def tick(self, step: int) -> None:
        if self.estimate_s is not None:
            return
        if self.first_step < 0:
            self.first_step, self.t0 = step, self._now()
            return
        timed = step - self.first_step
        elapsed = time.perf_counter() - self.t0
        if timed < ESTIMATE_STEPS and elapsed < 30 and step - self.first_step + 1 < self.total_steps:
            return
        elapsed = self._now() - self.t0
        per_step = elapsed / max(timed, 1)
        self.estimate_s = per_step * self.total_steps
        if self.estimate_s > LONG_RUN_S:
            ips = self.batch_size / per_step
            message = (
                f"{STAGE}: about {_duration(self.estimate_s)} for {self.total_steps:,} steps ({self.epochs} epochs x "
                f"{self.steps_per_epoch} of B={self.batch_size}) at {ips:,.0f} images/s, measured on {timed} steps on "
                f"{self.device.type}; Ctrl-C stops it, --resume continues from its last epoch"
            )
            if self.note is not None:
                self.note(message)
            else:
                from tqdm import tqdm

                tqdm.write(message, file=sys.stderr)  # above the progress bar, not inside it


def feature_divergence(images: Tensor, table: Any) -> dict[str, float]:
    """KL(f_G || f_X) and JS of generated images vs the training table (spec §5; binned with the
    training scale, f_X smoothed with 0.5 per cell: ``pipeline.metrics.feature_kl``)."""
    from kernels.features import compute_features
    from pipeline.metrics import feature_kl

    values = compute_features(to_uint8(images), names=tuple(table.features))
    return feature_kl(table.bin_values(values), table)


def save_grid(images: Tensor, path: Path, title: str = "") -> None:
    """Fixed-z samples as a titled grid at least 512 px wide (``pipeline.pictures``)."""
    from pipeline.pictures import save, titled_grid

    save(titled_grid(to_uint8(images), title or path.stem), path)  # folders made, inside the home


def initial_metrics(t: Trainer, table: Any) -> dict:
    """Epoch 0: the untrained generator's feature KL/JS on the fixed z, the value a run that
    learns moves away from (eval mode: no RNG is drawn, so training is unchanged)."""
    div = feature_divergence(generate(t.G, t.z_fixed[: t.cfg.kl_samples]), table)
    return {"epoch": 0, "step": 0, "feature_kl": div["kl"], "feature_js": div["js"]}


def epoch_metrics(t: Trainer, epoch: int, losses: dict, seconds: float, batch_size: int, table: Any) -> dict:
    """One metrics.jsonl line. ``d_real``/``d_fake`` are means of sigmoid(D's logit) (``_prob``)
    for the logistic losses, of the raw D output (``_score``) for the others, of the reconstruction
    error (``_recon``) for BEGAN; the training method adds its own metrics after ``feature_js``.
    ``feature_kl_floor`` is the feature KL's floor at ``kl_samples`` (what real images score)."""
    d = np.asarray(losses["d"], dtype=np.float64).reshape(-1, 3)
    kind = t.method.score_kind
    samples = generate(t.G, t.z_fixed[: t.cfg.kl_samples])
    div = feature_divergence(samples, table)
    steps = len(d)
    return {
        "epoch": epoch + 1,
        "step": t.step,
        "g_steps": t.g_steps,
        "loss_d": float(d[:, 0].mean()) if steps else None,
        "loss_g": float(np.mean(losses["g"])) if losses["g"] else None,
        f"d_real_{kind}": float(d[:, 1].mean()) if steps else None,
        f"d_fake_{kind}": float(d[:, 2].mean()) if steps else None,
        "feature_kl": div["kl"],
        "feature_kl_floor": t.kl_floor["mean"] if t.kl_floor else None,
        "feature_kl_floor_sd": t.kl_floor["sd"] if t.kl_floor else None,
        "feature_js": div["js"],
        **t.method.epoch_metrics(t),
        "seconds": round(seconds, 3),
        "images_per_second": round(steps * batch_size / seconds, 1) if seconds > 0 else None,
    }


JS_MAX = math.log(2)  # JS in nats lies in [0, ln 2]


JS_SATURATED = 0.95  # "saturated": JS >= 95 % of ln 2, the histograms barely overlap


def plot_losses(history: dict, path: Path, title: str = "") -> None:
    """``loss_curve.png``: :func:`loss_figure`, with its title in the PNG's metadata."""
    fig = loss_figure(history, title)  # sets the Agg backend before pyplot is imported here
    import matplotlib.pyplot as plt

    from storage.safe_io import atomic_path

    with atomic_path(path, what="loss curve", suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, metadata={"Title": title or "training losses and feature divergences"})
    plt.close(fig)


def loss_figure(history: dict, title: str = "") -> Any:
    """Three panels: D and G losses per step; feature KL per epoch; feature JS per epoch with
    ln 2 marked and a note when it is saturated. Epochs from 0 (the untrained generator) when
    recorded, integer ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.6))
    d = np.asarray(history["loss_d"], dtype=np.float64)
    ax1.plot(np.arange(1, len(d) + 1), d, lw=0.7, label="D loss")
    ax1.plot(history["g_steps_at"], history["loss_g"], lw=0.7, label="G loss")
    ax1.set_xlabel("D step")
    ax1.set_title("losses per step")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.legend()
    ep = ([history["initial"]] if history.get("initial") else []) + list(history["epochs"])
    x = [e["epoch"] for e in ep]
    kl = [e["feature_kl"] for e in ep]
    js = [e["feature_js"] for e in ep]
    ax2.plot(x, kl, marker="o", ms=3, color="tab:blue")
    ax2.set_title("feature KL(f_G || f_X), fixed z (lower is better)", fontsize=10)
    ax2.set_ylabel("KL (nats)")
    ax3.plot(x, js, marker="o", ms=3, color="tab:green")
    ax3.axhline(JS_MAX, color="grey", ls="--", lw=0.8)
    ax3.text(x[0] if x else 0, JS_MAX, " ln 2 (no overlap)", va="bottom", fontsize=8, color="grey")
    ax3.set_ylim(0, JS_MAX * 1.12)
    ax3.set_title("feature JS(f_G, f_X), fixed z (lower is better)", fontsize=10)
    ax3.set_ylabel("JS (nats)")
    saturated = [e for e, v in zip(x, js) if v >= JS_SATURATED * JS_MAX]
    if saturated:  # said on the plot: a flat JS near ln 2 is "no overlap", not "no change"
        which = "every epoch" if len(saturated) == len(js) else f"{len(saturated)} of {len(js)} epochs"
        ax3.set_title(
            f"feature JS(f_G, f_X), fixed z (lower is better)\nsaturated near ln 2 in {which} (no overlap: see KL)",
            fontsize=10,
            color="darkred",
        )
    for ax in (ax2, ax3):
        ax.set_xlabel("epoch" + (" (0 = untrained)" if history.get("initial") else ""))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def mlflow_epoch_metrics(m: dict, kl_samples: int) -> dict:
    """An epoch's metrics as MLflow keys: the feature KL and JS carry their sample size
    (``feature_kl2048``, ``feature_js2048``, floor ``feature_kl2048_floor`` and its s.d.), so they are never
    mistaken for the evaluation's ``eval/feature_kl{N}_train`` at another N."""
    from pipeline.metrics import count_tag

    tag = count_tag(kl_samples)
    rename = {
        "feature_kl": f"feature_kl{tag}",
        "feature_js": f"feature_js{tag}",
        "feature_kl_floor": f"feature_kl{tag}_floor",
        "feature_kl_floor_sd": f"feature_kl{tag}_floor_sd",
    }
    return {rename.get(k, k): v for k, v in m.items() if k not in ("epoch", "step")}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _write_metrics(history: dict, path: Path) -> None:
    lines = ([history["initial"]] if history.get("initial") else []) + list(history["epochs"])
    from storage.safe_io import write_atomic

    write_atomic(path, "".join(json.dumps(e) + "\n" for e in lines), what="metrics file")


def run_name(cfg: TrainConfig, batches: BatchesConfig, key: str) -> str:
    """``paper-128a-random-B128-seed0-3f2a1c``: preset, strategy, B and seed at a glance in the
    MLflow runs table, and the key's start to tell reruns apart."""
    return f"{cfg.preset or 'custom'}-{batches.strategy}-B{batches.batch_size}-seed{batches.seed}-{key[:6]}"
