"""train.sparse_embeddings under DDP: two gloo processes train the model one process trains on the same global batch.

The item table is left out of DDP's dense all-reduce; only the rows of the global batch are gathered
(train/sparse_ddp.py). Dropout is 0, so a step is a deterministic function of the parameters and the
global batch; the attention key bias is left out of the comparison for the reason given in test_ddp.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from seqrec.train.loop import train
from seqrec.train.sparse_ddp import all_reduce_sparse_grads
from tests.conftest import tiny_config
from tests.processes import spawn
from tests.test_ddp import SPAWN_TIMEOUT, WORLD, _assert_same_parameters, _losses, _set_master_port

# 300 users in batches of 128: the last batch has 44 rows (22 per rank); rows overlap between ranks
CONFIG = tiny_config(model={"dropout": 0.0}, loss={"name": "bce"},
                     train={"sparse_embeddings": True, "batch_size": 128, "epochs": 2})


def _worker(rank: int, root: str) -> None:
    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
                       "MASTER_ADDR": "127.0.0.1"})
    store = dist.FileStore(str(Path(root) / "ports.store"), WORLD)
    _set_master_port(store, "sparse", rank)
    train(CONFIG, Path(root) / "ddp", progress=False, command=["test"])
    # the exchange itself: rank r holds rows {r, 2} with value r + 1; both end with the mean of the sum
    _set_master_port(store, "exchange", rank)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    table = torch.nn.Embedding(5, 3, sparse=True)
    table.weight.grad = torch.sparse_coo_tensor(torch.tensor([[rank, 2]]), torch.full((2, 3), rank + 1.0), (5, 3))
    received = all_reduce_sparse_grads([table], WORLD)
    torch.save({"grad": table.weight.grad.to_dense(), "bytes": received}, Path(root) / f"exchange{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_processes_with_sparse_tables_train_the_single_process_model(tmp_path):
    train(CONFIG, tmp_path / "single", progress=False, command=["test"])
    spawn(_worker, (str(tmp_path),), WORLD, timeout=SPAWN_TIMEOUT)
    _assert_same_parameters(tmp_path / "ddp", tmp_path / "single")
    assert _losses(tmp_path / "ddp") == pytest.approx(_losses(tmp_path / "single"), rel=1e-5)
    want = torch.zeros(5, 3)
    want[0], want[1], want[2] = 0.5, 1.0, 1.5  # (1) / 2, (2) / 2, (1 + 2) / 2
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"exchange{rank}.pt")
        torch.testing.assert_close(got["grad"], want)
        assert got["bytes"] == WORLD * 2 * (8 + 3 * 4) + 8 * WORLD  # 2 rows of each rank, ids + rows, sizes
