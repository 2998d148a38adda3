"""Admin token and POST /admin/reload: off without a token, 401 without it, swaps with no failed request."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest

from seqrec.serving.admin import TOKEN_ENV, admin_token, authorized
from seqrec.serving.app import create_app
from seqrec.serving.batcher import ServeConfig, load_recommender
from seqrec.train.loop import train
from tests.conftest import tiny_config
from tests.test_serve import CONFIG, history_of, inter, run_dir, running  # noqa: F401 - fixtures

TOKEN = "s3cret-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def other_run(tmp_path_factory):
    """A second run over other data: 80 items instead of 60, so a swap shows in /health."""
    out = tmp_path_factory.mktemp("serve-other") / "run"
    train(tiny_config(train={"epochs": 1}, data={"synthetic_items": 80}), out, progress=False, command=["test"])
    return out


def test_admin_token_from_file_or_environment(tmp_path):
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    os.chmod(path, 0o600)
    assert admin_token(path, environ={}) == TOKEN
    assert admin_token(path, environ={TOKEN_ENV: "other-token-abcdefgh"}) == TOKEN  # the file wins
    assert admin_token(None, environ={TOKEN_ENV: TOKEN}) == TOKEN
    assert admin_token(None, environ={}) is None and admin_token(None, environ={TOKEN_ENV: " "}) is None
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        admin_token(path, environ={})
    with pytest.raises(ValueError, match="printable ASCII"):
        admin_token(None, environ={TOKEN_ENV: "two words"})
    with pytest.raises(FileNotFoundError):
        admin_token(tmp_path / "missing", environ={})


def test_bearer_check():
    assert authorized([(b"authorization", f"Bearer {TOKEN}".encode())], TOKEN)
    assert authorized([(b"authorization", f"bearer  {TOKEN} ".encode())], TOKEN)
    for value in (b"", TOKEN.encode(), f"Basic {TOKEN}".encode(), f"Bearer {TOKEN}x".encode(), b"Bearer "):
        assert not authorized([(b"authorization", value)], TOKEN)
    assert not authorized([], TOKEN)


def test_admin_endpoints_are_off_without_a_token(run_dir):  # noqa: F811
    with running(create_app(load_recommender(run_dir))) as base, httpx.Client(base_url=base) as c:
        response = c.post("/admin/reload", json={"run": str(run_dir)}, headers=AUTH)
        assert response.status_code == 404 and "admin endpoints are off" in response.json()["detail"]
        assert c.get("/health").json()["admin"] is False


def test_reload_needs_the_token_and_a_failed_reload_keeps_the_old_model(run_dir, other_run, tmp_path):  # noqa: F811
    app = create_app(load_recommender(run_dir), admin_token=TOKEN)
    with running(app) as base, httpx.Client(base_url=base, timeout=60) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            response = c.post("/admin/reload", json={"run": str(other_run)}, headers=headers)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert c.get("/admin/anything").status_code == 401  # every admin path, before anything else
        assert c.get("/admin/reload", headers=AUTH).status_code == 405
        assert c.post("/admin/reload", content=b"{bad", headers=AUTH).status_code == 422
        assert c.post("/admin/reload", json={"run": str(run_dir), "x": 1}, headers=AUTH).status_code == 422
        broken = tmp_path / "broken"
        (broken / "checkpoints").mkdir(parents=True)
        (broken / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
        for bad in (tmp_path / "missing", broken):
            response = c.post("/admin/reload", json={"run": str(bad)}, headers=AUTH)
            assert response.status_code == 400, response.text
            assert response.json()["detail"].startswith("reload failed, the old model keeps serving: ")
            assert c.get("/health").json()["num_items"] == 60
        assert c.post("/recommend", json={"history": ["i1", "i2"], "k": 3}).status_code == 200
        ok = c.post("/admin/reload", json={"run": str(other_run)}, headers=AUTH)
        assert ok.status_code == 200 and ok.json()["num_items"] == 80, ok.text
        health = c.get("/health").json()
        assert health["num_items"] == 80 and health["reloads"] == 1 and health["admin"] is True
        assert "i75" in c.post("/recommend", json={"history": ["i1"], "k": 80}).json()["items"]


def test_reload_under_concurrent_load_fails_no_request(run_dir, other_run, inter):  # noqa: F811
    app = create_app(load_recommender(run_dir), ServeConfig(batch_window_ms=1.0), admin_token=TOKEN)
    bodies = [{"history": history_of(inter, u), "k": 5} for u in range(16)]

    async def load(base: str) -> tuple[list[int], list[dict]]:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            statuses: list[int] = []
            done = asyncio.Event()

            async def worker(n: int) -> None:
                while not done.is_set():
                    response = await client.post("/recommend", json=bodies[n % len(bodies)])
                    statuses.append(response.status_code)

            workers = [asyncio.create_task(worker(n)) for n in range(16)]
            await asyncio.sleep(0.2)
            reloads = []
            for run in (other_run, run_dir, other_run):  # away, back and away again, under load
                response = await client.post("/admin/reload", json={"run": str(run)}, headers=AUTH)
                reloads.append(response.json())
                await asyncio.sleep(0.1)
            done.set()
            await asyncio.gather(*workers)
            return statuses, reloads

    with running(app) as base:
        statuses, reloads = asyncio.run(load(base))
    assert [r["status"] for r in reloads] == ["reloaded"] * 3, reloads
    assert len(statuses) > 50 and set(statuses) == {200}


def test_cli_serve_reads_the_token_from_a_file_or_the_environment(run_dir, tmp_path, monkeypatch):  # noqa: F811
    import faiss
    import torch
    import uvicorn

    from seqrec.cli import main

    captured = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: captured.update(app=app))
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        monkeypatch.delenv(TOKEN_ENV, raising=False)
        assert main(["serve", str(run_dir), "--quiet"]) == 0
        off = captured["app"]
        assert main(["serve", str(run_dir), "--quiet", "--admin-token-file", str(path)]) == 0
        from_file = captured["app"]
        monkeypatch.setenv(TOKEN_ENV, TOKEN)
        assert main(["serve", str(run_dir), "--quiet"]) == 0
        from_env = captured["app"]
        path.write_text("")
        assert main(["serve", str(run_dir), "--quiet", "--admin-token-file", str(path)]) == 2  # empty file
    finally:
        torch.set_num_threads(threads[0])
        faiss.omp_set_num_threads(threads[1])
    assert off.state.reloader is None and from_file.state.reloader is not None and from_env.state.reloader is not None
    with running(from_env) as base, httpx.Client(base_url=base) as c:
        assert c.post("/admin/reload", json={"run": str(run_dir)}).status_code == 401
        assert c.post("/admin/reload", json={"run": str(run_dir)}, headers=AUTH).json()["status"] == "reloaded"
