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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrec.retrieval.ids import ItemLookup
from seqrec.retrieval.recommend import LoadedModel, load_model
from seqrec.retrieval.run_index import KINDS, run_index
from seqrec.retrieval.search import search

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """Limits and batching of the HTTP server."""

    index: str = "exact"  # index kind: the run's saved RUN/index/<kind>.faiss if built for these weights
    max_k: int = 1000  # largest k a request may ask for
    max_history: int = 10_000  # most history items a request may send (the encoder sees the last maxlen)
    max_id_length: int = 256  # longest string id accepted
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
        for name in ("max_k", "max_history", "max_id_length", "max_body_bytes", "max_batch", "threads",
                     "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0 <= self.batch_window_ms <= 1000:
            raise ValueError(f"batch_window_ms must be in [0, 1000], got {self.batch_window_ms}")


@dataclass
class Job:
    """One request, in internal ids."""

    history: np.ndarray  # (n,) int64 internal item ids, oldest first, n >= 1
    k: int
    exclude_seen: bool


class Recommender:
    """The synchronous core: history -> user vector -> top-k items, for a batch of requests."""

    def __init__(self, loaded: LoadedModel, index: Any, index_kind: str):
        if index.ntotal != loaded.model.num_items:
            raise ValueError(f"the index holds {index.ntotal} items but the checkpoint has {loaded.model.num_items}")
        self.loaded = loaded
        self.index = index
        self.index_kind = index_kind
        self.lookup = ItemLookup(loaded.item_ids)

    @property
    def num_items(self) -> int:
        return self.loaded.model.num_items

    def recommend(self, jobs: list[Job]) -> list[tuple[list[Any], list[float]]]:
        """(raw item ids, scores) per job; fewer than k items when fewer are eligible."""
        maxlen = self.loaded.model.config.maxlen
        tails = [job.history[-maxlen:] for job in jobs]
        width = max(len(t) for t in tails)  # left padding: the encoder is padding-invariant
        window = np.zeros((len(jobs), width), dtype=np.int64)
        for row, tail in enumerate(tails):
            window[row, width - len(tail) :] = tail
        queries = self.loaded.user_vectors(torch.from_numpy(window))
        empty = np.empty(0, dtype=np.int64)
        exclude = [job.history - 1 if job.exclude_seen else empty for job in jobs]
        k = max(job.k for job in jobs)  # one search; each job keeps its first k (same order)
        scores, rows = search(self.index, queries, k, exclude=exclude)
        out = []
        raw_ids = self.loaded.item_ids
        plain = raw_ids.dtype != object  # numpy ints/strs: tolist() gives plain Python values in one call
        for job, job_scores, job_rows in zip(jobs, scores, rows, strict=True):
            job_rows, job_scores = job_rows[: job.k], job_scores[: job.k]
            valid = job_rows >= 0
            items = raw_ids[job_rows[valid] + 1].tolist() if plain else self.lookup.raw(job_rows[valid] + 1)
            out.append((items, job_scores[valid].tolist()))
        return out


def load_recommender(run: str | Path, index_kind: str = "exact", *, progress: bool = False) -> Recommender:
    """Loads the model of ``run`` and its index of ``index_kind`` (saved, or built in memory)."""
    loaded = load_model(run)
    index, _ = run_index(loaded, run, index_kind, progress=progress)
    return Recommender(loaded, index, index_kind)


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
            results = await loop.run_in_executor(self._executor, self.recommender.recommend,
                                                 [job for job, _ in batch])
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


def _set_threads(threads: int | None) -> None:
    """torch/faiss threads of the calling worker thread. OpenMP's thread count is per thread: a count
    set in the main thread does not reach threads Python starts later (faiss would use every core)."""
    if threads is None:
        return
    import faiss

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
