"""Length-bucketed batches, length-sorted evaluation, the wall-clock budget and the data-driven defaults."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from seqrec.config import ConfigError, RunConfig, replace
from seqrec.data.batches import BatchBuilder
from seqrec.data.split import leave_one_out
from seqrec.data.synthetic import generate_synthetic
from seqrec.evaluation.evaluate import model_ranks
from seqrec.model.sasrec import SASRec
from seqrec.train import auto, loop
from seqrec.train.auto import (
    auto_batch_size,
    auto_dropout,
    auto_hidden_dim,
    auto_lr,
    auto_maxlen,
    auto_num_blocks,
    repeat_share,
    resolve_auto,
)
from seqrec.train.checkpoint import load_checkpoint
from seqrec.train.loop import train
from tests.conftest import tiny_config


def _skewed_builder(length_buckets: int, maxlen: int = 50) -> BatchBuilder:
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(3, 8, 900), rng.integers(40, 60, 100)])  # most users short
    rng.shuffle(lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = rng.integers(1, 201, int(lengths.sum()))
    return BatchBuilder(offsets, items, lengths, 200, maxlen, length_buckets=length_buckets)


def test_buckets_visit_every_user_once_and_cut_padding():
    plain, bucketed = _skewed_builder(0), _skewed_builder(4)
    batch_size = 32
    order = bucketed.epoch_order(3, 1, batch_size)
    assert sorted(order.tolist()) == sorted(plain.users.tolist())  # same users, each once
    assert not np.array_equal(order, bucketed.epoch_order(3, 2, batch_size))  # reshuffled every epoch
    np.testing.assert_array_equal(order, bucketed.epoch_order(3, 1, batch_size))  # deterministic
    # With 0 buckets the order is the plain permutation, so older runs replay unchanged.
    np.testing.assert_array_equal(plain.epoch_order(3, 1, batch_size), plain.epoch_order(3, 1))

    def tokens(builder):
        return sum(b.input_ids.numel() for b in builder.epoch(3, 1, batch_size))

    def real(builder):
        return sum(int(b.loss_mask.sum()) for b in builder.epoch(3, 1, batch_size))

    assert real(plain) == real(bucketed)  # every training position is still trained on
    assert tokens(bucketed) < 0.5 * tokens(plain)  # 10% long users pad every plain batch


def test_bucketed_batches_are_the_same_training_pairs():
    plain, bucketed = _skewed_builder(0), _skewed_builder(8)

    def pairs(builder):
        out = set()
        for b in builder.epoch(5, 0, 32):
            rows, cols = np.nonzero(b.loss_mask.numpy())
            for r, c in zip(rows, cols, strict=True):
                out.add((int(b.users[r]), int(b.input_ids[r, c]), int(b.pos_ids[r, c]), int(c - b.loss_mask.shape[1])))
        return out

    assert pairs(plain) == pairs(bucketed)


def test_length_sorted_evaluation_gives_the_same_ranks_as_unsorted():
    inter = generate_synthetic(150, 40, seed=3)
    split = leave_one_out(inter)
    cfg = tiny_config()
    model = SASRec(inter.num_items, cfg.model).eval()
    ranks = model_ranks(model, split, "test", "cosine", replace(cfg, eval={"batch_size": 16}).eval)
    # Reference: one user at a time, no batching, no sorting.
    ref = model_ranks(model, split, "test", "cosine", replace(cfg, eval={"batch_size": 1}).eval)
    np.testing.assert_array_equal(ranks, ref)


def test_rules_follow_the_length_distribution_and_user_count():
    assert auto_maxlen(np.full(100, 94)) == 100  # a dense log: the median, rounded up to 10
    assert auto_maxlen(np.full(100, 6)) == 50 and auto_maxlen(np.full(100, 900)) == 200  # clipped
    assert auto_dropout(np.full(10, 6)) == 0.3 and auto_dropout(np.full(10, 94)) == 0.2
    # a short time budget: 0.1 less; a long or no budget: unchanged
    assert auto_dropout(np.full(10, 94), 10) == 0.1 and auto_dropout(np.full(10, 6), 20) == 0.2
    assert auto_dropout(np.full(10, 94), 58) == 0.2 and auto_dropout(np.full(10, 94), None) == 0.2
    assert auto_num_blocks(np.full(10, 6)) == 2 and auto_num_blocks(np.full(10, 94)) == 4 and auto_num_blocks(np.full(10, 20)) == 4
    assert auto_lr(np.full(10, 6)) == 1e-3 and auto_lr(np.full(10, 94)) == 3e-3 and auto_lr(np.full(10, 20)) == 3e-3
    assert auto_batch_size(6040) == 32 and auto_batch_size(22363) == 128 and auto_batch_size(10**6) == 256
    assert auto_batch_size(100) == 32
    assert auto_hidden_dim(3416) == 128 and auto_hidden_dim(1_000_000) == 128 and auto_hidden_dim(4_800_000) == 64


def test_resolve_fills_only_unset_values():
    lengths = np.full(1000, 30)
    cfg, chosen = resolve_auto(RunConfig(), lengths)
    assert (cfg.model.maxlen, cfg.model.dropout, cfg.train.batch_size) == (50, 0.2, 32)
    assert chosen == {"model.maxlen": 50, "model.hidden_dim": 128, "model.dropout": 0.2, "model.num_blocks": 4,
                      "train.batch_size": 32,
                      "train.lr": 3e-3, "model.tied_embeddings": True, "loss.history_mask": True,
                      "eval.filter_seen": True}
    assert resolve_auto(RunConfig(), np.full(1000, 8))[0].train.lr == 1e-3  # sparse: the lower rate
    fixed = replace(RunConfig(), model={"maxlen": 7, "dropout": 0.0, "tied_embeddings": False, "hidden_dim": 8,
                                        "num_blocks": 1},
                    train={"batch_size": 3, "lr": 0.5}, loss={"history_mask": True}, eval={"filter_seen": True})
    assert resolve_auto(fixed, lengths, repeats=0.5, item_tower=True) == (fixed, {})


def test_history_and_tied_rules_follow_repeats_and_the_item_tower():
    # users 0 and 1: 4 training events each (the last two of 6 are held out); user 0 repeats item 3 once
    offsets = np.array([0, 6, 12])
    items = np.array([3, 5, 3, 7, 9, 9, 1, 2, 4, 6, 8, 8])
    assert repeat_share(offsets, items, np.array([4, 4])) == pytest.approx(1 / 8)
    assert repeat_share(offsets, items, np.array([2, 4])) == 0.0  # the repeats sit outside the training prefix
    lengths = np.full(10, 30)
    _, chosen = resolve_auto(RunConfig(), lengths, repeats=0.02, item_tower=True)
    assert (chosen["loss.history_mask"], chosen["eval.filter_seen"], chosen["model.tied_embeddings"]) == (False, False, False)
    _, chosen = resolve_auto(RunConfig(), lengths, repeats=0.005, item_tower=False)
    assert (chosen["loss.history_mask"], chosen["eval.filter_seen"], chosen["model.tied_embeddings"]) == (True, True, True)
    features_only = replace(RunConfig(), model={"use_item_id": False})
    assert resolve_auto(features_only, lengths, item_tower=True)[1]["model.tied_embeddings"] is True  # nothing to untie


def test_generic_default_run_records_resolved_values(tmp_path, caplog):
    base = tiny_config()
    cfg = replace(base, model={"maxlen": None, "dropout": None}, train={"batch_size": None, "epochs": 1})
    with caplog.at_level(logging.INFO, logger="seqrec.train.loop"):
        train(cfg, tmp_path / "run", progress=False, command=["test"])
    stored = (tmp_path / "run" / "config.yaml").read_text()
    lengths = leave_one_out(generate_synthetic(base.data.synthetic_users, base.data.synthetic_items,
                                               seed=base.data.synthetic_seed)).train_lengths
    assert f"maxlen: {auto.auto_maxlen(lengths[lengths >= 2])}" in stored and "batch_size: 32" in stored
    assert "chosen from the data" in caplog.text


def test_budget_counts_validation_and_stops_before_overrunning(tmp_path, monkeypatch):
    clock = {"t": 0.0}
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock["t"])
    original = loop._evaluate

    def slow_evaluate(*args, **kwargs):
        clock["t"] += 10.0  # each validation / test evaluation: 10 s
        return original(*args, **kwargs)

    step = loop.Objective.forward

    def slow_step(self, *args, **kwargs):
        clock["t"] += 1.0  # each training step: 1 s (5 steps per epoch)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(loop, "_evaluate", slow_evaluate)
    monkeypatch.setattr(loop.Objective, "forward", slow_step)
    cfg = tiny_config(train={"epochs": 50, "max_minutes": 1.0})  # 60 s: epochs of 5 + 10 s, test 10 s
    train(cfg, tmp_path / "run", progress=False, command=["test"])
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert records[-1]["stopped"].startswith("time budget")
    assert results["wall_seconds"] <= 60.0  # the test evaluation included
    assert len(records) == 3  # a fourth epoch (60 s) plus the test (70 s) would not have fitted
    assert all(r["eval_seconds"] == pytest.approx(10.0) for r in records)


def test_a_long_first_epoch_is_cut_when_the_budget_runs_out(tmp_path, monkeypatch):
    clock = {"t": 0.0}
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock["t"])
    step = loop.Objective.forward

    def slow_step(self, *args, **kwargs):
        clock["t"] += 30.0
        return step(self, *args, **kwargs)

    monkeypatch.setattr(loop.Objective, "forward", slow_step)
    cfg = tiny_config(train={"epochs": 5, "max_minutes": 1.0})
    result = train(cfg, tmp_path / "run", progress=False, command=["test"])
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records == records[:1] and records[0]["stopped"] == "time budget (inside the epoch)"
    assert records[0]["step"] == 2 and result.best_epoch == 1  # validated, so there is a best checkpoint
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["step"] == 2


def test_plateau_decay_halves_the_lr_after_each_run_of_bad_validations(tmp_path, monkeypatch):
    scores = iter([0.3, 0.2, 0.2, 0.2, 0.4, 0.1, 0.1, 0.1, 0.1])  # best at 1, 3 bad, best at 5, 4 bad
    original = loop._evaluate

    def scripted(*args, **kwargs):
        metrics = original(*args, **kwargs)
        return {**metrics, "ndcg@10": next(scores, 0.0)} if args[2] == "valid" and not scripted.final else metrics

    scripted.final = False
    monkeypatch.setattr(loop, "_evaluate", scripted)
    cfg = tiny_config(train={"epochs": 9, "lr_decay": "plateau", "plateau_patience": 3, "lr": 0.004})
    train(cfg, tmp_path / "run", progress=False, command=["test"])
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # lr of each epoch's last step: halved after epoch 4 (third bad), kept through the new best, halved after 8
    assert lrs == pytest.approx([0.004] * 4 + [0.002] * 4 + [0.001])


def test_budget_decay_follows_the_share_of_the_time_budget_spent(tmp_path):
    from seqrec.config import TrainConfig
    from seqrec.train.schedule import learning_rate

    tc = TrainConfig(lr=0.01, warmup_steps=0, lr_decay="budget", max_minutes=10)
    assert [learning_rate(5, 100, tc, used) for used in (0.0, 0.5, 1.0, 2.0)] == pytest.approx([0.01, 0.0055, 0.001, 0.001])
    with pytest.raises(ConfigError, match="max_minutes"):
        TrainConfig(lr_decay="budget", max_minutes=None)
    # wired to the wall clock: with a long budget the lr sinks a little, epoch after epoch
    cfg = tiny_config(train={"epochs": 3, "lr_decay": "budget", "lr": 0.004, "max_minutes": 60})
    train(cfg, tmp_path / "run", progress=False, command=["test"])
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert 0.004 > lrs[0] > lrs[1] > lrs[2] > 0.0039


def test_output_to_a_file_has_no_progress_bar_redraws(tmp_path, capfd, caplog):
    from seqrec.cli import main

    with caplog.at_level(logging.INFO, logger="seqrec.train.loop"):
        code = main(["train", "--out", str(tmp_path / "run"), "--set", "data.synthetic_users=300", "--set",
                 "data.synthetic_items=60", "--set", "model.hidden_dim=16", "--set", "model.num_blocks=1",
                     "--set", "train.epochs=3", "--set", "train.patience=0"])
    assert code == 0
    err = capfd.readouterr().err
    assert "\r" not in err and "batch/s" not in err and "it/s" not in err  # not a terminal: no bar
    lines = [r.getMessage() for r in caplog.records if r.name == "seqrec.train.loop"]
    assert sum("valid ndcg@10" in line for line in lines) == 3 and len(lines) <= 12  # one line per epoch
