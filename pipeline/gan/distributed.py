"""Data-parallel training over ``torch.distributed``: launch, process group, rank helpers.

``subsample train NAME --nproc-per-node N`` (or ``train.nproc_per_node`` in a flow run) makes
:func:`pipeline.stages.train.run_train` start N ranks with torchrun's elastic launcher
(:func:`torch.distributed.launcher.api.elastic_launch`, the engine of ``torchrun``); each rank runs
``run_train`` again, which finds WORLD_SIZE/RANK in its environment and joins the process group
(:func:`session`). ``torchrun --nproc-per-node N -m flows.cli train NAME ...`` works the same way.
Backend: NCCL on CUDA (rank r on ``cuda:LOCAL_RANK``), gloo on the CPU.

What keeps a k-rank run equal to the one-process run with the same global batch B (within
floating-point tolerance; ``tests/test_distributed.py`` checks max |Δw| < 1e-4):

* data: every constructed batch is split by the sampler, rank r taking ``batch[r::k]`` (a
  stratified share, the batches being ordered by cell); B must be divisible by k;
* randomness: every rank keeps the same global RNG state; a per-sample draw (z, the gradient
  penalty's ε, instance noise, dropout masks) draws the whole batch's values, as the one-process run does, and
  keeps rows ``r::k`` (:func:`randn`, :func:`rand`, :func:`randn_like`), so image i meets the
  z, ε and noise it meets in the one-process run;
* batch statistics: batch norm layers become :class:`SyncBatchNorm` (global batch mean and
  variance through a differentiable all-reduce; torch's own ``nn.SyncBatchNorm`` runs on GPUs only
  and has no double backward, which R1 / gradient penalties need). ``sync_batchnorm=false`` keeps
  per-rank statistics (then the result depends on k, which goes into the artifact key);
* gradients: G and D are wrapped in ``DistributedDataParallel``, which averages gradients over
  ranks. Every loss is a mean over the batch, so the average of k equal shares' mean gradients is
  the global mean's gradient; where a loss is not a mean of per-sample terms (PL-GAN's feature
  matching, its semi-supervised cross-entropy over the labelled images, BEGAN's k_t update) the
  method takes the global quantity with :func:`global_batch_mean` / :func:`sum_over_ranks`.

Rank 0 alone writes the work directory (checkpoints, grids), the artifact and the MLflow run;
the other ranks train and log nothing. Checkpoints hold every rank's RNG state (equal on the CPU,
one per device on CUDA). Dropout (IGAN's G) draws the global batch's mask and keeps rows r::k
(:class:`SharedDrawDropout`). Refused under DDP, in one line (:func:`check_supported`): the
per-class IGAN (``igan-nclass``), whose branches see different classes on different ranks.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from storage.errors import SubsampleError

STAGE = "train"
TIMEOUT = timedelta(minutes=30)  # a collective waits this long (rank 0 evaluates while the others wait)
REFUSED_ARCHS = {
    "igan-nclass": "its per-class G branches and Ds see different classes on different ranks, so the ranks' "
    "collectives (synchronised batch norm, gradient buckets) would not match",
}


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    local_size: int
    backend: str

    @property
    def main(self) -> bool:
        return self.rank == 0


_WORLD: World | None = None  # set by session() while this process is one rank of a run


def world() -> World | None:
    """This process's place in the run, or None when it trains alone."""
    return _WORLD


def rank() -> int:
    return _WORLD.rank if _WORLD else 0


def size() -> int:
    return _WORLD.size if _WORLD else 1


def is_main() -> bool:
    return _WORLD is None or _WORLD.main


def world_size_of(cfg: Any) -> int:
    return cfg.nproc_per_node * cfg.nnodes


def _env_world() -> tuple[int, int, int, int] | None:
    """(rank, world size, local rank, local world size) set by torchrun, or None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    ws = int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_WORLD_SIZE", ws))
    return int(os.environ.get("RANK", "0")), ws, int(os.environ.get("LOCAL_RANK", "0")), local


def needs_session() -> bool:
    """Running under torchrun (WORLD_SIZE > 1) and the process group is not up yet."""
    return _WORLD is None and _env_world() is not None


def needs_launch(cfg: Any) -> bool:
    """The config asks for more than one rank and this process is not one of them yet."""
    return world_size_of(cfg) > 1 and _WORLD is None and _env_world() is None


def joined_config(cfg: Any) -> Any:
    """``cfg`` with the world it actually runs in (torchrun's, when it was launched by hand)."""
    w = _WORLD
    if w is None:
        return cfg
    return cfg.model_copy(update={"nproc_per_node": w.local_size, "nnodes": max(1, w.size // w.local_size)})


@contextmanager
def session(device_name: str) -> Iterator[World]:
    """Join the process group torchrun's environment describes, for the duration of a run."""
    import torch.distributed as dist

    global _WORLD
    r, ws, lr, lws = _env_world()  # type: ignore[misc]
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(lr)
    else:  # ranks share the CPU: split its cores between them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // lws))
    dist.init_process_group(backend, timeout=TIMEOUT, **({"device_id": torch.device("cuda", lr)} if use_cuda else {}))
    _WORLD = World(r, ws, lr, lws, backend)
    try:
        yield _WORLD
    finally:
        _WORLD = None
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` under DDP on CUDA."""
    if _WORLD is not None and device.type == "cuda":
        return torch.device("cuda", _WORLD.local_rank)
    return device


def barrier() -> None:
    if _WORLD is not None:
        import torch.distributed as dist

        dist.barrier()


def broadcast_flag(value: bool) -> bool:
    """Rank 0's ``value`` on every rank."""
    if _WORLD is None:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


# --- random draws: one global draw, rank r keeps rows r::k ---------------------------------------


def randn(n: int, *shape: int, device: Any = None, dtype: Any = None) -> Tensor:
    """``torch.randn(n, *shape)`` for this rank's n rows of one draw of k·n rows."""
    if _WORLD is None:
        return torch.randn(n, *shape, device=device, dtype=dtype)
    return torch.randn(n * _WORLD.size, *shape, device=device, dtype=dtype)[_WORLD.rank :: _WORLD.size]


def rand(n: int, *shape: int, device: Any = None, dtype: Any = None) -> Tensor:
    """``torch.rand`` as :func:`randn` draws: this rank's rows of one global draw."""
    if _WORLD is None:
        return torch.rand(n, *shape, device=device, dtype=dtype)
    return torch.rand(n * _WORLD.size, *shape, device=device, dtype=dtype)[_WORLD.rank :: _WORLD.size]


def randn_like(x: Tensor) -> Tensor:
    """``torch.randn_like(x)`` (same memory format) for this rank's rows of one global draw."""
    if _WORLD is None:
        return torch.randn_like(x)
    fmt = (
        torch.channels_last
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        else torch.contiguous_format
    )
    full = torch.empty(
        (len(x) * _WORLD.size, *x.shape[1:]), device=x.device, dtype=x.dtype, memory_format=fmt
    ).normal_()
    return full[_WORLD.rank :: _WORLD.size]


# --- global quantities of the batch ------------------------------------------------------------------


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward is the all-reduce of the gradients, itself differentiable
    (double backward for gradient penalties through synchronised batch norm)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        import torch.distributed as dist

        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return _SumOverRanks.apply(grad.contiguous())


def sum_over_ranks(x: Tensor) -> Tensor:
    """The sum of ``x`` over ranks, differentiable (its backward sums the ranks' gradients)."""
    if _WORLD is None:
        return x
    return _SumOverRanks.apply(x)


def global_batch_mean(x: Tensor) -> Tensor:
    """``x.mean(0)`` over the whole global batch (equal shares), differentiable."""
    if _WORLD is None:
        return x.mean(0)
    return sum_over_ranks(x.mean(0)) / _WORLD.size


@torch.no_grad()
def mean_over_ranks(x: Tensor) -> Tensor:
    """The mean of ``x`` over ranks (no gradient): the global batch's value of a per-rank mean."""
    if _WORLD is None:
        return x
    import torch.distributed as dist

    x = x.detach().clone()
    dist.all_reduce(x)
    return x / _WORLD.size


# --- batch norm over the global batch ----------------------------------------------------------------


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are the global batch's (every rank's share), built on
    a differentiable all-reduce, so it runs on CPUs (gloo) and GPUs and supports the double
    backward of gradient penalties. Two passes (mean, then the centred second moment) keep the
    variance as exact as a one-process ``BatchNorm``. Eval mode uses the running statistics."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or _WORLD is None:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = torch.full((1,), float(x.numel() // x.size(1)), device=x.device)
        total = sum_over_ranks(torch.cat([xf.sum(dims), count]))  # per-channel sums and the global count
        mean, n = total[:-1] / total[-1], total[-1].detach()
        centred = xf - mean.view(shape)
        var = sum_over_ranks(centred.pow(2).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


class SharedDrawDropout(nn.Dropout):
    """Dropout whose mask is this rank's rows of one mask drawn for the global batch (as
    ``F.dropout`` draws it on the CPU: ``bernoulli_(1 - p)`` over the input's shape), so the ranks'
    masks are those of the one-process run rather than one mask repeated on every rank."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0 or _WORLD is None:
            return super().forward(x)
        fmt = (
            torch.channels_last
            if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            else torch.contiguous_format
        )
        mask = torch.empty((len(x) * _WORLD.size, *x.shape[1:]), device=x.device, dtype=x.dtype, memory_format=fmt)
        mask = mask.bernoulli_(1 - self.p)[_WORLD.rank :: _WORLD.size]
        return x * mask.div_(1 - self.p)


def convert_dropout(module: nn.Module) -> nn.Module:
    """Every ``nn.Dropout`` of ``module`` as a :class:`SharedDrawDropout` (no parameters, no state)."""
    for name, child in module.named_children():
        if type(child) is nn.Dropout:
            setattr(module, name, SharedDrawDropout(child.p, child.inplace))
        else:
            convert_dropout(child)
    return module


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Every batch norm layer of ``module`` as a :class:`SyncBatchNorm` sharing its parameters and
    buffers (state-dict keys unchanged, so checkpoints and generators load into plain models)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        return out
    for name, child in module.named_children():
        new = convert_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


# --- models ------------------------------------------------------------------------------------------


def check_supported(cfg: Any, batch_size: int) -> None:
    """One-line refusals of what DDP cannot run as the one-process run does."""
    k = world_size_of(cfg)
    if k <= 1:
        return
    if batch_size % k:
        raise SubsampleError(
            STAGE,
            f"batch size B={batch_size} is not divisible by the world size k={k} "
            f"(nproc_per_node={cfg.nproc_per_node} × nnodes={cfg.nnodes}); choose B a multiple of k",
        )
    if cfg.arch in REFUSED_ARCHS:
        raise SubsampleError(
            STAGE, f"arch {cfg.arch!r} is not supported under DDP: {REFUSED_ARCHS[cfg.arch]}; train it on one process"
        )


def wrap(t: Any) -> None:
    """Batch norm -> :class:`SyncBatchNorm` (unless ``sync_batchnorm`` is off) and G, D and the
    method's trained modules in DistributedDataParallel; ``t.G``/``t.D`` stay the plain modules
    (checkpoints, samples), ``t.G_train``/``t.D_train`` are what the steps call."""
    if _WORLD is None:
        return
    from torch.nn.parallel import DistributedDataParallel as DDP

    def ddp(m: nn.Module) -> nn.Module:
        convert_dropout(m)
        if t.cfg.sync_batchnorm:
            convert_batchnorm(m)
        ids = [t.device.index] if t.device.type == "cuda" else None
        # buffers (batch-norm running statistics, spectral-norm vectors) stay equal on every rank
        # by construction, so they are not broadcast at every forward
        return DDP(m, device_ids=ids, forward_sync_buffers=False)

    t.G_train = ddp(t.G)
    t.D_train = ddp(t.D)
    if t.cfg.compile:
        t.G_train = torch.compile(t.G_train)
        if not (t.cfg.gp_weight or t.cfg.r1_weight):
            t.D_train = torch.compile(t.D_train)
    t.method.distribute(t, ddp)


# --- checkpoints: every rank's RNG -----------------------------------------------------------------


def gather_rng(state: dict) -> list[dict] | None:
    """Every rank's RNG state (a collective; the list on rank 0, None elsewhere and alone)."""
    if _WORLD is None:
        return None
    import torch.distributed as dist

    out: list[Any] = [None] * _WORLD.size if _WORLD.main else None  # type: ignore[assignment]
    dist.gather_object(state, out, dst=0)
    return out


def own_rng(ck: dict) -> dict:
    """This rank's RNG state from a checkpoint (rank 0's when it was written by another world)."""
    ranks = ck.get("rng_ranks")
    if _WORLD is not None and ranks and len(ranks) == _WORLD.size:
        return ranks[_WORLD.rank]
    return ck["rng"]
