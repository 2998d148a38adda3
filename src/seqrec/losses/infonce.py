"""In-batch sampled-softmax (InfoNCE) loss for SASRec-style next-item training, exact and memory-bounded.

Definition (what :func:`infonce_loss` computes; ``q``, ``p``, ``n`` are L2-normalised):

* one row per valid position (``loss_mask`` true): query ``q``, positive ``p`` with id ``y``;
* the negative pool = the sampled negatives of every valid position of the batch (padding positions and
  padding ids are never in the pool), optionally plus the valid positives of the batch;
* ``loss_row = -log softmax([q.p, q.n_1, ..., q.n_P] / temperature)[0]`` where pool entries with id ``y``
  (accidental hits) or, optionally, with an id in the row's user history get logit ``-inf``;
* the loss is the mean of ``loss_row`` over valid rows.

How it is made fast without changing the value (see ``_SoftmaxCESum``):

* only valid rows are scored, so padding costs nothing;
* entries with the same item id have the same embedding, so the pool keeps one vector per distinct id and
  adds ``log(count)`` to its logit: ``count * exp(s) = exp(s + log count)``. The gradient reaches every
  duplicate in equal shares, as it would in the ungrouped softmax;
* the rows x pool logits are streamed in tiles and never stored: since the loss is a scalar, each tile's
  gradient contribution is taken while the tile is at hand and backward only rescales it, so peak extra
  memory is one tile, not the whole matrix, and no tile is computed twice.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from seqrec.losses.distributed import (
    all_gather_variable,
    all_reduce_sum,
    gather_with_grad,
    is_distributed,
    world_size,
)
from seqrec.losses.weighting import weighted_ce_sum

__all__ = [
    "choose_infonce_mode",
    "full_softmax_loss",
    "infonce_loss",
    "sample_pool_indices",
]

_NORM_EPS = 1e-12
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


def choose_infonce_mode(mode: str, num_items: int, pool_entries: int) -> str:
    """Pick between the in-batch pool and the full-catalogue softmax.

    Args:
        mode: ``"pool"``, ``"full"`` or ``"auto"``.
        num_items: catalogue size (excluding padding).
        pool_entries: number of entries the in-batch pool would hold (e.g. valid positions x K).

    Returns:
        ``"pool"`` or ``"full"``. ``"auto"`` gives ``"full"`` when the catalogue is smaller than the pool:
        then scoring every item costs less than the pool and has no sampling bias.

    Raises:
        ValueError: on an unknown mode.
    """
    if mode in ("pool", "full"):
        return mode
    if mode == "auto":
        return "full" if num_items < pool_entries else "pool"
    raise ValueError(f"mode must be 'pool', 'full' or 'auto', got {mode!r}")


def sample_pool_indices(
    num_entries: int,
    pool_size: int | None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Which pool entries ``pool_size`` keeps: a uniform subset drawn without replacement.

    :func:`infonce_loss` numbers the sampled-negative entries in row-major ``(b, l, k)`` order over valid
    positions, skipping entries whose id is 0, and keeps ``entries[sample_pool_indices(...)]``. Calling
    this with a generator in the same state reproduces the subset.

    Args:
        num_entries: pool entries before the cap.
        pool_size: the cap; ``None`` or ``>= num_entries`` keeps all.
        generator: source of randomness (its device decides where ``randperm`` runs).
        device: device of the returned indices.

    Returns:
        (min(num_entries, pool_size),) int64 indices into the entries, ascending.
    """
    if pool_size is None or pool_size >= num_entries:
        return torch.arange(num_entries, device=device)
    if pool_size < 0:
        raise ValueError(f"pool_size must be >= 0, got {pool_size}")
    gen_device = generator.device if generator is not None else "cpu"
    chosen = torch.randperm(num_entries, generator=generator, device=gen_device)[:pool_size]
    return chosen.sort().values.to(device)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half/bfloat16 keep 11/8 mantissa bits: dividing by a temperature of 0.07 magnifies their rounding
    # 14x, and summing thousands of exp terms in them swallows the small ones. Logits and the log-sum-exp
    # are therefore done in float32; float32/float64 inputs are kept as they are.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


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


def _row_norms(x: torch.Tensor) -> torch.Tensor:
    """(N,) ``max(||x_r||, eps)``, the denominator of ``F.normalize``."""
    return torch.linalg.vector_norm(x, dim=-1).clamp_min(_NORM_EPS)


def _unit_rows(x: torch.Tensor, scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``scale * F.normalize(x, dim=-1)`` as one broadcast product: its backward costs ~25% less than
    ``F.normalize``'s division followed by a scaling (13.5k x 64 rows: 7.2 vs 9.7 ms)."""
    return x * (scale / _row_norms(x))[:, None]


def _valid_queries(
    seq_embs: torch.Tensor, mask: torch.Tensor, pos_ids: torch.Tensor, scale: float | torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The valid positions of a (B, L) ``mask`` and their queries.

    Positions are gathered by flat index ``b * L + l`` with ``index_select``, whose backward (an
    ``index_add``) costs about half of the ``index_put`` of two-index gathering (BENCHMARKS.md, issue 3).

    Returns:
        ``(flat, batch_idx, y, q)``: (N,) flat indices, (N,) their batch rows, (N,) positive ids and
        (N, D) queries ``scale * normalize(seq_embs)`` in ``dtype``.
    """
    _, length, d = seq_embs.shape
    flat = mask.reshape(-1).nonzero().squeeze(1)
    q = _unit_rows(seq_embs.reshape(-1, d).index_select(0, flat).to(dtype), scale)
    return flat, flat // length, pos_ids.reshape(-1)[flat], q


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
        buffer = queries.new_empty(step * min(u, col_block))
        shift = _fixed_shift(logit_bound, bias, u, queries.dtype, scale)
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
        return (*grads, None, None, None, None, None, None, None)


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
    # Per-row work is done once for all rows, outside the tile loop (fewer small ops per tile). A masked
    # pair (r, u) sits at (u - c0) * C + (r - r0) of its (c1 - c0, C) tile.
    tile_rows = (n - (mask_rows // step) * step).clamp_(max=step)  # C of the pair's row tile
    local_rows = mask_rows % step
    flat_single = mask_cols * tile_rows + local_rows if single else None
    pos_term = torch.exp(pos_logit - shift) if include_pos else None
    # sum_u exp(q_r . v_u) f_u, plus pos_term with include_pos
    row_sums = pos_term.clone() if include_pos else torch.zeros_like(pos_logit)
    scaled_q = queries.new_empty((min(n, step), queries.shape[1])) if grad_pool is not None else None

    def weights_of(sums):
        # d loss / d logit = scale * softmax. With the positive in the sum, every row sum is at least
        # pos_term > 0 (its exponent is within +-limit); otherwise a row with nothing left (sum 0) gets 0,
        # not nan.
        if include_pos:
            return sums.reciprocal().mul_(scale)
        return torch.where(sums > 0, scale / sums, torch.zeros_like(sums))

    def exp_tile(i, r0, r1, c0, c1):
        c = r1 - r0
        e = torch.mm(pool[c0:c1], queries2[r0:r1].T, out=buffer[: c * (c1 - c0)].view(c1 - c0, c)).exp2_()
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
                sums += e.sum(dim=0)
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


def _softmax_ce_sum(
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

    Returns:
        0-dim tensor.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return _SoftmaxCESum.apply(
        queries, pos_logit, pool, bias, mask_rows, mask_cols, include_pos, float(scale), chunk_size,
        torch.is_grad_enabled(), logit_bound,
    )  # fmt: skip


def _cosine_logit_bound(temperature: float | torch.Tensor) -> float:
    """``|logit|`` bound for unit-norm (or zero) vectors scored with ``1 / temperature``, with a margin
    (1e-3 relative) far above the rounding of the normalisation and the dot products."""
    t = abs(float(temperature.detach() if isinstance(temperature, torch.Tensor) else temperature))
    return math.inf if t == 0 else (1.0 + 1e-3) / t


def _mask_pairs(
    pool_keys: torch.Tensor, banned: torch.Tensor, segments: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) pairs of pool entries whose id a row bans.

    Args:
        pool_keys: (U,) sorted unique keys ``2 * id + segment`` of the pool columns.
        banned: (N, M) int64 ids each row masks (0 = nothing).
        segments: the segments present in the pool (0 sampled negatives, 1 in-batch positives).

    Returns:
        ``(rows, cols)``, each (P,) int64, sorted by row.
    """
    u = pool_keys.numel()
    if u == 0 or banned.numel() == 0:
        empty = banned.new_zeros((0,))
        return empty, empty
    cols, hits = [], []
    for seg in segments:
        target = banned * 2 + seg
        idx = torch.searchsorted(pool_keys, target).clamp_(max=u - 1)
        cols.append(idx)
        hits.append((pool_keys[idx] == target) & (banned > 0))
    col_mat, hit_mat = torch.cat(cols, dim=1), torch.cat(hits, dim=1)
    rows, j = hit_mat.nonzero(as_tuple=True)
    return rows, col_mat[rows, j]


def _zero_loss(*tensors) -> torch.Tensor:
    """0.0 that still has a gradient path (zeros) to every tensor given; None and floats are skipped."""
    parts = [(t * 0).sum() for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return torch.stack(parts).sum()


def _build_pool(
    neg_vecs: torch.Tensor,
    neg_ids: torch.Tensor,
    pos_vecs: torch.Tensor | None,
    pos_ids: torch.Tensor | None,
    pos_log_q: torch.Tensor | None,
    distributed: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group pool entries by (id, segment): one normalised vector and a log-count bias per group.

    The group vector is ``normalize(mean of the group's raw vectors)``, equal to any member's normalised
    vector when the members are equal, and its backward gives each member the same share, as the
    ungrouped softmax does (zero vectors included).

    Args:
        neg_vecs: (P, D) raw sampled-negative vectors; neg_ids: (P,) their ids (> 0).
        pos_vecs: (N, D) raw in-batch positives to add, or None; pos_ids: (N,) their ids.
        pos_log_q: (num_items + 1,) log sampling probability, subtracted from positive-segment logits.
        distributed: gather the groups of all ranks (with gradient) and merge them.

    Returns:
        ``(pool, bias, keys)``: (U, D) unit vectors, (U,) bias ``log count [- log q]``, (U,) sorted keys
        ``2 * id + segment``.
    """
    keys, vecs = neg_ids * 2, neg_vecs
    if pos_vecs is not None:
        keys, vecs = torch.cat([keys, pos_ids * 2 + 1]), torch.cat([neg_vecs, pos_vecs])
    keys, inverse, counts = torch.unique(keys, sorted=True, return_inverse=True, return_counts=True)
    sums = vecs.new_zeros((keys.numel(), vecs.shape[1])).index_add(0, inverse, vecs)
    if distributed:
        # Ranks exchange their already-grouped pools: less traffic than raw entries, same result.
        meta, _ = all_gather_variable(torch.stack([keys, counts], dim=1))
        sums = gather_with_grad(sums)
        keys, inverse = torch.unique(meta[:, 0], sorted=True, return_inverse=True)
        counts = torch.zeros_like(keys).index_add_(0, inverse, meta[:, 1])
        sums = sums.new_zeros((keys.numel(), sums.shape[1])).index_add(0, inverse, sums)
    # The mean, not the sum: equal for unit-norm results, and at a zero vector (where the gradient of the
    # normalisation is 1/eps) each member still gets 1/count of the group's gradient, as when ungrouped.
    pool = _unit_rows(sums / counts.to(sums.dtype)[:, None])
    bias = counts.to(pool.dtype).log()
    if pos_vecs is not None:
        is_pos = keys % 2 == 1
        ids = torch.where(is_pos, keys // 2, torch.zeros_like(keys))
        log_q = pos_log_q.to(device=pool.device, dtype=pool.dtype)[ids]
        bias = bias - torch.where(is_pos, log_q, torch.zeros_like(log_q))
    return pool, bias, keys


def infonce_loss(
    seq_embs: torch.Tensor,
    pos_embs: torch.Tensor,
    neg_embs: torch.Tensor,
    loss_mask: torch.Tensor,
    pos_ids: torch.Tensor,
    neg_ids: torch.Tensor,
    temperature: float | torch.Tensor = 0.07,
    *,
    pool_size: int | None = None,
    generator: torch.Generator | None = None,
    extra_pos_negatives: bool = False,
    pos_log_q: torch.Tensor | None = None,
    history_ids: torch.Tensor | None = None,
    chunk_size: int = 4096,
    distributed: bool = False,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """In-batch InfoNCE over the pooled sampled negatives of all valid positions (see module docstring).

    Args:
        seq_embs: (B, L, D) sequence outputs (queries).
        pos_embs: (B, L, D) embeddings of the next items.
        neg_embs: (B, L, D) or (B, L, K, D) embeddings of the sampled negatives. Entries with the same
            id must have the same embedding (they are grouped; their mean is what gets scored).
        loss_mask: (B, L) bool or 0/1; positions that are scored and whose negatives join the pool.
        pos_ids: (B, L) int64 next-item ids; padding id is 0.
        neg_ids: (B, L) or (B, L, K) int64 negative ids; id 0 entries never join the pool.
        temperature: float or 0-dim tensor (gradients flow to a learnable one).
        pool_size: keep a uniform subset of this many sampled-negative entries (drawn with
            ``generator``, see :func:`sample_pool_indices`); in-batch positives are not capped.
        generator: torch.Generator for ``pool_size``.
        extra_pos_negatives: also use the valid positives of the batch as negatives, with the logQ
            correction ``logit / temperature - pos_log_q[id]``; a row's own positive id is masked.
        pos_log_q: (num_items + 1,) log sampling probabilities; required with ``extra_pos_negatives``
            (pass zeros for no correction).
        history_ids: (B, H) int64, 0-padded; pool entries whose id is in the row's user history are
            masked (the row's positive logit never is).
        chunk_size: at most this many rows per tile of the streamed softmax (fewer when a tile would
            pass 2**24 elements); a tile spans at most ``32 * chunk_size`` pool columns. Peak extra
            memory is one tile plus O((rows + pool) x D).
        distributed: when ``torch.distributed`` is initialised, every rank's rows are scored against the
            pool of all ranks (gathered with gradient). The returned value is
            ``world_size / N_global * sum of this rank's row losses``, so the mean over ranks (what DDP's
            gradient averaging optimises) equals the single-process loss on the global batch, and
            ``pool_size`` caps each rank's contribution to the pool. Every rank must call it.
        weights: optional (B, L) non-negative weight per position: the loss is then the weighted mean
            ``sum w * loss / sum w`` over valid rows (see ``weighting.py``); every valid position's
            negatives stay in the pool, whatever its weight.

    Returns:
        0-dim tensor: mean loss over valid rows (float32 for half/bfloat16 inputs). 0.0 with a zero
        gradient path when no position is valid.
    """
    if neg_embs.dim() == 3:
        neg_embs, neg_ids = neg_embs.unsqueeze(2), neg_ids.unsqueeze(2)
    if seq_embs.dim() != 3 or pos_embs.shape != seq_embs.shape:
        raise ValueError(f"seq_embs/pos_embs must be (B, L, D), got {seq_embs.shape}, {pos_embs.shape}")
    if (
        neg_embs.dim() != 4
        or neg_embs.shape[:2] != seq_embs.shape[:2]
        or neg_embs.shape[3] != seq_embs.shape[2]
    ):
        raise ValueError(f"neg_embs must be (B, L, D) or (B, L, K, D), got {neg_embs.shape}")
    if neg_ids.shape != neg_embs.shape[:3] or pos_ids.shape != seq_embs.shape[:2]:
        raise ValueError(f"id shapes {pos_ids.shape}, {neg_ids.shape} do not match the embeddings")
    if extra_pos_negatives and pos_log_q is None:
        raise ValueError("extra_pos_negatives=True needs pos_log_q (zeros for no logQ correction)")

    use_dist = distributed and is_distributed()
    mask = loss_mask.bool()
    n_local = mask.sum()
    n_global = int((all_reduce_sum(n_local) if use_dist else n_local).item())
    if n_global == 0:
        return _zero_loss(seq_embs, pos_embs, neg_embs, temperature)

    dtype = _compute_dtype(seq_embs.dtype)
    inv_tau = 1.0 / temperature
    d, k = seq_embs.shape[2], neg_ids.shape[2]
    flat, batch_idx, y, q = _valid_queries(seq_embs, mask, pos_ids, inv_tau, dtype)
    p_raw = pos_embs.reshape(-1, d).index_select(0, flat).to(dtype)
    pos_logit = (q * p_raw).sum(dim=-1) / _row_norms(p_raw)

    # Sampled negatives of valid positions, row-major (b, l, k), without padding ids.
    flat_neg = (flat[:, None] * k + torch.arange(k, device=flat.device)).reshape(-1)
    cand_ids = neg_ids.reshape(-1)[flat_neg]
    entries = (cand_ids != 0).nonzero(as_tuple=True)[0]
    if pool_size is not None:
        entries = entries[sample_pool_indices(entries.numel(), pool_size, generator, entries.device)]
    pool, bias, keys = _build_pool(
        neg_embs.reshape(-1, d).index_select(0, flat_neg[entries]).to(dtype),
        cand_ids[entries],
        p_raw if extra_pos_negatives else None,
        y if extra_pos_negatives else None,
        pos_log_q,
        use_dist,
    )

    banned = y[:, None]
    if history_ids is not None:
        banned = torch.cat([banned, history_ids.to(y.device)[batch_idx]], dim=1)
    rows, cols = _mask_pairs(keys, banned, (0, 1) if extra_pos_negatives else (0,))
    scale = world_size() / n_global if use_dist else 1.0 / n_global
    # q, the pool and the positives are unit vectors scaled by 1/temperature: the constant-shift path.
    bound = _cosine_logit_bound(temperature)
    if weights is not None:
        return weighted_ce_sum(_softmax_ce_sum, weights.reshape(-1)[flat], q, pos_logit, pool, bias, rows, cols,
                               include_pos=True, chunk_size=chunk_size, distributed=use_dist, logit_bound=bound)
    return _softmax_ce_sum(
        q, pos_logit, pool, bias, rows, cols, include_pos=True, scale=scale, chunk_size=chunk_size,
        logit_bound=bound,
    )  # fmt: skip


def full_softmax_loss(
    seq_embs: torch.Tensor,
    item_table: torch.Tensor,
    loss_mask: torch.Tensor,
    pos_ids: torch.Tensor,
    temperature: float | torch.Tensor = 0.07,
    *,
    history_ids: torch.Tensor | None = None,
    chunk_size: int = 4096,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cosine/temperature cross-entropy of every valid position against the whole catalogue.

    Args:
        seq_embs: (B, L, D) sequence outputs.
        item_table: (num_items + 1, D) item embeddings; row 0 (padding) is never scored.
        loss_mask: (B, L) bool or 0/1.
        pos_ids: (B, L) int64 target ids in 1..num_items at valid positions.
        temperature: float or 0-dim tensor.
        history_ids: (B, H) int64, 0-padded; items of the row's user history are masked, except the
            row's own positive.
        chunk_size: at most this many rows per tile; a tile spans at most ``32 * chunk_size`` catalogue
            columns (wider catalogues are swept in column blocks).
        weights: optional (B, L) non-negative weight per position: a weighted mean over valid rows.

    Returns:
        0-dim tensor: mean over valid rows of ``-log softmax(cos(q, items) / temperature)[pos]``;
        0.0 with a zero gradient path when no position is valid.
    """
    mask = loss_mask.bool()
    n = int(mask.sum().item())
    if n == 0:
        return _zero_loss(seq_embs, item_table, temperature)
    dtype = _compute_dtype(seq_embs.dtype)
    flat, batch_idx, y, q = _valid_queries(seq_embs, mask, pos_ids, 1.0 / temperature, dtype)
    items = _unit_rows(item_table[1:].to(dtype))
    pos_logit = (q * items[y - 1]).sum(dim=-1)
    if history_ids is None:
        rows = cols = y.new_zeros((0,))
    else:
        hist = history_ids.to(y.device)[batch_idx]
        hist = torch.where(hist == y[:, None], torch.zeros_like(hist), hist)
        rows, j = (hist > 0).nonzero(as_tuple=True)
        cols = hist[rows, j] - 1
    bound = _cosine_logit_bound(temperature)
    if weights is not None:
        return weighted_ce_sum(_softmax_ce_sum, weights.reshape(-1)[flat], q, pos_logit, items, None, rows, cols,
                               include_pos=False, chunk_size=chunk_size, logit_bound=bound)
    return _softmax_ce_sum(
        q, pos_logit, items, None, rows, cols, include_pos=False, scale=1.0 / n, chunk_size=chunk_size,
        logit_bound=bound,
    )  # fmt: skip
