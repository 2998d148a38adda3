"""The original SASRec objective: binary cross-entropy on one positive and one random negative."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqrec.losses.distributed import all_reduce_sum, is_distributed, world_size


def bce_loss(
    seq_embs: torch.Tensor,
    pos_embs: torch.Tensor,
    neg_embs: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    distributed: bool = False,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dot-product logits, BCE with the positive labelled 1 and each negative 0, mean over valid positions.

    Args:
        seq_embs: (B, L, D) sequence embeddings.
        pos_embs: (B, L, D) embeddings of the next item.
        neg_embs: (B, L, D) or (B, L, K, D) embeddings of the random negatives.
        loss_mask: (B, L) bool or 0/1; positions with a real next item.
        distributed: when ``torch.distributed`` is initialised, return ``world_size / N_global * sum of
            this rank's position losses`` (N_global: valid positions of all ranks), so the mean over ranks
            (what DDP's gradient averaging optimises) equals the single-process loss on the global batch.
            Every rank must call it.
        weights: optional (B, L) float weight per position (e.g. by the positive's action type): the loss
            is then the weighted mean ``sum w * loss / sum w`` over valid positions.

    Returns:
        Scalar loss: sum over valid positions of [BCE(pos) + mean_k BCE(neg_k)] / number of valid positions;
        0 with a gradient path when no position is valid.
    """
    mask = loss_mask.to(seq_embs.dtype)
    floor = 1.0  # the denominator is a count: 0 valid positions give 0 / 1
    if weights is not None:
        # A weighted mean is the masked mean with the weights in the mask; a weight sum may be below 1.
        mask = mask * weights.to(seq_embs.dtype)
        floor = torch.finfo(mask.dtype).tiny
    if neg_embs.dim() == 3:
        neg_embs = neg_embs.unsqueeze(2)
    pos_logits = (seq_embs * pos_embs).sum(-1)  # (B, L)
    neg_logits = torch.einsum("bld,blkd->blk", seq_embs, neg_embs)  # (B, L, K)
    per_position = F.softplus(-pos_logits) + F.softplus(neg_logits).mean(-1)  # -log σ(p) - log(1 - σ(n))
    if distributed and is_distributed():
        return (per_position * mask).sum() * world_size() / all_reduce_sum(mask.sum()).clamp(min=floor)
    return (per_position * mask).sum() / mask.sum().clamp(min=floor)
