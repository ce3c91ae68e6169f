"""How many bins per feature? Measure on real images what the table's density does to batches.

    .venv/bin/python bench/bins.py [--source DIR] [--epochs E]

Ingests the shared CIFAR-10 subset (5,592 images, 32×32) into a temporary $SUBSAMPLE_HOME with the
ingest stage, computes the features stage, and for m × m bins, m in (8, 16, 24, 32, 48, 64), prints

* occupied cells of the (m+1)² table;
* at B = 128, 512, 1024, 2048, the share of images sitting in cells that round to zero in the
  count table T2 = round(B · T1), i.e. B · T1 < 0.5: step 2 of spec §3 never draws them, only the
  top-up can (the paper's coverage loss at small B);
* the mean KL(f_Xi || f_X) of random batches (the baseline, averaged over E epochs) and of
  constructed batches (``pipeline.stages.batches``, top-k fill) at the same B, on that table.

Finer bins describe f_X in more detail but make more cells rare; the default must keep the rare
share small at the paper's batch sizes (1024-2048) while the table still separates images.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BINS = (8, 16, 24, 32, 48, 64)
BATCH_SIZES = (128, 512, 1024, 2048)


def ingest(source: Path, name: str) -> None:
    """The store, made with the ingest stage (or, if that is not there, straight from the CIFAR-10
    binary records: 1 label byte + 3072 planar RGB bytes)."""
    try:
        from pipeline.config import IngestConfig
        from pipeline.stages.ingest import run_ingest
    except ImportError:
        from storage.store import write_store

        records = np.concatenate([np.fromfile(f, np.uint8).reshape(-1, 3073) for f in sorted(source.glob("*.bin"))])
        images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        write_store(name, images, records[:, 0].astype(np.int64), source=str(source))
        return
    run_ingest(IngestConfig(source=str(source), name=name, size=32), progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared/data/cifar-10-subset-bin")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of batches per (m, B), for the mean KL")
    args = parser.parse_args()

    from pipeline.config import FeaturesConfig
    from pipeline.data.strategies import construct_epoch
    from pipeline.stages.batches import kl_batch_vs_dataset
    from pipeline.stages.features import features_artifact, load_features, run_features
    from pipeline.stages.tables import build_table

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SUBSAMPLE_HOME"] = tmp
        ingest(args.source, "bins-bench")
        run_features("bins-bench", FeaturesConfig(), progress=False)
        values, names = load_features(features_artifact("bins-bench"))
    n = len(values)
    print(f"{n} images from {args.source}, features {names}, {args.epochs} epochs per (m, B)")
    print("zero share = images in cells with B*T1 < 0.5; KL = mean KL(f_Xi || f_X) over all batches")
    header = f"{'m':>3} {'occupied':>13} " + " ".join(f"{'B=' + str(b):>29}" for b in BATCH_SIZES)
    print(header)
    print(f"{'':>3} {'':>13} " + " ".join(f"{'zero share  KL rand  KL cons':>29}" for _ in BATCH_SIZES))
    for m in BINS:
        t0 = time.perf_counter()
        table = build_table(values, names, (m, m))
        probs = table.probs.ravel()
        counts = table.counts.ravel()
        row = [f"{m:>3} {int((counts > 0).sum()):>5} / {counts.size:<5}"]
        for b in BATCH_SIZES:
            zero_share = counts[b * probs < 0.5].sum() / n
            kl = {}
            for strategy in ("random", "constructed"):
                per_batch = [
                    kl_batch_vs_dataset(table, construct_epoch(table, batch_size=b, strategy=strategy, seed=0, epoch=e))
                    for e in range(args.epochs)
                ]
                kl[strategy] = float(np.concatenate(per_batch).mean())
            row.append(f"{zero_share:>10.3f} {kl['random']:>8.3f} {kl['constructed']:>8.3f}")
        print(" ".join(row) + f"   ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
