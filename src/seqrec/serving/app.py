"""HTTP serving: a FastAPI app answering ``POST /recommend`` from one loaded model and index.

* ``POST /recommend`` ``{"history": [raw item ids, oldest first], "k": 10, "exclude_seen": true}`` ->
  ``{"items": [raw ids], "scores": [...], "unknown_items": [raw ids dropped from the history]}``.
  Raw ids may be sent as JSON ints or strings and match the checkpoint's ids either way.
  Instead of ``history``, ``"user_id": raw id`` ranks for a user of the run's data over their whole
  sequence (404 for an unknown user); ``"candidates": [raw ids]`` restricts the answer to those items
  (``resolve_candidates``: unknown ones embedded from their features or skipped, reported as
  ``unknown_candidates``). The ranking is ``recommend_batches``, the CLI's and the Python API's.
* ``POST /similar`` ``{"item_id": raw id, "k": 10}`` -> ``{"item_id", "items", "scores"}``: item-to-item
  neighbours (``retrieval/similar.py``); 404 for an unknown item.
* ``POST /admin/reload`` ``{"run": DIR}``: swaps in another model without a restart; only with an admin
  token, see ``admin.py``.
* ``GET /``: a page to try the model (page.html); ``GET /items?q=``: items by id or title, for it.
  Where the run knows titles (``data/titles.py``) answers also carry ``titles``.
* ``GET /health``: status, catalogue size, index kind and batching counters.
* ``GET /openapi.json`` and ``/docs``: the schema FastAPI derives from the request/response models.

The batching behind it is in ``batcher.py``.

Fast path: a valid ``POST /recommend`` (JSON body, validated in one ``model_validate_json`` call) is
answered by a small ASGI handler in front of FastAPI's routing, dependency and middleware stack, which
cost more CPU per request than the model itself at small batches. Anything else, including every
request that fails validation, goes through FastAPI unchanged, so errors and their messages are the
same on both paths.

Errors are 4xx with ``{"detail": "<message>"}``: 400 empty or all-unknown history or candidates, 404
unknown user_id or item_id, 503 user_id when the run's data could not be read, 413 body over
``max_body_bytes``, 422 wrong types, values out of range, unknown fields or a body that is not JSON.
Messages never carry stack traces or file paths; an unexpected failure is a bare 500.

This module does not use ``from __future__ import annotations``: FastAPI resolves the request model
of the endpoint, which is built per app (its limits come from :class:`ServeConfig`), at runtime.
"""

import functools
import importlib.resources
import json
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints, ValidationError

from seqrec.serving.admin import Reloader, answer_admin
from seqrec.serving.batcher import Batcher, Job, Recommender, ServeConfig, load_recommender

log = logging.getLogger(__name__)


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


async def _send_json(send: Any, status: int, payload: dict, headers: list | None = None) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
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
        if len(loc) >= 2 and loc[0] in ("history", "candidates") and isinstance(loc[1], int):
            # Union branches (int | str) fail separately; report the element once.
            text = (f"{loc[0]}[{loc[1]}]: an item id must be a JSON integer or a string of 1 to "
                    f"{max_id_length} characters")
        elif loc[0] in ("user_id", "item_id") and kind != "missing":
            text = f"{loc[0]}: an id must be a JSON integer or a string of 1 to {max_id_length} characters"
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
    unknown_candidates: list[int | str] | None = Field(
        None, description="only when candidates were sent: those with neither a trained id nor features, skipped"
    )


class SimilarResponse(BaseModel):
    item_id: int | str = Field(description="the item asked about")
    items: list[int | str] = Field(description="its nearest items, best first (never itself)")
    scores: list[float] = Field(description="the checkpoint's similarity of each to the item, descending")


class ItemEntry(BaseModel):
    id: int | str
    title: str | None = Field(description="the item's title where the run knows titles (e.g. ML-1M movies.dat)")


class ErrorResponse(BaseModel):
    detail: str


class Health(BaseModel):
    status: str
    num_items: int
    index: str
    similarity: str
    user_ids: bool = Field(description="whether requests by user_id are served (the run's data was read)")
    titles: bool = Field(description="whether the run knows item titles (answers then carry them)")
    admin: bool = Field(description="whether admin endpoints are on (a token is configured)")
    reloads: int = Field(description="successful POST /admin/reload since start")
    requests: int = Field(description="requests answered through the batcher")
    batches: int = Field(description="encoder/index batches run; fewer than requests under concurrency")
    largest_batch: int


_JSON_HEADERS = [(b"content-type", b"application/json")]


class _App(FastAPI):
    """FastAPI with a fast path in front: ``fast(scope, receive, send)`` answers a request completely
    and returns True, or returns the ASGI receive callable to hand the request on to FastAPI with."""

    fast: Any = None

    admin: Any = None  # (scope, receive, send) -> answers every /admin/... request (admin.py)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self.admin is not None and scope["type"] == "http" and (scope["path"] == "/admin" or scope["path"].startswith("/admin/")):
            await self.admin(scope, receive, send)
            return
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


def create_app(recommender: Recommender, config: ServeConfig | None = None, *, admin_token: str | None = None,
               reload: Callable[[str], Recommender] | None = None) -> FastAPI:
    """The FastAPI app serving ``recommender`` with the limits of ``config``.

    ``admin_token``: turns the admin endpoints on (see admin.py); ``reload`` builds the recommender of
    a run directory for ``POST /admin/reload`` (default: ``load_recommender`` with ``config.index``).
    """
    config = config or ServeConfig(index=recommender.index_kind)
    batcher = Batcher(recommender, config.max_batch, config.batch_window_ms / 1000.0, config.workers,
                      config.threads)

    RawId = StrictInt | Annotated[str, StringConstraints(strict=True, min_length=1, max_length=config.max_id_length)]

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        history: list[RawId] | None = Field(
            None, max_length=config.max_history,
            description="raw item ids the user interacted with, oldest first (ints or strings); or user_id",
        )
        user_id: RawId | None = Field(
            None, description="instead of history: a user of the run's data, with their whole sequence",
        )
        candidates: list[RawId] | None = Field(
            None, max_length=config.max_candidates, description="raw item ids; only these may be returned",
        )
        k: StrictInt = Field(10, ge=1, le=config.max_k, description="number of items to return")
        exclude_seen: StrictBool = Field(True, description="never return an item of the history")

    class SimilarRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        item_id: RawId = Field(description="raw item id")
        k: StrictInt = Field(10, ge=1, le=config.max_k, description="number of neighbours to return")

    def current() -> Recommender:
        return app.state.recommender

    def swap(fresh: Recommender) -> None:
        app.state.recommender = fresh  # one reference assignment: a request uses the model it started with
        batcher.recommender = fresh

    reloader = None
    if admin_token is not None:
        build = reload or (lambda run: load_recommender(run, config.index))
        reloader = Reloader(build, swap, config.threads)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            if reloader is not None:
                reloader.close()

    app = _App(title="seqrec", description="Next-item recommendations from a SASRec model.", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.recommender = recommender
    app.state.reloader = reloader
    app.admin = lambda scope, receive, send: answer_admin(scope, receive, send, admin_token, reloader)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _validation_message(exc, config.max_id_length)})

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s: %s", request.url.path, type(exc).__name__)
        return JSONResponse(status_code=500, content={"detail": "internal server error"})

    errors = {code: {"model": ErrorResponse} for code in (400, 404, 413, 422, 503)}

    @app.post("/recommend", response_model=RecommendResponse, responses=errors)
    async def recommend(body: RecommendRequest) -> Response:
        """Top-k items for a user given as a history of raw item ids, or as a user of the run's data
        (``user_id``); ``candidates`` restricts what may be returned."""
        return Response(await answer(body, await prepare(body, current())), media_type="application/json")

    async def prepare(body: RecommendRequest, model: Recommender) -> tuple[Job, list, list | None]:
        """The job of a request, its unknown history ids and skipped candidates; HTTPException if invalid."""
        if body.history is not None and body.user_id is not None:
            raise HTTPException(422, "send either history or user_id, not both")
        if body.user_id is not None:
            if model.users is None:
                raise HTTPException(503, "requests by user_id are off: the run's data could not be read when the "
                                         "model was loaded (see the server log); send history instead")
            row = model.user_row(body.user_id)
            if row is None:
                raise HTTPException(404, f"unknown user id: {json.dumps(body.user_id)} is not a user of the run's data")
            inter = model.interactions
            ids, unknown = inter.items[inter.offsets[row] : inter.offsets[row + 1]], []
        elif body.history is None:
            raise HTTPException(422, 'history: send history (raw item ids, oldest first) or user_id, e.g. '
                                     '{"history": [...], "k": 10}')
        elif not body.history:
            raise HTTPException(400, "history is empty: send at least one item id, oldest first")
        else:
            ids, unknown = model.lookup.lookup(body.history)
            if not len(ids):
                shown = ", ".join(map(json.dumps, unknown[:5])) + (" ..." if len(unknown) > 5 else "")
                raise HTTPException(400, f"none of the {len(unknown)} history item ids is known to the model: {shown}")
            row = None
        candidates = skipped = None
        if body.candidates is not None:
            if not body.candidates:
                raise HTTPException(400, "candidates is empty: send at least one item id, or leave it out")
            try:
                if model.loaded.model.item_tower is None:  # a lookup only
                    candidates = model.candidates(body.candidates)
                else:  # may read side features from disk: off the event loop
                    candidates = await batcher.call(model.candidates, body.candidates)
            except ValueError as exc:
                raise HTTPException(400, str(exc)) from None
            skipped = candidates.skipped
        return Job(ids, body.k, body.exclude_seen, candidates, row, model), unknown, skipped

    async def answer(body: RecommendRequest, prepared: tuple[Job, list, list | None]) -> bytes:
        """The JSON response body of a valid request (both paths)."""
        job, unknown, skipped = prepared
        items, scores = await batcher.submit(job)
        payload = {"items": items, "scores": scores, "unknown_items": unknown}
        if skipped is not None:
            payload["unknown_candidates"] = skipped
        if job.model.titles is not None:
            payload["titles"] = job.model.titles_of(items)
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
                prepared = await prepare(request, current())
            except (ValidationError, HTTPException):
                prepared = None  # FastAPI answers it, with the same message
            if prepared is not None:
                try:
                    out = await answer(request, prepared)
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

    @app.post("/similar", response_model=SimilarResponse, responses=errors)
    async def similar(body: SimilarRequest) -> Response:
        """The k items nearest to an item (item-to-item), by the checkpoint's similarity; never itself."""
        model = current()
        ids, _ = model.lookup.lookup([body.item_id])
        if not len(ids):
            raise HTTPException(404, f"unknown item id: {json.dumps(body.item_id)} is not known to the model")
        items, scores = await batcher.call(model.similar, int(ids[0]), body.k)
        payload = {"item_id": body.item_id, "items": items, "scores": scores}
        if model.titles is not None:
            payload["title"] = model.titles[int(ids[0])]
            payload["titles"] = model.titles_of(items)
        return Response(json.dumps(payload, separators=(",", ":")).encode(), media_type="application/json")

    @app.get("/items", response_model=list[ItemEntry])
    async def items(q: Annotated[str, Query(max_length=config.max_id_length)] = "",
                    limit: Annotated[int, Query(ge=1, le=100)] = 20) -> Response:
        """Items whose raw id is ``q`` or whose title contains it (the page's picker); the first items
        of the catalogue for an empty ``q``."""
        found = current().search_items(q, limit)
        payload = [{"id": raw, "title": title} for raw, title in found]
        return Response(json.dumps(payload, separators=(",", ":")).encode(), media_type="application/json")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index_page() -> HTMLResponse:
        """A page to try the model in a browser (page.html: no external resources)."""
        return HTMLResponse(page_html())

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        """Liveness plus batching counters."""
        model = current()
        return Health(status="ok", num_items=model.num_items, index=model.index_kind,
                      similarity=model.loaded.similarity, user_ids=model.users is not None,
                      titles=model.titles is not None,
                      admin=reloader is not None, reloads=0 if reloader is None else reloader.reloads,
                      requests=batcher.requests, batches=batcher.batches, largest_batch=batcher.largest_batch)

    return app


@functools.cache
def page_html() -> str:
    return (importlib.resources.files("seqrec.serving") / "page.html").read_text(encoding="utf-8")


def serve(
    run: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: ServeConfig | None = None,
    access_log: bool = False,
    progress: bool = False,
    admin_token: str | None = None,
) -> None:
    """Loads the model and index of ``run`` once and serves them with uvicorn until interrupted.

    ``admin_token``: turns on ``POST /admin/reload`` (admin.py); read it with ``admin_token()``, from a
    file or the environment, never from the command line."""
    import faiss
    import uvicorn

    config = config or ServeConfig()
    torch.set_num_threads(config.threads)
    faiss.omp_set_num_threads(config.threads)
    recommender = load_recommender(run, config.index, progress=progress)
    app = create_app(recommender, config, admin_token=admin_token)
    log.info("serving %d items (%s index, %s) on http://%s:%d%s", recommender.num_items, config.index,
             recommender.loaded.similarity, host, port, "; admin endpoints on" if admin_token else "")
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
