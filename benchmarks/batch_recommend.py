"""Batch recommendation end to end: 100,000 users over a 1M-item catalogue (encoder + search + writing).

Uses the 1M-item random-weight checkpoint and its saved HNSW index from catalogue_1m.py (cached under
/tmp). Users get random histories of 20-50 raw item ids; the run goes through the library path of
``seqrec recommend`` (``recommend_batches`` with the saved index, seen items excluded, streamed into
``write_recommendations``'s CSV). Loading the model and index is timed separately from the run.

Usage:
    python benchmarks/batch_recommend.py [--users 100000] [--k 10] [--repeats 1]

Target (2 CPU cores): under 2 minutes for the run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# On a machine shared with other busy processes, OpenMP threads that spin-wait for each other (the
# default) make small torch ops up to 100x slower; passive waiting avoids that. Must precede torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from catalogue_1m import DEFAULT_CACHE, Catalogue, log, prepare, random_histories  # noqa: E402

from seqrec.data.dataset import Interactions  # noqa: E402
from seqrec.retrieval.recommend import load_model, recommend_batches, write_recommendations  # noqa: E402
from seqrec.retrieval.run_index import run_index  # noqa: E402


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=1, help="runs; the median is reported")
    parser.add_argument("--out", type=Path, default=Path("/tmp/seqrec-bench/recs.csv"))
    parser.add_argument("--threads", type=int, help="torch and faiss threads (default: one per core)")
    args = parser.parse_args()
    if args.threads:
        import faiss
        import torch

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)

    spec = Catalogue()
    run = prepare(args.cache, spec)
    started = time.perf_counter()
    loaded = load_model(run)
    index, source = run_index(loaded, run, "hnsw")
    load_s = time.perf_counter() - started
    log(f"model + {source} HNSW index loaded in {load_s:.1f}s")

    histories = random_histories(args.users, spec.num_items, 20, 50, seed=2)
    offsets = np.zeros(args.users + 1, dtype=np.int64)
    np.cumsum([len(h) for h in histories], out=offsets[1:])
    inter = Interactions(offsets, np.concatenate(histories), np.arange(args.users, dtype=np.int64), loaded.item_ids)
    rows = np.arange(args.users)

    times, loads = [], []
    for _ in range(args.repeats):
        load0 = loadavg()
        started = time.perf_counter()
        batches = recommend_batches(loaded, inter, rows, args.k, index=index, batch_size=args.batch_size,
                                    progress=True)
        written = write_recommendations(args.out, batches, inter.user_ids, inter.item_ids)
        times.append(time.perf_counter() - started)
        loads.append((load0 + loadavg()) / 2)
        log(f"{written:,} users in {times[-1]:.1f}s ({written / times[-1]:.0f} users/s), load avg {loads[-1]:.1f}")
    rows_out = sum(1 for _ in open(args.out)) - 1
    median = statistics.median(times)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {os.cpu_count()} CPUs, "
          f"catalogue {spec.num_items:,} items x {spec.dim}, HNSW M={spec.hnsw_m} efSearch={spec.hnsw_ef_search}\n")
    print("| users | k | histories | threads | load s | run s (median) | runs | users/s | rows written | load avg |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.users:,} | {args.k} | 20-50 items | {args.threads or os.cpu_count()} | {load_s:.1f} | {median:.1f} | "
          f"{', '.join(f'{t:.1f}' for t in times)} | {args.users / median:.0f} | {rows_out:,} | "
          f"{statistics.median(loads):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
