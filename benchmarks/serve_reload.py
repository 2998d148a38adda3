"""Hot reload under load: requests, errors and latency of `seqrec serve` while POST /admin/reload swaps models.

Starts `seqrec serve RUN_A` as a subprocess on a free 127.0.0.1 port with an admin token in
SEQREC_ADMIN_TOKEN, then keeps C connections (default 64) busy in a closed loop (each sends one POST
/recommend of a random 20-50 item history, k=10, waits for the answer, sends the next; httpx, one
process). The first ``--seconds`` are the baseline (no reload); during the next ``--seconds`` a reload
alternating RUN_B / RUN_A is sent every ``--reload-every`` seconds. Per phase: requests, errors (non-200
answers and failed or dropped connections), p50/p99/max latency; for the reload phase also the p99 of
requests that were in flight during a reload (started before it finished and ended after it began,
plus 0.5 s after), and each reload's duration.

Without --run-a/--run-b it trains two small runs on the built-in synthetic data (2000 users, 400 items,
1 epoch, different seeds) under /tmp/seqrec-bench/reload-{a,b}.

``--client wrk`` drives the same two phases with wrk (serve_load.py's Lua script; `apt-get install
wrk`), which leaves the CPU to the server, so its latencies are the server's; httpx (default) costs
milliseconds of client CPU per request on the same cores and inflates latencies, but also measures the
window around each reload.

Usage:
    nice -n 19 python benchmarks/serve_reload.py [--run-a DIR --run-b DIR] [--clients 64] [--seconds 15]
        [--client httpx|wrk]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

CACHE = Path("/tmp/seqrec-bench")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seqrec(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "seqrec", *args], env=env, **kwargs)


def ensure_run(path: Path, seed: int) -> Path:
    if not (path / "checkpoints").is_dir():
        code = seqrec("train", "--out", str(path), "--overwrite", "--set", "train.epochs=1",
                      "--set", f"train.seed={seed}").wait()
        if code:
            raise SystemExit(f"training {path} failed ({code})")
    return path


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


async def drive(url: str, token: str, args: argparse.Namespace, items: list) -> dict:
    rng = np.random.default_rng(0)
    bodies = [json.dumps({"history": rng.choice(items, rng.integers(20, 51)).tolist(), "k": 10}).encode()
              for _ in range(300)]
    records: list[tuple[float, float, bool]] = []  # (start, end, ok)
    reloads: list[tuple[float, float, int, str]] = []
    limits = httpx.Limits(max_connections=args.clients + 1, max_keepalive_connections=args.clients + 1)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        stop = time.perf_counter() + 2 * args.seconds
        reload_from = stop - args.seconds

        async def worker(n: int) -> None:
            i = n
            while time.perf_counter() < stop:
                started = time.perf_counter()
                try:
                    response = await client.post("/recommend", content=bodies[i % len(bodies)],
                                                 headers={"content-type": "application/json"})
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                records.append((started, time.perf_counter(), ok))
                i += args.clients

        async def reloader() -> None:
            await asyncio.sleep(max(reload_from - time.perf_counter(), 0) + 1.0)
            runs, n = [args.run_b, args.run_a], 0
            while time.perf_counter() < stop - args.reload_every / 2:
                started = time.perf_counter()
                response = await client.post("/admin/reload", json={"run": str(runs[n % 2])},
                                             headers={"Authorization": f"Bearer {token}"})
                reloads.append((started, time.perf_counter(), response.status_code, response.text[:200]))
                n += 1
                await asyncio.sleep(args.reload_every)

        await asyncio.gather(*(worker(n) for n in range(args.clients)), reloader())
    phases = {}
    for name, lo, hi in (("baseline", 0, reload_from), ("reloading", reload_from, stop)):
        part = [r for r in records if lo <= r[0] < hi]
        lat = [e - s for s, e, _ in part]
        phases[name] = {"requests": len(part), "errors": sum(not ok for _, _, ok in part),
                        "req_per_s": round(len(part) / args.seconds, 1), "p50_ms": round(percentile(lat, 50), 1),
                        "p99_ms": round(percentile(lat, 99), 1), "max_ms": round(max(lat) * 1000, 1) if lat else None}
    during = [e - s for s, e, _ in records if any(s < re + 0.5 and e > rs for rs, re, _, _ in reloads)]
    phases["during_reload"] = {"requests": len(during), "p99_ms": round(percentile(during, 99), 1),
                               "max_ms": round(max(during) * 1000, 1) if during else None}
    phases["reloads"] = [{"status": code, "seconds": round(e - s, 3)} for s, e, code, _ in reloads]
    failed = [text for _, _, code, text in reloads if code != 200]
    if failed:
        phases["reload_failures"] = failed
    return phases


def drive_wrk(url: str, token: str, args: argparse.Namespace, items: list) -> dict:
    """The same two phases with wrk as the load generator (serve_load.py's script): a few tens of
    microseconds of client CPU per request instead of httpx's milliseconds, so the latencies are the
    server's. wrk reports whole phases only (no during-reload window)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serve_load import parse_wrk, wrk_command, wrk_script

    rng = np.random.default_rng(0)
    bodies = [json.dumps({"history": rng.choice(items, rng.integers(20, 51)).tolist(), "k": 10}).encode()
              for _ in range(300)]
    script = wrk_script(bodies, CACHE / "serve_reload.lua")
    subprocess.run(wrk_command(url, script, args.clients, 3), check=True, capture_output=True)  # warm-up
    phases: dict = {}
    reloads = []
    for name in ("baseline", "reloading"):
        wrk = subprocess.Popen(wrk_command(url, script, args.clients, args.seconds), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        if name == "reloading":
            time.sleep(1.0)
            runs, n = [args.run_b, args.run_a], 0
            while wrk.poll() is None and n < 100:
                started = time.perf_counter()
                response = httpx.post(f"{url}/admin/reload", json={"run": str(runs[n % 2])}, timeout=120,
                                      headers={"Authorization": f"Bearer {token}"})
                reloads.append({"status": response.status_code, "seconds": round(time.perf_counter() - started, 3)})
                n += 1
                if time.perf_counter() - started < args.reload_every:
                    time.sleep(args.reload_every - (time.perf_counter() - started))
                if wrk.poll() is None and time.perf_counter() - started > args.seconds - 2:
                    break
        out, _ = wrk.communicate()
        w = parse_wrk(out)
        wall = w["duration_us"] / 1e6
        phases[name] = {"requests": int(w["requests"]),
                        "errors": int(w["connect"] + w["read"] + w["write"] + w["status"] + w["timeout"]),
                        "req_per_s": round(w["requests"] / wall, 1), "p50_ms": round(w["p50"] / 1000, 1),
                        "p99_ms": round(w["p99"] / 1000, 1), "max_ms": round(w["max"] / 1000, 1)}
    phases["reloads"] = reloads
    return phases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-a", type=Path, help="run served first (default: trained under /tmp)")
    parser.add_argument("--run-b", type=Path, help="run swapped in (default: trained under /tmp)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per phase (baseline, reloading)")
    parser.add_argument("--reload-every", type=float, default=3.0)
    parser.add_argument("--client", choices=("httpx", "wrk"), default="httpx",
                        help="load generator: httpx (in-process, also the during-reload window) or wrk")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    args.run_a = args.run_a or ensure_run(CACHE / "reload-a", 1)
    args.run_b = args.run_b or ensure_run(CACHE / "reload-b", 2)

    from seqrec.retrieval.recommend import load_model

    items = [i.item() if hasattr(i, "item") else i for i in load_model(args.run_a).item_ids[1:]]
    token = secrets.token_hex(24)
    port = free_port()
    server = seqrec("serve", str(args.run_a), "--port", str(port), "--quiet",
                    env={**os.environ, "SEQREC_ADMIN_TOKEN": token})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("server did not start")
            time.sleep(0.2)
        if args.client == "wrk":
            result = drive_wrk(url, token, args, items)
        else:
            result = asyncio.run(drive(url, token, args, items))
        result["health"] = httpx.get(f"{url}/health").json()
    finally:
        server.terminate()
        server.wait(timeout=30)
    result["load_average"] = os.getloadavg()
    result["clients"] = args.clients
    result["client"] = args.client
    result["runs"] = [str(args.run_a), str(args.run_b)]
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
