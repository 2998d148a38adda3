"""Glue between the encoder, the sampled negatives and the pure loss functions.

The model returns embeddings; this module looks up the item vectors a loss needs and calls it. It
also owns the one trainable piece of state a loss may have: a learnable, bounded temperature.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from seqrec.config import LossConfig
from seqrec.data.batches import Batch
from seqrec.losses import LOSSES, full_softmax_loss
from seqrec.losses.distributed import all_reduce_sum, world_size
from seqrec.losses.infonce import choose_infonce_mode
from seqrec.model.sasrec import SASRec


class Objective(nn.Module):
    """Computes the configured loss for one batch.

    Args:
        config: the loss section.
        item_counts: (I + 1,) training frequency per item; needed for the logQ correction of
            ``extra_pos_negatives``.
        precision: ``"fp32"``, or ``"bf16"``: the encoder runs under bfloat16 autocast, and the InfoNCE
            losses' matrix products in bfloat16 with their sums, log-sum-exp and gradients in float32.
        distributed: this rank holds a share of the global batch (``torch.distributed`` initialised):
            the loss is ``world_size / N_global * sum of this rank's row losses``, so DDP's average over
            ranks is the single-process loss on the global batch, and the InfoNCE pool is every rank's.
    """

    def __init__(
        self,
        config: LossConfig,
        item_counts: np.ndarray | None = None,
        *,
        precision: str = "fp32",
        distributed: bool = False,
    ):
        super().__init__()
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.config = config
        self.precision = precision
        # bf16: the streamed softmax's GEMMs too; its sums, log-sum-exp and gradients stay float32.
        self.gemm_dtype = torch.bfloat16 if precision == "bf16" else None
        self.distributed = distributed
        # Parameterised in log space and clamped in ``temperature`` so it stays in [min_temperature, 1].
        self.log_temperature = (
            nn.Parameter(torch.tensor(math.log(config.temperature))) if config.learnable_temperature else None
        )
        log_q = None
        if config.extra_pos_negatives:
            if item_counts is None:
                raise ValueError("loss.extra_pos_negatives needs item_counts for the logQ correction")
            counts = torch.as_tensor(item_counts, dtype=torch.float64).clamp(min=1.0)
            log_q = torch.log(counts / counts.sum()).float()
        self.register_buffer("pos_log_q", log_q, persistent=False)

    @property
    def temperature(self) -> torch.Tensor | float:
        if self.log_temperature is None:
            return self.config.temperature
        return self.log_temperature.exp().clamp(self.config.min_temperature, 1.0)

    def forward(self, model: SASRec, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        bf16 = self.precision == "bf16"
        with torch.autocast(batch.input_ids.device.type, dtype=torch.bfloat16, enabled=bf16):
            seq_embs = model(batch.input_ids, users=batch.users)  # (B, L, D)
        if bf16:
            seq_embs = seq_embs.float()
        cfg = self.config
        weights = self.position_weights(batch)  # (B, L) or None
        if cfg.name == "bce":
            pos_embs, neg_embs = _candidate_vectors(model, batch)  # (B, L, D), (B, L, K, D)
            return LOSSES["bce"](seq_embs, pos_embs, neg_embs, batch.loss_mask, distributed=self.distributed,
                                 weights=weights)
        if cfg.name == "gbce":
            pos_embs, neg_embs = _candidate_vectors(model, batch)  # (B, L, D), (B, L, K, D)
            return LOSSES["gbce"](seq_embs, pos_embs, neg_embs, batch.loss_mask, num_items=model.num_items,
                                  t=cfg.gbce_t, distributed=self.distributed, weights=weights)
        history = batch.input_ids if cfg.history_mask is not False else None  # None (unresolved): on
        valid = valid_global = int(batch.loss_mask.sum())
        if self.distributed and cfg.mode != "pool":
            # Every rank must take the same branch of "auto", so it is chosen on the global batch.
            valid_global = int(all_reduce_sum(batch.loss_mask.sum()))
        if choose_infonce_mode(cfg.mode, model.num_items, valid_global * batch.neg_ids.shape[-1]) == "full":
            loss = full_softmax_loss(
                seq_embs, model.item_embeddings(), batch.loss_mask, batch.pos_ids, self.temperature,
                history_ids=history, weights=weights, gemm_dtype=self.gemm_dtype,
            )
            if self.distributed and weights is not None:  # the mean's denominator is a weight sum
                local = (weights * batch.loss_mask).sum()
                return loss * (local * world_size() / all_reduce_sum(local.detach()).clamp(min=1e-12))
            # full_softmax_loss is this rank's mean; rescale it to world_size / N_global * local sum.
            return loss * (valid * world_size() / max(valid_global, 1)) if self.distributed else loss
        pos_embs, neg_embs = _candidate_vectors(model, batch)  # (B, L, D), (B, L, K, D)
        return LOSSES["infonce"](
            seq_embs, pos_embs, neg_embs, batch.loss_mask, batch.pos_ids, batch.neg_ids, self.temperature,
            pool_size=cfg.pool_size, generator=generator, extra_pos_negatives=cfg.extra_pos_negatives,
            pos_log_q=self.pos_log_q, history_ids=history, distributed=self.distributed, weights=weights,
            gemm_dtype=self.gemm_dtype,
        )

    def position_weights(self, batch: Batch) -> torch.Tensor | None:
        """(B, L) weight of each position by its positive's action type (``loss.action_weights``), or None."""
        if self.config.action_weights is None:
            return None
        if batch.pos_actions is None:
            raise ValueError("loss.action_weights needs the action type of every event (e.g. TAAC data); "
                             "this data has none")
        table = torch.tensor(self.config.action_weights, dtype=torch.float32, device=batch.pos_actions.device)
        return table[batch.pos_actions.long()]


def _candidate_vectors(model: SASRec, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectors of the positives and the negatives; an item tower embeds their distinct ids in one call."""
    if getattr(model, "item_tower", None) is None:
        return model.item_embeddings(batch.pos_ids), model.item_embeddings(batch.neg_ids)
    n = batch.pos_ids.numel()
    both = model.item_embeddings(torch.cat([batch.pos_ids.reshape(-1), batch.neg_ids.reshape(-1)]))
    return both[:n].view(*batch.pos_ids.shape, -1), both[n:].view(*batch.neg_ids.shape, -1)
