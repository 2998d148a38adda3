"""Batch construction throughput of ``BatchBuilder`` at TencentGR scale (1M users, 4.8M items, ~91 events).

The full-size synthetic log is generated once (``seqrec.data.scale.generate_tencentgr_like``) into a
cache directory under /tmp and memory-mapped from there on every later run. The benchmark then builds
the ``BatchBuilder`` of the leave-one-out training prefixes (timed: the one-off setup) and times
``BatchBuilder.batch`` over ``--steps`` consecutive steps of an epoch, for each batch size; each run
uses fresh steps, the reported number is the median over ``--runs`` runs (sequences per second).

Usage::

    python benchmarks/batch_throughput.py                          # 1M x 4.8M, batch 1024 and 256
    python benchmarks/batch_throughput.py --users 100000 --items 480000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from seqrec.data.batches import BatchBuilder  # noqa: E402
from seqrec.data.scale import generate_tencentgr_like  # noqa: E402
from seqrec.data.split import leave_one_out  # noqa: E402
from seqrec.data.storage import is_interactions_dir, load_interactions  # noqa: E402

DEFAULT_CACHE = Path("/tmp/seqrec-scale")


def peak_rss_gb() -> float:
    """This process's resident-set high-water mark (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def ensure_data(cache: Path, users: int, items: int, seed: int = 0) -> Path:
    """The cached TencentGR-like directory for (users, items, seed), generated on first use."""
    path = cache / f"tencentgr-u{users}-i{items}-s{seed}"
    if not is_interactions_dir(path):
        started = time.perf_counter()
        generate_tencentgr_like(path, num_users=users, num_items=items, seed=seed, overwrite=path.exists())
        print(f"generated {path} in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return path


_BUILDER: BatchBuilder | None = None  # set before forking the worker processes (shared copy-on-write)
_ORDER = None


def _build_steps(task: tuple[int, int, int]) -> float:
    """Builds steps [first, first + count) of batch size ``bs`` in a worker; returns its CPU seconds."""
    first, count, bs = task
    c0 = time.process_time()
    full = len(_BUILDER.users) // bs  # full batches only (the last one of an epoch may be short)
    for step in range(first, first + count):
        _BUILDER.batch(0, 0, step % full, bs, _ORDER)
    return time.process_time() - c0


def parallel_rate(builder: BatchBuilder, order, bs: int, steps: int, workers: int, first: int) -> float:
    """Sequences per second (wall) with ``workers`` forked processes building disjoint steps, like DataLoader workers."""
    global _BUILDER, _ORDER
    _BUILDER, _ORDER = builder, order
    per = -(-steps // workers)
    tasks = [(first + w * per, per, bs) for w in range(workers)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(_build_steps, [(t[0], 1, bs) for t in tasks])  # warm-up: workers started, pages touched
        t0 = time.perf_counter()
        pool.map(_build_steps, tasks)
        return per * workers * bs / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=4_800_000)
    parser.add_argument("--maxlen", type=int, default=101)
    parser.add_argument("--negatives", type=int, default=1, help="negatives per position (K)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 256])
    parser.add_argument("--steps", type=int, default=40, help="batches timed per run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2,
                        help="also time this many forked builder processes together (0 = skip)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args()

    path = ensure_data(args.cache, args.users, args.items)
    inter = load_interactions(path)
    split = leave_one_out(inter)
    started, cpu0 = time.perf_counter(), time.process_time()
    builder = BatchBuilder(inter.offsets, inter.items, split.train_lengths, inter.num_items, args.maxlen, args.negatives)
    setup_s, setup_cpu_s = time.perf_counter() - started, time.process_time() - cpu0
    setup_rss = peak_rss_gb()
    order = builder.epoch_order(seed=0, epoch=0)
    results = {}
    for bs in args.batch_sizes:
        full = len(builder.users) // bs  # full batches only (the last one of an epoch may be short)
        if full < 1:
            raise SystemExit(f"fewer than {bs} users: no full batch")
        builder.batch(0, 0, 0, bs, order)  # warm-up
        rates, cpu_rates = [], []
        for run in range(args.runs):
            first = 1 + run * args.steps
            t0, c0 = time.perf_counter(), time.process_time()
            for step in range(first, first + args.steps):
                builder.batch(0, 0, step % full, bs, order)
            rates.append(args.steps * bs / (time.perf_counter() - t0))
            cpu_rates.append(args.steps * bs / max(time.process_time() - c0, 1e-9))
        results[bs] = {
            "median_seq_s": statistics.median(rates), "runs_seq_s": [round(r) for r in rates],
            # sequences per CPU-second of this process: what one uncontended core would deliver
            "median_seq_per_cpu_s": statistics.median(cpu_rates),
        }
        if args.workers > 0:
            par = [parallel_rate(builder, order, bs, args.steps, args.workers, (run + args.runs) * args.steps)
                   for run in range(args.runs)]
            results[bs]["workers"] = args.workers
            results[bs]["median_seq_s_workers"] = statistics.median(par)
            results[bs]["runs_seq_s_workers"] = [round(r) for r in par]
    out = {
        "data": str(path), "users": inter.num_users, "items": inter.num_items, "events": int(len(inter.items)),
        "train_events": int(split.train_lengths.sum()), "maxlen": args.maxlen, "negatives": args.negatives,
        "setup_s": setup_s, "setup_cpu_s": setup_cpu_s, "setup_peak_rss_gb": setup_rss, "peak_rss_gb": peak_rss_gb(),
        "steps": args.steps, "runs": args.runs, "batch": results,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end",
    }
    if args.json:
        print(json.dumps(out))
        return
    print(f"{out['users']} users, {out['items']} items, {out['events']} events ({out['train_events']} in training prefixes)")
    print(f"BatchBuilder setup: {setup_s:.1f}s wall, {setup_cpu_s:.1f}s CPU, peak RSS {setup_rss:.2f} GB")
    for bs, r in results.items():
        print(f"batch {bs:5d}: median {r['median_seq_s']:,.0f} seq/s wall ({r['median_seq_per_cpu_s']:,.0f} per CPU-second) "
              f"over {args.runs} runs of {args.steps} steps  {r['runs_seq_s']}")
        if "workers" in r:
            print(f"            {r['workers']} worker processes: median {r['median_seq_s_workers']:,.0f} seq/s wall  "
                  f"{r['runs_seq_s_workers']}")
    print(f"peak RSS {out['peak_rss_gb']:.2f} GB")


if __name__ == "__main__":
    main()
