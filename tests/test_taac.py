"""The TAAC 2025 reader, its synthetic generator and the competition metric.

Expected values are computed here from the files themselves with ``json`` (and ``safe_load_pickle``),
so the reader is checked against the documented layout rather than against the generator's internals.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqrec.data.safe_pickle import UnsafePickleError, safe_load_pickle
from seqrec.data.taac import item_features, layout
from seqrec.data.taac.item_features import read_item_features
from seqrec.data.taac.layout import TaacFormatError
from seqrec.data.taac.predict import read_taac_predict, read_taac_targets
from seqrec.data.taac.reader import read_seq_offsets, read_taac
from seqrec.data.taac.scoring import competition_score, hit_ndcg_at_10
from seqrec.data.taac.synthetic import write_taac_synthetic

# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------


def _lines(path: Path) -> list[list]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _item_records(line: list) -> list[list]:
    return [r for r in line if r[2] is None]


def _profile(line: list) -> dict:
    (record,) = [r for r in line if r[2] is not None]
    return record[2]


def _csr_row(csr: tuple[np.ndarray, np.ndarray], row: int) -> list[int]:
    offsets, values = csr
    return values[offsets[row] : offsets[row + 1]].tolist()


def _write_tiny(directory: Path) -> Path:
    """A directory the generator would never write: string creative_ids in the indexer, a one-line
    item_feat_dict.json with list values for a documented-sparse feature, the user record in the middle
    or at the end, a null item_feature, null and int profile timestamps, and no creative_emb/."""
    directory.mkdir(parents=True, exist_ok=True)
    indexer = {
        "u": {"alice": 1, "bob": 2, "carol": 3},
        "i": {"9001": 1, 9002: 2, "9003": 3},
        "f": {"100": {"a": 1}},
    }
    (directory / "indexer.pkl").write_bytes(pickle.dumps(indexer))
    items = {"3": {"100": 1}, "1": {"100": 2, "112": [1, 3]}, "2": {"112": 7}}
    (directory / "item_feat_dict.json").write_text(json.dumps(items, separators=(",", ":")))
    lines = [
        [
            [2, 1, None, {"100": 2}, 0, 100],
            [2, None, {"103": 5, "106": 4}, None, None, None],
            [2, 3, None, {}, 1, 105],
        ],
        [[1, None, {"106": [1, 2, 3], "104": [2]}, None, None, 50], [1, 2, None, None, 0, 60]],
        [[3, 2, None, {"112": 7}, 2, 10], [3, 1, None, {"100": 2}, 0, 10], [3, None, {}, None, None, 11]],
    ]
    (directory / "seq.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return directory


def _add_vectors(directory: Path) -> Path:
    """creative_emb/ with a pickle (str keys) and a part folder: files with and without .json, markers."""
    emb = directory / "creative_emb"
    emb.mkdir()
    (emb / "emb_81_4.pkl").write_bytes(
        pickle.dumps({"9001": [1.0, 2.0, 3.0, 4.0], 9003: (0, 0, 1, 0), 5555: [9] * 4})
    )
    folder = emb / "emb_83_3"
    folder.mkdir()
    (folder / "part-00000").write_text(
        json.dumps({"anonymous_cid": 9002, "emb": [0.5, -1, 2]})
        + "\n\n"
        + json.dumps({"anonymous_cid": "7", "emb": [1, 1, 1]})
        + "\n"
    )
    (folder / "part-00001.json").write_text(
        json.dumps({"anonymous_cid": "9003", "emb": [3, 2, 1], "x": 0}) + "\n"
    )
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-00000.crc").write_bytes(b"\x00\xff garbage")
    (emb / "notes.txt").write_text("not a vector file")
    return directory


# ----------------------------------------------------------------------------------------------------
# Generator -> reader round trip
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    dirs = write_taac_synthetic(
        tmp_path_factory.mktemp("taac"), num_users=150, num_items=200, seed=7, mean_length=12
    )
    data = read_taac(dirs.train, progress=False)
    return dirs, data


def test_round_trip_sequences_follow_file_order(synthetic):
    dirs, data = synthetic
    lines = _lines(dirs.train / "seq.jsonl")
    inter = data.interactions
    assert inter.num_users == len(lines) == 150
    assert len(inter.items) == sum(len(_item_records(line)) for line in lines)
    indexer = safe_load_pickle(dirs.train / "indexer.pkl")
    raw_user = {reid: raw for raw, reid in indexer["u"].items()}
    for row, line in enumerate(lines):
        records = _item_records(line)
        assert inter.sequence(row).tolist() == [r[1] for r in records]
        start, stop = inter.offsets[row], inter.offsets[row + 1]
        assert inter.actions[start:stop].tolist() == [r[4] for r in records]
        assert inter.timestamps[start:stop].tolist() == [r[5] for r in records]
        assert data.user_reids[row] == line[0][0]
        assert inter.user_ids[row] == raw_user[line[0][0]]
    assert inter.actions.dtype == np.int8 and inter.timestamps.dtype == np.int64
    # Lines are shuffled relative to re-ids, so the reader must not assume row == re-id - 1.
    assert not np.array_equal(data.user_reids, np.arange(1, 151))
    # Creative ids come from the indexer.
    assert inter.num_items == len(indexer["i"]) == 200
    for cid, reid in indexer["i"].items():
        assert inter.item_ids[reid] == cid


def test_round_trip_profile_records_sit_anywhere(synthetic):
    dirs, _ = synthetic
    positions = set()
    for line in _lines(dirs.train / "seq.jsonl"):
        (at,) = [k for k, r in enumerate(line) if r[2] is not None]
        positions.add("first" if at == 0 else "last" if at == len(line) - 1 else "middle")
    assert positions == {"first", "middle", "last"}


def test_round_trip_item_and_user_features(synthetic):
    dirs, data = synthetic
    items = json.loads((dirs.train / "item_feat_dict.json").read_text())
    assert set(data.item_sparse) == set(layout.ITEM_SPARSE_FEATURES)
    missing = 0
    for key, features in items.items():
        for feature in layout.ITEM_SPARSE_FEATURES:
            expected = features.get(feature, 0)
            missing += expected == 0
            assert data.item_sparse[feature][int(key)] == expected
    assert missing > 0  # some features are absent and read as 0
    for column in data.item_sparse.values():
        assert column.shape == (201,) and column[0] == 0

    lines = _lines(dirs.train / "seq.jsonl")
    assert set(data.user_sparse) == set(layout.USER_SPARSE_FEATURES)
    assert set(data.user_array) == set(layout.USER_ARRAY_FEATURES)
    for row, line in enumerate(lines):
        profile = _profile(line)
        for feature in layout.USER_SPARSE_FEATURES:
            assert data.user_sparse[feature][row] == profile[feature]
        for feature in layout.USER_ARRAY_FEATURES:
            assert _csr_row(data.user_array[feature], row) == profile[feature]
    for feature in (*layout.ITEM_SPARSE_FEATURES, *layout.USER_SPARSE_FEATURES):
        column = data.item_sparse.get(feature, data.user_sparse.get(feature))
        assert data.feature_cardinality[feature] >= column.max() + 1


def test_round_trip_vectors_and_present_mask(synthetic):
    dirs, data = synthetic
    assert set(data.item_vectors) == {"81", "82"}
    reid_of = data.item_index
    pickled = safe_load_pickle(dirs.train / "creative_emb" / "emb_81_32.pkl")
    parts = sorted((dirs.train / "creative_emb" / "emb_82_16").iterdir())
    in_parts = {}
    for part in parts:
        for line in part.read_text().splitlines():
            obj = json.loads(line)
            in_parts[obj["anonymous_cid"]] = obj["emb"]
    for feature, table, dim in (("81", pickled, 32), ("82", in_parts, 16)):
        matrix, present = data.item_vectors[feature]
        assert matrix.shape == (201, dim) and matrix.dtype == np.float32 and present.shape == (201,)
        expected_rows = {reid_of[cid] for cid in table if cid in reid_of}
        assert set(np.flatnonzero(present).tolist()) == expected_rows
        assert 0.75 < present[1:].mean() < 0.99  # partial coverage
        for cid, vector in table.items():
            if cid in reid_of:
                np.testing.assert_array_equal(matrix[reid_of[cid]], np.asarray(vector, np.float32))
        assert not matrix[~present].any()  # absent rows are zero and flagged, not "zero information"


def test_round_trip_action_mix_and_popularity(synthetic):
    _, data = synthetic
    inter = data.interactions
    assert 0.05 < (inter.actions == 1).mean() < 0.15
    counts = np.sort(np.bincount(inter.items, minlength=inter.num_items + 1)[1:])[::-1]
    assert counts[:20].sum() > 0.2 * counts.sum()  # the top 10% of items draw far more than 10% of events
    assert np.all(
        np.diff(inter.timestamps)[np.diff(np.repeat(np.arange(inter.num_users), inter.lengths)) == 0] >= 0
    )


def test_seq_offsets_point_at_line_starts(synthetic):
    dirs, _ = synthetic
    for name, offsets_name in (
        ("train/seq.jsonl", "train/seq_offsets.pkl"),
        ("eval/predict_seq.jsonl", "eval/predict_seq_offsets.pkl"),
    ):
        root = dirs.train.parent
        offsets = read_seq_offsets(root / offsets_name)
        raw = (root / name).read_bytes()
        assert len(offsets) == raw.count(b"\n")
        for k, offset in enumerate(offsets.tolist()):
            end = raw.index(b"\n", offset)
            json.loads(raw[offset:end])  # each offset starts a whole line
            assert k == 0 or raw[offset - 1 : offset] == b"\n"


def test_item_feat_dict_parses_across_block_boundaries(synthetic, monkeypatch):
    dirs, data = synthetic
    for block in (1, 7, 64):
        monkeypatch.setattr(item_features, "READ_BLOCK", block)
        columns = read_item_features(dirs.train / "item_feat_dict.json", data.num_items, progress=False)
        sparse, _, _ = columns.finish(data.num_items + 1, ())
        for feature, column in data.item_sparse.items():
            np.testing.assert_array_equal(sparse[feature], column)


# ----------------------------------------------------------------------------------------------------
# Evaluation directory and metric
# ----------------------------------------------------------------------------------------------------


def test_predict_reads_whole_histories_and_maps_unseen_ids(synthetic):
    dirs, data = synthetic
    pred = read_taac_predict(dirs.eval, data, progress=False)
    lines = _lines(dirs.eval / "predict_seq.jsonl")
    assert pred.num_users == len(lines) == 15
    unseen_items = unseen_values = 0
    for q, line in enumerate(lines):
        records = _item_records(line)
        file_ids = [r[1] for r in records]
        expected = [i if i <= data.num_items else 0 for i in file_ids]
        assert pred.history(q).tolist() == expected  # the most recent item is kept
        raw = pred.raw_items[pred.offsets[q] : pred.offsets[q + 1]].tolist()
        assert raw == [data.interactions.item_ids[i] if i <= data.num_items else i for i in file_ids]
        unseen_items += sum(i > data.num_items for i in file_ids)
        user = line[0][0]
        assert pred.user_ids[q] == user
        assert pred.user_reids[q] == (user if isinstance(user, int) else 0)
        profile = _profile(line)
        if isinstance(profile["103"], str):
            unseen_values += 1
            assert pred.user_sparse["103"][q] == 0
        else:
            assert pred.user_sparse["103"][q] == profile["103"]
        assert _csr_row(pred.user_array["106"], q) == [v if isinstance(v, int) else 0 for v in profile["106"]]
        for k, record in enumerate(records):
            value = record[3].get("121", 0)
            unseen_values += isinstance(value, str)
            assert pred.event_sparse["121"][pred.offsets[q] + k] == (value if isinstance(value, int) else 0)
    assert unseen_items > 0 and unseen_values > 0
    assert any(isinstance(u, str) for u in pred.user_ids) and any(isinstance(u, int) for u in pred.user_ids)


def test_predict_candidates_hold_every_target(synthetic):
    dirs, data = synthetic
    pred = read_taac_predict(dirs.eval, data, progress=False)
    cands = pred.candidates
    rows = [json.loads(line) for line in (dirs.eval / "predict_set.jsonl").read_text().splitlines()]
    assert cands.creative_ids.tolist() == [r["creative_id"] for r in rows]
    assert cands.retrieval_ids.tolist() == [r["retrieval_id"] for r in rows]
    assert cands.items.tolist() == [data.item_index.get(r["creative_id"], 0) for r in rows]
    assert (cands.items == 0).any() and (cands.items > 0).any()
    for feature in ("100", "121"):
        assert cands.sparse[feature].tolist() == [
            v if isinstance(v := r["features"].get(feature, 0), int) else 0 for r in rows
        ]
    matrix, present = cands.vectors["81"]
    assert matrix.shape == (len(rows), 32) and 0.75 < present.mean() < 0.99
    known = cands.items > 0
    train_matrix, train_present = data.item_vectors["81"]
    np.testing.assert_array_equal(present[known], train_present[cands.items[known]])
    np.testing.assert_array_equal(matrix[known], train_matrix[cands.items[known]])

    users, targets = read_taac_targets(dirs.eval)
    assert users.tolist() == pred.user_ids.tolist()
    assert set(targets.tolist()) <= set(cands.creative_ids.tolist())
    assert hit_ndcg_at_10([[t] for t in targets], targets) == (1.0, 1.0)


def test_new_items_are_drawn_from_the_given_cluster():
    from seqrec.data.taac.simulate import synth_world
    from seqrec.data.taac.synthetic import _new_item_in

    rng = np.random.default_rng(0)
    world = synth_world(rng, 400, 60)
    clusters = rng.integers(world.num_clusters, size=2000)
    drawn = _new_item_in(rng, world, 400, clusters)
    has_new = np.isin(clusters, world.cluster[401:])
    assert has_new.any() and (drawn[~has_new] == 0).all()  # a cluster without unseen items: nothing drawn
    assert (drawn[has_new] > 400).all() and (world.cluster[drawn[has_new]] == clusters[has_new]).all()
    for c in np.unique(clusters[has_new])[:5].tolist():  # every unseen item of the cluster can come up
        assert set(drawn[clusters == c].tolist()) == set((np.flatnonzero(world.cluster[401:] == c) + 401).tolist())


def test_unseen_targets_follow_the_user_and_can_be_asked_for(tmp_path):
    # Every target that can be replaced is: an unseen creative of the user's current cluster, whose
    # cluster-following feature 101 mostly matches the user's last item (uniform draws would rarely).
    dirs = write_taac_synthetic(tmp_path, num_users=300, num_items=400, seed=5, num_eval_users=200, num_new_items=100,
                                new_target_fraction=1.0)
    data = read_taac(dirs.train, progress=False)
    pred = read_taac_predict(dirs.eval, data, progress=False)
    _, targets = read_taac_targets(dirs.eval)
    features = {r["creative_id"]: r["features"] for r in map(json.loads, (dirs.eval / "predict_set.jsonl").read_text().splitlines())}
    unseen = [q for q, t in enumerate(targets.tolist()) if t not in data.item_index]
    assert len(unseen) > 0.8 * pred.num_users
    lines = _lines(dirs.eval / "predict_seq.jsonl")
    same = [features[targets[q]].get("101") == _item_records(lines[q])[-1][3].get("101") for q in unseen]
    assert np.mean(same) > 0.6
    with pytest.raises(ValueError, match="new_target_fraction"):
        write_taac_synthetic(tmp_path, num_users=5, num_items=10, new_target_fraction=1.5)


def test_hit_and_ndcg_hand_computed():
    top = [[5, 6, 7, 8], ["1", 2, 3], list(range(100, 120)), []]
    targets = [7, 1, 110, 3]
    # rank 3 -> 1/log2(4) = 0.5; "1" equals 1 at rank 1 -> 1; rank 11 is outside the top 10; empty list.
    hr, ndcg = hit_ndcg_at_10(top, targets)
    assert hr == pytest.approx(2 / 4)
    assert ndcg == pytest.approx((0.5 + 1.0) / 4)
    assert competition_score(hr, ndcg) == pytest.approx(0.31 * 0.5 + 0.69 * 0.375)
    assert hit_ndcg_at_10([[1, 2]], [np.int64(2)]) == (1.0, pytest.approx(1 / math.log2(3)))
    with pytest.raises(ValueError, match="targets"):
        hit_ndcg_at_10([[1]], [1, 2])
    with pytest.raises(ValueError):
        hit_ndcg_at_10([], [])


def test_planted_signal_is_learnable(tmp_path):
    # A first-order transition count beats popularity by a wide margin on the synthetic data.
    dirs = write_taac_synthetic(tmp_path, num_users=600, num_items=300, seed=3)
    data = read_taac(dirs.train, progress=False)
    pred = read_taac_predict(dirs.eval, data, progress=False)
    inter = data.interactions
    transitions = np.zeros((inter.num_items + 1, inter.num_items + 1))
    for u in range(inter.num_users):
        seq = inter.sequence(u)
        np.add.at(transitions, (seq[:-1], seq[1:]), 1)
    candidates = np.unique(pred.candidates.items[pred.candidates.items > 0])
    popularity = np.bincount(inter.items, minlength=inter.num_items + 1)[candidates]
    popular = candidates[np.argsort(-popularity, kind="stable")][:10]
    markov, popular_lists = [], []
    for q in range(pred.num_users):
        known = pred.history(q)[pred.history(q) > 0]
        scores = (transitions[known[-1], candidates] if known.size else 0) + 1e-3 * popularity
        markov.append(inter.item_ids[candidates[np.argsort(-scores, kind="stable")][:10]].tolist())
        popular_lists.append(inter.item_ids[popular].tolist())
    _, targets = read_taac_targets(dirs.eval)
    markov_score = competition_score(*hit_ndcg_at_10(markov, targets))
    popular_score = competition_score(*hit_ndcg_at_10(popular_lists, targets))
    assert markov_score > 2 * popular_score + 0.1


# ----------------------------------------------------------------------------------------------------
# Hand-written directories
# ----------------------------------------------------------------------------------------------------


def test_hand_written_directory(tmp_path):
    data = read_taac(_write_tiny(tmp_path / "tiny"), progress=False)
    inter = data.interactions
    assert inter.num_users == 3 and inter.num_items == 3
    assert [inter.sequence(u).tolist() for u in range(3)] == [[1, 3], [2], [2, 1]]
    assert inter.user_ids.tolist() == ["bob", "alice", "carol"]
    assert data.user_reids.tolist() == [2, 1, 3]
    assert inter.item_ids.tolist() == [0, 9001, 9002, 9003]  # decimal-string creative ids become ints
    assert inter.actions.tolist() == [0, 1, 0, 2, 0]
    assert data.item_vectors == {}  # no creative_emb/ at all
    # A list value turns a documented-sparse feature into an array feature; scalars stay sparse.
    assert data.item_sparse["100"].tolist() == [0, 2, 0, 1]
    assert [_csr_row(data.item_array["112"], i) for i in range(4)] == [[], [1, 3], [7], []]
    assert data.user_sparse["103"].tolist() == [5, 0, 0]
    assert [_csr_row(data.user_array["106"], u) for u in range(3)] == [[4], [1, 2, 3], []]
    assert [_csr_row(data.user_array["104"], u) for u in range(3)] == [[], [2], []]
    assert data.feature_cardinality["112"] == 8 and data.feature_cardinality["100"] == 3


def test_hand_written_vectors(tmp_path):
    data = read_taac(_add_vectors(_write_tiny(tmp_path / "tiny")), progress=False)
    matrix, present = data.item_vectors["81"]
    assert present.tolist() == [False, True, False, True]
    np.testing.assert_array_equal(matrix[1], [1, 2, 3, 4])
    np.testing.assert_array_equal(matrix[3], [0, 0, 1, 0])
    matrix, present = data.item_vectors["83"]
    assert matrix.shape == (4, 3) and present.tolist() == [False, False, True, True]
    np.testing.assert_array_equal(matrix[2], [0.5, -1, 2])
    np.testing.assert_array_equal(matrix[3], [3, 2, 1])
    only = read_taac(tmp_path / "tiny", progress=False, vector_features=["83"])
    assert set(only.item_vectors) == {"83"}


def test_vector_pickle_may_hold_numpy_arrays(tmp_path):
    directory = _add_vectors(_write_tiny(tmp_path / "tiny"))
    (directory / "creative_emb" / "emb_81_4.pkl").write_bytes(pickle.dumps(
        {"9001": np.array([1, 2, 3, 4], np.float32), 9003: np.arange(4, dtype=np.float64)}))
    matrix, present = read_taac(directory, progress=False).item_vectors["81"]
    assert present.tolist() == [False, True, False, True]
    np.testing.assert_array_equal(matrix[1], [1, 2, 3, 4])
    np.testing.assert_array_equal(matrix[3], [0, 1, 2, 3])


def test_sort_by_time_is_opt_in_and_stable(tmp_path):
    directory = _write_tiny(tmp_path / "tiny")
    lines = [
        [
            [1, 3, None, {}, 0, 30],
            [1, 1, None, {}, 0, 10],
            [1, None, {}, None, None, None],
            [1, 2, None, {}, 1, 10],
        ],
        [[2, 2, None, {}, 0, 5], [2, None, {}, None, None, 1]],
    ]
    (directory / "seq.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    kept = read_taac(directory, progress=False).interactions
    assert kept.sequence(0).tolist() == [3, 1, 2]
    ordered = read_taac(directory, progress=False, sort_by_time=True).interactions
    assert ordered.sequence(0).tolist() == [1, 2, 3] and ordered.sequence(1).tolist() == [2]
    assert ordered.timestamps.tolist() == [10, 10, 30, 5] and ordered.actions.tolist() == [0, 1, 0, 0]


def test_hand_written_predict_directory(tmp_path):
    train = read_taac(_add_vectors(_write_tiny(tmp_path / "train")), progress=False)
    directory = tmp_path / "eval"
    directory.mkdir()
    lines = [
        [
            ["stranger", 77777, None, {"100": "unseen"}, 0, 9],
            ["stranger", None, {"103": "x", "106": [1, "y"]}, None, None, 2],
            ["stranger", 2, None, {"100": 2}, 1, 3],
        ],
        [[1, None, {"103": 4}, None, None, None], [1, 9003, None, {}, 0, 5], [1, 1, None, {}, 0, 6]],
    ]
    (directory / "predict_seq.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    candidates = [
        {"creative_id": 9002, "retrieval_id": 1, "features": {"100": 1}},
        {"creative_id": "424242", "retrieval_id": 2, "features": {"100": "new", "112": [1, "z"]}},
        {"creative_id": 9001, "retrieval_id": 3},
    ]
    (directory / "predict_set.jsonl").write_text("".join(json.dumps(c) + "\n" for c in candidates))
    pred = read_taac_predict(directory, train, progress=False)
    assert pred.user_ids.tolist() == ["stranger", 1] and pred.user_reids.tolist() == [0, 1]
    # 77777 > num_items: an unseen raw creative id; 9003 > num_items but known to the indexer.
    assert pred.history(0).tolist() == [0, 2] and pred.history(1).tolist() == [3, 1]
    assert pred.raw_items.tolist() == [77777, 9002, 9003, 9001]
    assert pred.event_sparse["100"].tolist() == [0, 2, 0, 0]
    assert pred.user_sparse["103"].tolist() == [0, 4]
    assert [_csr_row(pred.user_array["106"], q) for q in range(2)] == [[1, 0], []]
    cands = pred.candidates
    assert cands.creative_ids.tolist() == [9002, 424242, 9001] and cands.items.tolist() == [2, 0, 1]
    assert cands.sparse["100"].tolist() == [1, 0, 0]
    assert [_csr_row(cands.array["112"], c) for c in range(3)] == [[], [1, 0], []]
    assert pred.timestamps.tolist() == [9, 3, 5, 6]  # file order by default
    ordered = read_taac_predict(directory, train, progress=False, sort_by_time=True)
    assert ordered.history(0).tolist() == [2, 0] and ordered.history(1).tolist() == [3, 1]
    assert ordered.timestamps.tolist() == [3, 9, 5, 6] and ordered.raw_items.tolist() == [
        9002,
        77777,
        9003,
        9001,
    ]
    assert ordered.event_sparse["100"].tolist() == [2, 0, 0, 0]
    # The evaluation directory has no creative_emb/, so the training vectors are reused.
    assert cands.vectors["83"][1].tolist() == [True, False, False]
    np.testing.assert_array_equal(cands.vectors["81"][0][2], [1, 2, 3, 4])


# ----------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------

GOOD_LINE = [[4, None, {"103": 1}, None, None, None], [4, 1, None, {"100": 1}, 0, 7]]


def _with_bad_seq_line(directory: Path, line_text: str) -> None:
    """seq.jsonl with a good first line and ``line_text`` as line 2."""
    (directory / "seq.jsonl").write_text(json.dumps(GOOD_LINE) + "\n" + line_text + "\n")


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("[[1, 2, null, {}, 0]]", "record 0"),  # wrong arity
        ("[[1, 2, null, {}, 0, 5, 6]]", "record 0"),
        ('[[1, null, {"103": 1.5}, null, null, 1]]', "record 0 user_feature['103']"),  # wrong feature type
        ('[[1, null, {"106": [1, "x"]}, null, null, 1]]', "record 0 user_feature['106']"),
        ('[[1, 2, null, {"100": "seen?"}, 0, 5]]', "record 0 item_feature['100']"),
        ('[[1, 2, null, {"100": -1}, 0, 5]]', "record 0 item_feature['100']"),
        ("[[1, 2, null, [1, 2], 0, 5]]", "record 0 item_feature"),
        ("[[1, 4, null, {}, 0, 5]]", "record 0 item_id"),  # not a re-id of indexer.pkl
        ("[[1, 0, null, {}, 0, 5]]", "record 0 item_id"),
        ("[[1, true, null, {}, 0, 5]]", "record 0 item_id"),
        ("[[1, 2, null, {}, 3, 5]]", "record 0 action_type"),
        ("[[1, 2, null, {}, 0, 5.5]]", "record 0 timestamp"),
        ("[[1, 2, null, {}, 0, null]]", "record 0 timestamp"),
        ('[["bob", 2, null, {}, 0, 5]]', "record 0 user_id"),  # raw string ids only at inference
        ("[[1, 2, null, {}, 0, 5], [7, 2, null, {}, 0, 6]]", "record 1 user_id"),
        ("[[1, null, {}, null, null, 1], [1, null, {}, null, null, 2]]", "record 1"),  # two profiles
        ("[[1, 2, {}, {}, 0, 5]]", "record 0"),  # profile record with an item
        ("[[1, 2, null, {}, 0, 5], [4, 1, null,", "line"),  # truncated line
        ('{"user": 1}', "line"),
        ("[]", "line"),
        ("[[" + "9" * 5000 + ", 2, null, {}, 0, 5]]", "record 0 user_id"),  # beyond int() digit limit
        ("[[4, 1, null, {}, 0, 5]]", "user_id"),  # user 4 already has line 1
    ],
)
def test_bad_seq_lines_name_file_line_and_field(tmp_path, line, field):
    directory = _write_tiny(tmp_path / "tiny")
    _with_bad_seq_line(directory, line)
    with pytest.raises(TaacFormatError) as info:
        read_taac(directory, progress=False)
    assert f"seq.jsonl:2: {field}" in str(info.value)
    assert info.value.line == 2 and info.value.field == field


def test_invalid_utf8_is_a_value_error(tmp_path):
    directory = _write_tiny(tmp_path / "tiny")
    (directory / "seq.jsonl").write_bytes(json.dumps(GOOD_LINE).encode() + b"\n[[1, \xff\xfe]]\n")
    with pytest.raises(ValueError, match=r"seq\.jsonl:2: line"):
        read_taac(directory, progress=False)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{\n"1": {"100": 1},\n"2": {"100": 1.5}\n}', "item_feat_dict.json:3: item '2'['100']"),
        ('{\n"1": {"100": 1},\n"x": {}\n}', "item_feat_dict.json:3: item 'x'"),
        ('{\n"1": {"100": 1},\n"9": {}\n}', "item_feat_dict.json:3: item '9'"),
        ('{\n"1": {"100": 1},\n"1": {}\n}', "item_feat_dict.json:3: item '1'"),
        ('{\n"1": {"100": 1},\n"2": [1]\n}', "item_feat_dict.json:3: item '2'"),
        ('{\n"1": {"100": 1},\n"2": {"100": \n', "item_feat_dict.json:4: item '2'"),  # truncated at the end
        ('{\n"1": {"100": 1}\n"2": {}}', "item_feat_dict.json:3: item '1'"),  # missing comma
        ('{"1": {}} trailing', "item_feat_dict.json:1: file"),
        ('{\n"' + "9" * 5000 + '": {}}', "item_feat_dict.json:2: item '999"),  # beyond int() digit limit
        ('{\n"1": {"100": ' + "9" * 5000 + "}}", "item_feat_dict.json:2: item '1'['100']: expected"),
        ("[1, 2]", "item_feat_dict.json:1: file"),
    ],
)
def test_bad_item_feature_file(tmp_path, text, where):
    directory = _write_tiny(tmp_path / "tiny")
    (directory / "item_feat_dict.json").write_text(text)
    with pytest.raises(TaacFormatError) as info:
        read_taac(directory, progress=False)
    assert where in str(info.value)


@pytest.mark.parametrize(
    ("line", "where"),
    [
        ('{"anonymous_cid": 9003, "emb": [1, 2]}', "part-00001.json:2: emb"),  # wrong dim
        ('{"anonymous_cid": 9003, "emb": [1, NaN, 2]}', "part-00001.json:2: emb"),
        ('{"anonymous_cid": 9003, "emb": [1, Infinity, 2]}', "part-00001.json:2: emb"),
        ('{"anonymous_cid": 9003, "emb": [1, 1e39, 2]}', "part-00001.json:2: emb"),  # overflows float32
        ('{"anonymous_cid": 9003, "emb": [1, "2", 3]}', "part-00001.json:2: emb"),
        ('{"anonymous_cid": 9003, "emb": [[1], [2], [3]]}', "part-00001.json:2: emb"),
        ('{"anonymous_cid": 9003, "emb": [1, [2], 3]}', "part-00001.json:2: emb"),
        ('{"anonymous_cid": [9003], "emb": [1, 2, 3]}', "part-00001.json:2: anonymous_cid"),
        ('{"cid": 9003, "emb": [1, 2, 3]}', "part-00001.json:2: line"),
        ('{"anonymous_cid": 9003, "emb": [1, 2', "part-00001.json:2: line"),
    ],
)
def test_bad_vector_parts(tmp_path, line, where):
    directory = _add_vectors(_write_tiny(tmp_path / "tiny"))
    part = directory / "creative_emb" / "emb_83_3" / "part-00001.json"
    part.write_text(part.read_text() + line + "\n")
    with pytest.raises(TaacFormatError) as info:
        read_taac(directory, progress=False)
    assert where in str(info.value)


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({9001: [1.0, 2.0, 3.0]}, "expected 4 values"),
        ({9001: [1.0, float("nan"), 3.0, 4.0]}, "NaN"),
        ({9001: [1.0, float("inf"), 3.0, 4.0]}, "NaN or infinite"),
        ({9001: "1,2,3,4"}, "expected a list of 4 numbers"),
        ({1.5: [1, 2, 3, 4]}, "creative_id must be"),
        ([[1, 2, 3, 4]], "expected a pickled dict"),
    ],
)
def test_bad_vector_pickle(tmp_path, table, match):
    directory = _add_vectors(_write_tiny(tmp_path / "tiny"))
    path = directory / "creative_emb" / "emb_81_4.pkl"
    path.write_bytes(pickle.dumps(table))
    with pytest.raises(TaacFormatError, match=match) as info:
        read_taac(directory, progress=False)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "indexer",
    [
        [1, 2],
        {"u": {}},
        {"i": {"9001": 0}},
        {"i": {9001: 1, "9001": 2}},
        {"i": {9001: 1, 9002: 1}},
        {"i": {1.5: 1}},
    ],
    ids=["not-dict", "no-i", "reid-0", "duplicate-cid", "duplicate-reid", "float-cid"],
)
def test_bad_indexer(tmp_path, indexer):
    directory = _write_tiny(tmp_path / "tiny")
    (directory / "indexer.pkl").write_bytes(pickle.dumps(indexer))
    with pytest.raises(TaacFormatError, match="indexer.pkl"):
        read_taac(directory, progress=False)


def test_malicious_indexer_is_refused_and_runs_nothing(tmp_path):
    directory = _write_tiny(tmp_path / "tiny")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (directory / "indexer.pkl").write_bytes(pickle.dumps({"u": {}, "i": {9001: 1}, "f": {}, "x": Evil()}))
    with pytest.raises(UnsafePickleError, match="indexer.pkl"):
        read_taac(directory, progress=False)
    assert not marker.exists()


def test_missing_required_file(tmp_path):
    directory = _write_tiny(tmp_path / "tiny")
    (directory / "item_feat_dict.json").unlink()
    with pytest.raises(FileNotFoundError, match="item_feat_dict.json"):
        read_taac(directory, progress=False)
    with pytest.raises(FileNotFoundError):
        read_taac(tmp_path / "nowhere", progress=False)


def test_bad_predict_files(tmp_path, synthetic):
    _, data = synthetic
    directory = tmp_path / "eval"
    directory.mkdir()
    (directory / "predict_seq.jsonl").write_text(
        '[["u", 5, null, {}, 0, 1]]\n[["u", 5, null, {"100": 1.5}, 0, 1]]\n'
    )
    (directory / "predict_set.jsonl").write_text('{"creative_id": 1, "retrieval_id": 1}\n')
    with pytest.raises(TaacFormatError, match=r"predict_seq\.jsonl:2: record 0 item_feature\['100'\]"):
        read_taac_predict(directory, data, progress=False)
    (directory / "predict_seq.jsonl").write_text('[["u", 5, null, {}, 0, 1]]\n')
    (directory / "predict_set.jsonl").write_text(
        '{"creative_id": 1, "retrieval_id": 1}\n{"retrieval_id": 2}\n'
    )
    with pytest.raises(TaacFormatError, match=r"predict_set\.jsonl:2: line"):
        read_taac_predict(directory, data, progress=False)


def test_generator_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_items"):
        write_taac_synthetic(tmp_path, num_users=5, num_items=1)
    with pytest.raises(ValueError, match="mean_length"):
        write_taac_synthetic(tmp_path, num_users=5, num_items=10, mean_length=200)
    with pytest.raises(ValueError, match="click_rate"):
        write_taac_synthetic(tmp_path, num_users=5, num_items=10, click_rate=1.5)


# ----------------------------------------------------------------------------------------------------
# Mutated lines: only ValueError may escape
# ----------------------------------------------------------------------------------------------------

_SEED_LINES = [
    json.dumps(
        [
            [1, 2, None, {"100": 2, "112": [1, 3]}, 0, 100],
            [1, None, {"103": 5, "106": [4]}, None, None, 99],
            [1, 3, None, {}, 1, 105],
        ]
    ),
    json.dumps([[2, None, {}, None, None, None], [2, 1, None, None, 2, 7]]),
]
_JSON_CHARS = '[]{},:"0123456789-+.eEnulltruefalseNaInfity \\x'
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=5)
    | st.integers(min_value=2**62),
    lambda children: (
        st.lists(children, max_size=7) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def _mutated_line(draw) -> bytes:
    line = draw(st.sampled_from(_SEED_LINES))
    kind = draw(st.sampled_from(["text", "bytes", "structure"]))
    if kind == "structure":
        records = json.loads(line)
        k = draw(st.integers(0, len(records) - 1))
        action = draw(st.sampled_from(["field", "record", "extra", "drop"]))
        if action == "field":
            records[k][draw(st.integers(0, 5))] = draw(_json_values)
        elif action == "record":
            records[k] = draw(_json_values)
        elif action == "extra":
            records[k].append(draw(_json_values))
        else:
            records[k].pop(draw(st.integers(0, 5)))
        return json.dumps(records).encode()
    data = line.encode()
    start = draw(st.integers(0, len(data)))
    stop = draw(st.integers(start, min(len(data), start + 8)))
    if kind == "text":
        insert = draw(st.text(alphabet=_JSON_CHARS, max_size=6)).encode()
    else:
        insert = draw(st.binary(max_size=4))
    return data[:start] + insert + data[stop:]


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return _write_tiny(tmp_path_factory.mktemp("fuzz") / "tiny")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(line=_mutated_line())
def test_mutated_seq_lines_raise_only_value_error(fuzz_dir, line):
    # The fixed first line's user (4) differs from the seed lines' users, so mutants are not rejected
    # merely as a repeated user.
    (fuzz_dir / "seq.jsonl").write_bytes(json.dumps(GOOD_LINE).encode() + b"\n" + line + b"\n")
    try:
        data = read_taac(fuzz_dir, progress=False)
    except ValueError as exc:
        assert "seq.jsonl" in str(exc)
    else:
        assert data.interactions.num_users in (1, 2)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(line=_mutated_line())
def test_mutated_predict_lines_raise_only_value_error(fuzz_dir, synthetic, line):
    _, data = synthetic
    directory = fuzz_dir.parent / "eval"
    directory.mkdir(exist_ok=True)
    (directory / "predict_set.jsonl").write_text('{"creative_id": 1, "retrieval_id": 1}\n')
    (directory / "predict_seq.jsonl").write_bytes(line + b"\n")
    try:
        pred = read_taac_predict(directory, data, progress=False)
    except ValueError as exc:
        assert "predict_seq.jsonl" in str(exc)
    else:
        assert pred.num_users <= 1


def test_next_probabilities_are_the_distribution_step_samples_from():
    # The oracle of benchmarks/taac_oracle.py: if the process changes, this says so.
    from seqrec.data.taac.simulate import synth_world

    rng = np.random.default_rng(3)
    world = synth_world(rng, 300, 10)
    previous = 17
    cluster = int(world.cluster[previous])
    n = 200_000
    drawn, _ = world.step(rng, np.full(n, previous), np.full(n, cluster))
    empirical = np.bincount(drawn, minlength=301) / n
    probs = world.next_probabilities(previous, cluster)
    assert probs[0] == 0 and abs(probs.sum() - 1) < 1e-9
    assert probs[world.successor[previous]] > 0.46  # the successor: 0.92 * 0.5, plus its popularity share
    assert 0.5 * np.abs(empirical - probs).sum() < 0.03  # total variation: a dropped drift term alone is 0.07
    assert np.abs(empirical - probs).max() < 0.005
    flat = world.next_probabilities(previous, cluster, np.full(300, 1 / 300))
    same = np.flatnonzero(world.cluster[1:301] == cluster) + 1
    others = same[same != world.successor[previous]]
    assert np.allclose(flat[others], flat[others[0]])  # uniform popularity: one value per cluster member


def test_synth_catalogue_rebuilds_the_written_creative_ids(synthetic):
    from seqrec.data.taac.synthetic import synth_catalogue

    dirs, data = synthetic
    world, creative_ids = synth_catalogue(np.random.default_rng(7), 200, 10)
    assert {int(creative_ids[i]): i for i in range(1, 201)} == data.item_index
    assert len(world.cluster) == 211
