"""Sparse DDP exchange vs dense all-reduce of an item table: bytes and time per step, 2 gloo CPU processes.

Each rank holds an item table (``--items`` x ``--dim`` float32), looks up its share of a synthetic global
batch (``--batch`` sequences of L = ``--maxlen`` + 1 ids and L negatives, uniform or Zipf-like ids) so its
sparse gradient has the rows a training step would touch, then times, ``--repeats`` times each,
alternating: ``all_reduce_sparse_grads`` (train/sparse_ddp.py: all-gather of ids + rows) and a dense
``all_reduce`` of the table-sized gradient (what DDP does without ``train.sparse_embeddings``).

Usage::

    python benchmarks/sparse_ddp_bytes.py --items 1000000 --batch 128 1024
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from seqrec.data.scale import power_law_ranks  # noqa: E402
from seqrec.train.sparse_ddp import all_reduce_sparse_grads, dense_all_reduce_bytes  # noqa: E402


def _ids(rng: np.random.Generator, n: int, shape: tuple[int, ...], kind: str) -> torch.Tensor:
    if kind == "uniform":
        return torch.from_numpy(rng.integers(1, n + 1, size=shape))
    return torch.from_numpy(power_law_ranks(rng.random(shape), n, 1.0, 10.0) + 1)


def _worker(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    table = torch.nn.Embedding(args.items + 1, args.dim, sparse=True)
    dense = torch.zeros(args.items + 1, args.dim)
    for batch in args.batch:
        rng = np.random.default_rng([rank, batch])
        share = batch // world
        ids = torch.cat([_ids(rng, args.items, (share, args.maxlen + 1), args.ids).ravel(),
                         _ids(rng, args.items, (share, args.maxlen), args.ids).ravel()])
        sparse_t, dense_t, sent = [], [], 0
        for _ in range(args.repeats):
            table.weight.grad = None
            table(ids).sum().backward()
            dist.barrier()
            t0 = time.perf_counter()
            sent = all_reduce_sparse_grads([table], world)
            sparse_t.append(time.perf_counter() - t0)
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(dense)
            dense_t.append(time.perf_counter() - t0)
        if rank == 0:
            rows = table.weight.grad._nnz()
            print(f"global batch {batch} ({args.ids} ids, {args.items:,} items, D={args.dim}, W={world}): "
                  f"sparse exchange {sent / 1e6:.2f} MB into each rank ({rows:,} distinct rows of the global batch), "
                  f"median {statistics.median(sparse_t) * 1e3:.1f} ms | dense all-reduce "
                  f"{dense_all_reduce_bytes([table], world) / 1e6:.1f} MB per rank (ring), "
                  f"median {statistics.median(dense_t) * 1e3:.1f} ms", flush=True)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--maxlen", type=int, default=101)
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--ids", default="uniform", choices=["uniform", "zipf"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    print(f"load average at start: {os.getloadavg()}", flush=True)
    mp.spawn(_worker, args=(2, port, args), nprocs=2)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
