"""POST /recommend with candidates and user_id, and POST /similar, against the Python API's answers."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

import seqrec
from seqrec.serving.app import create_app
from seqrec.serving.batcher import ServeConfig, load_recommender
from tests.test_serve import CONFIG, history_of, inter, run_dir, running  # noqa: F401 - fixtures


@pytest.fixture(scope="module")
def api(run_dir):  # noqa: F811
    return seqrec.load(run_dir)


@pytest.fixture(scope="module")
def client(run_dir):  # noqa: F811
    app = create_app(load_recommender(run_dir), ServeConfig(max_candidates=50))
    with running(app) as base, httpx.Client(base_url=base, timeout=30) as c:
        yield c


def pairs(body: dict) -> list[tuple]:
    return list(zip(body["items"], body["scores"], strict=True))


def close(got: list[tuple], want: list[tuple]) -> None:
    assert [i for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=0, atol=1e-5)


def test_candidates_restrict_the_answer_as_the_api_does(client, api, inter):  # noqa: F811
    history = history_of(inter, 2)
    candidates = [f"i{n}" for n in range(1, 40, 3)] + ["nope"]
    body = client.post("/recommend", json={"history": history, "k": 5, "candidates": candidates}).json()
    assert set(body["items"]) <= set(candidates) and len(body["items"]) == 5
    assert body["unknown_candidates"] == ["nope"]
    close(pairs(body), api.recommend([history], k=5, candidates=candidates)[0])
    # Seen candidates are excluded; with exclude_seen false every candidate can come back.
    seen = history[-3:]
    body = client.post("/recommend", json={"history": history, "k": 10, "candidates": seen}).json()
    assert body["items"] == [] or not set(body["items"]) & set(seen)
    body = client.post("/recommend", json={"history": history, "k": 10, "candidates": seen, "exclude_seen": False}).json()
    assert sorted(body["items"]) == sorted(set(seen))
    # Without candidates the answer has no unknown_candidates field (the response stays as it was).
    assert "unknown_candidates" not in client.post("/recommend", json={"history": history}).json()


def test_user_id_uses_the_users_whole_sequence(client, api, inter):  # noqa: F811
    for u in (0, 7):
        raw = inter.user_ids[u]
        got = client.post("/recommend", json={"user_id": raw.item() if hasattr(raw, "item") else raw, "k": 6}).json()
        close(pairs(got), api.recommend_users([raw], k=6)[0])
        assert not set(got["items"]) & set(history_of(inter, u)) and got["unknown_items"] == []
    raw = inter.user_ids[3]
    spelled = str(raw) if not isinstance(raw, str) else raw
    with_candidates = client.post("/recommend", json={"user_id": spelled, "k": 3, "candidates": ["i1", "i2", "i3", "i4"]})
    assert with_candidates.status_code == 200, with_candidates.text
    close(pairs(with_candidates.json()), api.recommend_users([raw], k=3, candidates=["i1", "i2", "i3", "i4"])[0])


def test_similar_matches_the_api(client, api):
    for item in ("i1", "i17"):
        body = client.post("/similar", json={"item_id": item, "k": 4}).json()
        assert body["item_id"] == item and item not in body["items"]
        close(pairs(body), api.similar_items([item], k=4)[0])


@pytest.mark.parametrize(
    ("path", "content", "status", "phrase"),
    [
        ("/recommend", {"user_id": "no-such-user"}, 404, "unknown user id"),
        ("/recommend", {"user_id": "u1", "history": ["i1"]}, 422, "either history or user_id"),
        ("/recommend", {"user_id": None}, 422, "history"),
        ("/recommend", {"user_id": 1.5}, 422, "user_id"),
        ("/recommend", {"history": ["i1"], "candidates": []}, 400, "candidates is empty"),
        ("/recommend", {"history": ["i1"], "candidates": ["nope", 99]}, 400, "none of the 2 candidate ids"),
        ("/recommend", {"history": ["i1"], "candidates": ["i1"] * 51}, 422, "candidates"),
        ("/recommend", {"history": ["i1"], "candidates": ["i1", 2.5]}, 422, "candidates[1]"),
        ("/recommend", {"history": ["i1"], "candidates": "i1"}, 422, "candidates"),
        ("/similar", {"item_id": "nope"}, 404, "unknown item id"),
        ("/similar", {"item_id": "i1", "k": 0}, 422, "k"),
        ("/similar", {"item_id": "i1", "k": 10**9}, 422, "k"),
        ("/similar", {"item_id": ["i1"]}, 422, "item_id"),
        ("/similar", {"k": 3}, 422, "item_id"),
        ("/similar", {"item_id": "i1", "extra": 1}, 422, "extra"),
    ],
)
def test_bad_requests_get_4xx_with_a_message(client, run_dir, path, content, status, phrase):  # noqa: F811
    response = client.post(path, json=content)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and phrase in detail
    assert "Traceback" not in detail and str(run_dir) not in detail


def test_user_id_is_refused_with_503_when_the_run_data_is_not_read(run_dir):  # noqa: F811
    app = create_app(load_recommender(run_dir, user_data=False))
    with running(app) as base, httpx.Client(base_url=base, timeout=30) as c:
        response = c.post("/recommend", json={"user_id": "u1"})
        assert response.status_code == 503 and "send history instead" in response.json()["detail"]
        assert c.get("/health").json()["user_ids"] is False
        assert c.post("/recommend", json={"history": ["i1"]}).status_code == 200
