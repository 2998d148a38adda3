"""``seqrec export --onnx``: onnxruntime's user vectors equal torch's on real histories (id-only and
side-feature runs, dynamic batch and length), and numpy + onnxruntime alone rank as ``recommend`` does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from seqrec.cli import main
from seqrec.data.readers import read_interactions
from seqrec.data.synthetic import generate_synthetic
from seqrec.retrieval.onnx_export import history_windows, onnx_max_difference
from seqrec.retrieval.recommend import load_model
from seqrec.train.loop import train
from tests.conftest import tiny_config

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    inter = generate_synthetic(200, 60, num_clusters=6, min_len=5, max_len=25, seed=5)
    lines = [f"{u + 1} {inter.item_ids[i][1:]}" for u in range(inter.num_users) for i in inter.sequence(u)]
    (root / "log.txt").write_text("\n".join(lines) + "\n")
    attrs = {str(i): [1 + i % 7, 8 + i % 5, 13 + i % 3][: 1 + i % 3] for i in range(1, 61)}  # bags of 1-3 values
    (root / "attrs.json").write_text(json.dumps(attrs))
    out = {}
    for name, sections in {
        "ids-dot": {"loss": {"name": "bce"}},
        "features-cosine": {"data": {"features": str(root / "attrs.json")}},
    }.items():
        data = {"path": str(root / "log.txt"), **sections.pop("data", {})}
        config = tiny_config(data=data, train={"epochs": 1}, model={"maxlen": 12}, **sections)
        train(config, root / name, progress=False, command=["test"])
        out[name] = root / name
    return out


@pytest.mark.parametrize("name", ["ids-dot", "features-cosine"])
def test_onnx_user_encoder_equals_torch_on_real_histories(name, runs, capsys):
    run = runs[name]
    assert main(["export", str(run), "--onnx", "--quiet"]) == 0
    assert "onnxruntime vs torch: max |diff|" in capsys.readouterr().out
    loaded = load_model(run)
    assert (loaded.model.item_tower is not None) == (name == "features-cosine")
    meta = json.loads((run / "export" / "user_encoder.json").read_text())
    assert meta["similarity"] == loaded.similarity and meta["maxlen"] == 12 and meta["item_tower"] == (name != "ids-dot")
    assert meta["fingerprint"] == json.loads((run / "export" / "meta.json").read_text())["fingerprint"]
    path = run / "export" / "user_encoder.onnx"
    inter = read_interactions(loaded_data(loaded))
    for rows in (np.arange(1), np.arange(7), np.arange(inter.num_users)):  # dynamic batch; widths 5..12
        windows = history_windows(loaded, inter, rows)
        assert onnx_max_difference(loaded, path, windows) < 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    windows = history_windows(loaded, inter, np.arange(20))
    padded = np.concatenate([np.zeros((20, 3), dtype=np.int64), windows[:, 3:]], axis=1)  # shorter histories
    for batch in (windows, padded, windows[:, -2:]):
        got = session.run(None, {"item_ids": batch})[0]
        np.testing.assert_allclose(got, loaded.user_vectors(torch.from_numpy(batch)), atol=1e-4)
    users = np.load(run / "export" / "users.npy")  # the export's user vectors: same encoder, same histories
    full = session.run(None, {"item_ids": history_windows(loaded, inter, np.arange(inter.num_users))})[0]
    np.testing.assert_allclose(full, users, atol=1e-4)
    if loaded.similarity == "cosine":
        np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-5)


def loaded_data(loaded):
    from seqrec.config import config_from_dict

    return config_from_dict({"data": loaded.state["config"]["data"]}).data


def test_numpy_and_onnxruntime_alone_rank_like_recommend(runs, tmp_path):
    run = runs["features-cosine"]
    assert main(["export", str(run), "--onnx", "--quiet"]) == 0
    out = tmp_path / "recs.jsonl"
    assert main(["recommend", str(run), "--users", "1", "2", "3", "--k", "10", "--out", str(out), "--quiet"]) == 0
    expected = [json.loads(line) for line in out.read_text().splitlines()]
    inter = read_interactions(loaded_data(load_model(run)))
    # The README's serving snippet, without seqrec:
    d = run / "export"
    meta = json.loads((d / "user_encoder.json").read_text())
    session = ort.InferenceSession(str(d / "user_encoder.onnx"), providers=["CPUExecutionProvider"])
    items, item_ids = np.load(d / "items.npy"), np.load(d / "item_ids.npy")
    row_of = {raw: r + 1 for r, raw in enumerate(item_ids.tolist())}  # raw id -> internal id
    for u, want in zip(range(3), expected, strict=True):
        raw_history = [inter.item_ids[i] for i in inter.sequence(u)]
        history = [row_of[i] for i in raw_history if i in row_of]
        user = session.run(None, {"item_ids": np.array([history[-meta["maxlen"]:]], dtype=np.int64)})[0]
        scores = user[0] @ items.T
        scores[np.array(history) - 1] = -np.inf  # seen items
        top = np.argsort(-scores, kind="stable")[:10]
        assert [item_ids[r].item() for r in top] == want["items"]
        np.testing.assert_allclose(scores[top], want["scores"], atol=1e-5)


def test_a_plain_export_removes_a_stale_encoder(runs):
    run = runs["ids-dot"]
    assert main(["export", str(run), "--onnx", "--quiet"]) == 0
    assert (run / "export" / "user_encoder.onnx").is_file()
    assert main(["export", str(run), "--quiet"]) == 0
    assert not (run / "export" / "user_encoder.onnx").exists() and not (run / "export" / "user_encoder.json").exists()
