"""Retrieval index: exactness and tie order, ANN recall, exclusions, candidate subsets, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import seqrec.retrieval.search as search_module
from seqrec.retrieval.fbin import read_fbin, read_ids_u64, write_fbin, write_ids_u64
from seqrec.retrieval.index import IndexConfig, build_index, load_index, save_index
from seqrec.retrieval.search import search

K = 10


def clustered(n: int, d: int, n_clusters: int, seed: int) -> np.ndarray:
    """L2-normalised points around random unit centres, spread wide enough that clusters overlap."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, n_clusters, size=n)] + rng.standard_normal((n, d)) * (0.6 / np.sqrt(d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def reference(x: np.ndarray, q: np.ndarray, k: int, exclude=None, allowed=None) -> np.ndarray:
    """Brute-force top-k rows in (score desc, row asc) order, padded with -1."""
    scores = torch.from_numpy(q) @ torch.from_numpy(x).T
    eligible = torch.ones_like(scores, dtype=torch.bool)
    if allowed is not None:
        eligible[:] = False
        eligible[:, torch.as_tensor(allowed, dtype=torch.long)] = True
    for row, rows in enumerate(exclude or []):
        eligible[row, torch.as_tensor(rows, dtype=torch.long)] = False
    # A stable sort of the negated scores keeps lower rows first among equal scores.
    order = torch.sort(torch.where(eligible, -scores, torch.inf), dim=1, stable=True).indices[:, :k]
    ids = torch.where(torch.gather(eligible, 1, order), order, -1)
    return ids.numpy()


@pytest.fixture(scope="module")
def catalogue() -> tuple[np.ndarray, np.ndarray]:
    return clustered(5_000, 32, 50, seed=0), clustered(200, 32, 50, seed=1)


@pytest.fixture(scope="module")
def indexes(catalogue):
    x, _ = catalogue
    return {kind: build_index(x, IndexConfig(kind=kind), progress=False) for kind in ("exact", "hnsw", "ivf")}


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth, strict=True)]))


def test_exact_equals_torch_topk_including_ties():
    # Small integer vectors make many dot products tie exactly, whatever the summation order.
    rng = np.random.default_rng(0)
    x = rng.integers(-1, 2, size=(3_000, 8)).astype(np.float32)
    q = rng.integers(-1, 2, size=(64, 8)).astype(np.float32)
    scores, ids = search(build_index(x, IndexConfig(), progress=False), q, K)

    torch_scores = torch.from_numpy(q) @ torch.from_numpy(x).T
    expected_scores = torch.topk(torch_scores, K, dim=1).values.numpy()
    np.testing.assert_array_equal(scores, expected_scores)
    np.testing.assert_array_equal(ids, reference(x, q, K))
    assert scores.dtype == np.float32 and ids.dtype == np.int64


def test_exact_ties_do_not_depend_on_batch_size():
    x = np.zeros((500, 4), dtype=np.float32)  # every row ties with every other
    q = np.ones((9, 4), dtype=np.float32)
    index = build_index(x, IndexConfig(), progress=False)
    for batch_size in (1, 4, 4096):
        _, ids = search(index, q, K, batch_size=batch_size)
        np.testing.assert_array_equal(ids, np.tile(np.arange(K), (9, 1)))


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_ann_recall_at_10_with_default_params(catalogue, indexes, kind):
    x, q = catalogue
    _, truth = search(indexes["exact"], q, K)
    _, found = search(indexes[kind], q, K)
    assert recall_at_k(found, truth) >= 0.95


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_exclude_is_respected_and_k_results_returned(catalogue, indexes, kind):
    x, q = catalogue
    rng = np.random.default_rng(2)
    _, top = search(indexes["exact"], q, 400)
    # Exclude each query's best matches (the worst case for over-fetching) plus random rows.
    exclude = [
        np.concatenate([top[i, : rng.integers(0, 400)], rng.integers(0, len(x), 50)]) for i in range(len(q))
    ]
    _, ids = search(indexes[kind], q, K, exclude=exclude, exclude_rows_global=[0])
    assert (ids >= 0).all()
    for row, excluded in zip(ids, exclude, strict=True):
        assert not np.isin(row, excluded).any()
        assert 0 not in row
        assert len(set(row)) == K
    if kind == "exact":
        np.testing.assert_array_equal(ids, reference(x, q, K, exclude=[np.append(e, 0) for e in exclude]))


def test_exclude_falls_back_to_exact_when_ann_runs_short(catalogue):
    x, q = catalogue
    # With one probed list, excluding every row that list can return leaves the IVF search empty.
    index = build_index(x, IndexConfig(kind="ivf", ivf_nprobe=1), progress=False)
    _, top = search(index, q[:20], len(x))
    exclude = [row[row >= 0] for row in top]
    _, ids = search(index, q[:20], K, exclude=exclude)
    np.testing.assert_array_equal(ids, reference(x, q[:20], K, exclude=exclude))


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
@pytest.mark.parametrize("n_allowed", [7, 300, 3_000])
def test_allowed_restricts_results(catalogue, indexes, kind, n_allowed, monkeypatch):
    x, q = catalogue
    # Force the ID-selector path for the largest subset (the sub-index path covers the others).
    monkeypatch.setattr(search_module, "_SUBINDEX_MAX_ROWS", 1_000)
    allowed = np.random.default_rng(3).choice(len(x), size=n_allowed, replace=False)
    scores, ids = search(indexes[kind], q, K, allowed=allowed)
    valid = ids >= 0
    assert np.isin(ids[valid], allowed).all()
    assert (valid.sum(axis=1) == min(K, n_allowed)).all()
    assert np.isneginf(scores[~valid]).all()
    if kind == "exact" or n_allowed <= 1_000:  # these paths are exact
        np.testing.assert_array_equal(ids, reference(x, q, K, allowed=allowed))


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_many_global_exclusions(catalogue, indexes, kind):
    x, q = catalogue
    # More than 256 global exclusions become an allowed set instead of an over-fetch.
    _, ids = search(indexes[kind], q, K, exclude_rows_global=np.arange(4_000))
    assert (ids >= 4_000).all()
    np.testing.assert_array_equal(ids, reference(x, q, K, allowed=np.arange(4_000, len(x))))


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    k=st.integers(1, 40),
    n_excluded=st.integers(0, 60),
    use_allowed=st.booleans(),
)
def test_exact_search_matches_reference(seed, k, n_excluded, use_allowed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=(150, 6)).astype(np.float32)
    q = rng.integers(-2, 3, size=(5, 6)).astype(np.float32)
    exclude = [rng.choice(150, size=n_excluded, replace=False) for _ in range(5)]
    allowed = rng.choice(150, size=rng.integers(0, 150), replace=False) if use_allowed else None
    _, ids = search(build_index(x, IndexConfig(), progress=False), q, k, exclude=exclude, allowed=allowed)
    np.testing.assert_array_equal(ids, reference(x, q, k, exclude=exclude, allowed=allowed))


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_save_load_round_trip(catalogue, indexes, kind, tmp_path):
    _, q = catalogue
    path = tmp_path / f"{kind}.faiss"
    save_index(indexes[kind], path)
    loaded = load_index(path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    assert loaded.ntotal == indexes[kind].ntotal
    if kind == "hnsw":
        assert loaded.hnsw.efSearch == indexes[kind].hnsw.efSearch == 128
    if kind == "ivf":
        assert loaded.nprobe == indexes[kind].nprobe == 16
    for before, after in zip(search(indexes[kind], q, K), search(loaded, q, K), strict=True):
        np.testing.assert_array_equal(before, after)


def test_load_index_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_index(tmp_path / "missing.faiss")
    corrupt = tmp_path / "corrupt.faiss"
    corrupt.write_bytes(b"not a faiss index")
    with pytest.raises(ValueError, match="corrupt.faiss"):
        load_index(corrupt)


def test_fbin_and_ids_round_trip(tmp_path):
    vectors = np.random.default_rng(4).standard_normal((17, 5)).astype(np.float32)
    write_fbin(tmp_path / "v.fbin", vectors)
    assert (tmp_path / "v.fbin").stat().st_size == 8 + 17 * 5 * 4
    np.testing.assert_array_equal(read_fbin(tmp_path / "v.fbin"), vectors)
    np.testing.assert_array_equal(read_fbin(tmp_path / "v.fbin", mmap=True), vectors)

    ids = np.array([0, 1, 2**63 + 5, 42], dtype=np.uint64)
    write_ids_u64(tmp_path / "ids.u64", ids)
    np.testing.assert_array_equal(read_ids_u64(tmp_path / "ids.u64", count=4), ids)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.u64", "v.fbin"]


def test_writers_reject_missing_directory(tmp_path, catalogue, indexes):
    with pytest.raises(ValueError, match="does not exist"):
        write_fbin(tmp_path / "missing" / "v.fbin", np.ones((2, 2)))
    with pytest.raises(ValueError, match="does not exist"):
        save_index(indexes["exact"], tmp_path / "missing" / "i.faiss")


def test_fbin_truncated_and_corrupt_files_raise(tmp_path):
    path = tmp_path / "v.fbin"
    write_fbin(path, np.ones((10, 4), dtype=np.float32))
    data = path.read_bytes()
    path.write_bytes(data[:-3])
    with pytest.raises(ValueError, match=r"v\.fbin.*expected 168 bytes, got 165"):
        read_fbin(path)
    path.write_bytes(data[:5])
    with pytest.raises(ValueError, match="truncated"):
        read_fbin(path)

    ids_path = tmp_path / "ids.u64"
    write_ids_u64(ids_path, np.arange(6))
    ids_path.write_bytes(ids_path.read_bytes()[:-4])
    with pytest.raises(ValueError, match=r"ids\.u64.*not a multiple of 8"):
        read_ids_u64(ids_path)
    ids_path.write_bytes(ids_path.read_bytes()[:-4])
    with pytest.raises(ValueError, match="expected 6 uint64 ids = 48 bytes, got 40"):
        read_ids_u64(ids_path, count=6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "annoy"}, "kind"),
        ({"hnsw_m": 1}, "hnsw_m"),
        ({"hnsw_m": True}, "hnsw_m"),
        ({"hnsw_ef_construction": 0}, "hnsw_ef_construction"),
        ({"hnsw_ef_search": 2.5}, "hnsw_ef_search"),
        ({"ivf_nlist": 0}, "ivf_nlist"),
        ({"ivf_nprobe": -1}, "ivf_nprobe"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IndexConfig(**kwargs)


def test_bad_inputs_raise_value_error(indexes, catalogue):
    x, q = catalogue
    with pytest.raises(ValueError, match="ivf_nlist=100"):
        build_index(x[:50], IndexConfig(kind="ivf", ivf_nlist=100), progress=False)
    with pytest.raises(ValueError, match="row 3"):
        build_index(np.where(np.arange(10)[:, None] == 3, np.nan, 1.0), IndexConfig(), progress=False)
    with pytest.raises(ValueError, match="dimension 31"):
        search(indexes["exact"], q[:, :31], K)
    with pytest.raises(ValueError, match="k must be"):
        search(indexes["exact"], q, 0)
    with pytest.raises(ValueError, match="one array per query"):
        search(indexes["exact"], q, K, exclude=[[1]])
    with pytest.raises(ValueError, match=r"exclude\[2\] holds row 5000"):
        search(indexes["exact"], q[:3], K, exclude=[[], [1], [5_000]])
    with pytest.raises(ValueError, match="allowed holds row -1"):
        search(indexes["exact"], q, K, allowed=[-1, 2])
