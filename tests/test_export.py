"""Embedding export (npy + fbin), saved run indexes and candidate-restricted recommendations."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from seqrec.cli import main
from seqrec.data.batches import left_padded_windows
from seqrec.data.readers import read_interactions
from seqrec.retrieval.export import export_embeddings, read_export_meta
from seqrec.retrieval.fbin import read_fbin, read_ids_u64
from seqrec.retrieval.recommend import load_model
from seqrec.retrieval.run_index import index_config, run_index
from seqrec.retrieval.search import search
from seqrec.train.checkpoint import load_checkpoint, save_checkpoint
from seqrec.train.loop import train
from tests.conftest import tiny_config

CONFIG = tiny_config(train={"epochs": 1})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    train(CONFIG, out, progress=False, command=["test"])
    return out


@pytest.fixture(scope="module")
def inter():
    return read_interactions(CONFIG.data)


def test_export_round_trip(run_dir, inter):
    assert main(["export", str(run_dir), "--quiet"]) == 0
    out = run_dir / "export"
    loaded = load_model(run_dir)
    items = np.load(out / "items.npy", allow_pickle=False)
    np.testing.assert_array_equal(items, loaded.item_vectors())
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1.0, rtol=1e-5)  # cosine checkpoint
    item_ids = np.load(out / "item_ids.npy", allow_pickle=False)
    assert item_ids.dtype.kind == "U" and item_ids.tolist() == inter.item_ids[1:].tolist()

    users = np.load(out / "users.npy", allow_pickle=False)
    user_ids = np.load(out / "user_ids.npy", allow_pickle=False)
    assert users.shape == (inter.num_users, CONFIG.model.hidden_dim)
    assert user_ids.tolist() == inter.user_ids.tolist()
    maxlen = CONFIG.model.maxlen
    for u in (0, 7, inter.num_users - 1):  # one user alone: the encoder over its full history, last position
        s, e = inter.offsets[u : u + 1], inter.offsets[u + 1 : u + 2]
        window = torch.from_numpy(left_padded_windows(inter.items, s, e, int(min(e[0] - s[0], maxlen))))
        np.testing.assert_allclose(users[u], loaded.user_vectors(window)[0], rtol=0, atol=1e-5)

    meta = read_export_meta(out)
    assert meta["num_items"] == inter.num_items and meta["num_users"] == inter.num_users
    assert meta["similarity"] == "cosine" and meta["normalized"] is True and meta["fbin_ids"] == {}
    assert not list(out.glob(".*tmp"))  # no temporary files left behind


def test_export_fbin_layout(run_dir, inter, tmp_path, caplog):
    out = tmp_path / "fb"
    with caplog.at_level(logging.WARNING):
        assert main(["export", str(run_dir), "--out", str(out), "--fbin", "--batch-size", "100", "--quiet"]) == 0
    np.testing.assert_array_equal(read_fbin(out / "items.fbin"), np.load(out / "items.npy"))
    np.testing.assert_array_equal(read_fbin(out / "users.fbin"), np.load(out / "users.npy"))
    header = np.fromfile(out / "items.fbin", dtype="<u4", count=2)
    assert header.tolist() == [inter.num_items, CONFIG.model.hidden_dim]
    # Synthetic raw ids are strings ("i3", "u5"): the uint64 files hold internal ids, and say so.
    np.testing.assert_array_equal(read_ids_u64(out / "item_ids.u64", count=inter.num_items),
                                  np.arange(1, inter.num_items + 1))
    np.testing.assert_array_equal(read_ids_u64(out / "user_ids.u64"), np.arange(inter.num_users))
    assert read_export_meta(out)["fbin_ids"] == {"item_ids.u64": "internal", "user_ids.u64": "internal"}
    assert "internal ids" in caplog.text


def test_export_int_ids_are_raw_in_u64(run_dir, tmp_path):
    loaded = load_model(run_dir)
    loaded.item_ids = np.concatenate([[0], 10**12 + np.arange(loaded.model.num_items)]).astype(np.int64)
    result = export_embeddings(loaded, None, tmp_path, fbin=True)
    assert result.num_users is None and result.internal_id_files == []
    np.testing.assert_array_equal(np.load(tmp_path / "item_ids.npy"), loaded.item_ids[1:])
    assert np.load(tmp_path / "item_ids.npy").dtype == np.int64
    np.testing.assert_array_equal(read_ids_u64(tmp_path / "item_ids.u64"), loaded.item_ids[1:].astype(np.uint64))


def test_index_build_saves_and_is_reused(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("export", "index"))
    # No export yet: building exports the item vectors first.
    assert main(["index", "build", str(run), "--kind", "hnsw", "--set", "index.hnsw_m=8",
                 "--set", "index.hnsw_ef_search=40", "--quiet"]) == 0
    assert (run / "export" / "items.npy").is_file() and (run / "index" / "hnsw.faiss").is_file()
    meta = json.loads((run / "index" / "hnsw.json").read_text())
    assert meta["config"]["kind"] == "hnsw" and meta["config"]["hnsw_m"] == 8 and meta["num_items"] == CONFIG.data.synthetic_items

    loaded = load_model(run)
    index, source = run_index(loaded, run, "hnsw")
    assert source == "saved" and index.hnsw.efSearch == 40
    # A second build reuses the export (same weights) instead of rewriting it.
    stamp = os.stat(run / "export" / "items.npy").st_mtime_ns
    assert main(["index", "build", str(run), "--kind", "exact", "--quiet"]) == 0
    assert os.stat(run / "export" / "items.npy").st_mtime_ns == stamp
    exact, source = run_index(loaded, run, "exact")
    assert source == "saved" and exact.ntotal == CONFIG.data.synthetic_items
    _, found = search(exact, loaded.item_vectors()[:5], 1)
    assert found[:, 0].tolist() == list(range(5))  # row r is item r + 1, its own nearest neighbour

    # Other weights in the same run directory: the saved index is not used for them.
    state = load_checkpoint(run)
    state["model"]["item_emb.weight"] = state["model"]["item_emb.weight"] * 2 + 0.1
    save_checkpoint({k: v for k, v in state.items() if k not in ("path", "schema_version")},
                    run / "checkpoints" / "best.pt")
    _, source = run_index(load_model(run), run, "hnsw")
    assert source == "built"


def test_index_config_errors(run_dir, capsys):
    assert index_config("ivf", ["index.ivf_nprobe=4"]).ivf_nprobe == 4
    for bad, message in [
        (["index.nope=1"], "unknown index key"),
        (["model.hnsw_m=8"], "only index.KEY=VALUE"),
        (["index.kind=ivf"], "--kind"),
        (["index.hnsw_m=one"], "hnsw_m"),
    ]:
        with pytest.raises(ValueError, match=message):
            index_config("hnsw", bad)
    assert main(["index", "build", str(run_dir), "--kind", "hnsw", "--set", "index.hnsw_m=1"]) == 2
    assert "hnsw_m" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_candidates_restrict_recommendations(run_dir, inter, tmp_path, caplog, kind):
    allowed = [inter.item_ids[i] for i in range(1, inter.num_items + 1, 4)]  # every 4th item
    path = tmp_path / "candidates.txt"
    path.write_text("\n".join([*allowed, "not-an-item", "", "also-missing", allowed[0]]) + "\n")
    out = tmp_path / "recs.csv"
    with caplog.at_level(logging.WARNING):
        assert main(["recommend", str(run_dir), "--k", "5", "--out", str(out), "--index", kind,
                     "--candidates", str(path), "--quiet"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert {r["user_id"] for r in rows} == set(inter.user_ids.tolist())
    assert {r["item_id"] for r in rows} <= set(allowed)
    assert "2 of" in caplog.text and "not-an-item" in caplog.text
    # Seen items stay excluded within the candidate set, so a user may get fewer than k.
    by_user: dict[str, list[str]] = {}
    for r in rows:
        by_user.setdefault(r["user_id"], []).append(r["item_id"])
    for u in (0, 1, 2):
        seen = {inter.item_ids[i] for i in inter.sequence(u)}
        got = by_user.get(inter.user_ids[u], [])
        assert not seen & set(got) and len(got) == min(5, len(set(allowed) - seen))


def test_candidates_errors(run_dir, tmp_path, capsys):
    path = tmp_path / "none.txt"
    path.write_text("x\ny\n")
    assert main(["recommend", str(run_dir), "--out", str(tmp_path / "r.csv"), "--candidates", str(path), "--quiet"]) == 2
    assert "none of the 2 candidate ids" in capsys.readouterr().err
    assert main(["recommend", str(run_dir), "--out", str(tmp_path / "r.csv"), "--candidates",
                 str(tmp_path / "missing.txt"), "--quiet"]) == 2
    assert "candidates file not found" in capsys.readouterr().err
