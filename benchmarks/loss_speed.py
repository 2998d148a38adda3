"""Speed and peak memory of the in-batch InfoNCE loss: the design note's formulation vs ours.

Methods (all do forward + backward w.r.t. seq, pos and neg embeddings, temperature 0.07, K = 1):

* ``note``: the design note as written: every (B*L) slot is a row and every slot's negative, padding
  included, is a pool column; one dense (B*L) x (B*L + 1) logits matrix; no id grouping, no masks.
* ``dense-masked``: the fixed semantics done densely in plain autograd: valid rows x valid pool entries,
  accidental hits masked. Same value as ``ours``; shows what grouping and streaming add.
* ``ours``: ``seqrec.losses.infonce.infonce_loss`` (valid rows only, duplicate-grouped pool, streamed).

Each (method, ids, size) runs in a fresh subprocess. Peak memory is the increase of the process's RSS
high-water mark (``ru_maxrss``) over its value after the inputs were built, or on CUDA
``torch.cuda.max_memory_allocated`` over the allocation at that point. Time is the median over ``--reps``
timed runs after one warm-up run.

Usage::

    python benchmarks/loss_speed.py                      # CPU, writes nothing
    python benchmarks/loss_speed.py --output benchmarks/results/loss_speed.md
    python benchmarks/loss_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from seqrec.losses.infonce import infonce_loss  # noqa: E402

TEMPERATURE = 0.07
ID_SETS = {"ml1m": 3416, "5m": 5_000_000}
EMB_ROWS = 131_072  # embedding of id i is table[i % EMB_ROWS]: same id => same vector, small baseline RSS
SIZES = [(128, 200, 64), (256, 200, 64)]
NOTE_LIMIT_GB = 30.0  # the note's formulation is never run when its estimated peak is above this...


def memory_limit_gb() -> float:
    """... nor above half the machine's RAM (it is shared): an OOM kill would hit other work too."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return min(NOTE_LIMIT_GB, int(line.split()[1]) / 2**20 / 2)
    except OSError:
        pass
    return NOTE_LIMIT_GB


# ----------------------------------------------------------------------------- inputs and methods


def make_inputs(ids: str, B: int, L: int, D: int, device: str, seed: int = 0) -> dict:
    """A SASRec-like batch: left-padded sequences, about half the positions padding.

    Positives follow a Zipf(1) popularity over the catalogue (ML-1M-like); negatives are uniform over the
    catalogue (SASRec's random negatives); padding slots have id 0 and the zero padding embedding.
    """
    g = torch.Generator().manual_seed(seed)
    num_items = ID_SETS[ids]
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    mask = torch.arange(L)[None, :] >= (L - lengths)[:, None]
    if ids == "ml1m":
        popularity = 1.0 / torch.arange(1, num_items + 1, dtype=torch.float64)
        pos_ids = torch.multinomial(popularity, B * L, replacement=True, generator=g).view(B, L) + 1
    else:
        pos_ids = torch.randint(1, num_items + 1, (B, L), generator=g)
    neg_ids = torch.randint(1, num_items + 1, (B, L), generator=g)
    pos_ids, neg_ids = pos_ids * mask, neg_ids * mask
    table = torch.randn(min(EMB_ROWS, num_items + 1), D, generator=g)
    table[0] = 0.0

    def lookup(x):
        vec = table[x % table.shape[0]] * (x != 0)[..., None]
        return vec.to(device).requires_grad_()

    return {
        "seq": torch.randn(B, L, D, generator=g).to(device).requires_grad_(),
        "pos": lookup(pos_ids),
        "neg": lookup(neg_ids),
        "mask": mask.to(device),
        "pos_ids": pos_ids.to(device),
        "neg_ids": neg_ids.to(device),
    }


def note_loss(x: dict) -> torch.Tensor:
    """The note: all B*L slots are rows, all B*L negatives (padding included) are the pool."""
    D = x["seq"].shape[-1]
    q = F.normalize(x["seq"], dim=-1).reshape(-1, D)
    p = F.normalize(x["pos"], dim=-1).reshape(-1, D)
    n = F.normalize(x["neg"], dim=-1).reshape(-1, D)
    logits = torch.cat([(q * p).sum(-1, keepdim=True), q @ n.T], dim=1) / TEMPERATURE
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    row_loss = F.cross_entropy(logits, labels, reduction="none")
    mask = x["mask"].reshape(-1).to(row_loss.dtype)
    return (row_loss * mask).sum() / mask.sum()


def dense_masked_loss(x: dict) -> torch.Tensor:
    """Fixed semantics, dense: valid rows x valid pool, accidental hits masked, no grouping."""
    m = x["mask"]
    q = F.normalize(x["seq"][m], dim=-1)
    p = F.normalize(x["pos"][m], dim=-1)
    n = F.normalize(x["neg"][m], dim=-1)
    pool_logits = (q @ n.T).masked_fill(x["pos_ids"][m][:, None] == x["neg_ids"][m][None, :], float("-inf"))
    logits = torch.cat([(q * p).sum(-1, keepdim=True), pool_logits], dim=1) / TEMPERATURE
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels)


def ours_loss(x: dict) -> torch.Tensor:
    return infonce_loss(x["seq"], x["pos"], x["neg"], x["mask"], x["pos_ids"], x["neg_ids"], TEMPERATURE)


def scored_matrix(method: str, x: dict) -> tuple[int, int]:
    """(rows, pool columns) the method scores: all slots, valid slots, or valid rows x distinct ids."""
    if method == "note":
        return x["mask"].numel(), x["mask"].numel()
    valid = int(x["mask"].sum())
    if method == "dense-masked":
        return valid, valid
    return valid, int(torch.unique(x["neg_ids"][x["mask"]]).numel())


METHODS = {"note": note_loss, "dense-masked": dense_masked_loss, "ours": ours_loss}


# ----------------------------------------------------------------------------- one measurement


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def child(args: argparse.Namespace) -> None:
    """Measure one (method, ids, size) in this fresh process and print one JSON line."""
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    x = make_inputs(args.ids, args.B, args.L, args.D, args.device)
    fn = METHODS[args.method]
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _maxrss_mb()
    times, cpu, loss = [], [], float("nan")
    for _ in range(args.reps + 1):
        for k in ("seq", "pos", "neg"):
            x[k].grad = None
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(x)
        out.backward()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        loss = out.item()
        del out
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else _maxrss_mb() - base
    rows, cols = scored_matrix(args.method, x)
    print(json.dumps({"median_s": statistics.median(times[1:]), "times": times, "peak_mb": peak,
                      "cpu_s": statistics.median(cpu[1:]), "load": os.getloadavg()[0],
                      "loss": loss, "rows": rows, "cols": cols}))  # fmt: skip


def measure(method: str, ids: str, size: tuple[int, int, int], args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", "--method", method, "--ids", ids, "--device", args.device,
           "--reps", str(args.reps), "--threads", str(args.threads),
           "--B", str(size[0]), "--L", str(size[1]), "--D", str(size[2])]  # fmt: skip
    env = dict(os.environ)
    if args.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- table


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs visible, {platform.system()} {platform.release()}"


def run_all(args: argparse.Namespace) -> str:
    sizes = [tuple(int(v) for v in s.split(",")) for s in args.sizes]
    rows = []
    note_at = {}  # (ids, size) -> note measurement or estimate
    for size in sizes:
        for ids in ID_SETS:
            for method in METHODS:
                key = (ids, size)
                smaller = (ids, sizes[0])
                scale = (size[0] * size[1] / (sizes[0][0] * sizes[0][1])) ** 2  # rows x pool grows as n^2
                if method in ("note", "dense-masked") and size != sizes[0]:
                    base = next(
                        (r for r in rows if r["method"] == method and (r["ids"], r["size"]) == smaller), None
                    )
                    limit = memory_limit_gb() if method == "note" else args.max_dense_gb
                    if base is not None and "peak_mb" in base and base["peak_mb"] * scale / 1024 > limit:
                        est = {"method": method, "ids": ids, "size": size, "estimate": True,
                               "median_s": base["median_s"] * scale, "peak_mb": base["peak_mb"] * scale}  # fmt: skip
                        rows.append(est)
                        if method == "note":
                            note_at[key] = est
                        print(
                            f"skip {method} {ids} {size}: est. {est['peak_mb'] / 1024:.1f} GB",
                            file=sys.stderr,
                        )
                        continue
                print(f"run {method} {ids} {size} ...", file=sys.stderr, flush=True)
                res = measure(method, ids, size, args) | {"method": method, "ids": ids, "size": size}
                print(f"  -> {res}", file=sys.stderr, flush=True)
                rows.append(res)
                if method == "note":
                    note_at[key] = res

    lines = [
        "| method | ids | (B,L,D) | scored matrix (rows x pool) | median fwd+bwd s (wall) | median CPU s "
        "| peak MB | speed-up vs note (wall / CPU) | memory / note | load avg | loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = "| {} | {} | ({},{},{}) |".format(r["method"], r["ids"], *r["size"])
        note = note_at.get((r["ids"], r["size"]))
        if "error" in r:
            lines.append(f"{head} | failed: {r['error']} | | | | | | |")
            continue
        if r.get("estimate"):
            lines.append(
                f"{head} | not run (est. ~{r['median_s']:.0f}) | | not run (est. ~{r['peak_mb']:.0f}) "
                "| | | | |"
            )
            continue
        ratio = mem = ""
        if note is not None and "median_s" in note:
            tilde = "~" if note.get("estimate") else ""
            cpu = f"{note['cpu_s'] / r['cpu_s']:.1f}x" if "cpu_s" in note else "n/a"
            ratio = f"{tilde}{note['median_s'] / r['median_s']:.1f}x / {tilde}{cpu}"
            mem = f"{tilde}{note['peak_mb'] / max(r['peak_mb'], 1.0):.1f}x less"
        lines.append(
            f"{head} {r['rows']} x {r['cols']} | {r['median_s']:.3f} | {r['cpu_s']:.3f} | {r['peak_mb']:.0f} "
            f"| {ratio} | {mem} | {r['load']:.1f} | {r['loss']:.6f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--reps", type=int, default=3, help="timed runs after one warm-up (median reported)")
    ap.add_argument("--omp-wait-policy", default="PASSIVE",
                    help="OMP_WAIT_POLICY of the measuring processes ('' keeps the environment's): on a "
                         "shared, oversubscribed machine, spinning OpenMP threads whose partner was "
                         "descheduled inflate the wall time of code with many parallel regions")  # fmt: skip
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--max-dense-gb", type=float, default=6.0,
                    help="skip dense-masked at the larger size when its estimated peak is above this")  # fmt: skip
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per measurement subprocess")
    ap.add_argument("--sizes", nargs="+", default=[",".join(map(str, s)) for s in SIZES], metavar="B,L,D",
                    help="batch sizes; the first is the one every method runs at")  # fmt: skip
    ap.add_argument("--output", type=Path, help="also write the table (with command, machine, date) here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", choices=list(METHODS), help=argparse.SUPPRESS)
    ap.add_argument("--ids", choices=list(ID_SETS), help=argparse.SUPPRESS)
    for dim in ("B", "L", "D"):
        ap.add_argument(f"--{dim}", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    started = datetime.datetime.now(datetime.timezone.utc)
    table = run_all(args)
    print(table)
    if args.output:
        device = torch.cuda.get_device_name() if args.device == "cuda" else machine()
        header = [
            "# InfoNCE loss: speed and peak memory",
            "",
            f"- command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`",
            f"- date: {started:%Y-%m-%d %H:%M} UTC",
            f"- machine: {device}; torch {torch.__version__}, {args.threads} intra-op threads",
            f"- time: median of {args.reps} fwd+bwd runs after one warm-up, wall clock and process CPU time "
            f"(all threads); OMP_WAIT_POLICY={args.omp_wait_policy or 'unset'}; load avg: 1-min load "
            "average when the measurement ended (the machine is shared); memory: "
            + ("`torch.cuda.max_memory_allocated` increase" if args.device == "cuda" else
               "increase of `ru_maxrss` over the value after building the inputs, fresh process per row"),
            "- K = 1 negative per position, temperature 0.07, sequences left-padded with lengths uniform in "
            "1..L (about half the positions padding); ml1m: 3,416 items, positives Zipf(1), negatives "
            "uniform; 5m: 5,000,000 items, uniform. Scored matrix: rows x pool columns the method "
            "computes (ours: valid rows x distinct ids). `not run (est.)`: seconds and MB extrapolated as "
            f"n^2 from the first size, not executed: the note above {memory_limit_gb():.1f} GB "
            f"(min of 30 GB and half this machine's RAM), dense-masked above {args.max_dense_gb:g} GB; "
            "ratios marked ~ are against such an estimate.",
            "",
        ]  # fmt: skip
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("\n".join(header) + "\n" + table + "\n")


if __name__ == "__main__":
    main()
