"""Benchmark exact, HNSW and IVF top-10 retrieval on a clustered synthetic catalogue.

For every catalogue size: build time, queries/s of one batch search of all queries through
``seqrec.retrieval.search.search`` (median over repeats) and recall@10 against exact search. At the
largest size it also sweeps HNSW efSearch and IVF nprobe and reports the setting with the largest
speed-up over exact search among those with recall@10 >= 0.95, against the target of >= 10x.

Each speed-up is taken against an exact search of a query subset timed just before the row: on a
shared machine the load drifts during a run that lasts tens of minutes, and a ratio of two timings
taken far apart measures the drift as much as the index. ``--index-cache DIR`` keeps built HNSW/IVF
indexes so a rerun skips the 1M HNSW build (the longest step by far).

The catalogue mimics item embeddings: L2-normalised points around 1,000 random unit centres with
Zipf-like cluster popularity and noise as large as the centre itself (points in one cluster have a
cosine of about 0.5), so clusters overlap and neighbours are not trivially found. Queries come from the
same distribution.

Usage:
    python benchmarks/retrieval.py --sizes 10000,100000,1000000 --queries 10000

The markdown table goes to stdout and to ``benchmarks/results/retrieval.md``; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from seqrec.retrieval.index import IndexConfig, build_index, load_index, save_index
from seqrec.retrieval.search import search

K = 10
RECALL_TARGET = 0.95
SPEEDUP_TARGET = 10.0
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "retrieval.md"


@dataclass
class Row:
    """One measured (size, index, setting) combination."""

    n: int
    kind: str
    params: str
    build_s: float | None
    qps: float
    runs: int
    recall: float
    exact_qps: float  # exact search timed just before this row (its own q/s for an exact row)

    @property
    def speedup(self) -> float:
        return self.qps / self.exact_qps


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_distribution(d: int, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random unit cluster centres and Zipf(0.8) popularity weights."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, n_clusters + 1) ** 0.8
    return centres, weights / weights.sum()


def sample(n: int, centres: np.ndarray, weights: np.ndarray, spread: float, seed: int) -> np.ndarray:
    """``n`` L2-normalised points: a popularity-weighted centre plus isotropic noise of norm ~spread."""
    rng = np.random.default_rng(seed)
    d = centres.shape[1]
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 262_144):  # chunks keep the float64 temporaries small
        m = min(262_144, n - start)
        x = centres[rng.choice(len(centres), size=m, p=weights)]
        x = x + rng.standard_normal((m, d), dtype=np.float32) * np.float32(spread / np.sqrt(d))
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def timed_search(
    index: faiss.Index, queries: np.ndarray, repeats: int, time_cap: float
) -> tuple[float, int, np.ndarray]:
    """Median queries/s over up to ``repeats`` runs, stopping early once ``time_cap`` seconds are spent.

    Returns:
        (median queries/s, runs made, ids of the first run).
    """
    times: list[float] = []
    first_ids = None
    while len(times) < repeats and (not times or sum(times) < time_cap):
        start = time.perf_counter()
        _, ids = search(index, queries, K)
        times.append(time.perf_counter() - start)
        if first_ids is None:
            first_ids = ids
    return len(queries) / statistics.median(times), len(times), first_ids


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    # Rows are unique within a result, so per-query overlap is the size of the intersection.
    hits = sum(np.intersect1d(f, t, assume_unique=True).size for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def timed_build(
    x: np.ndarray, config: IndexConfig, cache: Path | None, tag: str
) -> tuple[faiss.Index, float | None]:
    """Build (timed), or load from ``cache`` when an index for the same data and config is there.

    Returns:
        (index, build seconds; None when it was loaded from the cache).
    """
    path = None
    if cache is not None:
        if config.kind == "hnsw":
            fields = [f"m{config.hnsw_m}", f"efc{config.hnsw_ef_construction}"]
        else:
            fields = [f"nlist{config.ivf_nlist or 'auto'}"]
        path = cache / f"{tag}-{config.kind}-{'-'.join(fields)}.faiss"
        if path.is_file():
            log(f"loading cached index {path}")
            index = load_index(path)
            if hasattr(index, "hnsw"):  # the sweep changes efSearch, which the saved file keeps
                index.hnsw.efSearch = config.hnsw_ef_search
            if hasattr(index, "nprobe"):
                index.nprobe = config.ivf_nprobe
            return index, None
    start = time.perf_counter()
    index = build_index(x, config, progress=True)  # tqdm on stderr shows how far a long build is
    elapsed = time.perf_counter() - start
    if path is not None:
        save_index(index, path)
    return index, elapsed


def bench_size(
    n: int, queries: np.ndarray, dist: tuple[np.ndarray, np.ndarray], args: argparse.Namespace, sweep: bool
) -> list[Row]:
    log(f"N={n:,}: generating catalogue")
    x = sample(n, *dist, spread=args.spread, seed=1)
    rows: list[Row] = []
    cache = args.index_cache
    tag = f"n{n}-d{args.dim}-c{args.clusters}-s{args.spread}"

    exact, build_s = timed_build(x, IndexConfig(kind="exact"), None, tag)
    log(f"N={n:,}: exact built in {build_s:.1f}s, searching")
    qps, runs, truth = timed_search(exact, queries, args.repeats, args.time_cap)
    rows.append(Row(n, "exact", "-", build_s, qps, runs, 1.0, qps))
    log(f"N={n:,}: exact {qps:,.0f} q/s ({runs} runs)")
    paired_queries = queries[: min(args.paired_queries, len(queries))]

    def measure(index: faiss.Index, kind: str, params: str, build: float | None) -> None:
        # The machine is shared and its load drifts during a long run, so each speed-up is taken
        # against an exact search timed just before, not against the exact run minutes earlier.
        exact_qps, _, _ = timed_search(exact, paired_queries, 1, 0.0)
        qps, runs, ids = timed_search(index, queries, args.repeats, args.time_cap)
        rows.append(Row(n, kind, params, build, qps, runs, recall_at_k(ids, truth), exact_qps))
        log(
            f"N={n:,}: {kind} {params}: {qps:,.0f} q/s, recall@10 {rows[-1].recall:.4f} ({runs} runs), "
            f"paired exact {exact_qps:,.1f} q/s"
        )

    hnsw_config = IndexConfig(kind="hnsw", hnsw_m=args.hnsw_m, hnsw_ef_construction=args.hnsw_ef_construction)
    log(f"N={n:,}: HNSW M={hnsw_config.hnsw_m} efConstruction={hnsw_config.hnsw_ef_construction}")
    hnsw, build_s = timed_build(x, hnsw_config, cache, tag)
    log(f"N={n:,}: HNSW ready (build seconds: {build_s})")
    for ef in sorted({hnsw_config.hnsw_ef_search, *(args.ef_search if sweep else [])}):
        hnsw.hnsw.efSearch = ef
        params = f"M={hnsw_config.hnsw_m} efC={hnsw_config.hnsw_ef_construction} efSearch={ef}"
        measure(hnsw, "hnsw", params, build_s if ef == hnsw_config.hnsw_ef_search else None)
    del hnsw

    ivf_config = IndexConfig(kind="ivf")
    ivf, build_s = timed_build(x, ivf_config, cache, tag)
    log(f"N={n:,}: IVF nlist={ivf.nlist} ready (build seconds: {build_s})")
    for nprobe in sorted({ivf_config.ivf_nprobe, *(args.nprobe if sweep else [])}):
        ivf.nprobe = nprobe
        build = build_s if nprobe == ivf_config.ivf_nprobe else None
        measure(ivf, "ivf", f"nlist={ivf.nlist} nprobe={nprobe}", build)
    del ivf
    return rows


def render(
    rows: list[Row], args: argparse.Namespace, command: str, started: str, load: tuple, elapsed: float
) -> str:
    largest = max(r.n for r in rows)
    paired = min(args.paired_queries, args.queries)
    lines = [
        "# Retrieval benchmark: exact vs HNSW vs IVF (top-10, inner product)",
        "",
        f"- command: `{command}`",
        f"- machine: {os.cpu_count()} CPU cores ({platform.machine()}, {platform.processor() or 'unknown CPU'}), "
        f"faiss threads {faiss.omp_get_max_threads()}; shared with other jobs, load average "
        f"{load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end",
        f"- date: {started}; faiss {faiss.__version__}, numpy {np.__version__}, Python {platform.python_version()}",
        f"- data: d={args.dim}, {args.clusters} Gaussian clusters (Zipf 0.8 popularity, noise norm "
        f"{args.spread} x centre norm), L2-normalised; {args.queries:,} queries from the same distribution",
        f"- queries/s: one batch `search()` of all queries, median of up to {args.repeats} runs "
        f"(fewer when the runs exceed {args.time_cap:.0f}s; see `runs`); recall@10 against exact search",
        f"- paired exact q/s: exact search of the first {paired:,} queries (one run) timed just before the "
        "row; it is the baseline of `vs exact`, because the load of a shared machine drifts during the run",
        "- blank build time: a sweep row of the index above, or an index loaded from `--index-cache`",
        f"- total benchmark time: {elapsed / 60:.1f} min",
        "",
        "| N | index | params | build (s) | queries/s | paired exact q/s | vs exact | recall@10 | runs |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        build = "" if r.build_s is None else f"{r.build_s:.1f}"
        lines.append(
            f"| {r.n:,} | {r.kind} | {r.params} | {build} | {r.qps:,.0f} | {r.exact_qps:,.1f} "
            f"| {r.speedup:.1f}x | {r.recall:.4f} | {r.runs} |"
        )
    good = [r for r in rows if r.n == largest and r.kind != "exact" and r.recall >= RECALL_TARGET]
    lines.append("")
    if good:
        best = max(good, key=lambda r: r.speedup)
        met = best.speedup >= SPEEDUP_TARGET
        lines.append(
            f"Best at N={largest:,} with recall@10 >= {RECALL_TARGET}: **{best.kind} {best.params}**, "
            f"{best.qps:,.0f} queries/s = {best.speedup:.1f}x exact, recall@10 {best.recall:.4f}. "
            f"Target (>= {SPEEDUP_TARGET:.0f}x exact at recall@10 >= {RECALL_TARGET}): "
            f"**{'met' if met else 'not met'}**."
        )
    else:
        lines.append(f"No setting reached recall@10 >= {RECALL_TARGET} at N={largest:,}: target **not met**.")
    return "\n".join(lines) + "\n"


def parse_ints(text: str) -> list[int]:
    try:
        values = [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> None:
    defaults = IndexConfig()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=parse_ints, default=[10_000, 100_000, 1_000_000], help="catalogue sizes"
    )
    parser.add_argument("--queries", type=int, default=10_000, help="number of queries")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=1_000)
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm relative to the centre norm")
    parser.add_argument("--hnsw-m", type=int, default=defaults.hnsw_m)
    parser.add_argument("--hnsw-ef-construction", type=int, default=defaults.hnsw_ef_construction)
    parser.add_argument(
        "--ef-search", type=parse_ints, default=[32, 64, 128, 256], help="HNSW sweep, largest size"
    )
    parser.add_argument(
        "--nprobe", type=parse_ints, default=[4, 8, 16, 32, 64], help="IVF sweep, largest size"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--time-cap", type=float, default=120.0, help="stop repeating a measurement after this"
    )
    parser.add_argument(
        "--paired-queries", type=int, default=1_000, help="exact queries timed before each row"
    )
    parser.add_argument(
        "--index-cache", type=Path, default=None, help="directory to save/reuse HNSW/IVF indexes"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.queries < 1 or args.paired_queries < 1:
        parser.error(
            f"--queries and --paired-queries must be >= 1, got {args.queries} and {args.paired_queries}"
        )
    if args.index_cache is not None:
        args.index_cache.mkdir(parents=True, exist_ok=True)

    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()
    t0 = time.perf_counter()
    dist = make_distribution(args.dim, args.clusters, seed=0)
    queries = sample(args.queries, *dist, spread=args.spread, seed=2)
    rows: list[Row] = []
    for n in sorted(args.sizes):
        rows += bench_size(n, queries, dist, args, sweep=n == max(args.sizes))
    command = "python benchmarks/retrieval.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = render(rows, args, command.strip(), started, load, time.perf_counter() - t0)
    print(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)


if __name__ == "__main__":
    main()
