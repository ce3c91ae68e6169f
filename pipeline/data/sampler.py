"""``SubsampleBatchSampler``: constructed (or random, or dealt) batches for any PyTorch loop.

    sampler = SubsampleBatchSampler(table, batch_size=2000, strategy="constructed", seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)          # like DistributedSampler: batches depend on (seed, epoch)
        for images in loader: ...

Two sources of batches, which agree for the same (seed, epoch):

* **fresh**: ``SubsampleBatchSampler(table, ...)`` constructs each epoch's batches from the joint
  table when it is iterated (:func:`pipeline.data.strategies.construct_epoch`, well under a second for
  200k images), for as many epochs as you like;
* **stored**: ``SubsampleBatchSampler.from_array(epochs × m × B)``, e.g. the ``batches`` stage's
  ``batches.npy`` (``pipeline.stages.batches.stored_sampler(dataset, batches_cfg, ...)``). Asking for an
  epoch beyond those stored raises an error, unless ``cycle=True``: then epoch e uses stored epoch ``e mod E``
  (the same batches again, in the same order — say so when you report results).

Distributed: with ``num_replicas`` k (default: the torch.distributed world size when it is
initialised, else 1) every batch is split across ranks, rank r taking ``batch[r::k]``; B must be
divisible by k. Batches list their images ordered by cell, so each rank's share is stratified too.
There is no ``drop_last``: batches are full by construction (Eq. 4's m = floor(n / B)).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
from torch.utils.data import Sampler

from pipeline.data.strategies import batches_per_epoch, construct_epoch
from storage.errors import SubsampleError


def _default_replicas(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    import torch.distributed as dist

    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise SubsampleError("sampler", f"rank {rank} is not in [0, num_replicas={num_replicas})")
    return num_replicas, rank


class SubsampleBatchSampler(Sampler[list[int]]):
    """A batch sampler yielding each epoch's batches as lists of python ints (see module doc)."""

    def __init__(
        self,
        table: Any = None,
        *,
        batch_size: int | None = None,
        strategy: str = "constructed",
        seed: int = 0,
        top_k: int = 8,
        fill: str = "topk",
        topup: str = "topk",
        num_replicas: int | None = None,
        rank: int | None = None,
        stored: np.ndarray | None = None,
        cycle: bool = False,
    ):
        super().__init__()
        if (table is None) == (stored is None):
            raise SubsampleError("sampler", "give either a table (fresh batches) or stored batches (from_array)")
        if stored is not None:
            stored = np.asarray(stored)
            if stored.ndim != 3 or stored.shape[0] < 1 or stored.shape[1] < 1:
                raise SubsampleError("sampler", f"stored batches must be (epochs, m, B), got shape {stored.shape}")
            batch_size = int(stored.shape[2])
            self._m = int(stored.shape[1])
        else:
            if batch_size is None:
                raise SubsampleError("sampler", "batch_size is required to construct batches from a table")
            if table.n < batch_size:
                raise SubsampleError(
                    "sampler", f"batch size {batch_size} is larger than the data set ({table.n} images)"
                )
            self._m = batches_per_epoch(int(table.n), batch_size)
        self.num_replicas, self.rank = _default_replicas(num_replicas, rank)
        if batch_size % self.num_replicas:
            raise SubsampleError(
                "sampler",
                f"batch size {batch_size} is not divisible by num_replicas={self.num_replicas}; "
                "choose a batch size that is a multiple of the number of ranks",
            )
        self.table = table
        self.stored = stored
        self.cycle = cycle
        self.batch_size = batch_size
        self.strategy, self.seed, self.top_k, self.fill, self.topup = strategy, seed, top_k, fill, topup
        self.epoch = 0

    @classmethod
    def from_array(
        cls, batches: np.ndarray, *, num_replicas: int | None = None, rank: int | None = None, cycle: bool = False
    ) -> "SubsampleBatchSampler":
        """Over stored batches ``(epochs, m, B)`` (a single epoch ``(m, B)`` is accepted too)."""
        batches = np.asarray(batches)
        if batches.ndim == 2:
            batches = batches[None]
        return cls(stored=batches, num_replicas=num_replicas, rank=rank, cycle=cycle)

    @property
    def stored_epochs(self) -> int | None:
        """How many epochs are stored (None for fresh construction)."""
        return None if self.stored is None else int(self.stored.shape[0])

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the next iteration yields (batches depend on (seed, epoch))."""
        if epoch < 0:
            raise SubsampleError("sampler", f"epoch must be non-negative, got {epoch}")
        self.epoch = int(epoch)

    def epoch_batches(self, epoch: int | None = None) -> np.ndarray:
        """The whole (unsplit) epoch, int64 ``(m, B)``."""
        e = self.epoch if epoch is None else int(epoch)
        if self.stored is not None:
            n_stored = self.stored.shape[0]
            if e >= n_stored:
                if not self.cycle:
                    raise SubsampleError(
                        "sampler",
                        f"epoch {e} requested but only epochs 0..{n_stored - 1} are stored; run "
                        f"`subsample batches ... --epochs {e + 1}` (or more), construct fresh batches from "
                        "the table, or pass cycle=True to reuse stored epoch e mod E",
                    )
                e %= n_stored
            return self.stored[e].astype(np.int64, copy=False)
        return construct_epoch(
            self.table,
            batch_size=self.batch_size,
            strategy=self.strategy,
            seed=self.seed,
            epoch=e,
            top_k=self.top_k,
            fill=self.fill,
            topup=self.topup,
        )

    def __len__(self) -> int:
        return self._m

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches()
        if self.num_replicas > 1:
            batches = batches[:, self.rank :: self.num_replicas]
        yield from batches.tolist()
