"""``train.sparse_embeddings`` under DDP: only the rows the global batch touches cross the wire.

DDP all-reduces every parameter's gradient as a dense buffer; for a 4.8M x 64 float32 item table that is
1.14 GiB per step, although a batch touches at most a few ten thousand rows. Here the item tables are
left out of DDP (``exclude_from_ddp``) and, after ``backward``, each rank's sparse gradient is coalesced
and its row ids and gradient rows are all-gathered (``all_reduce_sparse_grads``); every rank then sums
the gathered rows into one coalesced sparse gradient and divides by the world size, as DDP averages
dense gradients. The losses are normalised so that the mean over ranks is the single-process loss on
the global batch (``losses/``), so the result equals one process at the same global batch up to float
rounding (the order of the sums differs). Every rank ends with the same gradient, so the optimizer
steps keep the replicas identical.

Bytes: all-gather moves ``W x max over ranks of rows x (8 + 4 D)`` bytes into each rank (ids int64,
rows float32; every part is padded to the longest) plus one int per rank for the sizes; a ring all-reduce of the dense table moves about
``2 (W - 1) / W x 4 D (I + 1)`` bytes per rank. ``dense_all_reduce_bytes`` gives the latter.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from seqrec.losses.distributed import all_gather_variable


def exclude_from_ddp(module: nn.Module, tables: list[nn.Embedding]) -> None:
    """Marks the tables' weights of ``module`` (before it is wrapped in DDP) as not synchronised by DDP.

    DDP neither broadcasts nor all-reduces them, so the tables are broadcast from rank 0 here (the ranks
    build them from the same seed already; this makes it hold whatever the initialisation).
    """
    ids = {id(t.weight) for t in tables}
    names = [name for name, p in module.named_parameters() if id(p) in ids]
    if len(names) != len(ids):
        raise ValueError("the item tables are not parameters of the module that DDP wraps")
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)
    for table in tables:
        dist.broadcast(table.weight.data, src=0)


def all_reduce_sparse_grads(tables: list[nn.Embedding], world_size: int) -> int:
    """Replaces each table's sparse gradient by the mean over ranks of all ranks' gradients.

    Every rank must call it after ``backward`` (a rank whose batch share is empty takes part with no
    rows). Returns the bytes this rank received (ids, rows and sizes), for the log.
    """
    received = 0
    for table in tables:
        weight = table.weight
        grad = weight.grad
        if grad is None:
            grad = torch.sparse_coo_tensor(torch.empty((1, 0), dtype=torch.long, device=weight.device),
                                           weight.new_empty((0, *weight.shape[1:])), weight.shape)
        grad = grad.coalesce()
        rows, values = grad._indices()[0], grad._values()
        all_rows, sizes = all_gather_variable(rows)
        all_values, _ = all_gather_variable(values)
        # all_gather_variable pads every rank's part to the longest one: that is what travels
        row_bytes = rows.element_size() + weight[0].numel() * weight.element_size()
        received += len(sizes) * max(sizes) * row_bytes + 8 * len(sizes)
        weight.grad = torch.sparse_coo_tensor(all_rows.unsqueeze(0), all_values / world_size, weight.shape).coalesce()
    return received


def dense_all_reduce_bytes(tables: list[nn.Embedding], world_size: int) -> int:
    """Bytes a ring all-reduce of the tables' dense gradients moves into each rank: 2 (W - 1) / W x size."""
    size = sum(t.weight.numel() * t.weight.element_size() for t in tables)
    return int(2 * (world_size - 1) / world_size * size)
