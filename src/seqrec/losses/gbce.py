"""Generalised binary cross-entropy (gBCE) of gSASRec (Petrov & Macdonald, RecSys 2023).

BCE on one positive and k uniformly sampled negatives makes the model overconfident: with a
sampling rate alpha = k / (|I| - 1) the scores it learns are calibrated to the sampled distribution,
not the full catalogue. gBCE raises the positive's probability to a power beta:

    loss = -log(sigmoid(s+) ** beta) - sum_k log(1 - sigmoid(s_k))
         = beta * softplus(-s+) + sum_k softplus(s_k)
    beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)

``t`` in [0, 1] is the calibration: t = 0 gives beta = 1 (plain BCE), t = 1 gives beta = alpha (fully
calibrated). Deliberate deviation from the paper's formula: each position's loss is divided by 1 + k,
as gSASRec-pytorch does (its loss is a mean over the 1 + k logits), so the gradient scale does not grow
with k and the published learning rates and ``train.clip_grad_norm`` carry over.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqrec.losses.distributed import all_reduce_sum, is_distributed, world_size


def gbce_beta(num_items: int, negatives_per_position: int, t: float) -> float:
    """The positive term's exponent: beta = alpha (t (1 - 1/alpha) + 1/alpha), alpha = k / (|I| - 1).

    Args:
        num_items: |I|, the catalogue size (real items, padding excluded).
        negatives_per_position: k, the uniform negatives sampled per position.
        t: calibration in [0, 1].
    """
    if num_items < 2:
        raise ValueError(f"gBCE needs at least 2 items, got {num_items}")
    if not 1 <= negatives_per_position <= num_items - 1:
        raise ValueError(f"gBCE needs 1 <= negatives per position <= num_items - 1 = {num_items - 1}, "
                         f"got {negatives_per_position}")
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"gBCE t must be in [0, 1], got {t}")
    alpha = negatives_per_position / (num_items - 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def gbce_loss(
    seq_embs: torch.Tensor,
    pos_embs: torch.Tensor,
    neg_embs: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    num_items: int,
    t: float,
    distributed: bool = False,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dot-product logits, gBCE per position, mean over valid positions.

    Args:
        seq_embs: (B, L, D) sequence embeddings.
        pos_embs: (B, L, D) embeddings of the next item.
        neg_embs: (B, L, D) or (B, L, K, D) embeddings of the K uniform negatives (none equal to the
            positive: the sampler avoids the user's items).
        loss_mask: (B, L) bool or 0/1; positions with a real next item.
        num_items: |I|, the catalogue size that sets the sampling rate alpha = K / (|I| - 1).
        t: calibration in [0, 1] (0 = BCE, 1 = fully calibrated).
        distributed: as for ``bce_loss``: ``world_size / N_global * sum of this rank's position losses``.
        weights: optional (B, L) weight per position; the loss is then ``sum w * loss / sum w``.

    Returns:
        Scalar loss (dtype of ``seq_embs``): sum over valid positions of
        [beta * softplus(-s+) + sum_k softplus(s_k)] / (1 + K), over the number of valid positions;
        0 with a gradient path when no position is valid.
    """
    if neg_embs.dim() == 3:
        neg_embs = neg_embs.unsqueeze(2)
    k = neg_embs.shape[2]
    beta = gbce_beta(num_items, k, t)
    mask = loss_mask.to(seq_embs.dtype)
    floor = 1.0  # the denominator is a count: 0 valid positions give 0 / 1
    if weights is not None:
        mask = mask * weights.to(seq_embs.dtype)
        floor = torch.finfo(mask.dtype).tiny
    pos_logits = (seq_embs * pos_embs).sum(-1)  # (B, L)
    neg_logits = torch.einsum("bld,blkd->blk", seq_embs, neg_embs)  # (B, L, K)
    # The positive term in float64, as the paper specifies: its form sigmoid(s+) ** beta rounds to 1 in
    # float32 when beta (= 1 - t (1 - alpha), in [alpha, 1]) is small. The softplus form used here is
    # accurate in float32 too; float64 costs only (B, L) elements, so the specification is kept.
    positive = (beta * F.softplus(-pos_logits.double())).to(seq_embs.dtype)
    per_position = (positive + F.softplus(neg_logits).sum(-1)) / (1 + k)  # (B, L)
    if distributed and is_distributed():
        return (per_position * mask).sum() * world_size() / all_reduce_sum(mask.sum()).clamp(min=floor)
    return (per_position * mask).sum() / mask.sum().clamp(min=floor)
