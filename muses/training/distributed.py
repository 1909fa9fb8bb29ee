"""Data-parallel training: the process group and the collectives the training loop needs.

``muses train`` runs unchanged under ``torchrun --nproc_per_node N`` (or ``accelerate launch --multi_gpu``, which
sets the same environment): :func:`init_from_env` joins the process group named by ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` (gloo on CPU, NCCL on CUDA), and without them every function here is the single-process identity.

How a step stays equal to one process with the global batch:

- every rank draws the same global batch (the sampler is seeded identically) and encodes only its own contiguous
  slice of it (:func:`shard`);
- the slices' vectors are all-gathered with gradients (:func:`gather_rows`), and every rank computes the *whole*
  global loss (in-batch negatives, CoSENT pairs, consistency, retention) on the gathered vectors: the loss is the
  single-process loss, on every rank;
- the backward of the gather sums, for each rank's slice, the gradients of the W identical losses, so each rank
  holds W times its share of the gradient; :func:`average_gradients` sums over ranks and divides by W, which gives
  exactly the single-process gradient (no extra loss scaling is needed, because the loss is not a per-rank mean).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


def init_from_env() -> bool:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``); returns whether training is distributed. Idempotent; a no-op without
    ``WORLD_SIZE`` > 1. NCCL (and this rank's GPU, ``cuda:LOCAL_RANK``) when CUDA is available, else gloo."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_world_size() > 1


def is_distributed() -> bool:
    """Whether a process group of more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``, default 0)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Whether this is rank 0: the one that logs, evaluates and writes."""
    return rank() == 0


def default_device() -> str | None:
    """``cuda:LOCAL_RANK`` for a distributed run with CUDA; None (the encoder's own choice) otherwise."""
    return f"cuda:{local_rank()}" if is_distributed() and torch.cuda.is_available() else None


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def shard(items: Sequence[T]) -> list[T]:
    """This rank's contiguous slice of the global batch ``items`` (slice sizes differ by at most one, the first
    ranks taking the extra items), so that concatenating the slices in rank order gives ``items`` back."""
    n, w, r = len(items), world_size(), rank()
    if n < w:
        raise ValueError(f"a batch of {n} items cannot be split over {w} ranks: raise the batch size")
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return list(items[start : start + base + (1 if r < extra else 0)])


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (picklable objects; identity in one process)."""
    if not is_distributed():
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank, in place."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def _row_counts(n: int, device: torch.device) -> list[int]:
    """Every rank's row count ``n``, in rank order."""
    mine = torch.tensor([n], dtype=torch.long, device=device)
    counts = [torch.zeros_like(mine) for _ in range(world_size())]
    dist.all_gather(counts, mine)
    return [int(c) for c in counts]


def _gather_padded(x: Tensor, counts: list[int]) -> Tensor:
    """All-gather ``x`` ``[n_r, ...]`` of different lengths: padded to the longest, gathered, unpadded;
    ``[sum_r n_r, ...]`` in rank order. No gradient."""
    longest = max(counts)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    bufs = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(bufs, padded.contiguous())
    return torch.cat([b[:n] for b, n in zip(bufs, counts, strict=True)])


class _GatherRows(torch.autograd.Function):
    """All-gather with gradients: forward concatenates every rank's rows; backward sums the gradient of the
    gathered tensor over ranks (each rank's loss used every row) and returns this rank's rows of it."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, counts: list[int]) -> Tensor:
        ctx.counts = counts
        return _gather_padded(x, counts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.counts[: rank()])
        return grad[start : start + ctx.counts[rank()]], None


def gather_rows(x: Tensor) -> tuple[Tensor, list[int]]:
    """All-gather ``x`` ``[n, ...]`` (n may differ between ranks) into ``[N, ...]`` (N: all ranks' rows, in rank
    order), with gradients flowing back to each rank's own rows when ``x`` requires grad; also returns the row
    count of every rank. In one process: ``(x, [n])``."""
    if not is_distributed():
        return x, [x.shape[0]]
    counts = _row_counts(x.shape[0], x.device)
    if x.requires_grad:
        return _GatherRows.apply(x, counts), counts
    return _gather_padded(x, counts), counts


def gather_parts(parts: Sequence[Tensor]) -> tuple[list[Tensor], list[list[int]]]:
    """All-gather several tensors ``[n_i, D]`` (same trailing shape) in one collective.

    Returns:
        The gathered parts, part ``i`` ``[sum_r n_{i,r}, D]`` concatenated in rank order, and the row counts
        ``counts[r][i]`` of every rank and part. In one process the parts come back unchanged.
    """
    if not is_distributed():
        return list(parts), [[p.shape[0] for p in parts]]
    dtype = parts[0].dtype
    for p in parts[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    sizes = torch.tensor([p.shape[0] for p in parts], dtype=torch.long, device=parts[0].device)
    table, _ = gather_rows(sizes[None])
    counts: list[list[int]] = table.tolist()
    flat, rows = gather_rows(torch.cat([p.to(dtype) for p in parts]))
    blocks = flat.split(rows)
    out = []
    for i in range(len(parts)):
        out.append(torch.cat([blk.split(c)[i] for blk, c in zip(blocks, counts, strict=True)]))
    return out, counts


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over ranks and divide by the world size, in one flat all-reduce.

    A parameter without a gradient on this rank takes zeros when another rank has one (it would otherwise stall
    the collective); one without a gradient on every rank stays without (as in one process, AdamW skips it).
    """
    if not is_distributed():
        return
    params = list(params)
    if not params:
        return
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8, device=device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    used = [p for p, h in zip(params, has.tolist(), strict=True) if h]
    if not used:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in used]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    for p, g in zip(used, flat.split([g.numel() for g in grads]), strict=True):
        p.grad = g.view_as(p).to(p.dtype)
