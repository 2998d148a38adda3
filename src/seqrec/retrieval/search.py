"""Top-k search over a faiss index with what a recommender needs on top of a plain faiss search.

Row numbers are those of ``index.py`` (row 0 the padding row; pass ``exclude_rows_global=[0]`` to
never return it). :func:`search` adds:

* per-query exclusions (items the user has already seen): it over-fetches ``k + len(exclude[q])``
  results, filters, and falls back to an exact search for any query an approximate index left short;
* a candidate subset (``allowed``): an exact sub-index over the candidates when the subset is small or
  the index is exact (faiss's ID selectors switch flat search off its BLAS path, which is ~10x slower),
  otherwise the approximate index restricted by a faiss ``IDSelectorBatch``;
* deterministic ties: equal scores are ordered by lower row first, and for exact search the rows that
  tie at the k-th score are completed with a range search, so the result is exactly the first k rows
  of the (score descending, row ascending) order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from seqrec.retrieval.index import as_matrix

# Up to this many candidate rows, brute force over the candidates beats filtering a graph/IVF search
# (and is exact); above it, the approximate index with an ID selector is used.
_SUBINDEX_MAX_ROWS = 65_536
# Up to this many global exclusions are handled by over-fetching; more become an allowed-set
# restriction so that every query does not over-fetch thousands of rows.
_GLOBAL_OVERFETCH_MAX = 256
# Relative slack below the k-th score for the tie-completion range search: BLAS and scalar faiss code
# paths may round the same dot product differently by a few ulps.
_TIE_RADIUS_SLACK = 1e-4


@dataclass(frozen=True)
class _Searcher:
    """One way of answering top-k queries, returning global row numbers.

    Attributes:
        index: The faiss index to call.
        params: faiss SearchParameters (ID selector, efSearch/nprobe) or None.
        rows: Local position -> global row for a sub-index; None when positions are already rows.
        size: Number of rows this searcher can return.
        exact: Whether results are the true top-k (enables tie completion).
        keepalive: faiss objects ``params`` points to, which Python must not free early.
    """

    index: faiss.Index
    params: Any
    rows: np.ndarray | None
    size: int
    exact: bool
    keepalive: tuple = field(default=())

    def knn(self, q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self.index.search(q, min(kk, self.size), params=self.params)
        return scores, self._to_rows(ids)

    def range(self, q: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
        _, scores, ids = self.index.range_search(q, float(radius), params=self.params)
        return scores, self._to_rows(ids.astype(np.int64, copy=False))

    def _to_rows(self, ids: np.ndarray) -> np.ndarray:
        if self.rows is None:
            return ids
        return np.where(ids >= 0, self.rows[np.maximum(ids, 0)], -1)


@dataclass(frozen=True)
class _Exclusions:
    """Per-query excluded rows in CSR form plus rows excluded for every query."""

    offsets: np.ndarray  # (Q + 1,) int64
    rows: np.ndarray  # (sum of lengths,) int64
    global_rows: np.ndarray  # sorted unique int64

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def mask(self, qpos: np.ndarray, ids: np.ndarray, stride: int) -> np.ndarray:
        """True where ``ids[j, :]`` (results of query ``qpos[j]``) is excluded; -1 padding is not."""
        excluded = np.zeros(ids.shape, dtype=bool)
        if self.global_rows.size:
            excluded |= np.isin(ids, self.global_rows)
        lengths = self.counts[qpos]
        total = int(lengths.sum())
        if total:
            # Encode (query-in-batch, row) pairs as one int64 key so one np.isin filters the batch.
            seg = np.repeat(np.arange(len(qpos), dtype=np.int64), lengths)
            within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            rows = self.rows[np.repeat(self.offsets[qpos], lengths) + within]
            keys = seg * stride + rows
            result_keys = np.arange(len(qpos), dtype=np.int64)[:, None] * stride + ids
            excluded |= np.isin(result_keys, keys) & (ids >= 0)
        return excluded


def search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    *,
    exclude: list[np.ndarray] | None = None,
    exclude_rows_global: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
    batch_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows by inner product for every query, with exclusions and a candidate subset.

    Results are ordered by score descending, ties by lower row first. For an exact index that order is
    exact over all eligible rows; for HNSW/IVF it is exact over the candidates the index returned.

    How the options are served:

    * ``exclude``: over-fetch ``k + len(exclude[q]) + len(exclude_rows_global)`` (queries are grouped
      by that size so one long history does not inflate its whole batch), drop excluded rows, and
      re-run any query still short of k on an exact searcher.
    * ``allowed``: with an exact index, or at most 65,536 candidates, a temporary exact IndexFlatIP over
      the candidate vectors; otherwise the HNSW/IVF index itself with a faiss ``IDSelectorBatch``
      (exact fallback: the flat storage / all IVF lists under the same selector). An IVF index gets a
      direct map (``make_direct_map``, 8 bytes per row) the first time candidate vectors are read.
    * ``exclude_rows_global``: rows never returned to any query, e.g. ``[0]`` for the padding row;
      more than 256 of them are folded into ``allowed`` instead of over-fetched.

    Args:
        index: Index from :func:`build_index` or :func:`load_index` (IndexFlatIP, IndexHNSWFlat or
            IndexIVFFlat, inner product).
        queries: (Q, D) real-valued finite matrix; converted to float32.
        k: Results per query, >= 1.
        exclude: None, or a sequence of Q 1-D integer arrays; ``exclude[q]`` are rows query ``q`` must
            not get (e.g. its seen items). Duplicates are fine.
        exclude_rows_global: Rows no query may get.
        allowed: Rows results are restricted to (duplicates are fine); None allows every row.
        batch_size: Queries per faiss call, >= 1; bounds the memory of over-fetched results.

    Returns:
        ``(scores, ids)``: (Q, k) float32 and (Q, k) int64. A query with fewer than k eligible rows is
        padded with score ``-inf`` and id ``-1``.

    Raises:
        ValueError: On an unsupported or empty index, queries of the wrong shape or with NaN/inf, a
            bad ``k`` or ``batch_size``, ``exclude`` of the wrong length, or any row outside
            ``[0, index.ntotal)``.
    """
    idx, kind = _resolve(index)
    ntotal = int(idx.ntotal)
    if ntotal == 0:
        raise ValueError("index is empty (ntotal == 0); add vectors before searching")
    x = as_matrix(queries, "queries", d=int(idx.d))
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    k = int(k)
    nq = len(x)

    excl = _exclusions(exclude, exclude_rows_global, nq, ntotal)
    allowed_rows = None if allowed is None else _row_set(allowed, "allowed", ntotal)
    if allowed_rows is not None and excl.global_rows.size:
        allowed_rows = np.setdiff1d(allowed_rows, excl.global_rows, assume_unique=True)
        excl = _Exclusions(excl.offsets, excl.rows, np.empty(0, dtype=np.int64))
    elif excl.global_rows.size > _GLOBAL_OVERFETCH_MAX:
        allowed_rows = np.setdiff1d(np.arange(ntotal, dtype=np.int64), excl.global_rows, assume_unique=True)
        excl = _Exclusions(excl.offsets, excl.rows, np.empty(0, dtype=np.int64))

    out_scores = np.full((nq, k), -np.inf, dtype=np.float32)
    out_ids = np.full((nq, k), -1, dtype=np.int64)
    main, exact = _searchers(idx, kind, allowed_rows)
    if nq == 0 or main.size == 0:
        return out_scores, out_ids

    need = k + excl.counts + excl.global_rows.size
    short = _run(main, x, np.arange(nq), need, k, excl, ntotal, batch_size, out_scores, out_ids)
    if short.size and exact is not main:
        _run(exact, x, short, need, k, excl, ntotal, batch_size, out_scores, out_ids)
    return out_scores, out_ids


def _run(
    searcher: _Searcher,
    x: np.ndarray,
    qpos_all: np.ndarray,
    need: np.ndarray,
    k: int,
    excl: _Exclusions,
    ntotal: int,
    batch_size: int,
    out_scores: np.ndarray,
    out_ids: np.ndarray,
) -> np.ndarray:
    """Search ``qpos_all`` with ``searcher`` into the outputs; return the queries left short of k."""
    short: list[np.ndarray] = []
    # Group by the power of two above each query's over-fetch so a few long exclusion lists do not
    # make every query in a batch fetch thousands of rows.
    buckets = np.ceil(np.log2(need[qpos_all])).astype(np.int64)
    for bucket in np.unique(buckets):
        members = qpos_all[buckets == bucket]
        for start in range(0, len(members), batch_size):
            qpos = members[start : start + batch_size]
            # +1 so an exact search can tell whether the tie at the k-th score continues past the fetch.
            kk = int(need[qpos].max()) + 1
            scores, ids = searcher.knn(x[qpos], kk)
            top_s, top_i, n_valid = _filter_top_k(scores, ids, excl.mask(qpos, ids, ntotal), k)
            out_scores[qpos], out_ids[qpos] = top_s, top_i
            if searcher.exact:
                _complete_ties(
                    searcher, x, qpos, scores, ids, top_s, n_valid, k, excl, ntotal, out_scores, out_ids
                )
            else:
                short.append(qpos[n_valid < k])
    return np.concatenate(short) if short else np.empty(0, dtype=np.int64)


def _filter_top_k(
    scores: np.ndarray, ids: np.ndarray, excluded: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop excluded/padding results, order by (score desc, row asc), keep k, pad with (-inf, -1)."""
    valid = (ids >= 0) & ~excluded
    # lexsort's last key is the primary one: valid first, then higher score, then lower row.
    order = np.lexsort((ids, -scores, ~valid), axis=-1)[:, :k]
    top_s = np.take_along_axis(scores, order, axis=1).astype(np.float32, copy=False)
    top_i = np.take_along_axis(ids, order, axis=1).astype(np.int64, copy=False)
    n_valid = valid.sum(axis=1)
    pad = np.arange(top_i.shape[1])[None, :] >= n_valid[:, None]
    top_s[pad], top_i[pad] = -np.inf, -1
    if top_i.shape[1] < k:  # the searcher holds fewer than k rows
        width = k - top_i.shape[1]
        top_s = np.pad(top_s, ((0, 0), (0, width)), constant_values=-np.inf)
        top_i = np.pad(top_i, ((0, 0), (0, width)), constant_values=-1)
    return top_s, top_i, n_valid


def _complete_ties(
    searcher: _Searcher,
    x: np.ndarray,
    qpos: np.ndarray,
    scores: np.ndarray,
    ids: np.ndarray,
    top_s: np.ndarray,
    n_valid: np.ndarray,
    k: int,
    excl: _Exclusions,
    ntotal: int,
    out_scores: np.ndarray,
    out_ids: np.ndarray,
) -> None:
    """Redo, by range search, exact queries whose k-th score ties with rows faiss may have cut off.

    faiss keeps an arbitrary subset of rows tied at its fetch boundary. If the lowest fetched score is
    still >= the k-th kept score and the fetch was not the whole searcher, some rows tied at the k-th
    score may be missing, so the lower-row-first rule could be violated.
    """
    if scores.shape[1] >= searcher.size:
        return  # every row was fetched
    kth = top_s[:, k - 1]
    open_tie = (n_valid >= k) & (ids[:, -1] >= 0) & (scores[:, -1] >= kth)
    for j in np.flatnonzero(open_tie):
        q = int(qpos[j])
        radius = float(kth[j]) - _TIE_RADIUS_SLACK * max(1.0, abs(float(kth[j])))
        r_scores, r_ids = searcher.range(x[q : q + 1], radius)
        excluded = excl.mask(np.array([q]), r_ids[None, :], ntotal)
        s, i, _ = _filter_top_k(r_scores[None, :], r_ids[None, :], excluded, k)
        out_scores[q], out_ids[q] = s[0], i[0]


def _resolve(index: faiss.Index) -> tuple[faiss.Index, str]:
    """Return the concrete faiss object and its kind, or raise for an index this module cannot serve."""
    if not isinstance(index, faiss.Index):
        raise ValueError(f"index must be a faiss.Index, got {type(index).__name__}")
    idx = faiss.downcast_index(index) if type(index) is faiss.Index else index
    if isinstance(idx, faiss.IndexHNSWFlat):
        kind = "hnsw"
    elif isinstance(idx, faiss.IndexIVFFlat):
        kind = "ivf"
    elif isinstance(idx, faiss.IndexFlat):
        kind = "exact"
    else:
        raise ValueError(
            f"unsupported index type {type(idx).__name__}; expected IndexFlatIP, IndexHNSWFlat or IndexIVFFlat"
        )
    if idx.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ValueError(f"index metric must be inner product, got faiss metric {idx.metric_type}")
    return idx, kind


def _searchers(idx: faiss.Index, kind: str, allowed: np.ndarray | None) -> tuple[_Searcher, _Searcher]:
    """The main searcher and the exact searcher used for queries the main one leaves short."""
    ntotal = int(idx.ntotal)
    if allowed is None:
        if kind == "exact":
            flat = _Searcher(idx, None, None, ntotal, exact=True)
            return flat, flat
        main = _Searcher(idx, None, None, ntotal, exact=False)
        if kind == "hnsw":
            return main, _Searcher(faiss.downcast_index(idx.storage), None, None, ntotal, exact=True)
        all_lists = faiss.SearchParametersIVF(nprobe=int(idx.nlist))
        return main, _Searcher(idx, all_lists, None, ntotal, exact=True)

    if kind == "exact" or len(allowed) <= _SUBINDEX_MAX_ROWS:
        sub = faiss.IndexFlatIP(int(idx.d))
        if len(allowed):
            sub.add(_vectors(idx, kind, allowed))
        flat = _Searcher(sub, None, allowed, len(allowed), exact=True)
        return flat, flat
    sel = faiss.IDSelectorBatch(allowed)
    if kind == "hnsw":
        # SearchParametersHNSW defaults efSearch to 16, so carry the index's own setting over.
        params = faiss.SearchParametersHNSW(sel=sel, efSearch=int(idx.hnsw.efSearch))
        exact_params = faiss.SearchParameters(sel=sel)
        exact = _Searcher(faiss.downcast_index(idx.storage), exact_params, None, len(allowed), True, (sel,))
    else:
        params = faiss.SearchParametersIVF(sel=sel, nprobe=int(idx.nprobe))
        exact_params = faiss.SearchParametersIVF(sel=sel, nprobe=int(idx.nlist))
        exact = _Searcher(idx, exact_params, None, len(allowed), True, (sel,))
    return _Searcher(idx, params, None, len(allowed), False, (sel,)), exact


def _vectors(idx: faiss.Index, kind: str, rows: np.ndarray) -> np.ndarray:
    """Stored vectors of ``rows`` (copied)."""
    if kind in ("exact", "hnsw"):
        flat = idx if kind == "exact" else faiss.downcast_index(idx.storage)
        # A zero-copy view of faiss's storage; the fancy index below copies just the rows needed.
        data = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)
        return np.ascontiguousarray(data[rows])
    if idx.direct_map.type == faiss.DirectMap.NoMap:
        idx.make_direct_map()
    return idx.reconstruct_batch(rows)


def _row_set(a: Any, name: str, ntotal: int) -> np.ndarray:
    """Sorted unique int64 rows, each checked to lie in [0, ntotal)."""
    rows = _int_rows(a, name)
    _check_range(rows, name, ntotal)
    return np.unique(rows)


def _int_rows(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of rows, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer rows, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_range(rows: np.ndarray, name: str, ntotal: int) -> None:
    if rows.size:
        bad = rows[(rows < 0) | (rows >= ntotal)]
        if bad.size:
            raise ValueError(f"{name} holds row {int(bad[0])}, outside [0, {ntotal})")


def _exclusions(exclude: Any, global_rows: Any, nq: int, ntotal: int) -> _Exclusions:
    glob = (
        np.empty(0, dtype=np.int64)
        if global_rows is None
        else _row_set(global_rows, "exclude_rows_global", ntotal)
    )
    if exclude is None:
        return _Exclusions(np.zeros(nq + 1, dtype=np.int64), np.empty(0, dtype=np.int64), glob)
    if len(exclude) != nq:
        raise ValueError(f"exclude must have one array per query ({nq}), got {len(exclude)}")
    parts = [_int_rows(e, f"exclude[{q}]") for q, e in enumerate(exclude)]
    lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=nq)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    rows = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    if rows.size:
        bad = np.flatnonzero((rows < 0) | (rows >= ntotal))
        if bad.size:
            q = int(np.searchsorted(offsets, bad[0], side="right") - 1)
            raise ValueError(f"exclude[{q}] holds row {int(rows[bad[0]])}, outside [0, {ntotal})")
    return _Exclusions(offsets, rows, glob)
