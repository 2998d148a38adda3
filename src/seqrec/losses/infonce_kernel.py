"""The streamed softmax cross-entropy kernel behind the InfoNCE losses (``softmax_ce_sum``).

It computes ``scale * sum_r (logsumexp_r - pos_r)`` over rows x pool logits that are never stored: the
logits are streamed in tiles, each tile's gradient contribution is taken while the tile is at hand and
backward only rescales it, so peak extra memory is one tile and no tile is computed twice. Masked
(row, column) pairs get logit ``-inf``; a per-column bias carries ``log(count)`` of grouped duplicates.
The public losses that build its inputs are in ``infonce.py``.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

# A tile spans at most _COL_BLOCK_FACTOR * chunk_size pool columns (pools narrower than that, 131,072 by
# default, are done in one pass) and at most chunk_size rows, fewer when it would exceed _TILE_ELEMS
# elements (64 MiB in float32): the memory bound stays O(chunk x pool), and a wide pool gets a few hundred
# rows per tile rather than a 400 MB tile; smaller tiles measured no faster (GEMMs get thin).
_COL_BLOCK_FACTOR = 32
_TILE_ELEMS = 1 << 24
# Rows per tile are further capped so that a tile of a narrow pool stays within the L3 cache share of a
# GEMM's output (2**19 elements, 2 MiB in float32: 256 rows x 2,048 columns), but never below
# _MIN_TILE_ROWS rows. On the 2-core machine, (14.2k rows x 2,833 columns, D=64), the five per-tile
# kernels took 179-217 ms with 256-row tiles against 261-329 ms with 1,024-1,480 rows (interleaved runs);
# pools wider than ~4,000 columns run best at 256 rows and up, which _MIN_TILE_ROWS keeps.
_CACHE_TILE_ELEMS = 1 << 19
_MIN_TILE_ROWS = 256
# Fixed-shift path (see _fixed_shift): every exponent it evaluates stays within +-limit, far inside the
# normal range of the dtype (float32 overflows above 88.7 and turns subnormal below -87.3).
_EXP_LIMIT = {torch.float32: 60.0, torch.float64: 600.0}


def _tile_rows(width: int, chunk_size: int) -> int:
    """Rows per tile: ``chunk_size``, fewer when the tile would pass ``_TILE_ELEMS`` elements or, above
    ``_MIN_TILE_ROWS`` rows, ``_CACHE_TILE_ELEMS`` elements."""
    width = max(width, 1)
    cap = min(_TILE_ELEMS // width, max(_MIN_TILE_ROWS, _CACHE_TILE_ELEMS // width))
    return max(1, min(chunk_size, cap))


def _fixed_shift(
    logit_bound: float | None, bias: torch.Tensor | None, width: int, dtype: torch.dtype, scale: float
) -> float | None:
    """A constant log-sum-exp shift that is safe for every row, or None when none is provably safe.

    With every logit (pool and positive) in ``[-logit_bound, logit_bound]``, every exponent lies in
    ``[lo, hi] = [-bound + min(bias, 0), bound + max(bias, 0)]``. Shifting all of them by the midpoint
    ``c`` keeps every term ``exp(x - c)`` within ``exp(+-limit)`` (normal, so at full relative precision:
    the value is the one the running-max path gives, only rounded differently) and the row sums, their
    reciprocals and the gradient factors finite, so the running-max pass is not needed. The raw
    ``exp(q . v)`` of the kernel also stays within ``exp(+-limit)``; the bias and the shift are applied
    as ``exp(bias - c)`` per column.

    Returns:
        ``c``; None when the bound is unknown or too wide for the dtype (e.g. temperature -> 0), a bias is
        not finite, or the pool / the scale is absurdly large.
    """
    limit = _EXP_LIMIT.get(dtype)
    if logit_bound is None or limit is None:
        return None
    bound = float(logit_bound)
    if not 0.0 <= bound <= limit:  # also rejects nan
        return None
    b_min = b_max = 0.0
    if bias is not None and bias.numel():
        b_min, b_max = (float(x) for x in torch.aminmax(bias.detach()))
        b_min, b_max = min(b_min, 0.0), max(b_max, 0.0)
    lo, hi = b_min - bound, b_max + bound
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi - lo > 2 * limit:
        return None
    if math.log(width + 2) > limit / 3 or not abs(scale) < math.exp(limit / 3):
        return None
    return (hi + lo) / 2



def _pair_edges(mask_rows: torch.Tensor, starts: list[int], n: int) -> list[int]:
    """Offsets into the row-sorted mask pairs at every row-tile boundary (one host sync per call)."""
    bounds = torch.tensor([*starts, n], dtype=mask_rows.dtype, device=mask_rows.device)
    return torch.searchsorted(mask_rows, bounds).tolist()


def _tile_logits(
    q: torch.Tensor,
    pool: torch.Tensor,
    c0: int,
    c1: int,
    rows: torch.Tensor,
    cols: torch.Tensor,
    single_block: bool,
    buffer: torch.Tensor,
) -> torch.Tensor:
    """Masked logits of one tile, written into ``buffer``.

    Args:
        q: (C, D) queries of the row tile.
        pool: (U, D) pool vectors; columns ``c0:c1`` are used.
        rows, cols: (M,) masked pairs of this row tile (rows relative to the tile, cols absolute).
        single_block: the block is the whole pool, so no column filtering is needed.
        buffer: flat scratch of at least C * (c1 - c0) elements, reused by every tile: a fresh tile-sized
            allocation each time costs page faults that made the GEMM ~1.5x slower on CPU.

    Returns:
        (C, c1 - c0) view of ``buffer``: the logits, masked entries ``-inf``.
    """
    s = torch.mm(q, pool[c0:c1].T, out=buffer[: q.shape[0] * (c1 - c0)].view(q.shape[0], c1 - c0))
    _mask_tile(s, rows, cols, c0, c1, single_block, float("-inf"))
    return s


def _mask_tile(s, rows, cols, c0, c1, single_block, value) -> None:
    """Set the masked pairs of a contiguous (C, c1 - c0) tile to ``value`` (one flat ``index_fill_``,
    cheaper than a 2-d ``index_put_``)."""
    if not rows.numel():
        return
    if not single_block:
        inside = (cols >= c0) & (cols < c1)
        rows, cols = rows[inside], cols[inside]
    s.view(-1).index_fill_(0, rows * (c1 - c0) + (cols - c0), value)


def _accumulate(e, weight, q, pool, c0, c1, r0, r1, grad_q, grad_pool, grad_bias) -> None:
    """Add one tile's gradient contribution, d loss / d logits = ``weight[:, None] * e``.

    The row weights are applied to the (C, D) factors, not to the (C, U) tile: one pass over the tile
    fewer.

    Args:
        e: (C, c1 - c0) tile of exp(logit - row shift), bias included.
        weight: (C,) per-row factors.
        q: (C, D) queries of the tile; pool: (U, D) pool vectors.
        grad_q: (N, D), grad_pool: (U, D), grad_bias: (U,), each None or accumulated in place.
    """
    if grad_q is not None:
        grad_q[r0:r1] += torch.mm(e, pool[c0:c1]) * weight[:, None]
    if grad_pool is not None:
        grad_pool[c0:c1].addmm_(e.T, q * weight[:, None])
    if grad_bias is not None:
        grad_bias[c0:c1].addmv_(e.T, weight)


class _BiasFactors:
    """``exp(bias - beta)`` per pool column, applied to tiles of ``exp(logit - shift)``.

    Multiplying after the exp keeps the GEMM at width D (a bias column made it ~10% slower) and costs a
    pass over the non-zero-bias columns only (few when the pool has few duplicates). ``beta`` is 0 unless
    a bias exceeds 40, far above realistic log-count / logQ values, so the factors never overflow.
    """

    def __init__(self, bias: torch.Tensor | None, blocks: list[tuple[int, int]]):
        self.beta = 0.0
        self.factor = None
        self.columns = None  # per block: local columns to scale, or None for all
        if bias is None or bias.numel() == 0:
            return
        self.beta = max(0.0, float(bias.max()) - 40.0)
        self.factor = torch.exp(bias - self.beta)
        if self.beta == 0.0:
            nonzero = (bias != 0).nonzero(as_tuple=True)[0]
            if nonzero.numel() <= bias.numel() // 4:
                starts = torch.tensor([c0 for c0, _ in blocks] + [bias.numel()], device=bias.device)
                edges = torch.searchsorted(nonzero, starts).tolist()
                self.columns = [nonzero[edges[k] : edges[k + 1]] - c0 for k, (c0, _) in enumerate(blocks)]

    def apply(self, tile: torch.Tensor, block: int, c0: int, c1: int) -> torch.Tensor:
        if self.factor is None:
            return tile
        if self.columns is None:
            return tile.mul_(self.factor[c0:c1])
        cols = self.columns[block]
        if cols.numel():
            tile[:, cols] *= self.factor[c0 + cols]
        return tile


class _SoftmaxCESum(torch.autograd.Function):
    """``scale * sum_r (lse_r - pos_r)``: the summed cross-entropy of every row, streamed in tiles.

    ``lse_r`` is the log-sum-exp of row r's unmasked logits ``q_r . v_u + bias_u`` and, with
    ``include_pos``, of its positive logit ``pos_r`` (which then sits outside the pool). The output is a
    scalar, so its gradients are the forward-time gradients times one number: forward computes them
    tile by tile (``d loss / d logits = scale * softmax``) and backward only rescales. That reads each
    tile once instead of computing it in forward and again in backward, and never holds more than one
    tile (peak extra memory ``tile_rows x min(U, 32 * chunk_size)`` with ``tile_rows <= chunk_size``, at
    most 2**24 elements unless a single row is wider, plus (N + U) x D for the gradients).

    A pool wider than ``32 * chunk_size`` columns is split into column blocks: a first sweep keeps a
    running (max, sum) per row, a second recomputes the tiles for the gradients.
    """

    @staticmethod
    def forward(
        ctx,
        queries,
        pos_logit,
        pool,
        bias,
        mask_rows,
        mask_cols,
        include_pos,
        scale,
        chunk_size,
        grad_mode,
        logit_bound,
        gemm_dtype,
    ):
        n, u = queries.shape[0], pool.shape[0]
        col_block = chunk_size * _COL_BLOCK_FACTOR
        blocks = [(c0, min(u, c0 + col_block)) for c0 in range(0, u, col_block)]
        single = len(blocks) <= 1
        step = _tile_rows(min(u, col_block), chunk_size)
        starts = list(range(0, n, step))
        edges = _pair_edges(mask_rows, starts, n) if mask_rows.numel() else [0] * (len(starts) + 1)
        # Inside forward grad mode is always off and needs_input_grad ignores torch.no_grad(), so the
        # caller's grad mode comes in as an argument: no gradient work under no_grad / in evaluation.
        need_q, need_pos, need_pool, need_bias = (grad_mode and need for need in ctx.needs_input_grad[:4])
        grad_q = torch.zeros_like(queries) if need_q else None
        grad_pos = torch.zeros_like(pos_logit) if need_pos else None
        grad_pool = torch.zeros_like(pool) if need_pool else None
        grad_bias = torch.zeros_like(bias) if bias is not None and need_bias else None
        grads = (grad_q, grad_pool, grad_bias)
        want_grads = need_q or need_pos or need_pool or grad_bias is not None
        shift = _fixed_shift(logit_bound, bias, u, queries.dtype, scale)
        low = gemm_dtype is not None and gemm_dtype != queries.dtype and shift is not None
        buffer = queries.new_empty(step * min(u, col_block), dtype=gemm_dtype if low else None)
        if shift is not None:
            total = _fixed_shift_sweep(
                queries, pos_logit, pool, bias, mask_rows, mask_cols, include_pos, scale, shift,
                blocks, starts, step, edges, buffer, grad_pos, grads, want_grads,
            )  # fmt: skip
            return _SoftmaxCESum._finish(ctx, total * scale, grad_q, grad_pos, grad_pool, grad_bias)
        factors = _BiasFactors(bias, blocks)
        beta = factors.beta
        total = queries.new_zeros(())
        for i, r0 in enumerate(starts):
            r1 = min(n, r0 + step)
            q, pos = queries[r0:r1], pos_logit[r0:r1]
            rows, cols = mask_rows[edges[i] : edges[i + 1]] - r0, mask_cols[edges[i] : edges[i + 1]]
            # Running max of the unbiased logits (and pos); run_sum holds the biased terms relative to
            # base + beta, base = run_max, or 0 while a row has nothing (run_max -inf): that avoids
            # (-inf) - (-inf) = nan, and exp(run_max - base) is then 0, never inf * 0.
            run_max = pos if include_pos else torch.full_like(pos, float("-inf"))
            base = pos if include_pos else torch.zeros_like(pos)
            run_sum = torch.full_like(pos, math.exp(-beta)) if include_pos else torch.zeros_like(pos)
            tile = None
            for k, (c0, c1) in enumerate(blocks):
                tile = _tile_logits(q, pool, c0, c1, rows, cols, single, buffer)
                new_max = torch.maximum(run_max, tile.amax(dim=1))
                base = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
                tile = factors.apply(tile.sub_(base[:, None]).exp_(), k, c0, c1)
                run_sum = run_sum * torch.exp(run_max - base) + tile.sum(dim=1)
                run_max = new_max
            lse = base + beta + run_sum.log()
            total = total + (lse - pos).sum()
            if not want_grads:
                continue
            # d loss / d logit = scale * softmax; a row with nothing left (run_sum 0) gets 0, not nan.
            weight = torch.where(run_sum > 0, scale / run_sum, torch.zeros_like(run_sum))
            if grad_pos is not None:
                grad_pos[r0:r1] = (torch.exp(pos - base - beta) * weight if include_pos else 0.0) - scale
            if single and tile is not None:
                # The tile already holds exp(logit + bias - base - beta): d loss / d logit = weight * tile.
                _accumulate(tile, weight, q, pool, *blocks[0], r0, r1, *grads)
            elif not single:
                shift = torch.where(torch.isfinite(lse), lse - beta, torch.zeros_like(lse))
                uniform = torch.full_like(lse, scale)
                for k, (c0, c1) in enumerate(blocks):
                    tile = _tile_logits(q, pool, c0, c1, rows, cols, single, buffer)
                    tile = factors.apply(tile.sub_(shift[:, None]).exp_(), k, c0, c1)
                    _accumulate(tile, uniform, q, pool, c0, c1, r0, r1, *grads)
        return _SoftmaxCESum._finish(ctx, total * scale, grad_q, grad_pos, grad_pool, grad_bias)

    @staticmethod
    def _finish(ctx, out, *out_grads):
        ctx.save_for_backward(*(g for g in out_grads if g is not None))
        ctx.present = [g is not None for g in out_grads]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        saved = iter(ctx.saved_tensors)
        grads = [next(saved) * grad_out if present else None for present in ctx.present]
        return (*grads, None, None, None, None, None, None, None, None)


def _fixed_shift_sweep(
    queries, pos_logit, pool, bias, mask_rows, mask_cols, include_pos, scale, shift,
    blocks, starts, step, edges, buffer, grad_pos, grads, want_grads,
) -> torch.Tensor:  # fmt: skip
    """:class:`_SoftmaxCESum` with the constant shift ``c`` of :func:`_fixed_shift`: no running max.

    A tile is ``exp(V Q^T)``, pool columns by query rows (masked pairs 0); the column factors
    ``f = exp(bias - c)`` are folded into the (U, D) side instead of a pass over the tile: row sums
    ``exp(Q V^T) f``, d loss / d q ``(exp(Q V^T) (f * V)) * weight``, d loss / d v
    ``f * exp(Q V^T)^T (weight * Q)``, d loss / d bias ``f * exp(Q V^T)^T weight``. Per tile: the logits
    GEMM, one exp, one index_fill, the two gradient GEMMs and a matrix-vector product. Returns the
    unscaled sum of ``lse - pos``; fills the gradients.

    Two choices are for speed only (same values up to float rounding; BENCHMARKS.md, issue 3): the tile is
    ``exp2((log2(e) Q) V^T)``, since ``exp2`` costs about half of ``exp`` on CPU, and it is laid out
    pool-major, the orientation in which the logits GEMM ran fastest.

    A ``buffer`` of a lower precision than the queries (``gemm_dtype``, bfloat16) runs the three GEMMs
    and the exp in that precision: the tile is rounded to 8 mantissa bits (a logit error of at most
    ~0.2% of ``1 / temperature``), the row sums and the gradients accumulate in the queries' precision.
    """
    n = queries.shape[0]
    grad_q, grad_pool, grad_bias = grads
    single = len(blocks) <= 1
    if bias is not None and bias.numel():
        factor = torch.exp(bias - shift)
        pool_f = pool * factor[:, None]
    else:
        factor = None  # the shift is 0: no bias and a symmetric bound
        pool_f = pool
    queries2 = queries * (1.0 / math.log(2.0))  # exp2(q2 . v) = exp(q . v)
    low = buffer.dtype != queries.dtype  # the GEMMs' operands in the buffer's (lower) precision
    pool_g, queries2 = pool.to(buffer.dtype), queries2.to(buffer.dtype)
    pool_fg = pool_g if pool_f is pool else pool_f.to(buffer.dtype)
    # Per-row work is done once for all rows, outside the tile loop (fewer small ops per tile). A masked
    # pair (r, u) sits at (u - c0) * C + (r - r0) of its (c1 - c0, C) tile.
    tile_rows = (n - (mask_rows // step) * step).clamp_(max=step)  # C of the pair's row tile
    local_rows = mask_rows % step
    flat_single = mask_cols * tile_rows + local_rows if single else None
    pos_term = torch.exp(pos_logit - shift) if include_pos else None
    # sum_u exp(q_r . v_u) f_u, plus pos_term with include_pos
    row_sums = pos_term.clone() if include_pos else torch.zeros_like(pos_logit)
    scaled_q = buffer.new_empty((min(n, step), queries.shape[1])) if grad_pool is not None else None

    def weights_of(sums):
        # d loss / d logit = scale * softmax. With the positive in the sum, every row sum is at least
        # pos_term > 0 (its exponent is within +-limit); otherwise a row with nothing left (sum 0) gets 0,
        # not nan.
        if include_pos:
            return sums.reciprocal().mul_(scale)
        return torch.where(sums > 0, scale / sums, torch.zeros_like(sums))

    def exp_tile(i, r0, r1, c0, c1):
        c = r1 - r0
        e = torch.mm(pool_g[c0:c1], queries2[r0:r1].T, out=buffer[: c * (c1 - c0)].view(c1 - c0, c)).exp2_()
        a, b = edges[i], edges[i + 1]
        if b > a:
            if single:
                flat = flat_single[a:b]
            else:
                cols = mask_cols[a:b]
                inside = (cols >= c0) & (cols < c1)
                flat = (cols[inside] - c0) * c + local_rows[a:b][inside]
            e.view(-1).index_fill_(0, flat, 0.0)
        return e  # (c1 - c0, C)

    def accumulate(e, weight, c0, c1, r0, r1):
        if low:  # no mixed-precision addmm: each product is rounded once, then added in full precision
            if grad_q is not None:
                grad_q[r0:r1] += torch.mm(e.T, pool_fg[c0:c1])
            if grad_pool is not None:
                grad_pool[c0:c1] += torch.mm(e, scaled_q[: r1 - r0].copy_(queries[r0:r1] * weight[:, None]))
            if grad_bias is not None:
                grad_bias[c0:c1] += torch.mv(e, weight.to(e.dtype))
            return
        if grad_q is not None:
            if single:
                torch.mm(e.T, pool_f, out=grad_q[r0:r1])
            else:
                grad_q[r0:r1].addmm_(e.T, pool_f[c0:c1])
        if grad_pool is not None:
            grad_pool[c0:c1].addmm_(e, torch.mul(queries[r0:r1], weight[:, None], out=scaled_q[: r1 - r0]))
        if grad_bias is not None:
            grad_bias[c0:c1].addmv_(e, weight)

    for i, r0 in enumerate(starts):
        r1 = min(n, r0 + step)
        sums = row_sums[r0:r1]
        e = None
        for c0, c1 in blocks:
            e = exp_tile(i, r0, r1, c0, c1)
            if factor is None:
                sums += e.sum(dim=0, dtype=sums.dtype)
            elif low:
                sums += torch.mv(e.T, factor[c0:c1].to(e.dtype))
            else:
                sums.addmv_(e.T, factor[c0:c1])
        if not want_grads:
            continue
        weight = weights_of(sums) if grad_pool is not None or grad_bias is not None else None
        if single and e is not None:
            accumulate(e, weight, *blocks[0], r0, r1)
        elif not single:
            for c0, c1 in blocks:
                accumulate(exp_tile(i, r0, r1, c0, c1), weight, c0, c1, r0, r1)
    # With the positive in the sum, loss_r = log(row_sum / pos_term), taken as a difference of logs (the
    # ratio can overflow): exactly 0 for a row left with only its positive, as with a max shift.
    total = (row_sums.log() - (pos_term.log() if include_pos else pos_logit - shift)).sum()
    if want_grads:
        weight = weights_of(row_sums)
        if grad_pos is not None:
            grad_pos.copy_((pos_term * weight if include_pos else torch.zeros_like(weight)) - scale)
        if grad_q is not None:
            grad_q *= weight[:, None]
    if factor is not None:
        if grad_pool is not None:
            grad_pool *= factor[:, None]
        if grad_bias is not None:
            grad_bias *= factor
    return total


def softmax_ce_sum(
    queries: torch.Tensor,
    pos_logit: torch.Tensor,
    pool: torch.Tensor,
    bias: torch.Tensor | None,
    mask_rows: torch.Tensor,
    mask_cols: torch.Tensor,
    *,
    include_pos: bool,
    scale: float,
    chunk_size: int,
    logit_bound: float | None = None,
    gemm_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Streamed, masked ``scale * sum_r (logsumexp_r - pos_r)``, see :class:`_SoftmaxCESum`.

    Args:
        queries: (N, D) queries already multiplied by 1/temperature.
        pos_logit: (N,) positive logits (same scaling).
        pool: (U, D) pool vectors, same dtype as queries.
        bias: (U,) or None, added to every row's pool logits.
        mask_rows, mask_cols: (M,) int64 masked (row, column) pairs, sorted by row.
        include_pos: the positive is an extra logit (in-batch pool) rather than a pool column (catalogue).
        scale: factor of the sum (1 / number of rows for a mean).
        chunk_size: at most this many rows per tile; a tile spans at most ``32 * chunk_size`` columns.
        logit_bound: a guarantee from the caller that every ``|q_r . v_u|`` and ``|pos_r|`` is at most
            this (``1 / temperature`` for unit-norm queries and pool vectors, with a little margin for
            rounding). When it and the bias range allow (see :func:`_fixed_shift`) the log-sum-exp uses a
            constant shift instead of a running max: the same values, fewer passes per tile. None: no
            guarantee, the running-max path.
        gemm_dtype: e.g. ``torch.bfloat16``: the tile GEMMs and the exp in that precision, on the
            constant-shift path only (CPUs with bfloat16 instructions run them ~3x faster); sums and
            gradients stay in the queries' dtype. None: the queries' dtype throughout.

    Returns:
        0-dim tensor.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return _SoftmaxCESum.apply(
        queries, pos_logit, pool, bias, mask_rows, mask_cols, include_pos, float(scale), chunk_size,
        torch.is_grad_enabled(), logit_bound, gemm_dtype,
    )  # fmt: skip

