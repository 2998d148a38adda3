"""Load test of `seqrec serve` over a 1M-item catalogue: throughput and latency at 1, 8 and 64 clients.

Starts `seqrec serve RUN --index hnsw` as a subprocess on a free 127.0.0.1 port (the 1M-item random
checkpoint and HNSW index of catalogue_1m.py, cached under /tmp), then runs a closed-loop load
generator over loopback: each of C connections sends one request, waits for the answer and sends the
next. Requests are random histories of 20-50 raw item ids, k=10, exclude_seen=true, serialised before
the clock starts.

Load generators (``--client``):

* ``wrk`` (default when the ``wrk`` binary is on PATH): ``wrk -t1 -cC -dS`` with a generated Lua script
  (``/tmp/seqrec-bench/serve_load.lua``) that pre-formats 300 POST /recommend requests and rotates
  through them; its ``done()`` hook prints the request count, errors and latency percentiles. wrk costs
  a few tens of microseconds of CPU per request, so nearly both cores are left to the server. wrk is a
  system program, not a Python dependency: ``apt-get install wrk`` (Debian/Ubuntu) or build it from
  https://github.com/wg/wrk. One unmeasured wrk run of ``--warmup`` seconds precedes each level.
* ``httpx``: the pure-Python fallback (httpx.AsyncClient, clients split over ``--procs`` processes);
  it costs several ms of CPU per request itself, which caps what it can measure on a small machine.

Per level: requests/s, p50/p90/p99/max latency, errors, mean batch size (from /health), CPU ms per
request of server and load generator, and the 1-minute load average (other workers share the machine).
``--baseline`` first measures a hello-world FastAPI server (same uvicorn, no model) the same way: the
ceiling the machine allows an HTTP endpoint at that moment.

Usage:
    python benchmarks/serve_load.py [--clients 1,8,64] [--seconds 20] [--baseline] [--client wrk|httpx]

Targets (2 CPU cores): >= 300 req/s at 64 clients with p99 <= 100 ms; p99 <= 15 ms for one client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
SERVE_LOG = Path("/tmp/seqrec-bench/serve.log")

# Calibration server: the same uvicorn/FastAPI stack answering a constant, with no model, no validation
# and no batching. Its req/s and latency are the ceiling this machine allows an HTTP endpoint right now.
BASELINE_APP = """
import sys, uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
app = FastAPI()
count = 0
ANSWER = b'{"items":[1,2,3,4,5,6,7,8,9,10],"scores":[1,1,1,1,1,1,1,1,1,1],"unknown_items":[]}'
@app.post("/recommend")
async def recommend(request: Request):
    global count
    await request.body()
    count += 1
    return Response(ANSWER, media_type="application/json")
@app.get("/health")
async def health():
    return {"requests": count, "batches": count}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def server_command(run: Path, port: int, args: argparse.Namespace, baseline: bool) -> list[str]:
    if baseline:
        return [sys.executable, "-c", BASELINE_APP, str(port)]
    return [sys.executable, "-m", "seqrec", "serve", str(run), "--index", args.index, "--port", str(port), "--quiet",
            "--batch-window-ms", str(args.batch_window_ms), "--max-batch", str(args.max_batch),
            "--threads", str(args.server_threads), "--workers", str(args.server_workers)]


def start_server(cmd: list[str], port: int) -> subprocess.Popen:
    log("starting: " + ("hello-world FastAPI app" if cmd[1] == "-c" else " ".join(cmd[1:])))
    SERVE_LOG.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(SERVE_LOG, "w"))
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited; see {SERVE_LOG}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.terminate()
            raise RuntimeError("server did not come up in 300 s")
        time.sleep(0.5)


def client_process(url: str, bodies: list[bytes], clients: int, start: float, measure: float, stop: float,
                   max_requests: int, offset: int) -> dict:
    """One load-generator process: ``clients`` closed-loop connections from ``start`` until ``stop``
    (wall-clock times); requests sent from ``measure`` on are recorded."""
    return asyncio.run(_clients(url, bodies, clients, start, measure, stop, max_requests, offset))


async def _clients(url: str, bodies: list[bytes], clients: int, start: float, measure: float, stop: float,
                   max_requests: int, offset: int) -> dict:
    latencies: list[float] = []
    errors = 0
    sent = offset
    cpu = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def worker() -> None:
            nonlocal sent, errors
            while True:
                now = time.time()
                if now >= stop or len(latencies) + errors >= max_requests:
                    return
                body = bodies[sent % len(bodies)]
                sent += 1
                started = time.perf_counter()
                response = await client.post("/recommend", content=body, headers=headers)
                elapsed = time.perf_counter() - started
                if now >= measure:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        errors += 1

        async def cpu_marks() -> None:
            await asyncio.sleep(max(0.0, measure - time.time()))
            cpu["start"] = time.process_time()

        await asyncio.sleep(max(0.0, start - time.time()))
        marks = asyncio.create_task(cpu_marks())
        await asyncio.gather(*(worker() for _ in range(clients)))
        await marks
        cpu["end"] = time.process_time()
    return {"latencies": latencies, "errors": errors, "cpu": cpu["end"] - cpu["start"]}


LUA_TEMPLATE = """
local reqs = {}
local i = 0
init = function(args)
  for j, b in ipairs(bodies) do
    reqs[j] = wrk.format("POST", "/recommend", {["Content-Type"] = "application/json"}, b)
  end
end
request = function()
  i = i % #reqs + 1
  return reqs[i]
end
delay = function()
  if think_ms <= 0 then return 0 end
  return math.floor(-think_ms * math.log(1 - math.random()))
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "SEQREC requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d "
    .. "p50=%d p90=%d p99=%d max=%d mean=%f\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def wrk_script(bodies: list[bytes], path: Path, count: int = 300, think_ms: float = 0.0) -> Path:
    """A wrk Lua script rotating through the first ``count`` bodies (JSON, as Lua long strings).

    ``think_ms > 0``: each connection waits an exponentially distributed time of that mean before each
    request (wrk's ``delay()``, not counted in the latency), so N connections offer about
    N * 1000 / think_ms requests per second instead of as many as the server can answer.
    """
    lines = [f"think_ms = {think_ms!r}", "bodies = {"]
    for body in bodies[:count]:
        text = body.decode()
        if "]==]" in text:
            raise ValueError("a request body contains the Lua long-string terminator ]==]")
        lines.append(f"  [==[{text}]==],")
    lines.append("}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + LUA_TEMPLATE)
    return path


def parse_wrk(output: str) -> dict:
    """The numbers the script's ``done()`` printed: counts, and latencies in microseconds."""
    match = re.search(r"^SEQREC (.*)$", output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"wrk printed no SEQREC line:\n{output}")
    return {key: float(value) for key, value in (part.split("=") for part in match.group(1).split())}


def wrk_command(url: str, script: Path, clients: int, seconds: float) -> list[str]:
    return ["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--timeout", "30s", "--latency",
            "-s", str(script), url]


def run_level_wrk(url: str, script: Path, clients: int, args: argparse.Namespace, server_pid: int) -> dict:
    """One level with wrk: a warm-up run, then the measured one (server and wrk CPU around it)."""
    if args.warmup >= 0.5:
        subprocess.run(wrk_command(url, script, clients, args.warmup), check=True, capture_output=True)
    before = httpx.get(f"{url}/health", timeout=60).json()
    load0, server0 = loadavg(), cpu_seconds(server_pid)
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(wrk_command(url, script, clients, args.seconds), check=True, capture_output=True,
                          text=True)
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu = cpu_seconds(server_pid) - server0
    after = httpx.get(f"{url}/health", timeout=60).json()
    w = parse_wrk(done.stdout)
    errors = int(w["connect"] + w["read"] + w["write"] + w["status"] + w["timeout"])
    ok = int(w["requests"] - w["status"])  # non-2xx answers are counted in requests and in status
    wall = w["duration_us"] / 1e6
    batches = after["batches"] - before["batches"]
    return {
        "clients": clients, "procs": 1, "requests": ok, "errors": errors, "seconds": wall, "rps": ok / wall,
        "p50": w["p50"] / 1000, "p90": w["p90"] / 1000, "p99": w["p99"] / 1000, "max": w["max"] / 1000,
        "mean": w["mean"] / 1000, "batch": (after["requests"] - before["requests"]) / max(batches, 1),
        "server_cpu": server_cpu, "load": (load0 + loadavg()) / 2,
        "client_cpu": (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime),
    }


def run_level(pool: ProcessPoolExecutor, url: str, bodies: list[bytes], clients: int, procs: int,
              args: argparse.Namespace, server_pid: int) -> dict:
    procs = max(1, min(procs, clients))
    start = time.time() + 1.0 + 0.5 * procs  # time for the workers to be ready
    measure = start + args.warmup
    stop = measure + args.seconds
    shares = [clients // procs + (p < clients % procs) for p in range(procs)]
    futures = [pool.submit(client_process, url, bodies, n, start, measure, stop,
                           args.max_requests // procs, 7919 * p) for p, n in enumerate(shares)]
    time.sleep(max(0.0, measure - time.time()))
    before = httpx.get(f"{url}/health", timeout=60).json()
    load0, server0 = loadavg(), cpu_seconds(server_pid)
    time.sleep(max(0.0, stop - time.time()))
    server_cpu = cpu_seconds(server_pid) - server0
    parts = [f.result() for f in futures]
    wall = max(time.time(), stop) - measure
    after = httpx.get(f"{url}/health", timeout=60).json()
    load = (load0 + loadavg()) / 2
    lat = np.concatenate([np.asarray(p["latencies"]) for p in parts]) * 1000
    errors = sum(p["errors"] for p in parts)
    batches = after["batches"] - before["batches"]
    return {
        "clients": clients, "procs": procs, "requests": len(lat), "errors": errors, "seconds": wall,
        "rps": len(lat) / wall, "p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
        "p99": float(np.percentile(lat, 99)), "max": float(lat.max()), "mean": float(lat.mean()),
        "batch": (after["requests"] - before["requests"]) / max(batches, 1),
        "server_cpu": server_cpu, "client_cpu": sum(p["cpu"] for p in parts), "load": load,
    }


def client_desc(args: argparse.Namespace) -> str:
    if args.client == "wrk":
        version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split(" [")[0]
        return f"{version.strip() or 'wrk'} (-t1, 1 process)"
    return f"httpx {httpx.__version__} ({args.procs} process(es))"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="cache of the 1M catalogue (default: catalogue_1m.py's)")
    parser.add_argument("--run", type=Path, help="serve this run instead of the 1M catalogue (random histories)")
    parser.add_argument("--index", default="hnsw", help="seqrec serve --index (default hnsw)")
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--procs", type=int, default=1, help="load-generator processes (clients are split)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per level")
    parser.add_argument("--max-requests", type=int, default=20_000, help="cap on measured requests per level")
    parser.add_argument("--batch-window-ms", type=float, default=2.0)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--server-threads", type=int, default=1, help="seqrec serve --threads")
    parser.add_argument("--server-workers", type=int, default=2, help="seqrec serve --workers")
    parser.add_argument("--client", choices=("wrk", "httpx"),
                        help="load generator (default: wrk when installed, else httpx)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per level; the median run (by p99) is shown")
    parser.add_argument("--baseline", action="store_true",
                        help="first measure a hello-world FastAPI server the same way (calibration)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="wrk only: also measure every level at this offered load (requests/s in all, "
                             "each connection pausing a random think time between requests) instead of flat out")
    args = parser.parse_args()
    if args.client is None:
        args.client = "wrk" if shutil.which("wrk") else "httpx"
        if args.client == "httpx":
            log("wrk not found (apt-get install wrk): falling back to the httpx load generator")
    elif args.client == "wrk" and not shutil.which("wrk"):
        parser.error("--client wrk: the wrk binary is not on PATH (apt-get install wrk)")

    sys.path.insert(0, str(HERE))
    from catalogue_1m import DEFAULT_CACHE, ID_OFFSET, Catalogue, prepare, random_histories

    spec = Catalogue()
    if args.run is None:
        run = prepare(args.cache or DEFAULT_CACHE, spec)
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
    script = wrk_script(bodies, SERVE_LOG.parent / "serve_load.lua") if args.client == "wrk" else None

    results: dict[str, list[dict]] = {}
    labels = (["hello-world FastAPI (calibration)"] if args.baseline else []) + ["seqrec serve"]
    if args.rate > 0 and script is not None:
        labels.append(f"seqrec serve, offered {args.rate:g} req/s")
    with ProcessPoolExecutor(max_workers=max(1, args.procs), mp_context=get_context("spawn")) as pool:
        for label in labels:
            port = free_port()
            server = start_server(server_command(run, port, args, baseline=label.startswith("hello")), port)
            url = f"http://127.0.0.1:{port}"
            results[label] = []
            try:
                for clients in [int(c) for c in args.clients.split(",")]:
                    runs = []
                    for _ in range(args.repeats):
                        if script is not None and "offered" in label:
                            paced = wrk_script(bodies, SERVE_LOG.parent / f"serve_load_{clients}.lua",
                                               think_ms=1000.0 * clients / args.rate)
                            result = run_level_wrk(url, paced, clients, args, server.pid)
                        elif script is not None:
                            result = run_level_wrk(url, script, clients, args, server.pid)
                        else:
                            result = run_level(pool, url, bodies, clients, args.procs, args, server.pid)
                        log(f"{label}, {clients} clients: {result['rps']:.0f} req/s, p50 {result['p50']:.1f} ms, "
                            f"p99 {result['p99']:.1f} ms, batch {result['batch']:.1f}, load {result['load']:.1f}")
                        runs.append(result)
                    results[label].append(sorted(runs, key=lambda r: r["p99"])[len(runs) // 2])
            finally:
                server.terminate()
                server.wait(timeout=30)

    import importlib.util

    has = importlib.util.find_spec
    stack = "httptools + uvloop" if has("httptools") and has("uvloop") else "h11 + asyncio"
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {os.cpu_count()} CPUs, "
          f"catalogue {catalogue}, uvicorn on {stack}, batch window {args.batch_window_ms} ms, "
          f"max batch {args.max_batch}, server threads {args.server_threads} x workers {args.server_workers}, "
          f"load generator {client_desc(args)}, "
          f"{args.seconds:.0f} s per level after {args.warmup:.0f} s warm-up\n")
    # CPU ms per request of server and load generator: less sensitive to other load than wall time
    # (not immune: a crowded machine also costs cache misses and context switches).
    print("| server | clients | client procs | requests | req/s | p50 ms | p90 ms | p99 ms | max ms | errors "
          "| mean batch | server CPU ms/req | client CPU ms/req | load avg |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, rows in results.items():
        for r in rows:
            n = max(r["requests"] + r["errors"], 1)
            print(f"| {label} | {r['clients']} | {r['procs']} | {r['requests']} | {r['rps']:.0f} | {r['p50']:.1f} | "
                  f"{r['p90']:.1f} | {r['p99']:.1f} | {r['max']:.1f} | {r['errors']} | {r['batch']:.1f} | "
                  f"{1000 * r['server_cpu'] / n:.2f} | {1000 * r['client_cpu'] / n:.2f} | {r['load']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
