"""The model and index behind the HTTP service, and the batcher that feeds them (``Batcher``).

Dynamic batching: requests are put on an asyncio queue; a batcher task takes what is queued, up to
``max_batch``, and runs the encoder and one index search for the whole batch in a worker thread, so
the event loop keeps accepting requests. Up to ``workers`` batches run at once (torch and faiss
release the GIL, so two single-threaded batches use two cores without OpenMP spin-waiting); while
they are busy, new requests pile up into the next batch. When another batch is in flight the batcher
also waits ``batch_window_ms`` for more requests; an idle server (one client) answers at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrec.config import config_from_dict
from seqrec.data.dataset import Interactions
from seqrec.data.readers import read_interactions
from seqrec.data.titles import item_titles
from seqrec.errors import SeqrecError
from seqrec.retrieval.ids import ItemLookup
from seqrec.retrieval.recommend import (
    Candidates,
    LoadedModel,
    load_model,
    recommend_batches,
    resolve_candidates,
)
from seqrec.retrieval.run_index import KINDS, run_index
from seqrec.retrieval.similar import similar_items

log = logging.getLogger(__name__)

_CANDIDATE_CACHE = 32  # distinct candidate lists kept per model (Recommender.candidates)


@dataclass(frozen=True)
class ServeConfig:
    """Limits and batching of the HTTP server."""

    index: str = "exact"  # index kind: the run's saved RUN/index/<kind>.faiss if built for these weights
    max_k: int = 1000  # largest k a request may ask for
    max_history: int = 10_000  # most history items a request may send (the encoder sees the last maxlen)
    max_id_length: int = 256  # longest string id accepted
    max_candidates: int = 100_000  # most candidate ids a request may send
    max_body_bytes: int = 1_000_000  # larger request bodies get 413
    batch_window_ms: float = 2.0  # how long the batcher waits for more requests after the first
    max_batch: int = 64  # most requests run through the encoder and index together
    # torch and faiss threads for the batches (process-wide, set by serve()): 1 leaves the other core to
    # the HTTP event loop, and small batches gain little from more; on a busy machine more threads can
    # spin-wait for each other (OpenMP) and multiply latency.
    threads: int = 1
    # batches run at once, each in its own thread (with ``threads`` torch/faiss threads each): 2 uses both
    # cores of a 2-core machine while the event loop interleaves with them.
    workers: int = 2

    def __post_init__(self) -> None:
        if self.index not in KINDS:
            raise ValueError(f"index must be one of {', '.join(KINDS)}, got {self.index!r}")
        for name in ("max_k", "max_history", "max_id_length", "max_candidates", "max_body_bytes", "max_batch",
                     "threads", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0 <= self.batch_window_ms <= 1000:
            raise ValueError(f"batch_window_ms must be in [0, 1000], got {self.batch_window_ms}")


@dataclass
class Job:
    """One request, in internal ids of the model that looked them up (``model``)."""

    history: np.ndarray  # (n,) int64 internal item ids, oldest first, n >= 1 (a user's: their sequence)
    k: int
    exclude_seen: bool
    candidates: Candidates | None = None  # only these may be returned
    user: int | None = None  # row of a user of the run's data (``history`` is their sequence)
    model: Any = None  # the Recommender whose ids these are; None: the batcher's own


class Recommender:
    """The synchronous core: history -> user vector -> top-k items, for a batch of requests.

    The ranking is ``recommend_batches``, the one the CLI and the Python API use: a batch is split into
    groups that share exclude_seen, the candidate set and whether they are users of the run's data
    (whose user-tower vector is used), and each group is one call.

    Args:
        loaded: the model.
        index: a faiss index over its item vectors.
        index_kind: what ``index`` is (exact, hnsw, ivf), for /health.
        interactions: the run's data, for requests by ``user_id`` (None: such requests are refused).
        titles: item titles by internal id, for the page (None: items are shown by id).
    """

    def __init__(self, loaded: LoadedModel, index: Any, index_kind: str, interactions: Interactions | None = None,
                 titles: list[str | None] | None = None):
        if index.ntotal != loaded.model.num_items:
            raise ValueError(f"the index holds {index.ntotal} items but the checkpoint has {loaded.model.num_items}")
        self.loaded = loaded
        self.index = index
        self.index_kind = index_kind
        self.lookup = ItemLookup(loaded.item_ids)
        self.interactions = interactions
        self.titles = titles  # per internal item id (data/titles.py), or None: the run knows no titles
        if titles is not None and len(titles) != len(loaded.item_ids):
            raise ValueError(f"{len(titles)} titles for {len(loaded.item_ids)} item rows")
        self.users: ItemLookup | None = None
        self._candidate_cache: OrderedDict[tuple, Candidates] = OrderedDict()
        self._cache_lock = threading.Lock()
        if interactions is not None:
            if interactions.num_items != loaded.model.num_items:
                raise ValueError(f"the run's data has {interactions.num_items} items but the checkpoint has "
                                 f"{loaded.model.num_items}")
            # A lookup over the user ids as over item ids: row u is "item" u + 1 (slot 0 is never matched).
            user_ids = interactions.user_ids
            pad = np.zeros(1, dtype=user_ids.dtype) if user_ids.dtype != object else np.array([None], dtype=object)
            self.users = ItemLookup(np.concatenate([pad, user_ids]))

    @property
    def num_items(self) -> int:
        return self.loaded.model.num_items

    def user_row(self, raw: Any) -> int | None:
        """The row of raw user id ``raw`` in the run's data (ints and decimal strings match either
        spelling), or None when unknown. Needs ``interactions``."""
        rows, _ = self.users.lookup([raw])
        return int(rows[0]) - 1 if len(rows) else None

    def candidates(self, values: list[Any]) -> Candidates:
        """Raw candidate ids -> ``Candidates`` (``resolve_candidates``: unseen ones embedded from their
        features where the model has an item tower); ValueError when none is usable.

        The last few distinct lists are kept, so that requests sending the same candidates share one
        object and with it a batch (jobs are grouped by candidate set).
        """
        key = tuple((type(v) is int, v) for v in values)
        with self._cache_lock:
            found = self._candidate_cache.get(key)
            if found is not None:
                self._candidate_cache.move_to_end(key)
                return found
        found = resolve_candidates(self.loaded, values, where="the request", lookup=self.lookup, warn=False)
        with self._cache_lock:
            self._candidate_cache[key] = found
            while len(self._candidate_cache) > _CANDIDATE_CACHE:
                self._candidate_cache.popitem(last=False)
        return found

    def titles_of(self, raw_ids: list[Any]) -> list[str | None] | None:
        """Titles of raw item ids (None for one without), or None when the run has no titles."""
        if self.titles is None:
            return None
        ids, _ = self.lookup.lookup(raw_ids)
        if len(ids) == len(raw_ids):
            return [self.titles[i] for i in ids.tolist()]
        return [self.titles[found[0]] if len(found := self.lookup.lookup([v])[0]) else None for v in raw_ids]

    def search_items(self, query: str, limit: int) -> list[tuple[Any, str | None]]:
        """Up to ``limit`` (raw id, title) of items whose id is ``query`` or whose title contains it
        (case-insensitive); the id match first. For the page's item picker."""
        query = query.strip()
        if not query:  # the first items of the catalogue, to start from
            rows = range(1, min(limit, self.num_items) + 1)
            return [(_plain(self.loaded.item_ids[i]), self.titles[i] if self.titles else None) for i in rows]
        out: list[tuple[Any, str | None]] = []
        ids, _ = self.lookup.lookup([query]) if query else (np.zeros(0, np.int64), [])
        if len(ids):
            out.append((_plain(self.loaded.item_ids[ids[0]]), self.titles[ids[0]] if self.titles else None))
        if self.titles is not None and query:
            needle = query.casefold()
            for i, title in enumerate(self.titles):
                if len(out) >= limit:
                    break
                if title and needle in title.casefold() and not (len(ids) and i == ids[0]):
                    out.append((_plain(self.loaded.item_ids[i]), title))
        return out[:limit]

    def similar(self, item: int, k: int) -> tuple[list[Any], list[float]]:
        """(raw ids, scores) of the ``k`` items nearest to internal item ``item`` (``similar_items``)."""
        items, scores = similar_items(self.loaded, self.index, np.array([item], dtype=np.int64), k)
        valid = items[0] > 0
        found = self.loaded.item_ids[items[0][valid]]
        return ([_plain(v) for v in found] if found.dtype == object else found.tolist()), scores[0][valid].tolist()

    def recommend(self, jobs: list[Job]) -> list[tuple[list[Any], list[float]]]:
        """(raw item ids, scores) per job; fewer than k items when fewer are eligible."""
        out: list[Any] = [None] * len(jobs)
        groups: dict[tuple, list[int]] = {}
        for n, job in enumerate(jobs):
            key = (job.user is not None, job.exclude_seen, None if job.candidates is None else id(job.candidates))
            groups.setdefault(key, []).append(n)
        for (by_user, exclude_seen, _), members in groups.items():
            group = [jobs[n] for n in members]
            for n, result in zip(members, self._rank(group, by_user, exclude_seen), strict=True):
                out[n] = result
        return out

    def _rank(self, jobs: list[Job], by_user: bool, exclude_seen: bool) -> list[tuple[list[Any], list[float]]]:
        candidates = jobs[0].candidates
        if by_user:
            inter, rows = self.interactions, np.array([job.user for job in jobs], dtype=np.int64)
        else:
            lengths = np.array([len(job.history) for job in jobs], dtype=np.int64)
            inter = Interactions(offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
                                 items=np.concatenate([job.history for job in jobs]).astype(np.int64, copy=False),
                                 user_ids=np.arange(len(jobs)), item_ids=self.loaded.item_ids)
            rows = np.arange(len(jobs))
        # Candidates embedded from features are searched exactly over the candidate vectors (index=None).
        index = None if candidates is not None and candidates.new_ids else self.index
        raw_ids = self.loaded.item_ids if candidates is None else candidates.item_ids(self.loaded.item_ids)
        plain = raw_ids.dtype != object  # numpy ints/strs: tolist() gives plain Python values in one call
        k = max(job.k for job in jobs)  # one search; each job keeps its first k (same order)
        out = []
        for _, items, scores in recommend_batches(self.loaded, inter, rows, k, exclude_seen=exclude_seen, index=index,
                                                  candidates=candidates, batch_size=len(jobs),
                                                  user_features=by_user):
            for job, job_items, job_scores in zip(jobs[len(out):], items, scores, strict=False):
                job_items, job_scores = job_items[: job.k], job_scores[: job.k]
                valid = job_items > 0  # 0 (score -inf) pads a row with fewer eligible items than k
                found = raw_ids[job_items[valid]]
                out.append((found.tolist() if plain else [_plain(v) for v in found], job_scores[valid].tolist()))
        return out


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def load_recommender(run: str | Path, index_kind: str = "exact", *, progress: bool = False,
                     user_data: bool = True) -> Recommender:
    """Loads the model of ``run`` and its index of ``index_kind`` (saved, or built in memory).

    ``user_data``: also read the run's data (its stored data config) for requests by ``user_id``; if it
    cannot be read the recommender serves histories only and the reason is logged.
    """
    loaded = load_model(run)
    index, _ = run_index(loaded, run, index_kind, progress=progress)
    interactions = None
    data = config_from_dict({"data": loaded.state["config"]["data"]}).data
    titles = item_titles(data, loaded.item_ids)
    if user_data:
        try:
            interactions = read_interactions(data)
            if interactions.num_items != loaded.model.num_items:
                raise ValueError(f"it has {interactions.num_items} items, the checkpoint {loaded.model.num_items}")
        except (OSError, ValueError, SeqrecError) as exc:
            log.warning("requests by user_id are off: the run's data could not be read (%s)", exc)
            interactions = None
    return Recommender(loaded, index, index_kind, interactions, titles)


class Batcher:
    """Collects concurrent jobs into batches and runs up to ``workers`` batches at once in worker threads.

    A batch is formed only when a worker is free, so requests arriving while all workers are busy join
    the next batch. The ``window_s`` wait for more requests applies only while another batch is in
    flight: a lone request on an idle server is not delayed.
    """

    def __init__(self, recommender: Recommender, max_batch: int, window_s: float, workers: int = 1,
                 threads: int | None = None):
        self.recommender = recommender
        self.threads = threads
        self.max_batch = max_batch
        self.window_s = window_s
        self.workers = workers
        self.requests = 0
        self.batches = 0
        self.largest_batch = 0
        self._in_flight = 0
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._free: asyncio.Semaphore | None = None
        self._running: set[asyncio.Task] = set()

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._free = asyncio.Semaphore(self.workers)
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="seqrec-batch",
                                            initializer=_set_threads, initargs=(self.threads,))
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, job: Job) -> tuple[list[Any], list[float]]:
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((job, future))
        return await future

    def _drain(self, batch: list) -> None:
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._free.acquire()  # wait for a worker first: meanwhile requests pile up
            try:
                batch = [await self._queue.get()]
                self._drain(batch)
                if len(batch) < self.max_batch and self.window_s > 0 and self._in_flight:
                    await asyncio.sleep(self.window_s)
                    self._drain(batch)
            except BaseException:
                self._free.release()
                raise
            batch = [(job, future) for job, future in batch if not future.done()]  # clients gone
            if not batch:
                self._free.release()
                continue
            self.batches += 1
            self.requests += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
            self._in_flight += 1
            task = loop.create_task(self._run_batch(loop, batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list) -> None:
        try:
            results = await loop.run_in_executor(self._executor, self._recommend, [job for job, _ in batch])
        except Exception as exc:  # noqa: BLE001 - every waiting request must be answered
            log.exception("batch of %d requests failed", len(batch))
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self._in_flight -= 1
            self._free.release()
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


    def _recommend(self, jobs: list[Job]) -> list[tuple[list[Any], list[float]]]:
        """Each job answered by the model that looked it up (after a reload a batch can hold both)."""
        groups: dict[int, tuple[Any, list[int]]] = {}
        for n, job in enumerate(jobs):
            model = job.model if job.model is not None else self.recommender
            groups.setdefault(id(model), (model, []))[1].append(n)
        if len(groups) == 1:
            return next(iter(groups.values()))[0].recommend(jobs)
        out: list[Any] = [None] * len(jobs)
        for model, members in groups.values():
            for n, result in zip(members, model.recommend([jobs[n] for n in members]), strict=True):
                out[n] = result
        return out

    async def call(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` in a worker thread (with the batches' torch/faiss threads), e.g. an item search."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def _set_threads(threads: int | None) -> None:
    """torch/faiss threads of the calling worker thread. OpenMP's thread count is per thread: a count
    set in the main thread does not reach threads Python starts later (faiss would use every core)."""
    if threads is None:
        return
    import faiss

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
