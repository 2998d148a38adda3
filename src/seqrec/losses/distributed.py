"""Collectives for the cross-rank negative pool: an all-gather that lets gradients flow back to owners.

Every helper is the identity (or a local no-op) when ``torch.distributed`` is not initialised, so the
same loss code runs unchanged in a single process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is available and initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of ranks, 1 when not distributed."""
    return dist.get_world_size() if is_distributed() else 1


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    """All ranks' dim-0 sizes, in rank order.

    Args:
        n: this rank's size.
        device: device the collective runs on (must suit the backend: CPU for gloo, CUDA for nccl).

    Returns:
        List of ``world_size`` ints.
    """
    size = torch.tensor([n], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def all_gather_variable(tensor: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """All-gather along dim 0 when ranks hold different numbers of rows; no autograd.

    ``dist.all_gather`` needs equal shapes, so every rank pads to the largest size and the padding is cut
    off again after the exchange.

    Args:
        tensor: (n_rank, *rest) local rows; ``rest`` and dtype must agree across ranks.

    Returns:
        ``(gathered, sizes)``: gathered is (sum(sizes), *rest), the ranks' rows concatenated in rank order;
        sizes lists every rank's n_rank. When not distributed: ``(tensor, [n])``.
    """
    if not is_distributed():
        return tensor, [tensor.shape[0]]
    sizes = _gather_sizes(tensor.shape[0], tensor.device)
    longest = max(sizes)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)], dim=0), sizes


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over ranks (a new tensor; no autograd). Identity when not distributed."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sends every rank's gradient contribution back to the rows' owner."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        gathered, sizes = all_gather_variable(tensor)
        rank = dist.get_rank()
        ctx.start = sum(sizes[:rank])
        ctx.stop = ctx.start + sizes[rank]
        return gathered

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor]:
        # Each rank's loss used every gathered row, so the owner's gradient is the sum over ranks of the
        # gradients w.r.t. its rows. all_reduce is in-place: work on a private contiguous copy.
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return (total[ctx.start : ctx.stop],)


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather ``tensor`` along dim 0 across ranks, keeping gradients.

    Backward all-reduces (sums) the gradient of the gathered tensor and returns this rank's slice, i.e.
    the owner receives ``sum_r d loss_r / d rows``. Ranks may hold different numbers of rows. Every rank
    must call this (and later run backward through it) the same number of times, in the same order.

    Args:
        tensor: (n_rank, *rest).

    Returns:
        (sum over ranks of n_rank, *rest), rows in rank order. The input itself when not distributed.
    """
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)
