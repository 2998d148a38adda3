"""In-batch sampled-softmax (InfoNCE) loss for SASRec-style next-item training, exact and memory-bounded.

Definition (what :func:`infonce_loss` computes; ``q``, ``p``, ``n`` are L2-normalised):

* one row per valid position (``loss_mask`` true): query ``q``, positive ``p`` with id ``y``;
* the negative pool = the sampled negatives of every valid position of the batch (padding positions and
  padding ids are never in the pool), optionally plus the valid positives of the batch;
* ``loss_row = -log softmax([q.p, q.n_1, ..., q.n_P] / temperature)[0]`` where pool entries with id ``y``
  (accidental hits) or, optionally, with an id in the row's user history get logit ``-inf``;
* the loss is the mean of ``loss_row`` over valid rows.

How it is made fast without changing the value (see ``infonce_kernel.py``):

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

from seqrec.losses.distributed import (
    all_gather_variable,
    all_reduce_sum,
    gather_with_grad,
    is_distributed,
    world_size,
)
from seqrec.losses.infonce_kernel import softmax_ce_sum
from seqrec.losses.weighting import weighted_ce_sum

__all__ = [
    "choose_infonce_mode",
    "full_softmax_loss",
    "infonce_loss",
    "sample_pool_indices",
]

_NORM_EPS = 1e-12


FULL_SOFTMAX_MAX_ITEMS = 1 << 16  # loss.mode auto: the full softmax up to this catalogue size


def choose_infonce_mode(mode: str, num_items: int, pool_entries: int) -> str:
    """Pick between the in-batch pool and the full-catalogue softmax.

    Args:
        mode: ``"pool"``, ``"full"`` or ``"auto"``.
        num_items: catalogue size (excluding padding).
        pool_entries: number of entries the in-batch pool would hold (e.g. valid positions x K).

    Returns:
        ``"pool"`` or ``"full"``. ``"auto"`` gives ``"full"`` when the catalogue has at most
        ``FULL_SOFTMAX_MAX_ITEMS`` items or is smaller than the pool: scoring every item then costs at most
        ~6 x 65,536 x D flops per position (25 MFLOP at D = 64, a few times the encoder's share) and has
        no sampling bias (the session-3 screen: the note's pool -40% validation NDCG@10 on ML-1M).

    Raises:
        ValueError: on an unknown mode.
    """
    if mode in ("pool", "full"):
        return mode
    if mode == "auto":
        return "full" if num_items <= FULL_SOFTMAX_MAX_ITEMS or num_items < pool_entries else "pool"
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
    gemm_dtype: torch.dtype | None = None,
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
        gemm_dtype: e.g. ``torch.bfloat16``: the streamed softmax's matrix products in that precision
            (``infonce_kernel.softmax_ce_sum``); None: the compute dtype throughout.

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
        return weighted_ce_sum(softmax_ce_sum, weights.reshape(-1)[flat], q, pos_logit, pool, bias, rows, cols,
                               include_pos=True, chunk_size=chunk_size, distributed=use_dist, logit_bound=bound,
                               gemm_dtype=gemm_dtype)
    return softmax_ce_sum(
        q, pos_logit, pool, bias, rows, cols, include_pos=True, scale=scale, chunk_size=chunk_size,
        logit_bound=bound, gemm_dtype=gemm_dtype,
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
    gemm_dtype: torch.dtype | None = None,
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
        gemm_dtype: as for :func:`infonce_loss`.

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
        return weighted_ce_sum(softmax_ce_sum, weights.reshape(-1)[flat], q, pos_logit, items, None, rows, cols,
                               include_pos=False, chunk_size=chunk_size, logit_bound=bound, gemm_dtype=gemm_dtype)
    return softmax_ce_sum(
        q, pos_logit, items, None, rows, cols, include_pos=False, scale=1.0 / n, chunk_size=chunk_size,
        logit_bound=bound, gemm_dtype=gemm_dtype,
    )  # fmt: skip
