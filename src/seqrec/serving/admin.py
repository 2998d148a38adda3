"""Admin endpoints of the HTTP service: the token that guards them and ``POST /admin/reload``.

Admin endpoints exist only when a token is configured: ``seqrec serve --admin-token-file PATH`` or the
``SEQREC_ADMIN_TOKEN`` environment variable (never an argument: a command line shows in ``ps``).
Without one every ``/admin/...`` path answers 404 saying so. With one, a request to any ``/admin/...``
path without ``Authorization: Bearer <token>`` is answered 401 before its body is read; the token is
compared with ``hmac.compare_digest`` (constant time).

``POST /admin/reload {"run": DIR}`` loads DIR (another run, or the same run after training saved a new
best checkpoint) completely, index and user data included, in a thread of its own while the old model
keeps answering; then it swaps one reference. A request looks its ids up and is ranked with the model
it started with, so nothing in flight fails or mixes two models. A failed load leaves the old model
serving and answers 400 with the reason. One reload at a time (409 while one runs).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from seqrec.errors import SeqrecError

log = logging.getLogger(__name__)

TOKEN_ENV = "SEQREC_ADMIN_TOKEN"
_MIN_TOKEN = 16  # shorter tokens are accepted with a warning
_MAX_BODY = 65_536  # a reload request is a path


def admin_token(path: str | Path | None = None, environ: dict[str, str] | None = None) -> str | None:
    """The admin token: the contents of ``path`` (surrounding whitespace stripped), else the
    ``SEQREC_ADMIN_TOKEN`` environment variable; None (admin endpoints off) when neither is set.

    Raises:
        ValueError: If the file is empty or holds more than one line, or the token is not printable ASCII.
        OSError: If the file cannot be read.
    """
    environ = os.environ if environ is None else environ
    if path is not None:
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        token, where = text.strip(), str(path)
        if not token:
            raise ValueError(f"{path}: the admin token file is empty")
        if "\n" in token:
            raise ValueError(f"{path}: the admin token file must hold one line (the token)")
        mode = path.stat().st_mode
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("%s: the admin token file is readable by other users (chmod 600 it)", path)
        if environ.get(TOKEN_ENV):
            log.info("admin token from %s; %s is ignored", path, TOKEN_ENV)
    else:
        token, where = environ.get(TOKEN_ENV, "").strip(), TOKEN_ENV
        if not token:
            return None
    if not (token.isascii() and token.isprintable()) or " " in token:
        raise ValueError(f"{where}: the admin token must be printable ASCII without spaces")
    if len(token) < _MIN_TOKEN:
        log.warning("%s: the admin token has %d characters; use %d or more (e.g. `openssl rand -hex 32`)",
                    where, len(token), _MIN_TOKEN)
    return token


def authorized(headers: list[tuple[bytes, bytes]], token: str) -> bool:
    """Whether the ASGI ``headers`` carry ``Authorization: Bearer <token>`` (constant-time comparison)."""
    expected = token.encode()
    for name, value in headers:
        if name == b"authorization":
            scheme, _, given = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), expected):
                return True
    return False


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: str = Field(min_length=1, max_length=4096, description="run directory (or checkpoint file) to serve")


class Reloader:
    """Loads a run in a thread of its own and hands the result to ``swap``; one reload at a time.

    Args:
        load: run path -> a fully built recommender (model, index, user data).
        swap: installs it (a reference assignment).
        threads: torch/faiss threads of the loading thread.
    """

    def __init__(self, load: Callable[[str], Any], swap: Callable[[Any], None], threads: int | None):
        from seqrec.serving.batcher import _set_threads

        self.load = load
        self.swap = swap
        self.reloads = 0
        self._lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqrec-reload",
                                            initializer=_set_threads, initargs=(threads,))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def handle(self, body: bytes) -> tuple[int, dict]:
        """(status, JSON payload) for a ``POST /admin/reload`` body."""
        try:
            request = ReloadRequest.model_validate_json(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(map(str, first.get("loc", ()))) or "body"
            if first.get("type") == "json_invalid":
                return 422, {"detail": "request body is not valid JSON"}
            return 422, {"detail": f'{loc}: {first.get("msg", "invalid value")} (send {{"run": "DIR"}})'}
        if self._lock.locked():
            return 409, {"detail": "a reload is already in progress; the current model keeps serving"}
        async with self._lock:
            started = time.perf_counter()
            try:
                fresh = await asyncio.get_running_loop().run_in_executor(self._executor, self.load, request.run)
            except (SeqrecError, ValueError, OSError) as exc:
                log.warning("reload of %s failed, the old model keeps serving: %s", request.run, exc)
                return 400, {"detail": f"reload failed, the old model keeps serving: {_one_line(exc)}"}
            except Exception as exc:  # noqa: BLE001 - whatever went wrong, the old model stays
                log.exception("reload of %s failed, the old model keeps serving", request.run)
                return 500, {"detail": f"reload failed ({type(exc).__name__}), the old model keeps serving"}
            self.swap(fresh)
            self.reloads += 1
            seconds = time.perf_counter() - started
            log.info("reloaded %s in %.2f s: %d items", request.run, seconds, fresh.num_items)
            return 200, {"status": "reloaded", "run": request.run, "num_items": fresh.num_items,
                         "index": fresh.index_kind, "user_ids": fresh.users is not None,
                         "seconds": round(seconds, 3), "reloads": self.reloads}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, FileNotFoundError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    return text[:500] or type(exc).__name__


async def answer_admin(scope: dict, receive: Any, send: Any, token: str | None, reloader: Reloader | None) -> None:
    """The whole ASGI answer to a request under ``/admin/``."""
    from seqrec.serving.app import _send_json

    if token is None or reloader is None:
        await _send_json(send, 404, {"detail": "admin endpoints are off: start seqrec serve with "
                                               f"--admin-token-file PATH or {TOKEN_ENV} set"})
        return
    if not authorized(scope.get("headers", []), token):
        await _send_json(send, 401, {"detail": "missing or wrong admin token: send Authorization: Bearer <token>"},
                         headers=[(b"www-authenticate", b"Bearer")])
        return
    if scope["path"] != "/admin/reload":
        await _send_json(send, 404, {"detail": "no such admin endpoint; there is POST /admin/reload"})
        return
    if scope["method"] != "POST":
        await _send_json(send, 405, {"detail": "use POST /admin/reload"})
        return
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return  # the client went away
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > _MAX_BODY:
            await _send_json(send, 413, {"detail": f"request body too large: the limit is {_MAX_BODY} bytes"})
            return
        if not message.get("more_body", False):
            break
    status, payload = await reloader.handle(b"".join(chunks))
    await _send_json(send, status, payload)


