"""End to end: CLI training on synthetic data, resume equivalence, similarity metadata, recommend vs evaluate."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from seqrec.cli import main
from seqrec.data.dataset import Interactions
from seqrec.data.split import leave_one_out
from seqrec.evaluation.evaluate import model_ranks
from seqrec.retrieval.recommend import load_model, recommend_batches
from seqrec.train.checkpoint import load_checkpoint
from seqrec.train.loop import RunDirError, train
from seqrec.train.objective import Objective
from tests.conftest import tiny_config

TINY = [
    "--set", "data.synthetic_users=400", "--set", "data.synthetic_items=80",
    "--set", "model.maxlen=20", "--set", "model.hidden_dim=32", "--set", "model.num_blocks=1",
    "--set", "model.dropout=0.1", "--set", "train.batch_size=64", "--set", "train.lr=0.005",
    "--set", "train.seed=1", "--set", "train.patience=3", "--set", "eval.batch_size=256",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "infonce"
    assert main(["train", "--out", str(out), "--quiet", "--set", "train.epochs=25", *TINY]) == 0
    return out


def test_cli_train_beats_popularity_and_writes_run(trained_run, capsys):
    results = json.loads((trained_run / "results.json").read_text())
    assert results["test"]["ndcg@10"] >= 2 * results["popularity"]["test"]["ndcg@10"]
    lines = [json.loads(x) for x in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert (trained_run / "config.yaml").is_file() and (trained_run / "command.txt").is_file()
    assert load_checkpoint(trained_run)["similarity"] == "cosine"

    assert main(["evaluate", str(trained_run), "--json", "--quiet"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert set(evaluated) == {"valid", "test", "popularity"}
    assert evaluated["test"]["ndcg@10"] == pytest.approx(results["test"]["ndcg@10"])


def test_cli_refuses_existing_run_and_bad_config(trained_run, capsys):
    assert main(["train", "--out", str(trained_run), "--quiet", *TINY]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--out", str(trained_run) + "-x", "--set", "loss.temperature=0"]) == 2
    assert "temperature must be > 0" in capsys.readouterr().err
    assert main(["train", "--out", str(trained_run) + "-y", "--set", "model.nope=1"]) == 2
    assert "unknown key" in capsys.readouterr().err


def test_cli_recommend_writes_raw_ids_and_skips_seen(trained_run, tmp_path):
    out = tmp_path / "recs.csv"
    assert main(["recommend", str(trained_run), "--users", "u3", "u7", "--k", "5", "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["user_id"] for r in rows] == ["u3"] * 5 + ["u7"] * 5
    assert all(r["item_id"].startswith("i") for r in rows)
    loaded = load_model(trained_run)
    from seqrec.data.synthetic import generate_synthetic

    inter = generate_synthetic(400, 80, seed=0)
    seen = {inter.item_ids[i] for i in inter.sequence(3)}
    assert not seen & {r["item_id"] for r in rows if r["user_id"] == "u3"}
    scores = [float(r["score"]) for r in rows[:5]]
    assert scores == sorted(scores, reverse=True) and loaded.similarity == "cosine"


def _history_only(inter: Interactions, split) -> Interactions:
    """Each evaluated user's test history (all but the last event) as a dataset of its own."""
    users = split.eval_users
    n = split.history_lengths("test")
    offsets = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(n, out=offsets[1:])
    items = np.concatenate([inter.items[inter.offsets[u] : inter.offsets[u] + k] for u, k in zip(users, n, strict=True)])
    return Interactions(offsets, items, inter.user_ids[users], inter.item_ids)


def test_recommend_ranking_is_the_one_evaluate_scores(trained_run):
    from seqrec.data.synthetic import generate_synthetic

    loaded = load_model(trained_run)
    inter = generate_synthetic(400, 80, seed=0)
    split = leave_one_out(inter)
    cfg = tiny_config().eval
    ranks = model_ranks(loaded.model, split, "test", loaded.similarity, cfg)
    hist = _history_only(inter, split)
    targets = split.targets("test")
    checked = 0
    for rows, items, scores in recommend_batches(loaded, hist, np.arange(hist.num_users), inter.num_items):
        for r, its, sc in zip(rows, items, scores, strict=True):
            its = its[its > 0]
            pos = np.flatnonzero(its == targets[r])
            if len(pos) and not np.isclose(sc[: pos[0] + 1], sc[pos[0]], atol=1e-6).sum() > 1:
                assert pos[0] + 1 == ranks[r]
                checked += 1
    assert checked > 0.9 * len(targets)


def test_bce_checkpoint_is_never_normalised(tmp_path):
    cfg = tiny_config(loss={"name": "bce"}, train={"epochs": 1})
    train(cfg, tmp_path / "bce", progress=False, command=["test"])
    loaded = load_model(tmp_path / "bce")
    assert loaded.similarity == "dot"
    raw = loaded.model.item_embeddings()[1:].detach().numpy()
    np.testing.assert_allclose(loaded.item_vectors(), raw, rtol=1e-6)
    norms = np.linalg.norm(loaded.item_vectors(), axis=1)
    assert not np.allclose(norms, 1.0)
    # The decision comes from the checkpoint metadata, not from attributes of the model object.
    state = torch.load(tmp_path / "bce" / "checkpoints" / "best.pt", weights_only=True)
    state["similarity"] = "cosine"
    torch.save(state, tmp_path / "as_cosine.pt")
    np.testing.assert_allclose(np.linalg.norm(load_model(tmp_path / "as_cosine.pt").item_vectors(), axis=1), 1.0, rtol=1e-5)


def _params(path):
    return load_checkpoint(path)["model"]


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, monkeypatch, ema_decay):
    cfg = tiny_config(train={"epochs": 3, "checkpoint_every_steps": 2, "seed": 11, "ema_decay": ema_decay})
    train(cfg, tmp_path / "full", progress=False, command=["test"])

    calls = {"n": 0}
    original = Objective.forward

    def interrupted(self, model, batch, generator=None):
        calls["n"] += 1
        if calls["n"] == 8:  # mid-epoch 2 (5 steps per epoch), after the step-6 checkpoint
            raise KeyboardInterrupt
        return original(self, model, batch, generator)

    monkeypatch.setattr(Objective, "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed", progress=False, command=["test"])
    monkeypatch.setattr(Objective, "forward", original)
    with pytest.raises(RunDirError):
        train(cfg, tmp_path / "resumed", progress=False, command=["test"])
    train(cfg, tmp_path / "resumed", resume=True, progress=False, command=["test"])

    full = _params(tmp_path / "full" / "checkpoints" / "last.pt")
    resumed = _params(tmp_path / "resumed" / "checkpoints" / "last.pt")
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], rtol=0, atol=1e-6)
    if ema_decay is not None:  # the weight average goes on from the checkpoint too, and so does best.pt
        averages = [load_checkpoint(tmp_path / run / "checkpoints" / "last.pt")["ema"]["average"]
                    for run in ("full", "resumed")]
        for a, b in zip(*averages, strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
        best = [_params(tmp_path / run / "checkpoints" / "best.pt") for run in ("full", "resumed")]
        for name in best[0]:
            torch.testing.assert_close(best[1][name], best[0][name], rtol=0, atol=1e-6)
    metrics = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in metrics] == [1, 2, 3]
