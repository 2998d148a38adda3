"""train.ema_decay: the running average of the weights, what validation scores and best.pt keeps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seqrec.config import ConfigError, config_from_dict
from seqrec.data.readers import read_interactions
from seqrec.data.split import leave_one_out
from seqrec.evaluation.evaluate import evaluate_model
from seqrec.model.features import build_model
from seqrec.model.sasrec import similarity_for_loss
from seqrec.train.checkpoint import load_checkpoint
from seqrec.train.ema import WeightAverage
from seqrec.train.loop import train
from tests.conftest import tiny_config


def test_update_is_the_exponential_average_and_swapping_restores_the_raw_weights():
    layer = nn.Linear(3, 2)
    start = [p.detach().clone() for p in layer.parameters()]
    average = WeightAverage(list(layer.parameters()), decay=0.75)
    seen = []
    for k in range(3):
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(k + 1.0)
        seen.append([p.detach().clone() for p in layer.parameters()])
        average.update()
    for i, p0 in enumerate(start):
        expected = p0
        for weights in seen:
            expected = 0.75 * expected + 0.25 * weights[i]
        torch.testing.assert_close(average.average[i], expected)
    raw = [p.detach().clone() for p in layer.parameters()]
    with average.swapped_in():
        torch.testing.assert_close(next(layer.parameters()), 0.75**3 * start[0] + sum(
            0.25 * 0.75 ** (2 - k) * seen[k][0] for k in range(3)))
    for p, r in zip(layer.parameters(), raw, strict=True):
        assert torch.equal(p, r)


def test_state_round_trip_and_bad_arguments():
    layer = nn.Linear(2, 2)
    average = WeightAverage(list(layer.parameters()), decay=0.5)
    with torch.no_grad():
        layer.weight.mul_(3)
    average.update()
    other = WeightAverage(list(nn.Linear(2, 2).parameters()), decay=0.5)
    other.load_state_dict(average.state_dict())
    for a, b in zip(other.average, average.average, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="2 tensors"):
        WeightAverage([nn.Parameter(torch.zeros(1))], 0.5).load_state_dict(average.state_dict())
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(list(layer.parameters()), 1.0)
    with pytest.raises(ConfigError, match="ema_decay"):
        tiny_config(train={"ema_decay": 1.5})
    with pytest.raises(ConfigError, match="sparse_embeddings"):
        tiny_config(train={"ema_decay": 0.9, "sparse_embeddings": True})


def test_best_checkpoint_holds_the_average_that_validation_scored(tmp_path):
    cfg = tiny_config(train={"epochs": 1, "ema_decay": 0.8})
    result = train(cfg, tmp_path / "run", progress=False, command=["test"])
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert best["ema"] is None and last["ema"]["decay"] == 0.8
    stored = config_from_dict(last["config"])  # the model config as the data's rules filled it
    names = [n for n, p in build_model(last["num_items"], stored.model, None).named_parameters() if p.requires_grad]
    averaged = dict(zip(names, last["ema"]["average"], strict=True))
    moved = 0
    for name, value in averaged.items():
        assert torch.equal(best["model"][name], value)
        moved += not torch.equal(best["model"][name], last["model"][name])
    assert moved > 0  # the average is not the raw weights
    # The reported validation is the average's: best.pt scores it again.
    model = build_model(best["num_items"], stored.model, None)
    model.load_state_dict(best["model"])
    split = leave_one_out(read_interactions(stored.data))
    again = evaluate_model(model, split, "valid", similarity_for_loss(stored.loss.name), stored.eval)
    assert again["ndcg@10"] == pytest.approx(result.best_valid["ndcg@10"], abs=1e-6)
