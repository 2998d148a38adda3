"""Time the TAAC reader: write a synthetic TAAC dataset, then read it back into arrays.

    python benchmarks/taac_convert.py --users 100000 --items 200000 --mean-length 91

Writes a Markdown report (command, machine, date, sizes, throughput) to
``benchmarks/results/taac_convert.md`` unless ``--out`` says otherwise. Throughput counts every
``seq.jsonl`` record (item records plus the one user-profile record per line) per wall-clock second
of ``read_taac``, which also reads ``indexer.pkl``, ``item_feat_dict.json`` and ``creative_emb/``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from seqrec.data.taac.predict import read_taac_predict
from seqrec.data.taac.reader import read_taac
from seqrec.data.taac.synthetic import write_taac_synthetic


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _parse_only(path: Path) -> int:
    """json.loads every line and nothing else: the floor under any pure-Python reader."""
    count = 0
    with open(path, "rb") as f:
        for line in f:
            count += len(json.loads(line))
    return count


def _row(name: str, records: int, seq_mb: float | None, wall: float, cpu: float) -> str:
    mb = "" if seq_mb is None else f"{seq_mb / cpu:.1f}"
    return f"| {name} | {wall:.1f} | {cpu:.1f} | {records / wall:,.0f} | {records / cpu:,.0f} | {mb} |"


def _size_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 1e6
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=100_000, help="training users (lines of seq.jsonl)")
    parser.add_argument("--items", type=int, default=200_000, help="training items")
    parser.add_argument("--mean-length", type=int, default=91, help="mean item records per line (real: 91.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to write the data (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "taac_convert.md")
    parser.add_argument(
        "--machine", default="2 CPU cores shared with other workers", help="machine note for the report"
    )
    args = parser.parse_args(argv)

    root = args.workdir or Path(tempfile.mkdtemp(prefix="taac_bench_"))
    try:
        dirs, gen_wall, _ = _timed(
            lambda: write_taac_synthetic(
                root, num_users=args.users, num_items=args.items, seed=args.seed, mean_length=args.mean_length
            )
        )
        print(f"generated in {gen_wall:.1f} s", flush=True)
        seq_mb = _size_mb(dirs.train / "seq.jsonl")
        train_mb = _size_mb(dirs.train)

        data, read_wall, read_cpu = _timed(lambda: read_taac(dirs.train, progress=False))
        events = len(data.interactions.items)
        records = events + data.interactions.num_users
        print(f"read_taac: {records:,} records in {read_wall:.1f} s", flush=True)
        _, fast_wall, fast_cpu = _timed(
            lambda: read_taac(dirs.train, progress=False, validate_event_features=False)
        )
        print(f"read_taac without event-feature checks: {fast_wall:.1f} s", flush=True)
        _, json_wall, json_cpu = _timed(lambda: _parse_only(dirs.train / "seq.jsonl"))
        predict, predict_wall, predict_cpu = _timed(
            lambda: read_taac_predict(dirs.eval, data, progress=False)
        )
        predict_records = len(predict.items) + predict.num_users
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        real_records = 1_001_845 * (91.1 + 1)  # TencentGR-1M: users x (mean item records + profile record)
        command = "python " + " ".join(
            shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
        )
        lines = [
            "# TAAC conversion benchmark",
            "",
            f"- command: `{command}`",
            f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- machine: {args.machine}; os.cpu_count() = {os.cpu_count()}; {platform.platform()}; "
            f"{platform.processor() or platform.machine()}",
            f"- python {platform.python_version()}, numpy {np.__version__}",
            f"- load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
            "(other workers share the cores, so wall times are noisy; CPU time is given too)",
            "",
            "## Data",
            "",
            f"- {args.users:,} users x mean {args.mean_length} item records (max 100), {args.items:,} items, seed {args.seed}",
            f"- {events:,} item records + {data.interactions.num_users:,} user-profile records = {records:,} records",
            f"- seq.jsonl {seq_mb:,.0f} MB; training directory {train_mb:,.0f} MB "
            f"(item_feat_dict.json, indexer.pkl, creative_emb/ with emb_81_32.pkl and emb_82_16/)",
            f"- generation took {gen_wall:,.1f} s (not part of the conversion)",
            "",
            "## Conversion (read_taac, one process)",
            "",
            "Wall time depends on how busy the shared cores are; CPU time (process time) is the steadier",
            "measure, so rates are given per wall second and per CPU second.",
            "",
            "| step | wall s | CPU s | records/s (wall) | records/s (CPU) | MB/s of seq.jsonl (CPU) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            _row("read_taac (default: every record validated)", records, seq_mb, read_wall, read_cpu),
            _row("read_taac(validate_event_features=False)", records, seq_mb, fast_wall, fast_cpu),
            _row(
                "json.loads of every seq.jsonl line alone (reference)", records, seq_mb, json_wall, json_cpu
            ),
            _row(
                f"read_taac_predict ({predict.num_users:,} users, {len(predict.candidates):,} candidates, "
                "their vectors)",
                predict_records,
                None,
                predict_wall,
                predict_cpu,
            ),
            "",
            f"Peak resident memory of the process: {peak_mb:,.0f} MB.",
            "",
            f"At the CPU rate, TencentGR-1M (about {real_records:,.0f} records) would take about "
            f"{real_records / (records / read_cpu) / 60:,.0f} minutes of one core (at this run's wall rate "
            f"{real_records / (records / read_wall) / 60:,.0f} minutes); `json.loads` alone is "
            f"{100 * json_cpu / read_cpu:.0f}% of read_taac's CPU time.",
            "",
        ]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines))
        print("\n".join(lines))
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
