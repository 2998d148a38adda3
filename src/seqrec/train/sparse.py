"""Sparse-row updates for the item table (``train.sparse_embeddings``).

At TencentGR scale the item table dominates the model: 4.8M x 64 float32 is 1.2 GB, and dense Adam
reads and writes the table, its gradient and both moment buffers at every step (~7 passes over
1.2 GB), although a batch touches well under 1% of the rows. With ``sparse_embeddings`` the item
table(s) produce sparse gradients (``nn.Embedding(sparse=True)``) and are updated by
``torch.optim.SparseAdam`` (only the rows in the batch change: "lazy" Adam, whose moments decay only
when a row is seen); every other parameter keeps AdamW. Differences from dense AdamW, by design:
the item table gets no weight decay, and rows absent from a batch do not move.

Requirements: the loss may only look rows up (``loss.mode=pool``); a full-catalogue softmax uses the
whole table and would give it a dense gradient. Under DDP the tables are left out of DDP's dense
all-reduce and only the rows of the global batch are exchanged (``sparse_ddp.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


class MixedAdam:
    """AdamW over the dense parameters and SparseAdam over the sparse-gradient tables, as one optimizer.

    Exposes what the training loop uses: ``param_groups`` (the groups of both, so a learning-rate
    schedule reaches every parameter), ``zero_grad``, ``step``, ``state_dict`` and ``load_state_dict``.
    """

    def __init__(
        self,
        dense_params: Iterable[nn.Parameter],
        sparse_params: Iterable[nn.Parameter],
        *,
        lr: float,
        betas: tuple[float, float],
        weight_decay: float = 0.0,
    ):
        dense_params = list(dense_params)
        self.dense = torch.optim.AdamW(dense_params, lr=lr, betas=betas, weight_decay=weight_decay,
                                       fused=fused_supported(dense_params))
        self.sparse = RowSparseAdam(list(sparse_params), lr=lr, betas=betas)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.dense.param_groups + self.sparse.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.sparse.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.dense.step()
        self.sparse.step()

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"dense", "sparse"}:
            raise ValueError("optimizer state is not from train.sparse_embeddings=true (it lacks dense/sparse parts)")
        self.dense.load_state_dict(state["dense"])
        self.sparse.load_state_dict(state["sparse"])


class RowSparseAdam(torch.optim.SparseAdam):
    """``torch.optim.SparseAdam`` (same update, same state and ``state_dict``) done row-wise.

    SparseAdam reads the moments with ``sparse_mask`` and writes them back as sparse additions into the
    dense buffers (two gathers and three scatter-adds over the batch's rows, each through a sparse
    tensor); here the batch's rows of both moments and of the parameter are gathered once with
    ``index_select``, updated in place and written back with ``index_copy_`` / ``index_add_``. At 4.8M x 64
    and ~26k distinct rows: 11 ms instead of 25 ms alone, 24 ms instead of 28 ms inside a training step
    on the 2-core test machine (BENCHMARKS.md, "Catalogue scale"); the work depends on the rows touched,
    not on the table size.
    """

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - as SparseAdam.step
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps = float(group["lr"]), group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError("RowSparseAdam needs sparse gradients (nn.Embedding(sparse=True))")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                grad = p.grad.coalesce()  # the update is non-linear: one value per row
                if group.get("maximize", False):
                    grad = -grad
                rows, values = grad._indices()[0], grad._values()
                if values.numel() == 0:
                    continue
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                m = exp_avg.index_select(0, rows).lerp_(values, 1 - beta1)
                v = exp_avg_sq.index_select(0, rows)
                v.mul_(beta2).addcmul_(values, values, value=1 - beta2)
                exp_avg.index_copy_(0, rows, m)
                exp_avg_sq.index_copy_(0, rows, v)
                step = state["step"]
                step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                p.index_add_(0, rows, m.div_(v.sqrt_().add_(eps)), alpha=-step_size)
        return loss


def fused_supported(params: list[nn.Parameter]) -> bool:
    """Whether AdamW can take ``fused=True`` for these parameters (floating, all on CPU or all on one CUDA device).

    The fused kernel does the whole update in one pass over each parameter and its moments; the default
    (per-op) AdamW makes about eight passes and allocates a parameter-sized temporary per step. Dense
    AdamW over a 4.8M x 64 table: 0.19 s instead of 2.2 s per step on the 2-core test machine, at the
    copy-bandwidth floor of reading and writing the table and both moments (BENCHMARKS.md).
    """
    devices = {p.device for p in params}
    return (bool(params) and len(devices) == 1 and next(iter(devices)).type in ("cpu", "cuda")
            and all(p.is_floating_point() for p in params))


def item_tables(model: nn.Module) -> list[nn.Embedding]:
    """The id item tables of a SASRec model (input table, and the output table when untied)."""
    tables = [t for t in (getattr(model, "item_emb", None), getattr(model, "out_emb", None)) if t is not None]
    if not tables:
        raise ValueError("train.sparse_embeddings needs the model's id item table (an item tower has none)")
    return tables


def check_sparse_setup(loss_name: str, loss_mode: str) -> None:
    """Raises ValueError when ``train.sparse_embeddings`` cannot be used with this loss (any process count:
    under DDP the tables' rows are exchanged by ``sparse_ddp.py``)."""
    if loss_name == "infonce" and loss_mode != "pool":
        raise ValueError(f"train.sparse_embeddings needs loss.mode=pool, got {loss_mode!r}: a full-catalogue "
                         "softmax uses every row of the item table (a dense gradient)")


def make_optimizer(
    model: nn.Module,
    extra_params: Iterable[nn.Parameter],
    *,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    sparse_embeddings: bool,
) -> torch.optim.Optimizer | MixedAdam:
    """AdamW over everything, or (``sparse_embeddings``) SparseAdam for the item tables + AdamW for the rest.

    With ``sparse_embeddings`` the model's item tables are switched to sparse gradients in place.
    """
    params = list(model.parameters()) + list(extra_params)
    if not sparse_embeddings:
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused_supported(params))
    tables = item_tables(model)
    for table in tables:
        table.sparse = True
    sparse_ids = {id(t.weight) for t in tables}
    dense = [p for p in params if id(p) not in sparse_ids]
    return MixedAdam(dense, [t.weight for t in tables], lr=lr, betas=betas, weight_decay=weight_decay)


def clip_grad_norm(params: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (L2, non-finite norms not checked) that also takes sparse gradients.

    Sparse gradients are coalesced first (repeated rows summed), so their norm is the norm of the
    gradient they represent.
    """
    grads = []
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            grads.append(p.grad._values())
        else:
            grads.append(p.grad)
    if not grads:
        return torch.tensor(0.0)
    norms = torch.stack([torch.linalg.vector_norm(g.detach(), 2.0).to(torch.float32) for g in grads])
    total = torch.linalg.vector_norm(norms, 2.0)
    coef = max_norm / (total + 1e-6)
    if bool(coef < 1.0) and math.isfinite(float(total)):
        for g in grads:
            g.detach().mul_(coef.to(g.dtype))
    return total
