"""Batch strategies: an epoch's mini-batches constructed from the joint table (spec §3).

Strategies live in a registry (name → function) and all give an int64 array ``(m, B)`` of image
indices with ``m = floor(n / B)`` batches (Eq. 4), reproducible from ``(seed, epoch)``:

``random``       the baseline: a shuffled permutation cut into m batches, ``n mod B`` dropped.
``constructed``  the paper (Section 2.2): ``T2 = round(B·T1)`` images per cell, drawn from per-cell
                 queues that prefer not-yet-drawn images, the shortfall topped up from the k most
                 frequent cells (or first from not-yet-drawn images of rare cells, ``fill="coverage"``),
                 in proportion (``topup="topk"``) or by a multinomial draw per batch (``topup="random"``).
``dealt``        beyond the paper: every image at most once per epoch, and every batch within one
                 image per cell of its ideal share ``B·T1`` (see :func:`dealt_batches`).

Inside a batch the images are ordered by cell, so any stride slice ``batch[r::k]`` is itself
stratified (within one image per cell of ``1/k`` of the batch's count); the sampler splits
batches across distributed ranks that way. Pure numpy: the sampler (``pipeline.data.sampler``)
and the batches stage (``pipeline.stages.batches``, which stores and diagnoses them) both use it.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np

from pipeline.config import FILL_MODES, STRATEGY_NAMES, TOPUP_MODES
from pipeline.registry import Registry, UnknownName
from storage.errors import SubsampleError

STAGE = "batches"


class TableLike(Protocol):
    """What batch construction needs of :class:`pipeline.stages.tables.Table`."""

    counts: np.ndarray  # int64, table shape; sums to n
    cells: np.ndarray  # int64 (n,), flat (C-order) cell of each image

    @property
    def n(self) -> int: ...


# --- the strategy registry -------------------------------------------------------------------

StrategyFn = Callable[..., np.ndarray]


STRATEGIES: Registry[StrategyFn] = Registry("strategy", stage=STAGE)


def register_strategy(name: str) -> Callable[[StrategyFn], StrategyFn]:
    """Register ``fn(table, batch_size, rng, *, top_k, fill, topup) -> int64 (m, B)`` under ``name``
    (one of :data:`pipeline.config.STRATEGY_NAMES`, which the configs' ``Strategy`` is made of)."""
    return STRATEGIES.register(name=name)


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of one epoch's construction: seeded from (run seed, epoch) (spec §3.4)."""
    if seed < 0 or epoch < 0:
        raise SubsampleError(STAGE, f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}")
    return np.random.default_rng([seed, epoch])


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Eq. 4: ``m = floor(n / B)``."""
    return n // batch_size


def construct_epoch(
    table: TableLike,
    *,
    batch_size: int,
    strategy: str,
    seed: int,
    epoch: int,
    top_k: int = 8,
    fill: str = "topk",
    topup: str = "topk",
) -> np.ndarray:
    """One epoch's batches: int64 ``(m, B)`` image indices, ``m = floor(n / B)`` (Eq. 4).

    The same ``(table, batch_size, strategy, seed, epoch, top_k, fill, topup)`` always gives the
    same array; each epoch draws from ``np.random.default_rng([seed, epoch])``.
    """
    n = int(table.n)
    if batch_size < 1:
        raise SubsampleError(STAGE, f"batch size must be at least 1, got {batch_size}")
    if n < batch_size:
        raise SubsampleError(
            STAGE, f"batch size {batch_size} is larger than the data set ({n} images); choose --batch-size <= {n}"
        )
    fn = STRATEGIES[strategy]  # UnknownName
    if top_k < 1:
        raise SubsampleError(STAGE, f"top_k must be at least 1, got {top_k}")
    if fill not in FILL_MODES:
        raise UnknownName(STAGE, "fill mode", fill, FILL_MODES)
    if topup not in TOPUP_MODES:
        raise UnknownName(STAGE, "top-up mode", topup, TOPUP_MODES)
    rng = epoch_rng(seed, epoch)
    out = fn(table, batch_size, rng, top_k=top_k, fill=fill, topup=topup)
    assert out.shape == (batches_per_epoch(n, batch_size), batch_size), out.shape
    return out


# --- random (the baseline) -------------------------------------------------------------------


@register_strategy("random")
def random_batches(table: TableLike, batch_size: int, rng: np.random.Generator, **_: Any) -> np.ndarray:
    """A shuffled permutation cut into m batches; the remainder ``n mod B`` is dropped, so the
    coverage is Eq. 5, ``omega = (n - n mod B) / n``."""
    n = int(table.n)
    m = batches_per_epoch(n, batch_size)
    return rng.permutation(n)[: m * batch_size].reshape(m, batch_size).astype(np.int64, copy=False)


# --- constructed (the paper) -----------------------------------------------------------------


def round_half_up_share(counts: np.ndarray, total: int, n: int) -> np.ndarray:
    """``round(total * counts / n)`` with halves rounded up, in exact integer arithmetic
    (``floor((2·total·c + n) / (2n))``), so no float ever decides a tie."""
    counts = np.asarray(counts, dtype=np.int64)
    return (2 * total * counts + n) // (2 * n)


def largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Split the integer ``total`` over ``weights`` (int, positive sum) in proportion, exactly:
    every part gets ``floor(total·w / W)`` and the parts with the largest remainders get one more.
    Ties go to the earlier entry, so order the weights by priority. Sums to ``total``."""
    weights = np.asarray(weights, dtype=np.int64)
    wsum = int(weights.sum())
    if total == 0:
        return np.zeros(len(weights), np.int64)
    if wsum <= 0:
        raise ValueError("largest_remainder: weights must have a positive sum")
    quota, rem = np.divmod(total * weights, wsum)
    extra = total - int(quota.sum())
    quota[np.argsort(-rem, kind="stable")[:extra]] += 1
    return quota


def cells_by_frequency(counts: np.ndarray) -> np.ndarray:
    """Flat cell indices, most frequent first, ties by lower index."""
    counts = np.asarray(counts).ravel()
    return np.argsort(-counts, kind="stable")


def count_table(table: TableLike, batch_size: int) -> np.ndarray:
    """Spec §3.1: ``T2 = round(B·T1)`` per (flat) cell, halves up. When the rounded counts sum to
    more than B (each cell rounds up by at most 1/2, so the excess is below half the number of
    cells with ``T2 >= 1``), one image is taken back from each of the ``excess`` largest cells."""
    counts = np.asarray(table.counts, dtype=np.int64).ravel()
    n = int(table.n)
    t2 = round_half_up_share(counts, batch_size, n)
    excess = int(t2.sum()) - batch_size
    if excess > 0:
        largest = cells_by_frequency(counts)[:excess]
        assert (t2[largest] >= 1).all()
        t2[largest] -= 1
    return t2


def _spread_over_top_k(
    shortfall: int,
    counts: np.ndarray,
    room: np.ndarray,
    top_k: int,
    order: np.ndarray,
    split: Callable[[int, np.ndarray], np.ndarray],
) -> np.ndarray:
    """Spread ``shortfall`` images over the ``top_k`` most frequent cells that still have room,
    ``split(left, weights)`` giving each candidate's share of ``left``. A cell never gets more than
    its ``room`` (members not already in this batch): what does not fit is spread again, the same
    way, over the k most frequent cells that still have room, so a batch never repeats an image.
    Sums to ``shortfall``."""
    add = np.zeros(len(counts), np.int64)
    left = int(shortfall)
    while left > 0:
        cand = order[(room[order] - add[order]) > 0][:top_k]
        if len(cand) == 0:  # impossible while B <= n: the cells hold n >= B images
            raise SubsampleError(STAGE, "internal: no cell has room for the top-up")
        share = np.minimum(split(left, counts[cand]), room[cand] - add[cand])
        add[cand] += share
        left -= int(share.sum())
    return add


def top_up(shortfall: int, counts: np.ndarray, room: np.ndarray, top_k: int, order: np.ndarray) -> np.ndarray:
    """Spec §3.3: spread ``shortfall`` images over the ``top_k`` most frequent cells in proportion
    to their probabilities (largest-remainder rule, so it sums exactly), capped by each cell's
    ``room`` (:func:`_spread_over_top_k`)."""
    return _spread_over_top_k(shortfall, counts, room, top_k, order, largest_remainder)


def random_top_up(
    shortfall: int, counts: np.ndarray, room: np.ndarray, top_k: int, order: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Spec §3.3, ``topup="random"`` (the paper's reading): the ``shortfall`` images' cells drawn at
    random among the ``top_k`` most frequent cells, with probabilities proportional to their
    frequencies (one multinomial draw), capped by each cell's ``room`` (:func:`_spread_over_top_k`)."""

    def draw(left: int, weights: np.ndarray) -> np.ndarray:
        w = weights.astype(np.float64)
        return rng.multinomial(left, w / w.sum())

    return _spread_over_top_k(shortfall, counts, room, top_k, order, draw)


def constructed_demand(
    table: TableLike, batch_size: int, rng: np.random.Generator, *, top_k: int, fill: str, topup: str = "topk"
) -> np.ndarray:
    """How many images each batch draws from each cell: int64 ``(m, n_cells)``, rows sum to B.

    ``T2`` (spec §3.1) is the same for every batch. With ``fill="topk"`` and ``topup="topk"`` the
    top-up is too (every batch has the same cell counts); ``topup="random"`` draws each batch's
    top-up afresh (:func:`random_top_up`). With ``fill="coverage"`` each batch first takes
    not-yet-drawn images of cells whose ``T2 = 0``, chosen uniformly at random among them (a
    multivariate hypergeometric draw over their remaining counts), then tops up the rest from the
    k most frequent cells (in either top-up mode).
    """
    counts = np.asarray(table.counts, dtype=np.int64).ravel()
    n = int(table.n)
    m = batches_per_epoch(n, batch_size)
    t2 = count_table(table, batch_size)
    shortfall = batch_size - int(t2.sum())
    order = cells_by_frequency(counts)

    def fill_rest(need: int, row: np.ndarray) -> np.ndarray:
        if topup == "random":
            return random_top_up(need, counts, counts - row, top_k, order, rng)
        return top_up(need, counts, counts - row, top_k, order)

    if shortfall == 0 or (fill == "topk" and topup == "topk"):
        row = t2 + top_up(shortfall, counts, counts - t2, top_k, order)
        return np.broadcast_to(row, (m, len(counts))).copy()
    demand = np.empty((m, len(counts)), np.int64)
    if fill == "topk":
        for j in range(m):
            demand[j] = t2 + fill_rest(shortfall, t2)
        return demand
    rare = t2 == 0
    drawn = np.zeros(len(counts), np.int64)
    for j in range(m):
        fresh = np.where(rare, np.maximum(counts - drawn, 0), 0)
        take = min(shortfall, int(fresh.sum()))
        cov = rng.multivariate_hypergeometric(fresh, take) if take else np.zeros_like(counts)
        row = t2 + cov
        row += fill_rest(shortfall - take, row)
        demand[j] = row
        drawn += row
    return demand


def _group_starts(sizes: np.ndarray) -> np.ndarray:
    return np.cumsum(sizes) - sizes


def _ranks_in_groups(sizes: np.ndarray) -> np.ndarray:
    """0..size-1 for each group, concatenated."""
    total = int(sizes.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(_group_starts(sizes), sizes)


@register_strategy("constructed")
def constructed_batches(
    table: TableLike,
    batch_size: int,
    rng: np.random.Generator,
    *,
    top_k: int = 8,
    fill: str = "topk",
    topup: str = "topk",
    **_: Any,
) -> np.ndarray:
    """The paper's constructed batches (Section 2.2, spec §3), m of them built one after another.

    Each batch draws ``demand[j, i]`` images from cell i (:func:`constructed_demand`). Cell i's
    draws over the epoch come from its queue: a shuffle of its members, popped in order, refilled
    with a fresh shuffle when empty, so an image repeats only after all its cell-mates were drawn.
    The queue state is shared by the epoch's batches and starts afresh each epoch.

    No image appears twice in a batch: a batch never asks a cell for more than its members
    (``T2 <= count`` because ``round(B·c/n) <= c`` when ``B <= n``; the top-up is capped by the
    room left), and when a refill happens in the middle of a batch, the fresh shuffle puts the
    images already in that batch last, so the batch's remaining draws avoid them.

    Vectorised: the queue contents of every cell for the whole epoch (``ceil(D_i / c_i)`` shuffles
    of cell i when it is drawn ``D_i`` times) are built with one stable sort on a random order,
    and each draw's place in the output is computed, not looped over.
    """
    counts = np.asarray(table.counts, dtype=np.int64).ravel()
    cells = np.asarray(table.cells, dtype=np.int64)
    n = int(table.n)
    m = batches_per_epoch(n, batch_size)
    demand = constructed_demand(table, batch_size, rng, top_k=top_k, fill=fill, topup=topup)  # (m, C)
    drawn = demand.sum(axis=0)  # D_i
    passes = np.where(drawn > 0, -(-drawn // np.maximum(counts, 1)), 0)  # shuffles of each cell's queue

    # Queue contents: image x appears once per pass of its cell; order by (cell, pass), random within.
    reps = passes[cells]
    img = np.repeat(np.arange(n, dtype=np.int64), reps)
    pass_of = _ranks_in_groups(reps)
    n_pass = max(int(passes.max()), 1)
    key = cells[img] * n_pass + pass_of
    shuffle = rng.permutation(len(img))
    queue = img[shuffle][np.argsort(key[shuffle], kind="stable")]
    qstart = _group_starts(passes * counts)  # where each cell's queue starts

    # A refill in the middle of a batch: put the images that batch already holds last.
    cum = np.cumsum(demand, axis=0)  # (m, C): draws of cell i up to and including batch j
    for i in np.flatnonzero(passes > 1):
        c, base = int(counts[i]), int(qstart[i])
        for p in range(1, int(passes[i])):
            boundary = p * c
            j = int(np.searchsorted(cum[:, i], boundary, side="right"))
            first = int(cum[j - 1, i]) if j > 0 else 0
            if j >= m or first >= boundary:
                continue  # no batch straddles this refill
            held = queue[base + first : base + boundary]
            fresh = queue[base + boundary : base + boundary + c]
            clash = np.isin(fresh, held)
            queue[base + boundary : base + boundary + c] = np.concatenate([fresh[~clash], fresh[clash]])

    # Cell i's first D_i queue entries, cell-major; then each to its batch, batches ordered by cell.
    take = np.repeat(qstart - _group_starts(drawn), drawn) + np.arange(int(drawn.sum()), dtype=np.int64)
    draws = queue[take]
    group = demand.T.ravel()  # (cell, batch) groups in cell-major order, as in `draws`
    within = (np.cumsum(demand, axis=1) - demand).T.ravel()  # offset of cell i inside batch j
    batch_of = np.tile(np.arange(m, dtype=np.int64), len(counts))
    dest = np.repeat(batch_of * batch_size + within - _group_starts(group), group) + np.arange(
        len(draws), dtype=np.int64
    )
    out = np.empty(m * batch_size, np.int64)
    out[dest] = draws
    return out.reshape(m, batch_size)


# --- dealt (beyond the paper) ----------------------------------------------------------------


@register_strategy("dealt")
def dealt_batches(table: TableLike, batch_size: int, rng: np.random.Generator, **_: Any) -> np.ndarray:
    """Every image at most once per epoch, every batch within one image per cell of ``B·T1``.

    Construction: let ``n = m·B + r`` (``0 <= r < B``). Drop ``r`` images, spread over the cells by
    the largest-remainder rule on ``r·c_i / n`` (ties broken at random), the dropped ones chosen
    at random inside each cell; keep ``k_i = c_i - drop_i``, ``sum k_i = m·B``. List the kept
    images cell by cell (cells in a random order, images shuffled inside each cell) and deal
    position q to batch ``q mod m``: every batch gets exactly B images, each at most once.

    Promise: batch j holds ``a_ij`` images of cell i with ``|a_ij - B·c_i/n| < 1``, i.e.
    ``a_ij`` is ``floor`` or ``ceil`` of the ideal share ``B·T1(i)``.

    Proof. Cell i occupies ``k_i`` consecutive positions of the dealt list, so every batch gets
    ``floor(x)`` or ``ceil(x)`` of them, ``x = k_i / m``. With ``m·B = n - r`` the ideal share is
    ``y = B·c_i/n = (c_i - r·c_i/n) / m``, so ``x - y = (r·c_i/n - drop_i) / m`` and, since the
    largest-remainder rule keeps ``|drop_i - r·c_i/n| < 1``, ``|x - y| < 1/m``. If x is an integer
    every batch gets exactly x, within 1/m of y. Otherwise ``frac(x) = (k_i mod m)/m`` lies in
    ``[1/m, 1 - 1/m]``, so ``floor(x) <= x - 1/m < y < x + 1/m <= ceil(x)``: both ``floor(x)`` and
    ``ceil(x) = floor(x) + 1`` lie strictly within 1 of y. ∎

    Coverage is Eq. 5's ``(n - r)/n``, as for random batches, but the r unused images are spread
    over the cells in proportion instead of being a uniform random subset.
    """
    counts = np.asarray(table.counts, dtype=np.int64).ravel()
    cells = np.asarray(table.cells, dtype=np.int64)
    n = int(table.n)
    m = batches_per_epoch(n, batch_size)
    r = n - m * batch_size
    n_cells = len(counts)

    # Apportion the r dropped images; ties among equal remainders at random.
    quota, rem = np.divmod(r * counts, n)
    extra = r - int(quota.sum())
    quota[np.lexsort((rng.random(n_cells), -rem))[:extra]] += 1
    keep = counts - quota

    # Cells in a random order, members shuffled inside each cell; drop each cell's last quota_i.
    cell_rank = np.empty(n_cells, np.int64)
    cell_rank[rng.permutation(n_cells)] = np.arange(n_cells)
    perm = rng.permutation(n)
    members = perm[np.argsort(cell_rank[cells[perm]], kind="stable")]
    in_order = np.argsort(cell_rank, kind="stable")  # cells in dealing order
    pos = _ranks_in_groups(counts[in_order])
    kept = members[pos < np.repeat(keep[in_order], counts[in_order])]
    # Position q goes to batch q mod m: row j is kept[j::m], already ordered by cell.
    return np.ascontiguousarray(kept.reshape(batch_size, m).T).astype(np.int64, copy=False)


# the configs' Strategy Literal is made of STRATEGY_NAMES: the registry must hold exactly those
if STRATEGIES.names() != STRATEGY_NAMES:
    raise ImportError(f"pipeline.config.STRATEGY_NAMES {STRATEGY_NAMES} != registered strategies {STRATEGIES.names()}")
