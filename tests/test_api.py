"""The Python API (seqrec.train, seqrec.load, Recommender): the CLI's results and errors, checked against
the CLI's own output and against scores computed directly from the model."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import seqrec
from seqrec.cli import main
from seqrec.errors import ConfigError
from seqrec.model.sasrec import score_items
from seqrec.train.loop import RunDirError
from tests.conftest import tiny_config
from tests.processes import child_env, failure, run

TINY = {
    "data.synthetic_users": 300, "data.synthetic_items": 60, "model.maxlen": 20, "model.hidden_dim": 16,
    "model.num_blocks": 1, "model.num_heads": 1, "model.dropout": 0.1, "train.epochs": 2, "train.batch_size": 32,
    "train.patience": 0, "train.seed": 7, "train.warmup_steps": 0, "eval.batch_size": 128,
}


@pytest.fixture(scope="module")
def cosine_run(tmp_path_factory):
    return seqrec.train(None, out=tmp_path_factory.mktemp("api") / "cosine", overrides=TINY)


@pytest.fixture(scope="module")
def dot_run(tmp_path_factory):
    config = tiny_config(loss={"name": "bce"}, train={"epochs": 1})
    return seqrec.train(None, out=tmp_path_factory.mktemp("api") / "dot", config=config)


@pytest.fixture(scope="module")
def rec(cosine_run):
    return seqrec.load(cosine_run)


def _direct(rec, histories: list[list[int]], k: int, exclude_seen: bool = True, allowed=None):
    """Top-k (internal ids, scores) per history, from the model's vectors and score_items, by hand."""
    model, maxlen = rec.loaded.model, rec.loaded.model.config.maxlen
    out = []
    with torch.no_grad():
        items = model.item_embeddings()[1:]
        for history in histories:
            tail = torch.tensor([history[-maxlen:]])
            user = model.user_embeddings(tail)
            scores = score_items(user, items, rec.similarity)[0].numpy().astype(np.float64)
            if exclude_seen:
                scores[np.asarray(history) - 1] = -np.inf
            if allowed is not None:
                mask = np.full(len(scores), True)
                mask[np.asarray(allowed) - 1] = False
                scores[mask] = -np.inf
            order = np.lexsort((np.arange(len(scores)), -scores))[:k]
            order = order[np.isfinite(scores[order])]
            out.append((order + 1, scores[order]))
    return out


def test_import_is_cheap_and_train_is_both_package_and_function():
    code = "import sys, seqrec; assert 'torch' not in sys.modules and callable(seqrec.train); print('ok')"
    done = run([sys.executable, "-c", code], timeout=120, env=child_env())  # its group is killed whatever happens
    assert (done.returncode, done.stdout) == (0, "ok\n"), failure(done)
    import seqrec.train.loop  # the subpackage import keeps seqrec.train callable

    assert callable(seqrec.train) and seqrec.train.loop.train is not None


def test_train_writes_the_run_with_overrides(cosine_run):
    assert (cosine_run / "checkpoints" / "best.pt").is_file()
    assert "batch_size: 32" in (cosine_run / "config.yaml").read_text()
    assert (cosine_run / "command.txt").read_text().startswith("seqrec.train(None, out=")
    assert json.loads((cosine_run / "results.json").read_text())["test"]["ndcg@10"] > 0


def test_train_errors_are_the_clis(cosine_run, tmp_path):
    with pytest.raises(RunDirError, match="already holds a run"):
        seqrec.train(None, out=cosine_run, overrides=TINY)
    with pytest.raises(ConfigError, match="unknown key"):
        seqrec.train(None, out=tmp_path / "a", overrides={"model.nope": 1})
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        seqrec.train(None, out=tmp_path / "b", overrides={"loss.temperature": 0})
    with pytest.raises(ConfigError, match="section.key"):
        seqrec.train(None, out=tmp_path / "c", overrides={"batch_size": 32})
    with pytest.raises(FileNotFoundError, match="config file not found"):
        seqrec.train(None, out=tmp_path / "d", config=tmp_path / "missing.yaml")
    with pytest.raises(FileNotFoundError):
        seqrec.train(tmp_path / "no-such-log.txt", out=tmp_path / "e")
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_recommend_users_equals_cli_recommend(rec, cosine_run, tmp_path):
    users = ["u3", "u7", "u100", "u3"]
    out = tmp_path / "recs.jsonl"
    assert main(["recommend", str(cosine_run), "--users", *users, "--k", "7", "--out", str(out), "--quiet"]) == 0
    cli = [json.loads(line) for line in out.read_text().splitlines()]
    api = rec.recommend_users(users, k=7)
    assert [r["user_id"] for r in cli] == users and len(api) == len(users)
    for row, ranked in zip(cli, api, strict=True):
        assert [item for item, _ in ranked] == row["items"]
        np.testing.assert_allclose([s for _, s in ranked], row["scores"], atol=1e-6)
    with pytest.raises(ValueError, match="unknown user id"):
        rec.recommend_users(["u3", "nobody"])


def test_recommend_histories_equals_direct_scores(rec):
    inter = rec.interactions
    histories = [inter.sequence(u).tolist() for u in (0, 5, 9)] + [[1, 2, 3], [4] * 30]
    raw = [[rec.loaded.item_ids[i] for i in h] for h in histories]
    for exclude_seen in (True, False):
        got = rec.recommend(raw, k=10, exclude_seen=exclude_seen)
        for history, ranked, (ids, scores) in zip(histories, got, _direct(rec, histories, 10, exclude_seen), strict=True):
            assert [item for item, _ in ranked] == [rec.loaded.item_ids[i] for i in ids]
            np.testing.assert_allclose([s for _, s in ranked], scores, atol=1e-5)
            if exclude_seen:
                assert not {rec.loaded.item_ids[i] for i in history} & {item for item, _ in ranked}
    # a history of a user of the data is that user's recommendation (no user features in this run)
    assert rec.recommend(raw[:1], k=5) == rec.recommend_users([inter.user_ids[0]], k=5)


def test_candidates_restrict_results_and_unknown_ones_are_skipped(rec, cosine_run, tmp_path, caplog):
    candidates = [f"i{n}" for n in range(1, 61, 4)] + ["no-such-item"]
    lookup = {raw: i for i, raw in enumerate(rec.loaded.item_ids.tolist())}
    allowed = [lookup[c] for c in candidates[:-1]]
    history = rec.interactions.sequence(2).tolist()
    with caplog.at_level(logging.WARNING):
        got = rec.recommend([[rec.loaded.item_ids[i] for i in history]], k=40, candidates=candidates)[0]
    assert "unknown to the model and skipped: no-such-item" in caplog.text
    ids, scores = _direct(rec, [history], 40, True, allowed)[0]
    assert [item for item, _ in got] == [rec.loaded.item_ids[i] for i in ids]
    assert set(dict(got)) <= set(candidates) and len(got) == len(set(allowed) - set(history))
    np.testing.assert_allclose([s for _, s in got], scores, atol=1e-5)
    # the same as the CLI's --candidates
    path, out = tmp_path / "candidates.txt", tmp_path / "recs.jsonl"
    path.write_text("\n".join(candidates) + "\n")
    assert main(["recommend", str(cosine_run), "--users", "u5", "--k", "4", "--candidates", str(path),
                 "--out", str(out), "--quiet"]) == 0
    assert [i for i, _ in rec.recommend_users(["u5"], k=4, candidates=candidates)[0]] == json.loads(out.read_text())["items"]
    with pytest.raises(ValueError, match="none of the 2 candidate ids"):
        rec.recommend([["i1"]], candidates=["x", "y"])


def test_unknown_history_ids_and_bad_arguments(rec, caplog):
    with caplog.at_level(logging.WARNING):
        with_unknown = rec.recommend([["i1", "zzz", "i2"]], k=5)
    assert "dropped: zzz" in caplog.text and with_unknown == rec.recommend([["i1", "i2"]], k=5)
    with pytest.raises(ValueError, match=r"histories\[1\]: none of the 1 history item ids"):
        rec.recommend([["i1"], ["zzz"]])
    with pytest.raises(ValueError, match=r"histories\[0\] is empty"):
        rec.recommend([[]])
    with pytest.raises(TypeError, match=r"pass \[history\]"):
        rec.recommend(["i1", "i2"])
    with pytest.raises(ValueError, match="k must be"):
        rec.recommend([["i1"]], k=0)
    assert rec.recommend([], k=3) == [] and rec.recommend_users([], k=3) == []


@pytest.mark.parametrize("which", ["cosine", "dot"])
def test_similar_items_use_the_checkpoints_similarity(which, rec, dot_run):
    r = rec if which == "cosine" else seqrec.load(dot_run)
    assert r.similarity == which
    with torch.no_grad():
        table = r.loaded.model.item_embeddings()[1:].double()
    if which == "cosine":
        table = F.normalize(table, dim=-1)
    queries = ["i7", "i7", "i30"]
    got = r.similar_items(queries, k=5)
    lookup = {raw: i for i, raw in enumerate(r.loaded.item_ids.tolist())}
    for query, ranked in zip(queries, got, strict=True):
        q = lookup[query]
        scores = (table @ table[q - 1]).numpy()
        scores[q - 1] = -np.inf  # never the item itself
        order = np.lexsort((np.arange(len(scores)), -scores))[:5]
        assert [item for item, _ in ranked] == [r.loaded.item_ids[i + 1] for i in order]
        np.testing.assert_allclose([s for _, s in ranked], scores[order], atol=1e-5)
    assert got[0] == got[1]
    with pytest.raises(ValueError, match="unknown item id"):
        r.similar_items(["i7", "nope"])
