"""Load test of `seqrec serve` over a 1M-item catalogue: throughput and latency at 1, 8 and 64 clients.

Starts `seqrec serve RUN --index hnsw` as a subprocess on a free 127.0.0.1 port (the 1M-item random
checkpoint and HNSW index of catalogue_1m.py, cached under /tmp), then runs a closed-loop async load
generator (httpx.AsyncClient, loopback only): each of C clients sends one request, waits for the answer
and sends the next, for a bounded time and number of requests. Requests are random histories of 20-50
raw item ids, k=10, exclude_seen=true, serialised before the clock starts.

Per level: requests/s, p50/p90/p99/max latency, errors, mean batch size (from /health), CPU seconds of
server and client, and the 1-minute load average (other workers share the machine).

Usage:
    python benchmarks/serve_load.py [--clients 1,8,64] [--seconds 20] [--max-requests 20000]

Targets (2 CPU cores): >= 300 req/s at 64 clients with p99 <= 100 ms; p99 <= 15 ms for one client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from catalogue_1m import DEFAULT_CACHE, ID_OFFSET, Catalogue, log, prepare, random_histories  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def start_server(run: Path, port: int, args: argparse.Namespace) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "seqrec", "serve", str(run), "--index", args.index, "--port", str(port), "--quiet",
           "--batch-window-ms", str(args.batch_window_ms), "--max-batch", str(args.max_batch),
           "--threads", str(args.server_threads)]
    log("starting: " + " ".join(cmd[1:]))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open("/tmp/seqrec-bench/serve.log", "w"))
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError("server exited; see /tmp/seqrec-bench/serve.log")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.terminate()
            raise RuntimeError("server did not come up in 300 s")
        time.sleep(0.5)


async def run_level(url: str, bodies: list[bytes], clients: int, seconds: float, max_requests: int,
                    warmup: float, server_pid: int) -> dict:
    latencies: list[float] = []
    errors = 0
    counter = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        async def worker(stop_at: float, record: bool) -> None:
            nonlocal counter, errors
            while time.perf_counter() < stop_at and (not record or counter < max_requests):
                body = bodies[counter % len(bodies)]
                counter += 1
                started = time.perf_counter()
                response = await client.post("/recommend", content=body, headers=headers)
                elapsed = time.perf_counter() - started
                if record:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        errors += 1

        await asyncio.gather(*(worker(time.perf_counter() + warmup, False) for _ in range(clients)))
        before = (await client.get("/health")).json()
        counter = 0
        load0, server0, client0 = loadavg(), cpu_seconds(server_pid), time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + seconds, True) for _ in range(clients)))
        wall = time.perf_counter() - started
        server_cpu, client_cpu = cpu_seconds(server_pid) - server0, time.process_time() - client0
        load = (load0 + loadavg()) / 2
        after = (await client.get("/health")).json()
    lat = np.asarray(latencies) * 1000
    batches = after["batches"] - before["batches"]
    return {
        "clients": clients, "requests": len(latencies), "errors": errors, "seconds": wall,
        "rps": len(latencies) / wall, "p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
        "p99": float(np.percentile(lat, 99)), "max": float(lat.max()), "mean": float(lat.mean()),
        "batch": (after["requests"] - before["requests"]) / max(batches, 1),
        "server_cpu": server_cpu, "client_cpu": client_cpu, "load": load,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--run", type=Path, help="serve this run instead of the 1M catalogue (random histories)")
    parser.add_argument("--index", default="hnsw", help="seqrec serve --index (default hnsw)")
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per level")
    parser.add_argument("--max-requests", type=int, default=20_000, help="cap on measured requests per level")
    parser.add_argument("--batch-window-ms", type=float, default=2.0)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--server-threads", type=int, default=1, help="seqrec serve --threads")
    parser.add_argument("--repeats", type=int, default=1, help="runs per level; the median run (by p99) is shown")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()

    spec = Catalogue()
    if args.run is None:
        run = prepare(args.cache, spec)
        raw_ids = np.arange(ID_OFFSET, ID_OFFSET + spec.num_items + 1)
        catalogue = f"{spec.num_items:,} items x {spec.dim}, HNSW M={spec.hnsw_m} efSearch={spec.hnsw_ef_search}"
    else:
        from seqrec.train.checkpoint import ids_from_list, load_checkpoint

        run = args.run
        raw_ids = ids_from_list(load_checkpoint(run)["item_ids"])
        catalogue = f"{run} ({len(raw_ids) - 1:,} items, {args.index} index)"
    histories = random_histories(2000, len(raw_ids) - 1, 20, 50, seed=1)
    bodies = [json.dumps({"history": raw_ids[h].tolist(), "k": 10, "exclude_seen": True}).encode()
              for h in histories]
    port = free_port()
    server = start_server(run, port, args)
    url = f"http://127.0.0.1:{port}"
    results = []
    try:
        for clients in [int(c) for c in args.clients.split(",")]:
            runs = []
            for _ in range(args.repeats):
                result = asyncio.run(run_level(url, bodies, clients, args.seconds, args.max_requests, args.warmup,
                                               server.pid))
                log(f"{clients} clients: {result['rps']:.0f} req/s, p50 {result['p50']:.1f} ms, "
                    f"p99 {result['p99']:.1f} ms, batch {result['batch']:.1f}, load {result['load']:.1f}")
                runs.append(result)
            results.append(sorted(runs, key=lambda r: r["p99"])[len(runs) // 2])
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {os.cpu_count()} CPUs, "
          f"catalogue {catalogue}, "
          f"batch window {args.batch_window_ms} ms, max batch {args.max_batch}\n")
    # CPU ms per request (server and load generator) does not depend on how busy the machine is.
    print("| clients | requests | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | mean batch "
          "| server CPU ms/req | client CPU ms/req | load avg |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        n = max(r["requests"] + r["errors"], 1)
        print(f"| {r['clients']} | {r['requests']} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p90']:.1f} | "
              f"{r['p99']:.1f} | {r['max']:.1f} | {r['errors']} | {r['batch']:.1f} | "
              f"{1000 * r['server_cpu'] / n:.2f} | {1000 * r['client_cpu'] / n:.2f} | {r['load']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
