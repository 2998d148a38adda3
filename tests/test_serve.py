"""HTTP serving through a real uvicorn server on 127.0.0.1 and a real HTTP client (httpx)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import uvicorn

from seqrec.data.readers import read_interactions
from seqrec.retrieval.ids import ItemLookup
from seqrec.retrieval.recommend import load_model, recommend_batches
from seqrec.serving.app import create_app
from seqrec.serving.batcher import Recommender, ServeConfig, load_recommender
from seqrec.train.loop import train
from tests.conftest import tiny_config

CONFIG = tiny_config(train={"epochs": 1})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "run"
    train(CONFIG, out, progress=False, command=["test"])
    return out


@pytest.fixture(scope="module")
def inter():
    return read_interactions(CONFIG.data)


@contextlib.contextmanager
def running(app):
    """Serves ``app`` with uvicorn in a background thread on a free loopback port; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def url(run_dir):
    # A wide batching window so that concurrent requests reliably share batches on a busy machine.
    app = create_app(load_recommender(run_dir), ServeConfig(batch_window_ms=20.0))
    with running(app) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


def history_of(inter, u: int) -> list[str]:
    return [inter.item_ids[i] for i in inter.sequence(u)]


def test_health_and_openapi(client):
    health = client.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["num_items"] == CONFIG.data.synthetic_items and body["index"] == "exact"
    schema = client.get("/openapi.json").json()
    request_schema = json.dumps(schema["components"]["schemas"])
    assert "/recommend" in schema["paths"] and "exclude_seen" in request_schema


def test_recommend_returns_k_raw_ids_without_seen_items(client, inter):
    history = history_of(inter, 3)
    body = client.post("/recommend", json={"history": history, "k": 7}).json()
    assert len(body["items"]) == 7 and len(set(body["items"])) == 7
    assert all(isinstance(i, str) and i.startswith("i") for i in body["items"])
    assert body["scores"] == sorted(body["scores"], reverse=True)
    assert not set(body["items"]) & set(history) and body["unknown_items"] == []
    # exclude_seen defaults to true; false may return the history, and a k above the catalogue is cut.
    everything = client.post("/recommend", json={"history": history, "k": 1000, "exclude_seen": False}).json()
    assert len(everything["items"]) == CONFIG.data.synthetic_items and set(history) <= set(everything["items"])


def test_ranking_equals_recommend_batches(client, run_dir, inter):
    loaded = load_model(run_dir)
    for u in range(8):
        _, items, scores = next(recommend_batches(loaded, inter, np.array([u]), 10))
        body = client.post("/recommend", json={"history": history_of(inter, u), "k": 10}).json()
        assert body["items"] == [inter.item_ids[i] for i in items[0]]
        np.testing.assert_allclose(body["scores"], scores[0], rtol=0, atol=1e-6)


def test_unknown_items_are_dropped_and_reported(client, inter):
    history = history_of(inter, 5)
    noisy = ["nope", *history[:3], 12345, "nope", *history[3:]]
    body = client.post("/recommend", json={"history": noisy, "k": 5}).json()
    assert body["unknown_items"] == ["nope", 12345]
    assert body["items"] == client.post("/recommend", json={"history": history, "k": 5}).json()["items"]


BIG = json.dumps({"history": ["i1"] * 250_000}).encode()  # ~1.5 MB


@pytest.mark.parametrize(
    ("content", "headers", "status", "phrase"),
    [
        ({"history": [], "k": 5}, None, 400, "history is empty"),
        ({"history": ["nope", 77]}, None, 400, "none of the 2 history item ids is known"),
        ({"history": ["i1"], "k": 0}, None, 422, "k"),
        ({"history": ["i1"], "k": 10**9}, None, 422, "k"),
        ({"history": ["i1"], "k": "5"}, None, 422, "k"),
        ({"history": ["i1"], "k": 2.5}, None, 422, "k"),
        ({"history": "i1"}, None, 422, "history"),
        ({"history": ["i1", 1.5]}, None, 422, "history[1]"),
        ({"history": [True]}, None, 422, "history[0]"),
        ({"history": [None]}, None, 422, "history[0]"),
        ({"history": [["i1"]]}, None, 422, "history[0]"),
        ({"history": ["x" * 300]}, None, 422, "history[0]"),
        ({"history": ["i1"] * 10_001}, None, 422, "history"),
        ({"history": ["i1"], "exclude_seen": "yes"}, None, 422, "exclude_seen"),
        ({"history": ["i1"], "kk": 3}, None, 422, "kk"),
        ({"k": 3}, None, 422, "history"),
        ([1, 2], None, 422, "JSON object"),
        (b"{not json", {"content-type": "application/json"}, 422, "not valid JSON"),
        (b"", {"content-type": "application/json"}, 422, "missing"),
        (b'{"history": ["i1"]}', {"content-type": "text/plain"}, 422, "JSON object"),
        (BIG, {"content-type": "application/json"}, 413, "too large"),
    ],
)
def test_bad_requests_get_4xx_with_a_message(client, run_dir, content, headers, status, phrase):
    if isinstance(content, bytes):
        response = client.post("/recommend", content=content, headers=headers)
    else:
        response = client.post("/recommend", json=content)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and phrase in detail
    assert "Traceback" not in detail and str(run_dir) not in detail and ".py" not in detail


def test_streamed_oversized_body_and_wrong_method(client):
    def chunks():
        for start in range(0, len(BIG), 65_536):
            yield BIG[start : start + 65_536]

    # A generator body goes out chunked, without Content-Length: the limit is counted while reading.
    response = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "too large" in response.json()["detail"]
    assert client.get("/recommend").status_code == 405
    assert client.get("/nowhere").status_code == 404
    assert client.get("/health").status_code == 200  # still serving


def test_concurrent_requests_all_succeed_and_share_batches(client, url, inter):
    users = list(range(32))
    expected = {u: client.post("/recommend", json={"history": history_of(inter, u), "k": 5}).json() for u in users}
    before = client.get("/health").json()

    async def burst():
        async with httpx.AsyncClient(base_url=url, timeout=30) as aclient:
            return await asyncio.gather(
                *(aclient.post("/recommend", json={"history": history_of(inter, u), "k": 5}) for u in users)
            )

    responses = asyncio.run(burst())
    after = client.get("/health").json()
    assert all(r.status_code == 200 for r in responses)
    assert after["requests"] - before["requests"] == len(users)
    assert after["batches"] - before["batches"] < len(users)
    assert after["largest_batch"] > 1
    for u, response in zip(users, responses, strict=True):
        got, want = response.json(), expected[u]
        # Batching pads histories to a common width; the encoder is padding-invariant up to rounding.
        np.testing.assert_allclose(got["scores"], want["scores"], rtol=0, atol=1e-5)
        assert set(got["items"]) == set(want["items"]) or np.min(np.abs(np.diff(want["scores"]))) < 1e-5


def test_int_raw_ids_match_json_ints_and_strings(run_dir):
    loaded = load_model(run_dir)
    loaded.item_ids = np.arange(1000, 1000 + loaded.model.num_items + 1, dtype=np.int64)
    loaded.item_ids[0] = 0
    index = load_recommender(run_dir).index
    with running(create_app(Recommender(loaded, index, "exact"))) as base, httpx.Client(base_url=base) as c:
        as_ints = c.post("/recommend", json={"history": [1001, 1005, 1009], "k": 5}).json()
        as_strings = c.post("/recommend", json={"history": ["1001", "1005", "1009", "i3"], "k": 5}).json()
    assert as_ints["items"] == as_strings["items"] and all(isinstance(i, int) for i in as_ints["items"])
    assert as_ints["unknown_items"] == [] and as_strings["unknown_items"] == ["i3"]
    assert not {1001, 1005, 1009} & set(as_ints["items"])


def test_item_lookup_either_spelling():
    ints = ItemLookup(np.array([0, 7, 3, 2**40], dtype=np.int64))
    ids, unknown = ints.lookup([3, "7", " 3 ", str(2**40), 2**70, "x", 5, True])
    assert ids.tolist() == [2, 1, 2, 3] and unknown == [2**70, "x", 5, True]
    strings = ItemLookup(np.array(["", "a", "12", "b"], dtype=object))
    ids, unknown = strings.lookup(["a", 12, "12", "c", "a"])
    assert ids.tolist() == [1, 2, 2, 1] and unknown == ["c"]
    assert strings.raw([3, 1]) == ["b", "a"] and ints.raw([3]) == [2**40]


def test_cli_serve_binds_loopback_and_serves(run_dir, monkeypatch):
    """`seqrec serve` loads once and hands uvicorn an app bound to 127.0.0.1 by default."""
    import faiss

    from seqrec.cli import main

    captured = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: captured.update(app=app, **kwargs))
    threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        assert main(["serve", str(run_dir), "--port", "8123", "--max-k", "3", "--threads", "1", "--quiet"]) == 0
        assert torch.get_num_threads() == 1
    finally:  # serve() sets process-wide thread counts; later tests keep theirs
        torch.set_num_threads(threads[0])
        faiss.omp_set_num_threads(threads[1])
    assert captured["host"] == "127.0.0.1" and captured["port"] == 8123
    with running(captured["app"]) as base, httpx.Client(base_url=base) as c:
        assert len(c.post("/recommend", json={"history": ["i1", "i2"], "k": 3}).json()["items"]) == 3
        assert c.post("/recommend", json={"history": ["i1"], "k": 4}).status_code == 422
