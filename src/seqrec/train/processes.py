"""Several training processes (torchrun): joining the group, rank-0 decisions, and each rank's share of a batch.

Every rank rebuilds the same global batch from (seed, epoch, step) and keeps its contiguous rows, so
data and negatives never depend on the number of processes.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from seqrec.data.batches import Batch, BatchBuilder


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``train.device`` -> a device; with ``local_rank`` (one of several processes) auto/cuda mean that GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if local_rank is not None and name.startswith("cuda:"):
        raise ValueError(f"train.device={name} would put every rank on one GPU; use auto or cuda with "
                         "several processes (each rank takes cuda:LOCAL_RANK)")
    if local_rank is not None and name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def join_process_group(device_name: str) -> tuple[int, int, torch.device, bool]:
    """Joins the process group of a multi-process run, or stays a single process.

    A group is joined when one is already initialised or when torchrun's environment says there are
    several processes (WORLD_SIZE > 1; RANK, LOCAL_RANK, MASTER_ADDR/PORT): NCCL on CUDA, gloo on CPU.

    Returns:
        ``(rank, world_size, device, created)``; ``created``: this call initialised the group, so the
        caller destroys it when done.
    """
    initialised = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if initialised else int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, resolve_device(device_name), False
    default_local = dist.get_rank() if initialised else 0
    device = resolve_device(device_name, int(os.environ.get("LOCAL_RANK", default_local)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not initialised:
        # torch.distributed.nn.functional binds ``group=group.WORLD`` as a default argument of ten functions
        # when it is first imported, and DDP's constructor imports it (via torch._dynamo -> fsdp -> _shard).
        # Imported inside a group, those defaults hold that ProcessGroup for the rest of the process:
        # destroy_process_group() cannot free it, so gloo's worker threads (and the store's) still run when
        # the rank exits, where their teardown can abort it (SIGABRT, issue 18). Imported here, they bind None.
        importlib.import_module("torch.distributed.nn")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device, not initialised


def on_rank0(fn: Callable[[], Any], rank: int, world: int) -> None:
    """Runs ``fn`` on rank 0 only; an exception it raises is raised on every rank, so none waits forever."""
    error = None
    if rank == 0:
        try:
            fn()
        except Exception as exc:
            error = exc
    if world > 1:
        shared = [error]
        dist.broadcast_object_list(shared, src=0)
        error = shared[0]
    if error is not None:
        raise error


def from_rank0(value: float, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank (wall-clock decisions must not differ between ranks)."""
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def seed_rank_dropout(seed: int, rank: int, step: int) -> None:
    """Gives rank > 0 its own dropout stream, derived from (seed, rank, step).

    Rank 0 keeps the single-process stream (restored from the checkpoint on resume); without this every
    rank would draw the same masks for its rows.
    """
    torch.manual_seed(int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0]))


def enable_tf32() -> None:
    """TF32 tensor-core matmuls for float32 on CUDA (10-bit mantissa products, float32 accumulation)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9
        matmul.fp32_precision = "tf32"
    else:
        matmul.allow_tf32 = True


class RankBatches(Dataset):
    """Item i: this rank's contiguous share of global batch ``start_step + i`` of ``epoch``.

    Every rank builds the global batch (users and negatives) from (seed, epoch, step) exactly as a single
    process does and keeps its rows, so data and negatives do not depend on the number of processes, and
    any step can be built in any DataLoader worker.
    """

    def __init__(self, builder: BatchBuilder, seed: int, epoch: int, batch_size: int, start_step: int,
                 rank: int, world: int):
        self.builder, self.seed, self.epoch, self.batch_size = builder, seed, epoch, batch_size
        self.start_step, self.rank, self.world = start_step, rank, world
        self.order = builder.epoch_order(seed, epoch, batch_size)

    def __len__(self) -> int:
        return self.builder.num_batches(self.batch_size) - self.start_step

    def __getitem__(self, i: int) -> Batch:
        batch = self.builder.batch(self.seed, self.epoch, self.start_step + i, self.batch_size, self.order)
        n = len(batch.users)
        lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        return Batch(**{f.name: None if getattr(batch, f.name) is None else getattr(batch, f.name)[lo:hi]
                        for f in fields(batch)})
