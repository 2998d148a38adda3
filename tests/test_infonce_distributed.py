"""Two gloo ranks, each holding half of a global batch, against one process on the whole batch.

DDP semantics checked: the mean of the ranks' losses equals the global loss; gradients of replicated
parameters (item table, temperature) averaged over ranks equal the global ones; a rank-local activation
(seq_embs slice) receives ``world_size x`` its slice of the global gradient, because its owner gets every
rank's contribution and DDP later divides by world_size.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from seqrec.losses.distributed import gather_with_grad
from seqrec.losses.infonce import infonce_loss
from tests.processes import spawn
from tests.test_ddp import SPAWN_TIMEOUT

WORLD = 2
B, L, D, K, ITEMS = 4, 6, 5, 2, 9


def global_batch(empty_rank: bool):
    """The fixed global batch; with ``empty_rank`` the sequences of rank 1 are all padding."""
    g = torch.Generator().manual_seed(7)
    seq = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    table = torch.randn(ITEMS + 1, D, generator=g, dtype=torch.float64)
    pos_ids = torch.randint(1, ITEMS + 1, (B, L), generator=g)
    neg_ids = torch.randint(0, ITEMS + 1, (B, L, K), generator=g)
    mask = torch.rand(B, L, generator=g) < 0.6
    mask[0, 0] = mask[1, 1] = True
    if empty_rank:  # that rank has no valid row but must still join every collective
        mask[1::WORLD] = False
    history = torch.randint(0, ITEMS + 1, (B, 3), generator=g)
    log_q = torch.log_softmax(torch.randn(ITEMS + 1, generator=g, dtype=torch.float64), dim=0)
    return seq, table, pos_ids, neg_ids, mask, history, log_q


def run_loss(seq, table, temperature, pos_ids, neg_ids, mask, history, log_q, distributed):
    return infonce_loss(
        seq, table[pos_ids], table[neg_ids], mask, pos_ids, neg_ids, temperature,
        extra_pos_negatives=True, pos_log_q=log_q, history_ids=history, chunk_size=3,
        distributed=distributed,
    )  # fmt: skip


def _worker(rank, out_dir):
    # a file store in the test's own directory: no port to pick, so none another process could hold
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        results = {}
        for empty_rank in (False, True):
            seq, table, pos_ids, neg_ids, mask, history, log_q = global_batch(empty_rank)
            rows = slice(rank, None, WORLD)  # interleaved split of the sequences
            seq = seq[rows].clone().requires_grad_()
            table = table.clone().requires_grad_()
            temperature = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
            loss = run_loss(
                seq, table, temperature, pos_ids[rows], neg_ids[rows], mask[rows], history[rows], log_q, True
            )
            loss.backward()
            results[empty_rank] = {
                "loss": loss.detach(),
                "seq": seq.grad,
                "table": table.grad,
                "tau": temperature.grad,
            }

        # gather_with_grad on its own, with unequal sizes: owner gets the sum of every rank's gradient.
        x = torch.full((rank + 1, 2), float(rank), dtype=torch.float64, requires_grad=True)
        y = gather_with_grad(x)
        (y * (rank + 1)).sum().backward()

        results["gathered"], results["x_grad"] = y.detach(), x.grad
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_ranks_match_single_process(tmp_path):
    spawn(_worker, (str(tmp_path),), WORLD, timeout=SPAWN_TIMEOUT)
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    def close(a, b):
        return torch.allclose(a, b, rtol=1e-5, atol=1e-10)

    for empty_rank in (False, True):
        seq, table, pos_ids, neg_ids, mask, history, log_q = global_batch(empty_rank)
        seq.requires_grad_()
        table.requires_grad_()
        temperature = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
        loss = run_loss(seq, table, temperature, pos_ids, neg_ids, mask, history, log_q, False)
        loss.backward()
        got = [r[empty_rank] for r in res]
        assert close(sum(r["loss"] for r in got) / WORLD, loss.detach())
        assert close(sum(r["table"] for r in got) / WORLD, table.grad)
        assert close(sum(r["tau"] for r in got) / WORLD, temperature.grad)
        for rank in range(WORLD):
            assert close(got[rank]["seq"], WORLD * seq.grad[rank::WORLD])
        if empty_rank:
            assert got[1]["loss"].item() == 0.0 and torch.all(got[1]["seq"] == 0)

    # gather_with_grad: rows [0] from rank 0 and [1, 1] from rank 1; d(sum_r (r+1) y)/dy = 1 + 2 = 3.
    for r in res:
        assert r["gathered"][:, 0].tolist() == [0.0, 1.0, 1.0]
        assert torch.all(r["x_grad"] == 3.0)
