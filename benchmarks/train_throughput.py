"""Training throughput at TencentGR scale: SASRec (D=64, 2 blocks, L=101) on 1M users x 4.8M items.

Each (loss, batch size, optimizer) configuration runs in a fresh subprocess: it loads the cached
TencentGR-like log (memory-mapped; see ``batch_throughput.py``), builds the ``BatchBuilder`` and the
model, then runs ``--warmup`` untimed and ``--steps`` timed training steps exactly as the training loop
does them (batch build, forward, loss, backward, gradient clipping at 1.0, optimizer step). It reports
sequences per second (wall clock and per CPU-second), the time split into batch building /
forward+backward / clip+optimizer step, and the process's peak RSS.

Optimizers: ``dense`` is the training loop's default (AdamW over every parameter); ``sparse`` is
``train.sparse_embeddings=true`` (``seqrec.train.sparse``: sparse-gradient item table + SparseAdam,
AdamW for the rest). The script also prints the memory arithmetic of the item table.

Usage::

    python benchmarks/train_throughput.py                                  # the default grid, 200 steps
    python benchmarks/train_throughput.py --losses bce --batch-sizes 256 --optimizers sparse --steps 50

On a GPU (issue 7's prepared check; a few minutes on one H100/H200, the data generated on first use)::

    python benchmarks/train_throughput.py --device cuda --precision bf16 --workers 4 --steps 100 \
        --batch-sizes 256 1024 --dims 64 256 --optimizers dense --jsonl gpu.jsonl

``--device cuda`` times with ``torch.cuda.synchronize`` and reports the peak of
``torch.cuda.max_memory_allocated``; batches are built in ``--workers`` DataLoader processes and copied
from pinned memory with non-blocking transfers, as the training loop does. Every configuration also prints
the projected time of one epoch over ``--epoch-users`` users (default 1M, TencentGR-1M).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from batch_throughput import DEFAULT_CACHE, ensure_data  # noqa: E402


def rss_gb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_one(args: argparse.Namespace) -> dict:
    """One configuration, in this process."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    from seqrec.config import LossConfig, ModelConfig
    from seqrec.data.batches import BatchBuilder
    from seqrec.data.split import leave_one_out
    from seqrec.data.storage import load_interactions
    from seqrec.model.sasrec import SASRec
    from seqrec.train.objective import Objective
    from seqrec.train.sparse import clip_grad_norm, make_optimizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    path = ensure_data(args.cache, args.users, args.items)
    inter = load_interactions(path)
    split = leave_one_out(inter)
    builder = BatchBuilder(inter.offsets, inter.items, split.train_lengths, inter.num_items, args.maxlen, 1)
    rss_data = rss_gb()
    model = SASRec(inter.num_items, ModelConfig(maxlen=args.maxlen, hidden_dim=args.dim, num_blocks=args.blocks,
                                                num_heads=1, dropout=0.2)).to(device)
    objective = Objective(LossConfig(name=args.loss), precision=args.precision).to(device)
    sparse = args.optimizer == "sparse"
    optimizer = make_optimizer(model, objective.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=0.0,
                               sparse_embeddings=sparse)
    params = list(model.parameters()) + list(objective.parameters())
    rss_model = rss_gb()
    order = builder.epoch_order(0, 0)

    class Steps(Dataset):
        def __len__(self) -> int:
            return args.warmup + args.steps

        def __getitem__(self, step: int):
            return builder.batch(0, 0, step, args.batch_size, order)

    loader = iter(DataLoader(Steps(), batch_size=None, num_workers=args.workers, pin_memory=cuda))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t_batch = t_fwd_bwd = t_opt = 0.0
    losses = []
    wall0 = cpu0 = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t_batch = t_fwd_bwd = t_opt = 0.0
            wall0, cpu0 = time.perf_counter(), time.process_time()
        t0 = time.perf_counter()
        batch = next(loader).to(device, non_blocking=cuda)  # with workers: the wait for a ready batch
        t1 = time.perf_counter()
        loss = objective(model, batch, torch.Generator(device=device).manual_seed(step))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.sync_each_phase:
            sync()
        t2 = time.perf_counter()
        if sparse:
            clip_grad_norm(params, 1.0)
        else:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if args.sync_each_phase:
            sync()
        t3 = time.perf_counter()
        t_batch, t_fwd_bwd, t_opt = t_batch + t1 - t0, t_fwd_bwd + t2 - t1, t_opt + t3 - t2
        losses.append(loss.detach())
    sync()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    losses = [x.item() for x in losses]
    seqs = args.steps * args.batch_size
    return {
        "loss": args.loss, "batch_size": args.batch_size, "optimizer": args.optimizer, "steps": args.steps,
        "seq_s": seqs / wall, "seq_per_cpu_s": seqs / cpu, "step_s": wall / args.steps,
        "batch_s": t_batch / args.steps, "fwd_bwd_s": t_fwd_bwd / args.steps, "opt_s": t_opt / args.steps,
        "loss_first": statistics.mean(losses[:10]), "loss_last": statistics.mean(losses[-10:]),
        "rss_after_data_gb": rss_data, "rss_after_model_gb": rss_model, "peak_rss_gb": peak_rss_gb(),
        "num_items": inter.num_items, "threads": args.threads, "load_avg_end": os.getloadavg()[0],
        "device": torch.cuda.get_device_name(device) if cuda else "cpu", "precision": args.precision,
        "dim": args.dim, "workers": args.workers,
        "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "epoch_minutes": args.epoch_users / (seqs / wall) / 60,
    }


def table_memory(num_items: int, dim: int) -> str:
    table = (num_items + 1) * dim * 4
    gb = table / 2**30
    return (
        f"item table {num_items + 1:,} x {dim} float32: parameters {gb:.2f} GiB; Adam moments 2 x {gb:.2f} GiB; "
        f"parameters + Adam state {3 * gb:.2f} GiB. Dense AdamW adds a dense gradient ({gb:.2f} GiB, "
        f"{4 * gb:.2f} GiB in all) and touches all of it every step; SparseAdam keeps the same dense moments "
        f"({3 * gb:.2f} GiB) plus a sparse gradient of the batch's rows only."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=4_800_000)
    parser.add_argument("--maxlen", type=int, default=101)
    parser.add_argument("--dim", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--dims", type=int, nargs="+", default=[64], help="hidden sizes D")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--workers", type=int, default=0, help="DataLoader processes building batches")
    parser.add_argument("--epoch-users", type=int, default=1_000_000, help="users of the projected epoch")
    parser.add_argument("--sync-each-phase", action="store_true",
                        help="on CUDA, synchronise after backward and after the step so the split is exact (slower)")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--losses", nargs="+", default=["bce", "infonce"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--optimizers", nargs="+", default=["dense", "sparse"], choices=["dense", "sparse"])
    parser.add_argument("--jsonl", type=Path, help="append one JSON line per configuration here")
    # internal: run one configuration in this process
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--loss", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--optimizer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args)))
        return

    ensure_data(args.cache, args.users, args.items)
    common = ["--cache", str(args.cache), "--users", str(args.users), "--items", str(args.items),
              "--maxlen", str(args.maxlen), "--blocks", str(args.blocks),
              "--threads", str(args.threads), "--steps", str(args.steps), "--warmup", str(args.warmup),
              "--device", args.device, "--precision", args.precision, "--workers", str(args.workers),
              "--epoch-users", str(args.epoch_users)] + (["--sync-each-phase"] if args.sync_each_phase else [])
    configs = [(d, loss, bs, opt) for d in args.dims for loss in args.losses for bs in args.batch_sizes
               for opt in args.optimizers]
    for d in args.dims:
        print(table_memory(args.items, d))
    for dim, loss, bs, opt in configs:
        cmd = [sys.executable, __file__, "--one", "--loss", loss, "--batch-size", str(bs), "--optimizer", opt,
               "--dim", str(dim), *common]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(f"{loss} B={bs} {opt}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        if args.jsonl:
            with open(args.jsonl, "a") as handle:
                handle.write(json.dumps(r) + "\n")
        gpu = f", peak GPU {r['peak_gpu_gb']:.2f} GiB" if r["peak_gpu_gb"] is not None else ""
        print(f"D={dim} {r['precision']} {loss:8s} B={bs:4d} {opt:6s}: {r['seq_s']:7.1f} seq/s ({r['seq_per_cpu_s']:6.1f} per CPU-s), "
              f"step {r['step_s']:.3f}s = batch {r['batch_s']:.3f} + fwd/bwd {r['fwd_bwd_s']:.3f} "
              f"+ clip/opt {r['opt_s']:.3f}; loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}; "
              f"peak RSS {r['peak_rss_gb']:.2f} GB{gpu}; projected epoch of {args.epoch_users:,} users "
              f"{r['epoch_minutes']:.1f} min", flush=True)


if __name__ == "__main__":
    main()
