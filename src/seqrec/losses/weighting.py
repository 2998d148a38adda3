"""Weighted means of the streamed softmax cross-entropy (``infonce_kernel.py``), without per-row losses.

The streamed kernel returns ``scale * sum_r loss_r`` and fuses its gradients into the forward pass, so
it never materialises the per-row losses a weighted mean would multiply. A weighted mean is instead a
sum over groups of rows that share one weight: ``sum_g w_g * sum_{r in g} loss_r / sum_r w_r``. Each
group is one call of the kernel on its rows against the same pool, so the total work is the unweighted
work; rows of weight 0 are skipped. Weights by action type have at most three distinct values; the cost
grows with the number of distinct weights, so arbitrary per-row floats are correct but slow.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from seqrec.losses.distributed import all_reduce_sum, world_size


def weighted_ce_sum(
    ce_sum: Callable[..., torch.Tensor],
    row_weights: torch.Tensor,
    queries: torch.Tensor,
    pos_logit: torch.Tensor,
    pool: torch.Tensor,
    bias: torch.Tensor | None,
    mask_rows: torch.Tensor,
    mask_cols: torch.Tensor,
    *,
    include_pos: bool,
    chunk_size: int,
    distributed: bool = False,
    logit_bound: float | None = None,
    gemm_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``sum_r w_r * loss_r / sum_r w_r`` (times ``world_size`` over the global weight sum when distributed).

    Args:
        ce_sum: the streamed kernel, ``infonce_kernel.softmax_ce_sum``.
        row_weights: (N,) non-negative weight of each query row.
        queries, pos_logit, pool, bias, mask_rows, mask_cols: as for ``ce_sum`` (mask pairs sorted by row).
        include_pos, chunk_size, logit_bound, gemm_dtype: as for ``ce_sum``.
        distributed: the denominator is the weight sum of all ranks, and the result is scaled by
            ``world_size`` so DDP's average over ranks is the global weighted mean.

    Returns:
        0-dim tensor; 0.0 with a zero gradient path when every weight is 0.
    """
    weights = row_weights.to(queries.dtype)
    total = weights.sum()
    if distributed:
        total = all_reduce_sum(total)
    total = float(total)
    # Zero gradient paths keep every input in the graph (DDP expects each parameter to get a gradient).
    out = queries.sum() * 0 + pool.sum() * 0 + pos_logit.sum() * 0
    if total <= 0:
        return out
    factor = (world_size() if distributed else 1.0) / total
    values, group = torch.unique(weights, return_inverse=True)
    for g, value in enumerate(values.tolist()):
        if value == 0:
            continue
        chosen = group == g
        renumber = torch.cumsum(chosen.long(), 0) - 1  # old row -> row within the group
        keep = chosen[mask_rows]
        out = out + ce_sum(
            queries[chosen], pos_logit[chosen], pool, bias, renumber[mask_rows[keep]], mask_cols[keep],
            include_pos=include_pos, scale=value * factor, chunk_size=chunk_size,
            logit_bound=logit_bound, gemm_dtype=gemm_dtype,
        )
    return out
