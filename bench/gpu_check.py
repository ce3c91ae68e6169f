"""The GPU check: training and evaluation throughput and a paper-constructed run, on one device.

    .venv/bin/python bench/gpu_check.py                      # one CUDA GPU: minutes (estimated: not run on a GPU yet)
    .venv/bin/python bench/gpu_check.py --device cpu --tiny  # the same code paths, tiny, on a CPU (the tests run this)

Three parts, each reported in one JSON object printed on stdout at the end (progress goes to
stderr; ``--out FILE`` also writes the JSON to a file):

(a) ``train_throughput``: DCGAN-64 (ngf = ndf = 64, B = 128) training images/s of this project's
    loop (``pipeline.gan.trainer.train_epoch``: the uint8 data set resident on the device, batches
    gathered by index, losses read back every ``SYNC_EVERY`` steps) against the pytorch/examples
    dcgan loop (a ``DataLoader`` over float images in pinned host memory, ``.item()`` every step)
    on the same models, with bf16 autocast, channels-last and torch.compile each on and off: all
    four bf16 × channels-last combinations without compile, and with compile the training stage's
    CUDA default (bf16 and channels-last on) and all off (``--all-combinations``: all eight).
    ``bench/train_throughput.py`` does the timing: interleaved rounds, medians.
(b) ``inception``: evaluate's feature extraction: the torch-fidelity Inception's forward pass
    alone, and ``pipeline.stages.fidelity.fidelity_scores`` (IS, FID and KID of N generated against N
    reference images, both extracted) in images/s. Without the pretrained weights on disk the
    extractor is randomly initialised (``weights`` says so): the throughput is the same, the
    metric values mean nothing.
(c) ``paper_constructed``: the ``paper-constructed`` preset (constructed batches, B = 2000, Adam
    2e-3) on a synthetic 50,000-image 64 px data set, trained with ``pipeline.stages.train``'s epoch
    loop for two epochs straight, and again with a checkpoint after epoch 1, a fresh trainer
    loaded from it and epoch 2: losses finite, the restored state equal to the saved one, and how
    far the resumed run's losses and weights are from the straight run's (0 on a CPU; CUDA
    kernels need not be deterministic).

It needs torch (with torchvision), numpy, numba, pillow, pydantic and tqdm, and torch-fidelity for
(b) (else (b) reports itself skipped). It never imports prefect, mlflow, zarr or dask: the data
set is an in-memory array and MLflow tracking is off (tests/test_gpu_check.py runs it with those
four made unimportable). ``--tiny`` shrinks everything (32 px, B = 16/64, 512 images, 2 Inception
images, FID/KID on Inception's 64-d features) and leaves out torch.compile, which takes minutes to
compile on a CPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def log(msg: str) -> None:
    print(f"gpu_check: {msg}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- (a) training throughput -------------------------------------------------------------------------


def train_throughput(args, device: torch.device) -> dict:
    from train_throughput import bench_size

    # compile off: all four bf16 × channels-last combinations; compile on: the training stage's
    # CUDA default (bf16 and channels-last on) and all off, unless --all-combinations (each
    # compiled combination costs a minute or two of compiling, for both loops)
    combos = [
        (bf16, cl, comp)
        for bf16, cl, comp in itertools.product((False, True), repeat=3)
        if not comp or (not args.tiny and (args.all_combinations or bf16 == cl))
    ]
    rows = []
    for bf16, cl, comp in combos:
        ns = SimpleNamespace(
            ngf=args.ngf,
            ndf=args.ndf,
            size=args.size,
            n=args.n_images,
            amp="bf16" if bf16 else "off",
            channels_last="on" if cl else "off",
            compile=comp,
            parts=("ours", "baseline"),
            rounds=args.rounds,
            steps=args.steps,
            warmup=args.warmup,
            workers=args.loader_workers if args.loader_workers is not None else (4 if device.type == "cuda" else 0),
        )
        label = (
            f"bf16={'on' if bf16 else 'off'} channels_last={'on' if cl else 'off'} compile={'on' if comp else 'off'}"
        )
        t0 = time.perf_counter()
        try:
            r = bench_size(ns, args.batch_size, device)
            row = {
                "bf16": bf16,
                "channels_last": cl,
                "compile": comp,
                "ours_images_per_second": r["ours_images_per_second"],
                "baseline_images_per_second": r["baseline_images_per_second"],
                "ours_over_baseline": r["ours_over_baseline"],
                "seconds": round(time.perf_counter() - t0, 1),
            }
            log(
                f"(a) {label}: ours {row['ours_images_per_second']:.0f} img/s, DataLoader loop "
                f"{row['baseline_images_per_second']:.0f} img/s ({row['ours_over_baseline']:.2f}x)"
            )
        except Exception as e:  # one failing combination (e.g. no compiler for torch.compile) must not hide the rest
            row = {"bf16": bf16, "channels_last": cl, "compile": comp, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            log(f"(a) {label}: FAILED {row['error']}")
        rows.append(row)
    ok = [r for r in rows if "error" not in r]
    best = max(ok, key=lambda r: r["ours_images_per_second"]) if ok else None
    return {
        "model": f"DCGAN-{args.size} ngf={args.ngf} ndf={args.ndf}",
        "batch_size": args.batch_size,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "configs": rows,
        "best": None
        if best is None
        else {k: best[k] for k in ("bf16", "channels_last", "compile", "ours_images_per_second")},
        "ok": len(ok) == len(rows),
        **({"left_out": "torch.compile (takes minutes to compile on a CPU; --tiny)"} if args.tiny else {}),
    }


# --- (b) evaluate's Inception feature extraction -------------------------------------------------------


@contextmanager
def _no_download():
    """torch-fidelity's Inception loads its weights in __init__; with none on disk, build it
    randomly initialised instead of downloading."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    real_load, real_url = fe.FeatureExtractorInceptionV3.load_state_dict, fe.load_state_dict_from_url
    fe.load_state_dict_from_url = lambda *a, **k: None
    fe.FeatureExtractorInceptionV3.load_state_dict = lambda self, sd, *a, **k: (
        None if sd is None else real_load(self, sd, *a, **k)
    )
    try:
        yield
    finally:
        fe.load_state_dict_from_url, fe.FeatureExtractorInceptionV3.load_state_dict = real_url, real_load


def inception_throughput(args, device: torch.device, tmp: Path) -> dict:
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as e:
        return {"skipped": f"torch-fidelity not installed ({e})", "ok": True}
    from pipeline.config import EvaluateConfig
    from pipeline.extractor_weights import INCEPTION, cached_inception_weights
    from pipeline.fidelity import ImageArrayDataset, fidelity_scores

    weights = Path(args.inception_weights) if args.inception_weights else cached_inception_weights()
    features = ["2048", "logits_unbiased"]
    if weights is not None:
        note = f"pretrained ({weights.name})"
        extractor = FeatureExtractorInceptionV3(INCEPTION, features, feature_extractor_weights_path=str(weights))
    else:
        note = (
            "random init: the pretrained weights are not on disk, so throughput only "
            "(the IS/FID/KID values mean nothing)"
        )
        torch.manual_seed(0)
        with _no_download():
            extractor = FeatureExtractorInceptionV3(INCEPTION, features)
        weights = tmp / "inception-random.pth"
        torch.save(extractor.state_dict(), weights)
    extractor = extractor.to(device).eval()
    n, b = args.inception_images, args.inception_batch
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (b, 3, args.size, args.size), dtype=torch.uint8, generator=gen).to(device)
    with torch.no_grad():
        extractor(batch)  # warm-up (cuDNN algorithm choice)
        sync(device)
        t0 = time.perf_counter()
        done = 0
        while done < n:
            extractor(batch)
            done += b
        sync(device)
    forward_ips = done / (time.perf_counter() - t0)
    log(f"(b) Inception forward: {forward_ips:.0f} images/s ({args.size} px upsampled to 299, batch {b}; {note})")

    rng = np.random.default_rng(1)
    fake = rng.integers(0, 256, (n, args.size, args.size, 3), dtype=np.uint8)
    real = rng.integers(0, 256, (n, args.size, args.size, 3), dtype=np.uint8)
    layers = (
        {"feature_layer_fid": "64", "feature_layer_kid": "64"} if args.tiny else {}
    )  # --tiny: no 2048² sqrtm on a CPU
    cfg = EvaluateConfig(samples=n, batch_size=b, isc_splits=max(1, min(10, n // 2)), kid_subsets=10, **layers)
    t0 = time.perf_counter()
    res = fidelity_scores(
        ImageArrayDataset(fake), ImageArrayDataset(real), cfg, weights_path=str(weights), cuda=device.type == "cuda"
    )
    seconds = time.perf_counter() - t0
    finite = all(math.isfinite(v) for v in res.metrics.values())
    log(
        f"(b) evaluate's fidelity_scores (IS+FID+KID, {n} + {n} images): {2 * n / seconds:.0f} images/s, "
        f"{seconds:.1f} s"
    )
    return {
        "weights": note,
        "image_size": args.size,
        "batch_size": b,
        "images": n,
        "forward_images_per_second": round(forward_ips, 1),
        "fidelity_scores_images_per_second": round(2 * n / seconds, 1),
        "fidelity_scores_seconds": round(seconds, 2),
        "metrics": {k: round(v, 4) for k, v in res.metrics.items()},
        "ok": finite,
    }


# --- (c) paper-constructed on a synthetic store, with a checkpoint/resume round trip -------------------


def synthetic_images(n: int, s: int, seed: int = 0) -> np.ndarray:
    """Structured toy images: a coloured disc of random size and place on a two-colour gradient
    (so the joint table of colour moment and sharpness is spread out, as a real data set's)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:s, :s].astype(np.float32) / s
    out = np.empty((n, s, s, 3), np.uint8)
    for start in range(0, n, 2048):
        k = min(2048, n - start)
        a, b = rng.uniform(0, 255, (k, 1, 1, 3)), rng.uniform(0, 255, (k, 1, 1, 3))
        t = rng.uniform(0, 1, (k, 1, 1, 1))
        grad = a + (b - a) * (t * xx[None, ..., None] + (1 - t) * yy[None, ..., None])
        cy, cx, r = (
            rng.uniform(0.2, 0.8, (k, 1, 1)),
            rng.uniform(0.2, 0.8, (k, 1, 1)),
            rng.uniform(0.05, 0.3, (k, 1, 1)),
        )
        disc = ((yy[None] - cy) ** 2 + (xx[None] - cx) ** 2 <= r**2)[..., None]
        img = np.where(disc, rng.uniform(0, 255, (k, 1, 1, 3)), grad) + rng.normal(
            0, rng.uniform(0, 12, (k, 1, 1, 1)), (k, s, s, 3)
        )
        out[start : start + k] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def paper_constructed(args, device: torch.device, tmp: Path) -> dict:
    from kernels.features import DEFAULT_FEATURES, compute_features
    from pipeline.gan.trainer import load_checkpoint, make_trainer
    from pipeline.presets import resolve_batches_config, resolve_train_config
    from pipeline.stages.tables import build_table
    from pipeline.stages.train_loop import _train_loop, make_sampler

    t0 = time.perf_counter()
    images_np = synthetic_images(args.store_images, args.size)
    table = build_table(compute_features(images_np, names=DEFAULT_FEATURES), DEFAULT_FEATURES, (32, 32))
    log(
        f"(c) synthetic data set: {args.store_images:,} images {args.size} px, "
        f"features and table in {time.perf_counter() - t0:.1f} s"
    )
    overrides = {"track": False, "device": device.type, "epochs": 2, "eval_every": 0}
    if args.tiny:
        overrides.update(ngf=8, ndf=8, sample_grid=16, kl_samples=128)
    cfg = resolve_train_config("paper-constructed", overrides)
    batches = resolve_batches_config("paper-constructed", {"batch_size": args.store_batch} if args.store_batch else {})
    images = torch.from_numpy(images_np).to(device)
    del images_np

    def trainer(epochs: int):
        t = make_trainer(cfg.model_copy(update={"epochs": epochs}), args.size, device)
        t.method.attach_data(t, images, None)
        return t

    def run(t, work: Path) -> None:
        _train_loop(t, table, make_sampler(table, batches), images, batches.batch_size, work, None, False)

    t0 = time.perf_counter()
    straight = trainer(2)
    run(straight, tmp / "straight")
    straight_seconds = time.perf_counter() - t0
    first = trainer(1)  # the "killed" run: one epoch, its checkpoint
    run(first, tmp / "resumed")
    saved = {k: v.detach().clone() for k, v in first.G.state_dict().items()}
    resumed = trainer(2)
    load_checkpoint(resumed, tmp / "resumed" / "checkpoint.pt")
    restored = all(torch.equal(saved[k], v) for k, v in resumed.G.state_dict().items()) and resumed.epoch == 1
    run(resumed, tmp / "resumed")

    a, b = straight.history, resumed.history
    losses = a["loss_d"] + a["loss_g"] + b["loss_d"] + b["loss_g"]
    finite = all(math.isfinite(v) for v in losses)
    loss_diff = max(abs(x - y) for x, y in zip(a["loss_d"] + a["loss_g"], b["loss_d"] + b["loss_g"]))
    sa, sb = straight.G.state_dict(), resumed.G.state_dict()
    weight_diff = max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)
    steps_per_epoch = len(a["loss_d"]) // 2
    ips = [e["images_per_second"] for e in a["epochs"]]
    log(
        f"(c) paper-constructed B={batches.batch_size}: {steps_per_epoch} steps/epoch, {ips} img/s, losses finite: "
        f"{finite}, resumed vs straight: max |loss diff| {loss_diff:.3g}, max |weight diff| {weight_diff:.3g}"
    )
    return {
        "preset": "paper-constructed",
        "strategy": batches.strategy,
        "batch_size": batches.batch_size,
        "images": args.store_images,
        "image_size": args.size,
        "ngf": cfg.ngf,
        "ndf": cfg.ndf,
        "bf16": straight.bf16,
        "epochs": 2,
        "steps_per_epoch": steps_per_epoch,
        "images_per_second_per_epoch": ips,
        "seconds_two_epochs": round(straight_seconds, 2),
        "losses_finite": finite,
        "last_loss_d": a["epochs"][-1]["loss_d"],
        "last_loss_g": a["epochs"][-1]["loss_g"],
        "feature_kl_per_epoch": [e["feature_kl"] for e in a["epochs"]],
        "checkpoint_restored_exactly": restored,
        "resume_max_abs_loss_diff": loss_diff,
        "resume_max_abs_weight_diff": weight_diff,
        "resume_bitwise_equal": loss_diff == 0 and weight_diff == 0,
        "ok": finite and restored and (device.type != "cpu" or (loss_diff == 0 and weight_diff == 0)),
    }


# --- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="tiny sizes, no torch.compile: the CPU smoke version")
    ap.add_argument("--parts", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    ap.add_argument("--batch-size", type=int, default=None, help="(a) B (default 128; tiny 16)")
    ap.add_argument("--steps", type=int, default=None, help="(a) timed steps per round (default 20; tiny 2)")
    ap.add_argument("--rounds", type=int, default=None, help="(a) interleaved rounds (default 3; tiny 1)")
    ap.add_argument("--warmup", type=int, default=None, help="(a) untimed steps first (default 10; tiny 1)")
    ap.add_argument(
        "--all-combinations",
        action="store_true",
        help="(a) torch.compile with all four bf16 × channels-last combinations, not two",
    )
    ap.add_argument(
        "--loader-workers",
        type=int,
        default=None,
        help="(a) the DataLoader loop's workers (default 4 on CUDA, 0 on CPU)",
    )
    ap.add_argument("--inception-images", type=int, default=None, help="(b) N (default 5,000; tiny 2)")
    ap.add_argument("--inception-batch", type=int, default=None, help="(b) batch (default 250; tiny 2)")
    ap.add_argument("--inception-weights", default=None, help="(b) a local copy of torch-fidelity's Inception weights")
    ap.add_argument("--store-images", type=int, default=None, help="(c) synthetic images (default 50,000; tiny 512)")
    ap.add_argument("--store-batch", type=int, default=None, help="(c) B (default: the preset's 2000; tiny 64)")
    ap.add_argument("--out", default=None, help="also write the JSON summary to this file")
    args = ap.parse_args(argv)
    tiny = args.tiny
    defaults = dict(
        batch_size=(16, 128),
        steps=(2, 20),
        rounds=(1, 3),
        warmup=(1, 10),
        inception_images=(2, 5000),
        inception_batch=(2, 250),
        store_images=(512, 50_000),
        store_batch=(64, None),
    )
    for k, (t, full) in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, t if tiny else full)
    args.size, args.ngf, args.ndf = (32, 8, 8) if tiny else (64, 64, 64)
    args.n_images = 4 * args.batch_size if tiny else 8192

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_check: --device cuda but CUDA is not available (torch.cuda.is_available() is False); "
            "use --device cpu --tiny for the CPU smoke version",
            file=sys.stderr,
        )
        return 2
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    summary: dict = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "tiny": tiny,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cpu" and not tiny:
        log("no GPU: the full check on a CPU takes hours; this runs it anyway (use --tiny for the smoke version)")
    t_all = time.perf_counter()
    parts = {
        "a": ("train_throughput", lambda tmp: train_throughput(args, device)),
        "b": ("inception", lambda tmp: inception_throughput(args, device, tmp)),
        "c": ("paper_constructed", lambda tmp: paper_constructed(args, device, tmp)),
    }
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for p in args.parts:
            name, fn = parts[p]
            t0 = time.perf_counter()
            try:
                summary[name] = fn(Path(tmp))
            except Exception as e:
                traceback.print_exc(file=sys.stderr)
                summary[name] = {"error": f"{type(e).__name__}: {str(e)[:500]}", "ok": False}
            summary[name]["part_seconds"] = round(time.perf_counter() - t0, 1)
    summary["seconds"] = round(time.perf_counter() - t_all, 1)
    summary["ok"] = all(summary[parts[p][0]].get("ok", False) for p in args.parts)
    text = json.dumps(summary)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
