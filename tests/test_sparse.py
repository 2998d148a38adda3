"""train.sparse_embeddings: sparse-gradient item table + SparseAdam, AdamW for the rest."""

from __future__ import annotations

import json

import pytest
import torch

from seqrec.config import ModelConfig
from seqrec.model.sasrec import SASRec
from seqrec.train.loop import train
from seqrec.train.sparse import MixedAdam, RowSparseAdam, check_sparse_setup, clip_grad_norm, make_optimizer
from tests.conftest import tiny_config


def _model(num_items: int = 50, tied: bool = True) -> SASRec:
    torch.manual_seed(0)
    return SASRec(num_items, ModelConfig(maxlen=8, hidden_dim=8, num_blocks=1, dropout=0.0, tied_embeddings=tied))


def _loss(model: SASRec, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return (out * model.item_embeddings(ids)).sum() + out.pow(2).mean()


def test_dense_default_is_plain_adamw_over_every_parameter():
    model = _model()
    opt = make_optimizer(model, [], lr=1e-3, betas=(0.9, 0.98), weight_decay=0.1, sparse_embeddings=False)
    assert type(opt) is torch.optim.AdamW and not model.item_emb.sparse
    assert opt.defaults["fused"]  # one pass over each parameter and its moments (BENCHMARKS.md)
    assert [p for g in opt.param_groups for p in g["params"]] == list(model.parameters())


@pytest.mark.parametrize("tied", [True, False])
def test_sparse_step_moves_only_the_batch_rows(tied):
    model = _model(tied=tied)
    extra = torch.nn.Parameter(torch.ones(()))
    opt = make_optimizer(model, [extra], lr=1e-2, betas=(0.9, 0.98), weight_decay=0.0, sparse_embeddings=True)
    assert isinstance(opt, MixedAdam) and model.item_emb.sparse
    before = model.item_emb.weight.detach().clone()
    block_before = model.blocks[0].ffn.net[0].weight.detach().clone()
    ids = torch.tensor([[0, 3, 4, 5], [0, 0, 7, 3]])
    loss = _loss(model, ids) * extra
    opt.zero_grad()
    loss.backward()
    assert model.item_emb.weight.grad.is_sparse
    clip_grad_norm(list(model.parameters()) + [extra], 1.0)
    opt.step()
    changed = (model.item_emb.weight.detach() != before).any(1).nonzero().flatten().tolist()
    assert changed == [3, 4, 5, 7]  # padding row 0 has no gradient either
    assert not torch.equal(model.blocks[0].ffn.net[0].weight, block_before)
    assert extra.item() != 1.0


def test_param_groups_and_state_dict_round_trip():
    model = _model()
    opt = make_optimizer(model, [], lr=1e-3, betas=(0.9, 0.98), weight_decay=0.0, sparse_embeddings=True)
    for group in opt.param_groups:
        group["lr"] = 0.5
    assert opt.dense.param_groups[0]["lr"] == 0.5 and opt.sparse.param_groups[0]["lr"] == 0.5
    ids = torch.tensor([[1, 2, 3]])
    opt.zero_grad()
    _loss(model, ids).backward()
    opt.step()
    state = opt.state_dict()
    other = make_optimizer(_model(), [], lr=1e-3, betas=(0.9, 0.98), weight_decay=0.0, sparse_embeddings=True)
    other.load_state_dict(state)
    assert torch.equal(other.sparse.state_dict()["state"][0]["exp_avg"], opt.sparse.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(ValueError, match="sparse_embeddings"):
        other.load_state_dict(torch.optim.AdamW(model.parameters()).state_dict())


def test_clip_grad_norm_matches_torch_on_the_dense_equivalent():
    dense = [torch.nn.Parameter(torch.zeros(6, 3)), torch.nn.Parameter(torch.zeros(4))]
    sparse = [torch.nn.Parameter(torch.zeros(6, 3)), torch.nn.Parameter(torch.zeros(4))]
    g = torch.sparse_coo_tensor(torch.tensor([[1, 4, 1]]), torch.tensor([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]]), (6, 3),
                                check_invariants=True)
    sparse[0].grad, dense[0].grad = g, g.to_dense()  # row 1 appears twice: summed
    sparse[1].grad, dense[1].grad = torch.arange(4.0), torch.arange(4.0)
    want = torch.nn.utils.clip_grad_norm_(dense, 2.0)
    got = clip_grad_norm(sparse, 2.0)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert torch.allclose(sparse[0].grad.to_dense(), dense[0].grad) and torch.allclose(sparse[1].grad, dense[1].grad)
    assert clip_grad_norm([torch.nn.Parameter(torch.zeros(2))], 1.0).item() == 0.0


def test_refused_setups():
    with pytest.raises(ValueError, match="loss.mode=pool"):
        check_sparse_setup("infonce", "full")
    check_sparse_setup("bce", "pool")
    check_sparse_setup("infonce", "pool")


def test_row_sparse_adam_is_sparse_adam():
    # Same update as torch's SparseAdam (repeated rows summed, rows absent from a step untouched), same
    # state layout, so checkpoints written with either load into the other.
    torch.manual_seed(0)
    ours, ref = torch.nn.Parameter(torch.randn(30, 4)), torch.nn.Parameter(torch.randn(30, 4))
    ref.data.copy_(ours.data)
    start = ours.detach().clone()
    opts = [RowSparseAdam([ours], lr=0.05, betas=(0.9, 0.98)), torch.optim.SparseAdam([ref], lr=0.05, betas=(0.9, 0.98))]
    for _ in range(6):
        rows = torch.randint(0, 12, (9,))  # rows 12..29 never move
        values = torch.randn(9, 4)
        for p, opt in zip((ours, ref), opts, strict=True):
            p.grad = torch.sparse_coo_tensor(rows[None], values, (30, 4))
            opt.step()
    torch.testing.assert_close(ours.data, ref.data, rtol=1e-6, atol=1e-7)
    a, b = opts[0].state_dict()["state"][0], opts[1].state_dict()["state"][0]
    assert a.keys() == b.keys() and a["step"] == b["step"] == 6
    torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], rtol=1e-6, atol=1e-9)
    assert torch.equal(ours.data[12:], start[12:]) and not torch.allclose(ours.data[:12], start[:12])


@pytest.mark.parametrize("loss", ["infonce", "bce"])
def test_training_with_sparse_embeddings_end_to_end(tmp_path, loss):
    config = tiny_config(train={"sparse_embeddings": True, "epochs": 3}, loss={"name": loss})
    result = train(config, tmp_path / "run", progress=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert result.test["ndcg@10"] > 0
    resumed = train(config, tmp_path / "run", resume=True, progress=False)  # loads the two-part optimizer state
    assert resumed.epochs_run == 3 and resumed.test == result.test
