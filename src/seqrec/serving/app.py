"""HTTP serving: a FastAPI app answering ``POST /recommend`` from one loaded model and index.

* ``POST /recommend`` ``{"history": [raw item ids, oldest first], "k": 10, "exclude_seen": true}`` ->
  ``{"items": [raw ids], "scores": [...], "unknown_items": [raw ids dropped from the history]}``.
  Raw ids may be sent as JSON ints or strings and match the checkpoint's ids either way.
* ``GET /health``: status, catalogue size, index kind and batching counters.
* ``GET /openapi.json`` and ``/docs``: the schema FastAPI derives from the request/response models.

Dynamic batching: requests are put on an asyncio queue; a batcher task takes what is queued, up to
``max_batch``, and runs the encoder and one index search for the whole batch in a worker thread, so
the event loop keeps accepting requests. Up to ``workers`` batches run at once (torch and faiss
release the GIL, so two single-threaded batches use two cores without OpenMP spin-waiting); while
they are busy, new requests pile up into the next batch. When another batch is in flight the batcher
also waits ``batch_window_ms`` for more requests; an idle server (one client) answers at once.

Fast path: a valid ``POST /recommend`` (JSON body, validated in one ``model_validate_json`` call) is
answered by a small ASGI handler in front of FastAPI's routing, dependency and middleware stack, which
cost more CPU per request than the model itself at small batches. Anything else, including every
request that fails validation, goes through FastAPI unchanged, so errors and their messages are the
same on both paths.

Errors are 4xx with ``{"detail": "<message>"}``: 400 empty or all-unknown history, 413 body over
``max_body_bytes``, 422 wrong types, values out of range, unknown fields or a body that is not JSON.
Messages never carry stack traces or file paths; an unexpected failure is a bare 500.

This module does not use ``from __future__ import annotations``: FastAPI resolves the request model
of the endpoint, which is built per app (its limits come from :class:`ServeConfig`), at runtime.
"""

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints, ValidationError

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


class BodyLimitMiddleware:
    """Answers 413 for request bodies over ``max_bytes`` (declared or streamed), before any parsing.

    An oversized body is still read (and discarded) up to ``drain_bytes`` so the client, which sends
    its whole request before reading the answer, gets the 413 instead of a broken connection.
    """

    def __init__(self, app: Any, max_bytes: int, drain_bytes: int | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.drain_bytes = drain_bytes if drain_bytes is not None else 64 * max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = False
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    await _send_json(send, 400, {"detail": "invalid Content-Length header"})
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            too_big = too_big or size > self.max_bytes
            if not too_big:
                chunks.append(body)
            if not message.get("more_body", False) or size > self.drain_bytes:
                break
        if too_big:
            await _send_json(send, 413, {"detail": f"request body too large: the limit is {self.max_bytes} bytes"})
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send_json(send: Any, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _validation_message(exc: RequestValidationError, max_id_length: int) -> str:
    """A short description of what failed validation; never echoes the input."""
    parts: list[str] = []
    for error in exc.errors():
        kind = error.get("type", "")
        loc = [p for p in error.get("loc", ()) if p != "body"]
        if kind == "json_invalid":
            return "request body is not valid JSON"
        if not loc:
            if kind == "missing":
                return 'request body is missing: send a JSON object such as {"history": [...], "k": 10}'
            return "request body must be a JSON object (Content-Type: application/json)"
        if len(loc) >= 2 and loc[0] == "history" and isinstance(loc[1], int):
            # Union branches (int | str) fail separately; report the element once.
            text = (f"history[{loc[1]}]: an item id must be a JSON integer or a string of 1 to "
                    f"{max_id_length} characters")
        else:
            text = f"{'.'.join(map(str, loc))}: {error.get('msg', 'invalid value')}"
        if text not in parts:
            parts.append(text)
        if len(parts) == 5:
            break
    return "; ".join(parts) or "invalid request"


class RecommendResponse(BaseModel):
    items: list[int | str] = Field(description="recommended raw item ids, best first")
    scores: list[float] = Field(description="similarity of each item to the user, descending")
    unknown_items: list[int | str] = Field(
        description="history ids the model does not know; dropped before encoding"
    )


class ErrorResponse(BaseModel):
    detail: str


class Health(BaseModel):
    status: str
    num_items: int
    index: str
    similarity: str
    requests: int = Field(description="requests answered through the batcher")
    batches: int = Field(description="encoder/index batches run; fewer than requests under concurrency")
    largest_batch: int


_JSON_HEADERS = [(b"content-type", b"application/json")]


class _App(FastAPI):
    """FastAPI with a fast path in front: ``fast(scope, receive, send)`` answers a request completely
    and returns True, or returns the ASGI receive callable to hand the request on to FastAPI with."""

    fast: Any = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self.fast is not None and scope["type"] == "http" and scope["path"] == "/recommend" \
                and scope["method"] == "POST":
            receive = await self.fast(scope, receive, send)
            if receive is True:
                return
        await super().__call__(scope, receive, send)


def _is_json(headers: list) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


def create_app(recommender: Recommender, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``recommender`` with the limits of ``config``."""
    config = config or ServeConfig(index=recommender.index_kind)
    batcher = Batcher(recommender, config.max_batch, config.batch_window_ms / 1000.0, config.workers,
                      config.threads)

    RawId = StrictInt | Annotated[str, StringConstraints(strict=True, min_length=1, max_length=config.max_id_length)]

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        history: list[RawId] = Field(
            max_length=config.max_history,
            description="raw item ids the user interacted with, oldest first (ints or strings)",
        )
        k: StrictInt = Field(10, ge=1, le=config.max_k, description="number of items to return")
        exclude_seen: StrictBool = Field(True, description="never return an item of the history")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = _App(title="seqrec", description="Next-item recommendations from a SASRec model.", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.recommender = recommender
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _validation_message(exc, config.max_id_length)})

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s: %s", request.url.path, type(exc).__name__)
        return JSONResponse(status_code=500, content={"detail": "internal server error"})

    errors = {code: {"model": ErrorResponse} for code in (400, 413, 422)}

    @app.post("/recommend", response_model=RecommendResponse, responses=errors)
    async def recommend(body: RecommendRequest) -> Response:
        """Top-k items for a user given as a history of raw item ids."""
        if not body.history:
            raise HTTPException(400, "history is empty: send at least one item id, oldest first")
        ids, unknown = recommender.lookup.lookup(body.history)
        if not len(ids):
            shown = ", ".join(map(json.dumps, unknown[:5])) + (" ..." if len(unknown) > 5 else "")
            raise HTTPException(400, f"none of the {len(unknown)} history item ids is known to the model: {shown}")
        return Response(await answer(body, ids, unknown), media_type="application/json")

    async def answer(body: RecommendRequest, ids: np.ndarray, unknown: list) -> bytes:
        """The JSON response body of a valid request whose history maps to ``ids`` (both paths)."""
        items, scores = await batcher.submit(Job(ids, body.k, body.exclude_seen))
        payload = {"items": items, "scores": scores, "unknown_items": unknown}
        return json.dumps(payload, separators=(",", ":")).encode()

    async def fast_recommend(scope: dict, receive: Any, send: Any) -> Any:
        """The valid-request path of ``recommend`` without FastAPI's stack; the same answers."""
        messages: list[dict] = []
        ok = _is_json(scope["headers"])
        size = 0
        while ok:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                ok = False
                break
            size += len(message.get("body", b""))
            if size > config.max_body_bytes:
                ok = False  # FastAPI's path (BodyLimitMiddleware) answers 413
            elif not message.get("more_body", False):
                break
        if ok:
            body = messages[0]["body"] if len(messages) == 1 else b"".join(m.get("body", b"") for m in messages)
            try:
                request = RecommendRequest.model_validate_json(body)
            except ValidationError:
                request = None
            if request is not None and request.history:
                ids, unknown = recommender.lookup.lookup(request.history)
                if len(ids):
                    try:
                        out = await answer(request, ids, unknown)
                    except Exception as exc:  # noqa: BLE001 - as the app's handler: a bare 500
                        log.error("unexpected error on /recommend: %s", type(exc).__name__)
                        await _send_json(send, 500, {"detail": "internal server error"})
                        return True
                    await send({"type": "http.response.start", "status": 200,
                                "headers": [*_JSON_HEADERS, (b"content-length", str(len(out)).encode())]})
                    await send({"type": "http.response.body", "body": out})
                    return True
        # Not a valid request: FastAPI answers it, reading the same messages again.
        replay = iter(messages)

        async def replayed() -> dict:
            for message in replay:
                return message
            return await receive()

        return replayed

    app.fast = fast_recommend

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        """Liveness plus batching counters."""
        return Health(status="ok", num_items=recommender.num_items, index=recommender.index_kind,
                      similarity=recommender.loaded.similarity, requests=batcher.requests,
                      batches=batcher.batches, largest_batch=batcher.largest_batch)

    return app


def serve(
    run: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: ServeConfig | None = None,
    access_log: bool = False,
    progress: bool = False,
) -> None:
    """Loads the model and index of ``run`` once and serves them with uvicorn until interrupted."""
    import faiss
    import uvicorn

    config = config or ServeConfig()
    torch.set_num_threads(config.threads)
    faiss.omp_set_num_threads(config.threads)
    recommender = load_recommender(run, config.index, progress=progress)
    app = create_app(recommender, config)
    log.info("serving %d items (%s index, %s) on http://%s:%d", recommender.num_items, config.index,
             recommender.loaded.similarity, host, port)
    uvicorn.run(app, host=host, port=port, access_log=access_log, log_level="info", **fast_stack())


def fast_stack() -> dict[str, str]:
    """uvicorn's uvloop event loop and httptools parser where installed (the ``serve`` extra), which
    cost less CPU per request than asyncio and h11; empty (uvicorn's defaults) otherwise."""
    import importlib.util

    stack = {}
    if importlib.util.find_spec("uvloop") is not None:
        stack["loop"] = "uvloop"
    if importlib.util.find_spec("httptools") is not None:
        stack["http"] = "httptools"
    return stack
