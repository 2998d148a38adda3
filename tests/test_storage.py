"""The compact interactions directory (seqrec.data.storage) and the TencentGR-like generator (seqrec.data.scale)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seqrec.cli import main
from seqrec.config import ConfigError, DataConfig
from seqrec.data.dataset import Interactions
from seqrec.data.readers import DataError, read_interactions
from seqrec.data.scale import generate_tencentgr_like, power_law_ranks
from seqrec.data.storage import (
    StorageError,
    is_interactions_dir,
    load_interactions,
    load_item_features,
    read_meta,
    save_interactions,
)
from seqrec.data.synthetic import generate_synthetic


def _inter(user_ids, item_ids, with_extras=True) -> Interactions:
    offsets = np.array([0, 3, 3, 5])
    items = np.array([1, 2, 1, 3, 2])
    return Interactions(
        offsets=offsets, items=items, user_ids=user_ids, item_ids=item_ids,
        timestamps=np.array([5, 6, 7, 1, 2]) if with_extras else None,
        actions=np.array([0, 1, 0, 0, 1], dtype=np.int8) if with_extras else None,
    )


def _assert_same(a: Interactions, b: Interactions) -> None:
    assert np.array_equal(a.offsets, b.offsets) and np.array_equal(a.items, b.items)
    assert a.user_ids.tolist() == b.user_ids.tolist() and a.item_ids.tolist() == b.item_ids.tolist()
    assert a.user_ids.dtype == b.user_ids.dtype and a.item_ids.dtype == b.item_ids.dtype
    for name in ("timestamps", "actions"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None)
        if x is not None:
            assert np.array_equal(x, y)


@pytest.mark.parametrize("ids", [
    (np.array([10, 20, 30]), np.array([0, 7, 8, 9])),  # numeric
    (np.array(["u1", "u2", "ü3"], dtype=object), np.array(["", "a", "b", "c"], dtype=object)),  # strings
    (np.array([1, "x", 2.5], dtype=object), np.array(["", 5, "b", None], dtype=object)),  # mixed -> JSON lines
])
def test_round_trip_without_pickle(tmp_path, ids):
    inter = _inter(*ids)
    out = save_interactions(inter, tmp_path / "d")
    assert is_interactions_dir(out)
    for mmap in (True, False):
        loaded = load_interactions(out, mmap=mmap)
        _assert_same(inter, loaded)
    meta = read_meta(out)
    assert (meta["num_users"], meta["num_items"], meta["num_events"]) == (3, 3, 5)
    for f in out.iterdir():  # every array loads with pickle disabled
        if f.suffix == ".npy":
            np.load(f, allow_pickle=False)


def test_big_arrays_are_read_only_memory_maps_and_items_int32(tmp_path):
    inter = generate_synthetic(50, 30, seed=1)
    out = save_interactions(inter, tmp_path / "d")
    loaded = load_interactions(out)
    assert loaded.items.dtype == np.int32 and read_meta(out)["items_dtype"] == "int32"
    assert loaded.items.base is not None and not loaded.items.flags.writeable
    with pytest.raises(ValueError):
        loaded.items[0] = 1
    _assert_same(Interactions(inter.offsets, inter.items.astype(np.int32), inter.user_ids, inter.item_ids), loaded)


def test_save_is_atomic_and_refuses_to_clobber(tmp_path):
    inter = _inter(np.array([1, 2, 3]), np.array([0, 1, 2, 3]))
    save_interactions(inter, tmp_path / "d")
    with pytest.raises(StorageError, match="already exists"):
        save_interactions(inter, tmp_path / "d")
    bad = _inter(np.array([1, 2, 3]), np.array([0, 1, 2, 3]))
    bad.item_ids = np.array([0, 1, 2, 3, 4])  # claims 4 items; the feature column below has the wrong length
    with pytest.raises(StorageError):
        save_interactions(bad, tmp_path / "e", item_features={"100": np.zeros(3, dtype=np.int64)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no partial directory, no temporary left
    save_interactions(inter, tmp_path / "d", overwrite=True, item_features={"7": np.arange(4)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert load_item_features(tmp_path / "d")["7"].tolist() == [0, 1, 2, 3]


def test_invalid_interactions_and_directories_are_refused(tmp_path):
    inter = _inter(np.array([1, 2, 3]), np.array([0, 1, 2]))  # item 3 is outside 1..2
    with pytest.raises(StorageError, match="items must lie"):
        save_interactions(inter, tmp_path / "d")
    with pytest.raises(StorageError, match="meta.json"):
        load_interactions(tmp_path)
    out = save_interactions(_inter(np.array([1, 2, 3]), np.array([0, 1, 2, 3])), tmp_path / "ok")
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(StorageError, match="version 99"):
        load_interactions(out)
    (out / "meta.json").write_text(json.dumps({**meta, "num_events": 4}))
    with pytest.raises(StorageError, match="items.npy"):
        load_interactions(out)


def test_read_interactions_accepts_a_directory(tmp_path):
    inter = generate_synthetic(40, 20, seed=2)
    out = save_interactions(inter, tmp_path / "d")
    for fmt in ("auto", "seqrec"):
        loaded = read_interactions(DataConfig(path=str(out), format=fmt))
        assert np.array_equal(loaded.items, inter.items) and loaded.user_ids.tolist() == inter.user_ids.tolist()
    with pytest.raises(DataError, match="not a seqrec interactions directory"):
        read_interactions(DataConfig(path=str(tmp_path), format="seqrec"))
    with pytest.raises(DataError, match="kcore"):
        read_interactions(DataConfig(path=str(out), kcore=2))
    with pytest.raises(ConfigError):
        DataConfig(format="npz")


def test_power_law_ranks_are_skewed_and_in_range():
    u = np.random.default_rng(0).random(200_000)
    for exponent in (0.0, 0.8, 1.0, 1.3):
        r = power_law_ranks(u, 1000, exponent, 10.0)
        assert r.min() >= 0 and r.max() <= 999
        if exponent > 0:
            assert (r < 100).mean() > 0.2
    r = power_law_ranks(u[:6], np.array([1, 2, 3, 4, 5, 6]), 1.0, 5.0)
    assert (r < np.arange(1, 7)).all()


def test_generator_shape_determinism_and_signal(tmp_path):
    kwargs = dict(num_users=3000, num_items=20_000, mean_events=40, max_events=50, seed=3, chunk_users=1000,
                  progress=False)
    a = generate_tencentgr_like(tmp_path / "a", **kwargs)
    b = generate_tencentgr_like(tmp_path / "b", **kwargs)
    x, y = load_interactions(a), load_interactions(b)
    assert np.array_equal(x.items, y.items) and np.array_equal(x.timestamps, y.timestamps)
    assert np.array_equal(x.actions, y.actions)
    assert x.num_users == 3000 and x.num_items == 20_000 and x.items.dtype == np.int32
    lengths = x.lengths
    assert lengths.min() >= 3 and lengths.max() <= 50 and abs(lengths.mean() - 40) < 1.5
    assert x.items.min() >= 1 and x.items.max() <= 20_000
    assert 0.08 < x.actions.mean() < 0.12 and set(np.unique(x.actions).tolist()) <= {0, 1}
    user = np.repeat(np.arange(x.num_users), lengths)
    same_user = user[1:] == user[:-1]
    assert (np.diff(x.timestamps)[same_user] > 0).all()
    counts = np.sort(np.bincount(x.items, minlength=x.num_items + 1)[1:])[::-1]
    assert counts[: len(counts) // 100].sum() > 0.1 * counts.sum()  # top 1% of items: > 10% of events
    # sequential signal: "the next item most often seen after this one" (learnt on the first half of the
    # users) predicts the second half's next items far better than the most popular item does
    prev, nxt = x.items[:-1][same_user].astype(np.int64), x.items[1:][same_user].astype(np.int64)
    half = user[1:][same_user] < x.num_users // 2
    stride = x.num_items + 1
    pairs, freq = np.unique(prev[half] * stride + nxt[half], return_counts=True)
    by_count = np.lexsort((-freq, pairs // stride))  # per previous item, most frequent next first
    first = np.ones(len(by_count), dtype=bool)
    first[1:] = (pairs // stride)[by_count][1:] != (pairs // stride)[by_count][:-1]
    best_next = np.zeros(stride, dtype=np.int64)
    best_next[(pairs // stride)[by_count][first]] = (pairs % stride)[by_count][first]
    transition_hit = (best_next[prev[~half]] == nxt[~half]).mean()
    popular_hit = (nxt[~half] == np.bincount(nxt[half]).argmax()).mean()
    assert transition_hit > 0.1 and transition_hit > 5 * popular_hit
    features = load_item_features(a)
    assert set(features) == {"100", "101", "102", "112"}
    for column in features.values():
        assert column.shape == (20_001,) and column[0] == 0 and column[1:].max() > 0
    assert read_meta(a)["extra"]["seed"] == 3
    c = generate_tencentgr_like(tmp_path / "c", **{**kwargs, "seed": 4})
    assert not np.array_equal(load_interactions(c).items[:1000], x.items[:1000])


def test_cli_generate(tmp_path, capsys):
    out = tmp_path / "g"
    argv = ["generate", "--out", str(out), "--users", "200", "--items", "1000", "--seed", "1", "--quiet"]
    assert main(argv) == 0
    assert "TencentGR-like" in capsys.readouterr().out
    inter = read_interactions(DataConfig(path=str(out)))
    assert inter.num_users == 200 and inter.num_items == 1000
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
