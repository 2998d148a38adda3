"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

The encoder returns per-position sequence embeddings and exposes the item table; it never computes a
loss. Scoring lives in ``score_items`` so training losses, evaluation and retrieval share it.

Deliberate deviations from the paper:
- pre-LN blocks by default (``norm_first``), the paper's post-LN as an option;
- ``torch.nn.functional.scaled_dot_product_attention`` with a causal-and-padding mask (on a CPU in
  training, explicit attention with a cheaper dropout mask: ``model/dropout.py``);
- positions are counted from the first real item of the window, not from the left edge of the padded
  window, so the output at a position depends neither on later items nor on the amount of padding;
- queries at padding positions attend to themselves only (no NaN) and their outputs are zeroed;
- a final LayerNorm on the output (also in the pre-LN variant, as in most pre-LN transformers);
- optional untied output item table (``tied_embeddings=False``; with an item tower, the candidate side
  gets its own fusing layer and an output id table);
- optional side features (``model/features.py``): an item tower replaces the id table on both sides
  (inputs and candidates), and a user vector is placed before the first item (``user_features=token``,
  the TAAC baseline's way) or added at every position (``add``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from seqrec.config import ModelConfig
from seqrec.data.dataset import PAD_ID
from seqrec.model.dropout import Dropout, attention


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        # The key third of qkv.bias gets no gradient (q . (k + b) = q . k + q . b shifts every logit of a
        # query by the same amount, which softmax ignores); it is zero-initialised and stays zero. It is
        # kept because dropping it changes the checkpoint layout (qkv.bias is 3 * dim) and the fused qkv
        # projection, for dim parameters a block; tests/test_model.py checks that its gradient stays zero.
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout
        self.resid_dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """x: (B, L, D); attn_mask: (B, 1, L, L) bool, True = may attend.

        Returns (B, L, D), or (B, 1, D) for the last query alone with ``last_only`` (keys and values still
        come from every position; the other queries are never computed).
        """
        B, L, D = x.shape
        if last_only:
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, -1:], w[:D], b[:D])
            k, v = F.linear(x, w[D:], b[D:]).split(D, dim=-1)
            attn_mask = attn_mask[:, :, -1:]
        else:
            q, k, v = self.qkv(x).split(D, dim=-1)
        h, dh = self.num_heads, D // self.num_heads
        q, k, v = (t.view(B, t.shape[1], h, dh).transpose(1, 2) for t in (q, k, v))  # (B, H, L or 1, Dh)
        y = attention(q, k, v, attn_mask, self.dropout, self.training)
        y = y.transpose(1, 2).reshape(B, q.shape[2], D)
        return self.resid_dropout(self.proj(y))


class FeedForward(nn.Module):
    """Point-wise feed-forward; width = hidden size as in SASRec (ReLU)."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), Dropout(dropout), nn.Linear(dim, dim), Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float, norm_first: bool):
        super().__init__()
        self.norm_first = norm_first
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, num_heads, dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(B, L, D) -> (B, L, D), or (B, 1, D) for the last position alone with ``last_only``."""
        last = x[:, -1:] if last_only else x
        if self.norm_first:
            x = last + self.attn(self.ln1(x), attn_mask, last_only)
            return x + self.ffn(self.ln2(x))
        x = self.ln1(last + self.attn(x, attn_mask, last_only))
        return self.ln2(x + self.ffn(x))


class SASRec(nn.Module):
    """Causal transformer over item-id sequences.

    Args:
        num_items: catalogue size I; item ids are 1..I, ``PAD_ID = 0`` is padding.
        config: encoder shape.
        item_tower: optional ``ItemTower``: item ids -> vectors from side features; it replaces the id
            table (build it with ``seqrec.model.features.build_model``).
        user_tower: optional ``UserFeatures``: user rows -> vectors, used as ``config.user_features`` says.
    """

    def __init__(self, num_items: int, config: ModelConfig, item_tower: nn.Module | None = None,
                 user_tower: nn.Module | None = None):
        super().__init__()
        self.num_items = num_items
        self.config = config
        d = config.hidden_dim
        if config.maxlen is None or config.dropout is None or d is None or config.num_blocks is None:
            raise ValueError("model.maxlen, model.dropout, model.hidden_dim and model.num_blocks must be set "
                             "(train/auto.py fills them from the data)")
        if item_tower is not None and config.tied_embeddings is not None and (item_tower.out_id_emb is None) != config.tied_embeddings:
            raise ValueError("model.tied_embeddings=false with an item tower needs the tower's output id table "
                             "(build the model with seqrec.model.features.build_model)")
        if (user_tower is None) != (config.user_features == "none"):
            raise ValueError(f"model.user_features={config.user_features} needs a user tower exactly when not 'none'")
        self.item_tower = item_tower
        self.user_tower = user_tower
        self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=PAD_ID) if item_tower is None else None
        # A user token takes one position before the first item.
        self.pos_emb = nn.Embedding(config.maxlen + (config.user_features == "token"), d)
        self.emb_dropout = Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(d, config.num_heads, config.dropout, config.norm_first) for _ in range(config.num_blocks)
        )
        self.final_ln = nn.LayerNorm(d)
        # Untied: a separate output id table (with an item tower, the tower's own ``out_id_emb``).
        untied = config.tied_embeddings is False and item_tower is None  # None: tied without a tower
        self.out_emb = nn.Embedding(num_items + 1, d, padding_idx=PAD_ID) if untied else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.hidden_dim ** -0.5 if self.config.init_std is None else self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()

    def forward(self, input_ids: torch.Tensor, users: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """Encodes left-padded sequences.

        Args:
            input_ids: (B, L) int64 item ids, L <= maxlen, 0 = padding.
            users: optional (B,) int64 user rows for the user tower; without them no user vector is used.
            last_only: compute the output of the last position alone (what ranking needs): the last
                block then skips every other query, its projections and its feed-forward rows.

        Returns:
            (B, L, D) per-position sequence embeddings, rows at padding positions zero; with
            ``last_only`` (B, D), the same values as ``forward(...)[:, -1]``.
        """
        B, L = input_ids.shape
        if L > self.config.maxlen:
            raise ValueError(f"sequence length {L} exceeds model.maxlen {self.config.maxlen}")
        valid = input_ids != PAD_ID  # (B, L)
        x = self._item_inputs(input_ids) * math.sqrt(self.config.hidden_dim)  # (B, L, D)
        token = users is not None and self.config.user_features == "token"
        if users is not None and self.config.user_features == "add":
            x = x + self.user_tower(users).unsqueeze(1)
        item_valid = valid
        if token:
            # One extra column on the left; the user vector goes just before the row's first item, so
            # padding still only ever sits left of everything real.
            rows = torch.arange(B, device=input_ids.device)
            slot = L - valid.sum(1)  # (B,) column of the token in the (B, L + 1) layout
            x = torch.cat([x.new_zeros(B, 1, x.shape[-1]), x], dim=1)
            x[rows, slot] = self.user_tower(users).to(x.dtype)
            valid = torch.cat([valid.new_zeros(B, 1), valid], dim=1)
            valid[rows, slot] = True
            L += 1
        # Position of each real item counted from the first real item of its row (padding invariance).
        positions = (torch.cumsum(valid.long(), dim=1) - 1).clamp(min=0)  # (B, L)
        x = x + self.pos_emb(positions)
        x = self.emb_dropout(x) * valid.unsqueeze(-1)
        causal = torch.ones(L, L, dtype=torch.bool, device=input_ids.device).tril()
        eye = torch.eye(L, dtype=torch.bool, device=input_ids.device)
        attn_mask = (causal & valid.unsqueeze(1)) | eye  # (B, L, L): key j visible to query i
        attn_mask = attn_mask.unsqueeze(1)  # (B, 1, L, L)
        for i, block in enumerate(self.blocks):
            x = block(x, attn_mask, last_only and i == len(self.blocks) - 1)
        if last_only:
            return (self.final_ln(x) * item_valid[:, -1:].unsqueeze(-1))[:, 0]
        out = self.final_ln(x) * valid.unsqueeze(-1)
        # The token's own output is not a prediction (and a row without items has no real position).
        return out[:, 1:] * item_valid.unsqueeze(-1) if token else out

    def _item_inputs(self, ids: torch.Tensor) -> torch.Tensor:
        return self.item_emb(ids) if self.item_tower is None else self.item_tower(ids)

    def item_embeddings(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Output-side item vectors: (..., D) for ``ids`` of any shape, or the whole table (I + 1, D).

        With an item tower the table is the tower over its whole catalogue, computed in chunks.
        """
        if self.item_tower is not None:
            return self.item_tower.table() if ids is None else self.item_tower(ids, output=True)
        table = self.item_emb if self.out_emb is None else self.out_emb
        return table.weight if ids is None else table(ids)

    @torch.no_grad()
    def user_embeddings(self, histories: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) left-padded histories (and optional (B,) user rows) -> (B, D) output at the last position."""
        return self(histories, users, last_only=True)


def score_items(user_vecs: torch.Tensor, item_vecs: torch.Tensor, similarity: str) -> torch.Tensor:
    """Scores (B, D) users against (N, D) items -> (B, N); cosine normalises both sides, dot neither."""
    if similarity == "cosine":
        user_vecs = F.normalize(user_vecs, dim=-1)
        item_vecs = F.normalize(item_vecs, dim=-1)
    elif similarity != "dot":
        raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
    return user_vecs @ item_vecs.T


def similarity_for_loss(loss_name: str) -> str:
    """The similarity a model trained with ``loss_name`` must be served with."""
    return {"infonce": "cosine", "bce": "dot", "gbce": "dot"}[loss_name]
