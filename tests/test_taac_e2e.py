"""TAAC end to end through the CLI: generate -> train (with features) -> infer, no code in between."""

from __future__ import annotations

import json

import pytest

from seqrec.cli import main
from seqrec.data.taac.predict import read_taac_targets
from seqrec.train.checkpoint import load_checkpoint

SMALL = [
    "--set", "model.maxlen=30", "--set", "model.hidden_dim=16", "--set", "model.num_blocks=1",
    "--set", "model.dropout=0.1", "--set", "train.epochs=2", "--set", "train.batch_size=64",
    "--set", "train.lr=0.005", "--set", "eval.batch_size=256",
    # the TAAC baseline's user token, clicks weighted up, and feature 81 (dim 32) kept out of the
    # checkpoint so inference has to re-read it from the training directory
    "--set", "model.user_features=token", "--set", "loss.action_weights=[1.0, 2.5, 2.5]",
    "--set", "model.vector_buffer_max_dim=16",
]


@pytest.fixture(scope="module")
def taac_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("taac")
    assert main(["taac-generate", "--out", str(root / "data"), "--users", "150", "--items", "80",
                 "--mean-length", "12", "--quiet"]) == 0
    assert main(["train", "--data", str(root / "data" / "train"), "--out", str(root / "run"), "--quiet", *SMALL]) == 0
    return root


def test_train_records_the_architecture_and_the_features(taac_run):
    state = load_checkpoint(taac_run / "run")
    assert state["config"]["data"]["path"].endswith("train")
    assert state["config"]["model"]["user_features"] == "token"
    schema = state["model"]["item_tower._extra_state"]
    assert {name for name, _, _ in schema["vectors"]} == {"81", "82"}
    assert "item_tower.vec_82" in state["model"] and "item_tower.vec_81" not in state["model"]
    assert "user_tower._extra_state" in state["model"]


def test_infer_writes_ten_creatives_per_user_in_input_order(taac_run, capsys):
    out = taac_run / "result.jsonl"
    eval_dir = taac_run / "data" / "eval"
    assert main(["taac-infer", str(taac_run / "run"), "--eval-dir", str(eval_dir), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "score = 0.31 * HR@10 + 0.69 * NDCG@10" in printed
    for name in ("model", "popularity", "transitions"):  # the two baselines next to the model
        assert any(line.split()[:1] == [name] and len(line.split()) == 4 for line in printed.splitlines())
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    users, _ = read_taac_targets(eval_dir)
    assert [line["user_id"] for line in lines] == users.tolist()  # predict_seq.jsonl order
    candidates = {json.loads(line)["creative_id"] for line in (eval_dir / "predict_set.jsonl").read_text().splitlines()}
    for line in lines:
        assert len(line["creative_ids"]) == 10 == len(set(line["creative_ids"]))
        assert set(line["creative_ids"]) <= candidates
    # creatives unseen in training are candidates too, and they are embedded (their features), not dropped
    assert "creatives unseen in training" in printed and " 0 creatives unseen" not in printed


def test_evaluate_reloads_the_vectors_kept_out_of_the_checkpoint(taac_run, capsys):
    assert main(["evaluate", str(taac_run / "run"), "--json", "--quiet"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    results = json.loads((taac_run / "run" / "results.json").read_text())
    assert evaluated["test"]["ndcg@10"] == pytest.approx(results["test"]["ndcg@10"])
