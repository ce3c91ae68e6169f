"""The training stage: a GAN trained on the batches stage's batches (spec §6).

``run_train(dataset, cfg, batches)`` trains G and D (``pipeline.models``) with a training method
(``pipeline.methods``: by default a loss and penalties from ``pipeline.losses``) on the batches that :class:`pipeline.sampler.SubsampleBatchSampler`
constructs from the cached joint table: epoch e trains on exactly the batches ``subsample batches``
stores for epoch e. The artifact::

    stages/train/<key>/
        generator.pt      {"state_dict", "model" (ModelSpec), "info"}: what load_generator needs
        metrics.jsonl     one JSON line per epoch: losses, D(x), D(G(z)), feature KL/JS, timing
        grids/epoch_XXXX.png   fixed-z samples after each epoch (1-based)
        loss_curve.png    per-step D and G losses, per-epoch feature KL
        checkpoint.pt     the last checkpoint (models, optimisers, RNG states, history)
        manifest.json

with ``key = H(train params, batches params, tables artifact hash, store hash, CODE_VERSION)``.
Until the run finishes it lives in ``stages/train/<key>.work/`` (checkpoints, grids so far), which
survives a kill; ``--resume`` continues from its checkpoint exactly (on a CPU a killed and resumed
run gives bit-for-bit the losses of an uninterrupted one). Every run is also an MLflow run in the
experiment ``subsample/<dataset>`` (``storage.tracking``).

Data path: the uint8 store is read once into one tensor, on the GPU when it fits (else in pinned
host memory), each batch is gathered by index and converted to float [-1, 1] on the fly; no
DataLoader in the hot path. Per-step losses stay on the device and are read back every
``SYNC_EVERY`` steps, so the loop does not wait on the GPU at every step.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.config import BatchesConfig, FeaturesConfig, TablesConfig, TrainConfig
from pipeline.losses import make_optimizer
from pipeline.models import ModelSpec, build_discriminator, build_generator
from storage.artifacts import artifact_key, build_artifact, cached_summary, open_artifact
from storage.errors import SubsampleError
from storage.paths import stage_dir

STAGE = "train"
CODE_VERSION = "train/1"
SYNC_EVERY = 50  # steps between reading losses back from the device (and the NaN check)
GEN_CHUNK = 500  # images generated at once for grids and the feature KL


# --- data --------------------------------------------------------------------------------------


def load_images(store: Any, device: torch.device, progress: bool = True) -> Tensor:
    """The whole store as one uint8 tensor (N, S, S, 3), read chunk by chunk: on the GPU when it
    takes under half the free memory, else in (pinned, for CUDA) host memory."""
    from tqdm import tqdm

    n, s = store.n, store.size
    nbytes = n * s * s * 3
    on_device = device.type == "cuda" and nbytes < 0.5 * torch.cuda.mem_get_info(device)[0]
    where = device if on_device or device.type != "cuda" else torch.device("cpu")
    out = torch.empty((n, s, s, 3), dtype=torch.uint8, device=where, pin_memory=device.type == "cuda" and not on_device)
    step = int(store.images.chunks[0])
    for start in tqdm(range(0, n, step), desc="load images", unit="chunk", disable=not progress, file=sys.stderr, leave=False):
        out[start : start + step] = torch.from_numpy(np.asarray(store.images[start : start + step]))
    return out


def to_float(batch: Tensor, channels_last: bool) -> Tensor:
    """uint8 (B, S, S, 3) -> float (B, 3, S, S) in [-1, 1]. The NHWC data permuted to NCHW is
    already channels-last in memory, so that format costs nothing."""
    x = batch.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return x if channels_last else x.contiguous()


def to_uint8(images: Tensor) -> np.ndarray:
    """float (N, 3, S, S) in [-1, 1] -> uint8 (N, S, S, 3) numpy, as the feature kernels want."""
    x = ((images.float() + 1) * 127.5).round().clamp_(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def make_sampler(table: Any, batches: BatchesConfig) -> Any:
    """The batches stage's sampler, constructing each epoch from the table (spec §3)."""
    from pipeline.sampler import SubsampleBatchSampler

    return SubsampleBatchSampler(
        table, batch_size=batches.batch_size, strategy=batches.strategy, seed=batches.seed,
        top_k=batches.top_k, fill=batches.fill, topup=batches.topup, num_replicas=1, rank=0,
    )


def epoch_indices(sampler: Any, epoch: int, device: torch.device) -> list[Tensor]:
    """Epoch ``epoch``'s batches as index tensors on ``device`` (one host-to-device copy)."""
    sampler.set_epoch(epoch)
    idx = [torch.as_tensor(b, dtype=torch.int64) for b in sampler]
    if not idx:
        return []
    return list(torch.cat(idx).to(device).split([len(b) for b in idx]))


# --- the run's state -----------------------------------------------------------------------------


@dataclass
class Trainer:
    """Models, optimisers and counters of one run, and the fixed z of its samples."""

    cfg: TrainConfig
    spec: ModelSpec
    device: torch.device
    G: nn.Module
    D: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    G_train: nn.Module  # G or torch.compile(G): what the loop calls
    D_train: nn.Module
    z_fixed: Tensor  # (max(sample_grid, kl_samples), z_dim), from the run seed
    bf16: bool
    epoch: int = 0  # the next epoch to run (the sampler's epoch)
    step: int = 0  # D steps so far
    g_steps: int = 0
    history: dict = field(default_factory=lambda: {"epochs": [], "loss_d": [], "loss_g": [], "g_steps_at": []})
    method: Any = None  # the pipeline.methods.TrainingMethod taking the steps (make_trainer sets it)
    kl_floor: dict | None = None  # the feature KL's floor at kl_samples (pipeline.floors), when known

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SubsampleError(STAGE, "device=cuda requested but CUDA is not available; use --set device=auto or cpu")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def make_trainer(cfg: TrainConfig, image_size: int, device: torch.device, n_classes: int = 0) -> Trainer:
    """Models, optimisers and the training method; ``n_classes`` for architectures and methods
    that use the store's labels."""
    from pipeline.methods import build_method

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    spec = ModelSpec(
        arch=cfg.arch, image_size=image_size, z_dim=cfg.z_dim, ngf=cfg.ngf, ndf=cfg.ndf,
        spectral_norm=cfg.spectral_norm, d_batchnorm=cfg.d_batchnorm, n_classes=n_classes,
    )
    try:
        G, D = build_generator(spec).to(device), build_discriminator(spec).to(device)
    except ValueError as e:
        raise SubsampleError(STAGE, str(e)) from None
    if cfg.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    opt_g = make_optimizer(cfg.optimizer, G.parameters(), cfg.lr_g, cfg)
    opt_d = make_optimizer(cfg.optimizer, D.parameters(), cfg.lr_d, cfg)
    G_train, D_train = G, D
    if cfg.compile:
        G_train = torch.compile(G)
        if not (cfg.gp_weight or cfg.r1_weight):  # compiled graphs do not support double backward
            D_train = torch.compile(D)
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # fixed z, independent of the training RNG
    z_fixed = torch.randn(max(cfg.sample_grid, cfg.kl_samples), cfg.z_dim, generator=gen).to(device)
    bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    t = Trainer(cfg, spec, device, G, D, opt_g, opt_d, G_train, D_train, z_fixed, bf16)
    t.method = build_method(t)  # checks the method fits the architecture, builds its extra modules
    return t


# --- one epoch -----------------------------------------------------------------------------------


class NonFiniteLoss(Exception):
    def __init__(self, which: str, step: int):
        super().__init__(which, step)
        self.which, self.step = which, step


def train_epoch(t: Trainer, images: Tensor, batches: list[Tensor], bar: Any = None, labels: Tensor | None = None) -> dict:
    """One pass over the epoch's batches: a D step per batch, a G step after every ``d_steps`` D
    steps, as the run's training method takes them (``pipeline.methods``). ``labels`` (N,) is
    indexed like ``images`` when the method or architecture uses classes. Returns the epoch's
    per-step losses (host floats); raises :class:`NonFiniteLoss`."""
    cfg, method = t.cfg, t.method
    d_rec: list[Tensor] = []  # (loss_d, D's score on real, on generated) per D step, on the device
    g_rec: list[Tensor] = []  # loss_g per G step
    out: dict[str, list] = {"d": [], "g": [], "g_steps_at": []}
    method.epoch_start(t, len(batches))
    for idx in batches:
        if cfg.max_steps is not None and t.step >= cfg.max_steps:
            break
        real = to_float(images[idx].to(t.device, non_blocking=True), cfg.channels_last)
        y = None if labels is None else labels[idx].to(t.device, non_blocking=True)
        method.before_step(t, real, y)  # learning-rate schedule; decoding-constrained's reconstruction
        d_rec.append(method.d_step(t, real, y))
        t.step += 1
        if t.step % cfg.d_steps == 0:  # G step on the last D step's generated images (as pytorch/examples dcgan)
            g_rec.append(method.g_step(t, real, y))
            t.g_steps += 1
            out["g_steps_at"].append(t.step)
        if len(d_rec) >= SYNC_EVERY:
            _flush(t, d_rec, g_rec, out, bar)
        if bar is not None:
            bar.update(1)
    _flush(t, d_rec, g_rec, out, bar)
    return out


def _flush(t: Trainer, d_rec: list, g_rec: list, out: dict, bar: Any) -> None:
    """Read the recorded losses back from the device and check them (one sync per call)."""
    d = torch.stack(d_rec).tolist() if d_rec else []
    g = torch.stack(g_rec).tolist() if g_rec else []
    first_step = t.step - len(d) + 1
    for i, row in enumerate(d):
        if not math.isfinite(row[0]):
            raise NonFiniteLoss("D", first_step + i)
    g_at = out["g_steps_at"][len(out["g"]) :]
    for v, at in zip(g, g_at):
        if not math.isfinite(v):
            raise NonFiniteLoss("G", at)
    out["d"] += d
    out["g"] += g
    d_rec.clear()
    g_rec.clear()
    if bar is not None and d:
        bar.set_postfix(loss_d=f"{d[-1][0]:.3f}", loss_g=f"{g[-1]:.3f}" if g else "-", refresh=False)


# --- samples and per-epoch metrics --------------------------------------------------------------


@torch.no_grad()
def generate(G: nn.Module, z: Tensor) -> Tensor:
    """G's images for ``z`` in eval mode (batch-norm running statistics), float32, in chunks."""
    was_training = G.training
    G.eval()
    try:
        return torch.cat([G(c).float() for c in z.split(GEN_CHUNK)])
    finally:
        G.train(was_training)


def feature_divergence(images: Tensor, table: Any) -> dict[str, float]:
    """KL(f_G || f_X) and JS of generated images vs the training table (spec §5; binned with the
    training scale, f_X smoothed with 0.5 per cell: ``pipeline.metrics.feature_kl``)."""
    from kernels.features import compute_features
    from pipeline.metrics import feature_kl

    values = compute_features(to_uint8(images), names=tuple(table.features))
    return feature_kl(table.bin_values(values), table)


def save_grid(images: Tensor, path: Path) -> None:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.float().cpu(), path, nrow=int(math.ceil(math.sqrt(len(images)))), normalize=True, value_range=(-1, 1))


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


# --- checkpoints -----------------------------------------------------------------------------------


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    kind, keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(s["python"])


def save_checkpoint(t: Trainer, path: Path) -> None:
    """Everything a resume needs, written atomically (temporary file + os.replace)."""
    payload = {
        "G": t.G.state_dict(), "D": t.D.state_dict(),
        "opt_g": t.opt_g.state_dict(), "opt_d": t.opt_d.state_dict(), "method": t.method.state_dict(),
        "epoch": t.epoch, "step": t.step, "g_steps": t.g_steps,
        "history": t.history, "rng": rng_state(), "config": t.cfg.model_dump(mode="json"),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(t: Trainer, path: Path) -> None:
    try:
        ck = torch.load(path, map_location=t.device, weights_only=True)
    except Exception as e:
        raise SubsampleError(STAGE, f"cannot read checkpoint {path} ({e}); re-run with --refresh to start over") from None
    t.G.load_state_dict(ck["G"])
    t.D.load_state_dict(ck["D"])
    t.opt_g.load_state_dict(ck["opt_g"])
    t.opt_d.load_state_dict(ck["opt_d"])
    t.method.load_state_dict(ck["method"])
    t.epoch, t.step, t.g_steps, t.history = ck["epoch"], ck["step"], ck["g_steps"], ck["history"]
    ck["rng"]["torch"] = ck["rng"]["torch"].cpu()
    ck["rng"]["cuda"] = [s.cpu() for s in ck["rng"]["cuda"]]
    ck["rng"]["numpy"][1] = ck["rng"]["numpy"][1].cpu()
    set_rng_state(ck["rng"])


def plot_losses(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    d = np.asarray(history["loss_d"], dtype=np.float64)
    ax1.plot(np.arange(1, len(d) + 1), d, lw=0.7, label="D loss")
    ax1.plot(history["g_steps_at"], history["loss_g"], lw=0.7, label="G loss")
    ax1.set_xlabel("D step")
    ax1.set_title("losses per step")
    ax1.legend()
    ep = history["epochs"]
    ax2.plot([e["epoch"] for e in ep], [e["feature_kl"] for e in ep], marker="o", label="KL(f_G || f_X)")
    ax2.plot([e["epoch"] for e in ep], [e["feature_js"] for e in ep], marker="o", label="JS(f_G, f_X)")
    ax2.set_xlabel("epoch")
    ax2.set_title("feature-space divergence (fixed z)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- the stage ------------------------------------------------------------------------------------


def train_key(cfg: TrainConfig, batches: BatchesConfig, tables_hash: str, store_hash: str) -> str:
    return artifact_key(STAGE, _key_params(cfg, batches), {"tables": tables_hash, "store": store_hash}, CODE_VERSION)


def _key_params(cfg: TrainConfig, batches: BatchesConfig) -> dict:
    # the batches' epochs count is the batches stage's business: training constructs its own epochs
    return {**cfg.key_params(), "batches": {k: v for k, v in batches.key_params().items() if k != "epochs"}}


def class_labels(cfg: TrainConfig, store: Any, dataset: str) -> np.ndarray | None:
    """The store's labels (int64, N) when the architecture or the method uses classes, else None."""
    from pipeline.methods import METHODS
    from pipeline.models import ARCHITECTURES

    if not (ARCHITECTURES[cfg.arch].labels or METHODS[cfg.method].needs_labels(cfg)):
        return None
    if store.labels is None:
        raise SubsampleError(
            STAGE, f"arch {cfg.arch!r} / method {cfg.method!r} (preset {cfg.preset or 'custom'}) trains on class labels, "
            f"but data set {dataset} ({store.path}) has none: ingest a labelled source (CIFAR-10, IDX with its labels "
            "file, .npz with 'labels') or pick an unconditional preset",
        )
    labels = np.asarray(store.labels[:], dtype=np.int64)
    if len(labels) and labels.min() < 0:
        raise SubsampleError(STAGE, f"data set {dataset} ({store.path}) has negative labels; classes must be 0..N-1")
    return labels


def work_dir(key: str) -> Path:
    return stage_dir(STAGE) / f"{key}.work"


def run_train(
    dataset: str,
    cfg: TrainConfig,
    batches: BatchesConfig,
    tables: TablesConfig = TablesConfig(),
    features: FeaturesConfig = FeaturesConfig(),
    *,
    resume: bool = False,
    refresh: bool = False,
    progress: bool = True,
) -> dict:
    """Train (or find cached) a GAN on ``dataset``'s batches; returns the stage summary."""
    from pipeline.tables import load_table, tables_artifact
    from storage.store import open_store

    t0 = time.perf_counter()
    store = open_store(dataset)
    tables_art = tables_artifact(dataset, tables, features)
    key = train_key(cfg, batches, tables_art.content_hash, store.content_hash)
    base = {"stage": STAGE, "dataset": dataset, "key": key}
    if not refresh and (hit := cached_summary(STAGE, key, started=t0, **base)) is not None:
        return hit

    if batches.batch_size > store.n:
        raise SubsampleError(
            STAGE, f"batch size {batches.batch_size} (preset {cfg.preset or 'custom'}"
            f"{', resolved for this data set' if cfg.preset else ''}) is larger than {dataset} ({store.n} images); "
            "pass --batch-size (`subsample presets` shows each preset's batch sizes per data set)",
        )
    table = load_table(tables_art)
    device = resolve_device(cfg.device)
    labels = class_labels(cfg, store, dataset)
    t = make_trainer(cfg, store.size, device, n_classes=0 if labels is None else int(labels.max()) + 1)
    from pipeline.floors import cached_feature_kl_floor

    t.kl_floor = cached_feature_kl_floor(table, tables_art.content_hash, cfg.kl_samples)
    sampler = make_sampler(table, batches)
    if len(sampler) == 0:
        raise SubsampleError(STAGE, f"{dataset} has {store.n} images, fewer than one batch of {batches.batch_size}")

    work = work_dir(key)
    ckpt = work / "checkpoint.pt"
    run_file = work / "run.json"
    resumed_from = None
    if resume and ckpt.exists():
        load_checkpoint(t, ckpt)
        resumed_from = t.epoch
    elif work.exists():
        if ckpt.exists():
            print(f"{STAGE}: discarding the unfinished run in {work} (pass --resume to continue it)", file=sys.stderr)
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    run_info = json.loads(run_file.read_text()) if resumed_from is not None and run_file.exists() else {}
    images = load_images(store, device, progress)
    if labels is not None:
        labels = torch.from_numpy(labels).to(images.device)
    labels = t.method.attach_data(t, images, labels)

    run_id = _start_tracking(cfg, batches, tables, features, dataset, key, store, tables_art, run_info.get("mlflow_run_id"))
    run_file.write_text(json.dumps({"key": key, "dataset": dataset, "mlflow_run_id": run_id}))

    try:
        _train_loop(t, table, sampler, images, batches.batch_size, work, run_id, progress, labels)
    except NonFiniteLoss as e:
        _end_tracking(run_id, "FAILED")
        last = f"{ckpt} (after epoch {_ckpt_epoch(ckpt)})" if ckpt.exists() else "none (no epoch had finished)"
        raise SubsampleError(
            STAGE, f"non-finite {e.which} loss at epoch {t.epoch + 1} step {e.step}; last good checkpoint: {last}"
        ) from None
    except BaseException:
        _end_tracking(run_id, "KILLED")
        raise

    # the finished artifact
    info = {
        "dataset": dataset, "key": key, "mlflow_run_id": run_id, "z_dim": cfg.z_dim, "image_size": store.size,
        "tables": tables.model_dump(mode="json"), "features": features.model_dump(mode="json"),
        "batches": batches.model_dump(mode="json"), "train": cfg.model_dump(mode="json"),
        "model": t.spec.to_dict(),
    }
    last = t.history["epochs"][-1]
    train_seconds = sum(e["seconds"] for e in t.history["epochs"])
    summary = {
        **base,
        "preset": cfg.preset, "strategy": batches.strategy, "batch_size": batches.batch_size,
        "epochs": len(t.history["epochs"]), "steps": t.step, "g_steps": t.g_steps,
        "loss_d": last["loss_d"], "loss_g": last["loss_g"],
        "feature_kl": last["feature_kl"], "feature_kl_floor": t.kl_floor["mean"], "feature_kl_samples": cfg.kl_samples,
        "feature_js": last["feature_js"],
        "images_per_second": round(t.step * batches.batch_size / train_seconds, 1) if train_seconds else None,
        "train_seconds": round(train_seconds, 3), "device": str(device), "bf16": t.bf16,
        "resumed_from_epoch": resumed_from, "mlflow_run_id": run_id,
    }
    with build_artifact(STAGE, key, params=_key_params(cfg, batches),
                        inputs={"tables": tables_art.content_hash, "store": store.content_hash},
                        code_version=CODE_VERSION) as b:
        torch.save({"state_dict": t.G.state_dict(), "model": t.spec.to_dict(), "info": info}, b.path / "generator.pt")
        shutil.copytree(work / "grids", b.path / "grids")
        shutil.copy2(ckpt, b.path / "checkpoint.pt")
        _write_metrics(t.history, b.path / "metrics.jsonl")
        plot_losses(t.history, b.path / "loss_curve.png")
        final = stage_dir(STAGE) / key
        summary.update(grids=str(final / "grids"), generator=str(final / "generator.pt"))
        b.summary = summary
    shutil.rmtree(work, ignore_errors=True)
    if run_id:
        from storage import tracking

        tracking.log_artifacts(run_id, [
            (final / "grids", "grids"), (final / "loss_curve.png", None), (final / "generator.pt", None),
            (final / "metrics.jsonl", None), (tables_art.path / "heatmap.png", "table"),
        ])
        tracking.set_tags(run_id, {"subsample.train_path": str(final)})
        tracking.end_run(run_id, "FINISHED")
    return {**summary, "path": str(final), "cache_hit": False, "seconds": round(time.perf_counter() - t0, 3)}


def _train_loop(t: Trainer, table: Any, sampler: Any, images: Tensor, batch_size: int, work: Path,
                run_id: str | None, progress: bool, labels: Tensor | None = None) -> None:
    from tqdm import tqdm

    cfg = t.cfg
    while t.epoch < cfg.epochs and (cfg.max_steps is None or t.step < cfg.max_steps):
        epoch = t.epoch
        batches = epoch_indices(sampler, epoch, images.device)
        with tqdm(total=len(batches), desc=f"train epoch {epoch + 1}/{cfg.epochs}", unit="step",
                  disable=not progress, file=sys.stderr, leave=False) as bar:
            t0 = time.perf_counter()
            losses = train_epoch(t, images, batches, bar, labels)
            seconds = time.perf_counter() - t0
        m = epoch_metrics(t, epoch, losses, seconds, batch_size, table)
        save_grid(generate(t.G, t.z_fixed[: cfg.sample_grid]), work / "grids" / f"epoch_{epoch + 1:04d}.png")
        t.history["epochs"].append(m)
        t.history["loss_d"] += [row[0] for row in losses["d"]]
        t.history["loss_g"] += losses["g"]
        t.history["g_steps_at"] += losses["g_steps_at"]
        t.epoch = epoch + 1
        done = t.epoch >= cfg.epochs or (cfg.max_steps is not None and t.step >= cfg.max_steps)
        if t.epoch % cfg.checkpoint_every == 0 or done:
            save_checkpoint(t, work / "checkpoint.pt")
        _write_metrics(t.history, work / "metrics.jsonl")
        if run_id:
            from storage import tracking

            tracking.log_metrics(run_id, mlflow_epoch_metrics(m, cfg.kl_samples), step=m["epoch"])
        if progress:
            print(f"{STAGE}: epoch {m['epoch']}/{cfg.epochs} loss_d {_fmt(m['loss_d'])} loss_g {_fmt(m['loss_g'])} "
                  f"feature_kl {m['feature_kl']:.4f} (floor {_fmt(m.get('feature_kl_floor'))} at {cfg.kl_samples} "
                  f"samples) {m['images_per_second']} img/s", file=sys.stderr)


def mlflow_epoch_metrics(m: dict, kl_samples: int) -> dict:
    """An epoch's metrics as MLflow keys: the feature KL and JS carry their sample size
    (``feature_kl2048``, ``feature_js2048``, floor ``feature_kl2048_floor`` and its s.d.), so they are never
    mistaken for the evaluation's ``eval/feature_kl{N}_train`` at another N."""
    from pipeline.metrics import count_tag

    tag = count_tag(kl_samples)
    rename = {"feature_kl": f"feature_kl{tag}", "feature_js": f"feature_js{tag}",
              "feature_kl_floor": f"feature_kl{tag}_floor", "feature_kl_floor_sd": f"feature_kl{tag}_floor_sd"}
    return {rename.get(k, k): v for k, v in m.items() if k not in ("epoch", "step")}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _write_metrics(history: dict, path: Path) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in history["epochs"]))


def _ckpt_epoch(path: Path) -> int | str:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:
        return "?"


def _start_tracking(cfg, batches, tables, features, dataset, key, store, tables_art, run_id) -> str | None:
    """The MLflow run: the resumed one, or a new one with every parameter logged."""
    if not cfg.track:
        return None
    from storage import tracking

    if run_id:
        tracking.reopen_run(run_id)
        return run_id
    params = {
        "train": cfg.model_dump(mode="json"),
        "batches": batches.model_dump(mode="json"),
        "tables": tables.model_dump(mode="json"),
        "features": features.model_dump(mode="json"),
        "dataset": dataset, "dataset_content_hash": store.content_hash, "n_images": store.n,
        "image_size": store.size, "tables_content_hash": tables_art.content_hash,
        "code_version": CODE_VERSION, "train_key": key,
    }
    name = f"{cfg.preset or 'custom'}-{batches.strategy}-B{batches.batch_size}-{key[:6]}"
    return tracking.start_run(dataset, run_name=name, tags={tracking.TRAIN_KEY_TAG: key}, params=params)


def _end_tracking(run_id: str | None, status: str) -> None:
    if not run_id:
        return
    try:
        from storage import tracking

        tracking.end_run(run_id, status)
    except Exception as e:  # the training error matters more than the bookkeeping
        print(f"{STAGE}: could not mark MLflow run {run_id} {status}: {e}", file=sys.stderr)


# --- loading a trained generator -------------------------------------------------------------------


def find_train_artifact(run: str):
    """The train artifact for ``run``: a train key, or an MLflow run id (found by the manifests'
    ``mlflow_run_id``, else by the MLflow run's ``subsample.train_key`` tag)."""
    from storage.paths import home

    root = stage_dir(STAGE)
    if (root / run / "manifest.json").exists():
        art = open_artifact(STAGE, run)
        if art is None:
            raise SubsampleError(STAGE, f"train artifact {root / run} fails its content hash; re-run the training with --refresh")
        return art
    for manifest in root.glob("*/manifest.json"):
        try:
            if json.loads(manifest.read_text()).get("summary", {}).get("mlflow_run_id") == run:
                return find_train_artifact(manifest.parent.name)
        except (OSError, ValueError):
            continue
    key = None
    if len(run) == 32 and all(c in "0123456789abcdef" for c in run):
        from storage import tracking

        key = tracking.run_tag(run, tracking.TRAIN_KEY_TAG)
    if key and (root / key / "manifest.json").exists():
        return find_train_artifact(key)
    raise SubsampleError(
        STAGE,
        f"no finished training run {run!r} under {home()}: give a train key (a directory of {root}) or the MLflow "
        "run id of a finished `subsample train` run",
    )


def load_generator(run: str, *, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The trained generator of ``run`` (train key or MLflow run id), in eval mode, and its info:
    ``dataset, key, mlflow_run_id, z_dim, image_size, tables, features, batches, train, model, path``.
    G maps z (N, z_dim) to images (N, 3, S, S) in [-1, 1]."""
    art = find_train_artifact(run)
    ck = torch.load(art.path / "generator.pt", map_location=map_location, weights_only=True)
    G = build_generator(ModelSpec(**ck["model"]))
    G.load_state_dict(ck["state_dict"])
    G.to(map_location).eval()
    return G, {**ck["info"], "path": str(art.path)}
