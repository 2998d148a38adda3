"""The serving fast path, the multi-worker batcher, per-thread torch/faiss threads and the int lookup."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import numpy as np
import pytest

from seqrec.retrieval.ids import ItemLookup
from seqrec.serving.app import create_app, fast_stack
from seqrec.serving.batcher import Batcher, Job, ServeConfig, load_recommender
from tests.test_serve import CONFIG, history_of, inter, run_dir, running  # noqa: F401 - fixtures

BAD = [
    (b'{"history": [], "k": 3}', "application/json", 400, "history is empty"),
    (b'{"history": ["nope"], "k": 3}', "application/json", 400, "none of the 1"),
    (b'{"history": ["i1"], "k": 0}', "application/json", 422, "k:"),
    (b'{"history": ["i1"], "k": 3, "extra": 1}', "application/json", 422, "extra"),
    (b'{"history": [1.5]}', "application/json", 422, "history[0]"),
    (b"{not json", "application/json", 422, "not valid JSON"),
    (b'{"history": ["i1"]}', "text/plain", 422, "JSON object"),
]


@pytest.fixture(scope="module")
def apps(run_dir):  # noqa: F811
    """The same recommender behind an app with its fast path and one without (FastAPI only); the fast
    path's answers are counted."""
    recommender = load_recommender(run_dir)
    fast_app, slow_app = create_app(recommender), create_app(recommender)
    slow_app.fast = None
    answered = {"fast": 0, "handed_on": 0}
    inner = fast_app.fast

    async def counting(scope, receive, send):
        result = await inner(scope, receive, send)
        answered["fast" if result is True else "handed_on"] += 1
        return result

    fast_app.fast = counting
    with running(fast_app) as fast_url, running(slow_app) as slow_url:
        with httpx.Client(base_url=fast_url, timeout=30) as fast, httpx.Client(base_url=slow_url, timeout=30) as slow:
            yield fast, slow, answered


def test_fast_path_answers_valid_requests_exactly_like_fastapi(apps, inter):  # noqa: F811
    fast, slow, answered = apps
    before = dict(answered)
    for u in range(5):
        for body in ({"history": history_of(inter, u), "k": 5},
                     {"history": [*history_of(inter, u), "unknown-1", "unknown-1"], "k": 3, "exclude_seen": False}):
            got = fast.post("/recommend", json=body, headers={"content-type": "application/json; charset=utf-8"})
            want = slow.post("/recommend", json=body)
            assert got.status_code == want.status_code == 200
            assert got.content == want.content and got.headers["content-type"] == "application/json"
    assert answered["fast"] - before["fast"] == 10 and answered["handed_on"] == before["handed_on"]
    assert fast.post("/recommend", json={"history": ["i1", "x9"], "k": 2}).json()["unknown_items"] == ["x9"]


@pytest.mark.parametrize(("content", "ctype", "status", "phrase"), BAD)
def test_invalid_requests_are_handed_to_fastapi_with_the_same_errors(apps, content, ctype, status, phrase):
    fast, slow, answered = apps
    before = answered["handed_on"]
    got = fast.post("/recommend", content=content, headers={"content-type": ctype})
    want = slow.post("/recommend", content=content, headers={"content-type": ctype})
    assert got.status_code == want.status_code == status
    assert got.json() == want.json() and phrase in got.json()["detail"]
    assert answered["handed_on"] == before + 1


def test_fast_path_hands_oversized_bodies_to_the_413_check(run_dir):  # noqa: F811
    app = create_app(load_recommender(run_dir), ServeConfig(max_body_bytes=100))
    body = b'{"history": [' + b",".join(b'"i1"' for _ in range(40)) + b'], "k": 3}'

    def chunks():
        for start in range(0, len(body), 30):
            yield body[start : start + 30]

    with running(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        for content in (body, chunks()):
            response = c.post("/recommend", content=content, headers={"content-type": "application/json"})
            assert response.status_code == 413 and "too large" in response.json()["detail"]
        assert c.post("/recommend", json={"history": ["i1"], "k": 2}).status_code == 200


class SlowRecommender:
    """Records how many batches run at once and in which threads, with each thread's faiss threads."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.faiss_threads: set[int] = set()
        self.sizes: list[int] = []

    def recommend(self, jobs):
        import faiss

        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.faiss_threads.add(faiss.omp_get_max_threads())
            self.sizes.append(len(jobs))
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
        return [([int(job.history[0])], [1.0]) for job in jobs]


def run_batcher(recommender, jobs, *, workers, window_s, max_batch=64, threads=1, spacing=0.0):
    async def main():
        batcher = Batcher(recommender, max_batch, window_s, workers, threads)
        batcher.start()
        try:
            started = time.perf_counter()
            tasks = []
            for job in jobs:
                tasks.append(asyncio.create_task(batcher.submit(job)))
                await asyncio.sleep(spacing)
            results = await asyncio.gather(*tasks)
            return results, time.perf_counter() - started, batcher
        finally:
            await batcher.stop()

    return asyncio.run(main())


def job(i: int) -> Job:
    return Job(np.array([i + 1], dtype=np.int64), 1, True)


def test_batcher_runs_up_to_workers_batches_at_once_with_one_faiss_thread_each():
    rec = SlowRecommender(0.2)
    # A request every 20 ms: the first goes alone, the rest pile up behind two busy workers.
    results, _, batcher = run_batcher(rec, [job(i) for i in range(12)], workers=2, window_s=0.0, spacing=0.02)
    assert [r[0] for r in results] == [[i + 1] for i in range(12)]  # every answer to its own request
    assert rec.most == 2 and batcher.batches < 12 and batcher.requests == 12 and sum(rec.sizes) == 12
    assert rec.faiss_threads == {1}  # set in each worker thread, not only in the main thread
    rec = SlowRecommender(0.05)
    run_batcher(rec, [job(i) for i in range(6)], workers=1, window_s=0.0, spacing=0.02)
    assert rec.most == 1


def test_batcher_does_not_delay_a_lone_request_but_waits_when_busy():
    rec = SlowRecommender(0.0)
    _, elapsed, batcher = run_batcher(rec, [job(0)], workers=2, window_s=2.0)
    assert elapsed < 1.0 and batcher.batches == 1  # idle server: the 2 s window is skipped
    rec = SlowRecommender(0.3)
    # While the first batch runs, the second waits the window and so collects every later request.
    results, _, batcher = run_batcher(rec, [job(i) for i in range(8)], workers=2, window_s=0.5, spacing=0.01)
    assert len(results) == 8 and rec.sizes == [1, 7]


def test_batch_failure_answers_every_request_and_frees_the_worker():
    class Failing(SlowRecommender):
        def recommend(self, jobs):
            if any(j.history[0] == 1 for j in jobs):
                raise RuntimeError("boom")
            return super().recommend(jobs)

    async def main():
        batcher = Batcher(Failing(0.0), 64, 0.0, 1, None)
        batcher.start()
        try:
            with pytest.raises(RuntimeError, match="boom"):
                await batcher.submit(job(0))
            return await batcher.submit(job(4))  # the only worker was released
        finally:
            await batcher.stop()

    assert asyncio.run(main()) == ([5], [1.0])


def test_int_lookup_fast_path_matches_the_general_one():
    lookup = ItemLookup(np.array([0, 7, 3, 2**40, -5], dtype=np.int64))
    ids, unknown = lookup.lookup([3, 7, 3, 2**40, -5])
    assert ids.tolist() == [2, 1, 2, 3, 4] and ids.dtype == np.int64 and unknown == []
    ids, unknown = lookup.lookup([3, 9, 9, 7, 2**70])  # 2**70 overflows int64: the general path
    assert ids.tolist() == [2, 1] and unknown == [9, 2**70]
    ids, unknown = lookup.lookup([3, 9, 9])
    assert ids.tolist() == [2] and unknown == [9]
    ids, unknown = ItemLookup(np.array([0], dtype=np.int64)).lookup([1, 1])
    assert ids.tolist() == [] and unknown == [1]


def test_fast_stack_names_uvloop_and_httptools_when_installed():
    import importlib.util

    stack = fast_stack()
    assert ("loop" in stack) == (importlib.util.find_spec("uvloop") is not None)
    assert ("http" in stack) == (importlib.util.find_spec("httptools") is not None)
    assert set(stack.values()) <= {"uvloop", "httptools"}


def test_workers_is_validated():
    assert ServeConfig(workers=3).workers == 3
    with pytest.raises(ValueError, match="workers"):
        ServeConfig(workers=0)
