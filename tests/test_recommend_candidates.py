"""``recommend --candidates`` with candidates unknown to the model: embedded from their side features by
the checkpoint's item tower (feature models) or reported and skipped (id-only models)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqrec.cli import main
from seqrec.config import DataConfig
from seqrec.data.batches import left_padded_windows
from seqrec.data.dataset import Interactions
from seqrec.data.features import read_item_features
from seqrec.data.readers import read_interactions
from seqrec.data.side_features import item_attribute_features
from seqrec.data.synthetic import generate_synthetic
from seqrec.retrieval.ids import read_candidate_values
from seqrec.retrieval.recommend import load_model, recommend_batches, resolve_candidates
from seqrec.train.loop import train
from tests.conftest import tiny_config

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
NUM_LOG_ITEMS = 60
FEATURE_ONLY = [61, 62, 63, 64]  # in the attribute file, never in the interaction log
NEITHER = "9999"  # neither in the log nor in the attribute file


def _attributes(item: int) -> list[int]:
    return [1 + item % 7, 8 + item % 5]  # two attribute ids in 1..12


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("candidates")
    inter = generate_synthetic(200, NUM_LOG_ITEMS, num_clusters=6, min_len=5, max_len=15, seed=5)
    lines = []
    for u in range(inter.num_users):
        for i in inter.sequence(u):
            lines.append(f"{u + 1} {inter.item_ids[i][1:]}")  # raw ids i1..i60 -> 1..60
    log_path = root / "log.txt"
    log_path.write_text("\n".join(lines) + "\n")
    table = {str(i): _attributes(i) for i in range(1, NUM_LOG_ITEMS + 1)}
    table.update({str(i): _attributes(i) for i in FEATURE_ONLY})
    table[str(FEATURE_ONLY[-1])] = [1, 40]  # 40: an attribute never seen in training (-> missing)
    attrs = root / "attrs.json"
    attrs.write_text(json.dumps(table))
    return {"root": root, "log": log_path, "attrs": attrs}


def _train(data: dict[str, Path], name: str, **sections) -> Path:
    out = data["root"] / name
    config = tiny_config(data={"path": str(data["log"]), "features": str(data["attrs"])},
                         train={"epochs": 1}, **sections)
    train(config, out, progress=False, command=["test"])
    return out


@pytest.fixture(scope="module", params=["infonce", "bce"])
def feature_run(request, data) -> tuple[Path, str]:
    run = _train(data, f"features-{request.param}", loss={"name": request.param},
                 model={"item_id_dropout": 0.3})
    return run, request.param


def _candidates_file(path: Path, known: list) -> Path:
    values = [*map(str, known), *map(str, FEATURE_ONLY), NEITHER, str(FEATURE_ONLY[0]), ""]
    path.write_text("\n".join(values) + "\n")
    return path


def _direct_item_vectors(run: Path, data: dict[str, Path]) -> tuple[object, np.ndarray]:
    """The item tower's vectors of every trained item and of FEATURE_ONLY, computed without
    ``recommend``: the catalogue set by hand from the attribute file, no trained id for the new items."""
    loaded = load_model(run)
    ids = loaded.item_ids
    extended = Interactions(offsets=np.zeros(1, dtype=np.int64), items=np.zeros(0, dtype=np.int64),
                            user_ids=np.zeros(0, dtype=np.int64), item_ids=np.r_[ids, FEATURE_ONLY])
    features = item_attribute_features(data["attrs"], extended)
    tower = loaded.model.item_tower
    tower.set_catalogue(features, id_rows=np.r_[np.arange(len(ids)), np.zeros(len(FEATURE_ONLY), dtype=np.int64)])
    with torch.no_grad():
        table = loaded.model.item_embeddings().float()
        if loaded.similarity == "cosine":
            table = F.normalize(table, dim=-1)
    return loaded, table.numpy()


def test_unknown_candidates_with_features_are_embedded_and_scored_by_the_tower(feature_run, data, tmp_path,
                                                                                caplog, capsys):
    run, loss = feature_run
    inter = read_interactions(DataConfig(path=str(data["log"])))
    raw = inter.item_ids.tolist()
    known = [raw[i] for i in range(1, inter.num_items + 1, 3)]  # every 3rd trained item
    path = _candidates_file(tmp_path / "candidates.txt", known)
    out = tmp_path / "recs.jsonl"
    k = len(known) + len(FEATURE_ONLY) + 5  # more than there are candidates: every eligible one comes back
    with caplog.at_level(logging.WARNING):
        assert main(["recommend", str(run), "--k", str(k), "--out", str(out), "--candidates", str(path), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert (f"{len(known) + len(FEATURE_ONLY) + 1} candidate ids: {len(known)} known to the model, "
            f"{len(FEATURE_ONLY)} embedded from their features, 1 skipped") in printed
    assert "1 with neither a trained id nor features skipped: 9999" in caplog.text

    loaded, table = _direct_item_vectors(run, data)
    assert loaded.similarity == ("cosine" if loss == "infonce" else "dot")
    row_of = {value: r for r, value in enumerate([*raw, *FEATURE_ONLY])}  # raw id -> row of the direct table
    allowed = set(known) | set(FEATURE_ONLY)
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["user_id"] for r in results] == inter.user_ids.tolist()
    maxlen = loaded.model.config.maxlen
    for u, result in enumerate(results):
        items, scores = result["items"], result["scores"]
        seen = {raw[i] for i in inter.sequence(u)}
        assert set(items) <= allowed and not set(items) & seen  # never outside the set, seen items excluded
        assert sorted(items, key=str) == sorted(allowed - seen, key=str)  # every eligible candidate, once
        assert set(FEATURE_ONLY) <= set(items)  # the feature-only items are returned, as raw ints
        assert scores == sorted(scores, reverse=True)
        if u < 5:  # scores are the checkpoint's similarity of the user vector and the tower's item vector
            s, e = inter.offsets[u : u + 1], inter.offsets[u + 1 : u + 2]
            window = torch.from_numpy(left_padded_windows(inter.items, s, e, int(min(e[0] - s[0], maxlen))))
            query = loaded.user_vectors(window, torch.tensor([u]))[0]
            expected = [float(table[row_of[item]] @ query) for item in items]
            np.testing.assert_allclose(scores, expected, atol=2e-5)
    # the new items' vectors are the tower's, and differ from one another
    new_rows = table[[row_of[i] for i in FEATURE_ONLY]]
    assert np.abs(new_rows).sum(axis=1).min() > 0 and len({tuple(np.round(v, 5)) for v in new_rows}) == len(FEATURE_ONLY)


def test_library_candidates_leave_the_model_catalogue_as_it_was(feature_run, data, tmp_path):
    run, _ = feature_run
    loaded = load_model(run)
    before = loaded.item_vectors()
    inter = read_interactions(DataConfig(path=str(data["log"])))
    values = [*map(str, inter.item_ids[1:4].tolist()), *map(str, FEATURE_ONLY), NEITHER]
    candidates = resolve_candidates(loaded, values)
    assert candidates.new_ids == FEATURE_ONLY and candidates.skipped == [NEITHER] and len(candidates.ids) == 3
    np.testing.assert_array_equal(loaded.item_vectors(), before)  # the tower was extended only while embedding
    _, table = _direct_item_vectors(run, data)
    np.testing.assert_allclose(candidates.new_vectors, table[-len(FEATURE_ONLY):], atol=1e-6)
    rows, items, _ = next(recommend_batches(loaded, inter, np.arange(4), 2, candidates=candidates))
    mapped = candidates.item_ids(inter.item_ids)
    assert {mapped[i] for i in items.ravel() if i} <= {*inter.item_ids[1:4].tolist(), *FEATURE_ONLY}
    only_new = resolve_candidates(loaded, [str(i) for i in FEATURE_ONLY[:2]])  # no trained candidate at all
    _, items, scores = next(recommend_batches(loaded, inter, np.arange(3), 5, candidates=only_new))
    assert (items[:, :2] > inter.num_items).all() and (items[:, 2:] == 0).all() and np.isinf(scores[:, 2:]).all()
    assert sorted(only_new.item_ids(inter.item_ids)[items[0, :2]].tolist()) == FEATURE_ONLY[:2]
    with pytest.raises(ValueError, match="none of the 2 candidate ids .* or has features"):
        resolve_candidates(loaded, [NEITHER, "also-missing"])


def test_id_only_model_still_skips_unknown_candidates(data, tmp_path, caplog, capsys):
    run = _train(data, "ids-only", model={"item_features": False})
    assert load_model(run).model.item_tower is None
    inter = read_interactions(DataConfig(path=str(data["log"])))
    known = inter.item_ids[1::4].tolist()
    path = _candidates_file(tmp_path / "candidates.txt", known)
    out = tmp_path / "recs.csv"
    with caplog.at_level(logging.WARNING):
        assert main(["recommend", str(run), "--k", "50", "--out", str(out), "--candidates", str(path), "--quiet"]) == 0
    assert f"{len(FEATURE_ONLY) + 1} of {len(known) + len(FEATURE_ONLY) + 1} candidate ids" in caplog.text
    assert "unknown to the model and skipped" in caplog.text and NEITHER in caplog.text
    assert "0 embedded from their features" in capsys.readouterr().out
    lines = out.read_text().splitlines()[1:]
    assert lines and {int(line.split(",")[2]) for line in lines} <= set(known)
    assert read_candidate_values(path)[-1] == str(FEATURE_ONLY[0])  # blank lines dropped, order kept


def test_which_feature_sources_describe_items_outside_the_log(tmp_path):
    attrs = tmp_path / "attrs.json"
    attrs.write_text(json.dumps({"1": [2], "7": [3, 4]}))
    features, found = read_item_features(DataConfig(features=str(attrs)), ["7", 1, "8"])
    assert found.tolist() == [True, True, False]
    offsets, values = features.item_multi["attribute"]
    assert values[offsets[1] : offsets[2]].tolist() == [3, 4] and offsets[3] == offsets[4]
    # a TAAC training directory only describes its indexer's items, all of them in the catalogue
    assert read_item_features(DataConfig(path=str(tmp_path), format="taac"), ["7"]) is None
    assert read_item_features(DataConfig(features="none"), ["7"]) is None


@pytest.mark.skipif(not (SHARED / "ml-1m" / "movies.dat").is_file(), reason="ML-1M side files not available")
def test_ml1m_source_describes_sasrec_ids_only():
    # movies.dat has 3,883 movies, but only the 3,416 of sas_to_original_items.txt have a (SASRec) raw id
    config = DataConfig(path=str(SHARED / "ml-1m" / "ml-1m.txt.xz"), features="ml-1m")
    features, found = read_item_features(config, ["1", 3416, "3417"])
    assert found.tolist() == [True, True, False]
    offsets, _ = features.item_multi["genre"]
    assert offsets[2] - offsets[1] == 2 and offsets[4] == offsets[3]  # SASRec item 1: Action|Adventure
