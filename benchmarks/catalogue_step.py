"""A/B: one training step at a large catalogue (4.8M items) vs a small one (3,416), interleaved in one process.

Both models (SASRec D=64, 2 blocks, 1 head, L=101, batch 128 by default) live in the same process and
take turns, step for step (big, small, big, small, ...), so machine load affects both alike; the report
gives per-phase medians and the median of the per-pair ratios big/small. Batches are synthetic with the
training batch's shape: item ids drawn uniformly from each catalogue (the worst case for a big table:
no row is hot in the cache) or with ``--ids zipf`` from the TencentGR-like popularity law. The steps are
the training loop's (forward + loss, backward, gradient clipping at 1.0, optimizer step).

``--optimizer sparse`` is ``train.sparse_embeddings``; ``dense`` is AdamW over everything. ``--bandwidth``
also measures the machine's copy bandwidth (``dst.copy_(src)`` of a 1.2 GB tensor) and prints the
memory-bandwidth floor of a dense AdamW step over the big table next to the measured optimizer step.
``--epoch-users`` projects one epoch from the big model's median step.

Usage::

    python benchmarks/catalogue_step.py --losses bce infonce --steps 200 --warmup 5
    python benchmarks/catalogue_step.py --losses bce --optimizer dense --steps 5 --bandwidth
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from seqrec.config import LossConfig, ModelConfig  # noqa: E402
from seqrec.data.batches import Batch  # noqa: E402
from seqrec.data.scale import power_law_ranks  # noqa: E402
from seqrec.model.sasrec import SASRec  # noqa: E402
from seqrec.train.objective import Objective  # noqa: E402
from seqrec.train.sparse import clip_grad_norm, make_optimizer  # noqa: E402

PHASES = ("forward", "backward", "clip", "optimizer", "step")


class Side:
    """One model + optimizer + batch stream at one catalogue size."""

    def __init__(self, num_items: int, args: argparse.Namespace):
        torch.manual_seed(0)
        self.num_items = num_items
        self.args = args
        self.model = SASRec(num_items, ModelConfig(maxlen=args.maxlen, hidden_dim=args.dim, num_blocks=2,
                                                   num_heads=1, dropout=args.dropout))
        self.objective = Objective(LossConfig(name=args.loss, mode="pool", pool_size=args.pool_size))
        self.sparse = args.optimizer == "sparse"
        self.optimizer = make_optimizer(self.model, self.objective.parameters(), lr=1e-3, betas=(0.9, 0.98),
                                        weight_decay=0.0, sparse_embeddings=self.sparse)
        if self.sparse and args.torch_sparse_adam:  # the baseline: torch's SparseAdam on the item table
            self.optimizer.sparse = torch.optim.SparseAdam(self.optimizer.sparse.param_groups[0]["params"], lr=1e-3,
                                                           betas=(0.9, 0.98))
        self.params = list(self.model.parameters()) + list(self.objective.parameters())
        self.rng = np.random.default_rng(1)
        self.perm = self.rng.permutation(num_items) + 1 if args.ids == "zipf" else None
        self.times: dict[str, list[float]] = {p: [] for p in PHASES}

    def ids(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self.perm is None:
            return torch.from_numpy(self.rng.integers(1, self.num_items + 1, size=shape))
        ranks = power_law_ranks(self.rng.random(shape), self.num_items, 1.0, 10.0)
        return torch.from_numpy(self.perm[ranks].astype(np.int64))

    def batch(self) -> Batch:
        b, length = self.args.batch_size, self.args.maxlen
        seq = self.ids((b, length + 1))
        return Batch(torch.arange(b), seq[:, :-1], seq[:, 1:], self.ids((b, length, 1)),
                     torch.ones(b, length, dtype=torch.bool))

    def step(self, index: int, record: bool) -> float:
        batch = self.batch()
        t0 = time.perf_counter()
        loss = self.objective(self.model, batch, torch.Generator().manual_seed(index))
        t1 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        (clip_grad_norm if self.sparse else torch.nn.utils.clip_grad_norm_)(self.params, 1.0)
        t3 = time.perf_counter()
        self.optimizer.step()
        t4 = time.perf_counter()
        if record:
            for name, value in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True):
                self.times[name].append(value)
        return float(loss.detach())


def copy_bandwidth(gib: float = 1.2, repeats: int = 5) -> float:
    """GB/s of ``dst.copy_(src)`` on ``gib`` GiB float32 tensors (read + write counted), best of ``repeats``."""
    n = int(gib * 2**30 / 4)
    src, dst = torch.ones(n), torch.empty(n)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * n * 4 / best / 1e9


def run(args: argparse.Namespace) -> dict:
    big, small = Side(args.items[0], args), Side(args.items[1], args)
    losses = {big.num_items: [], small.num_items: []}
    for i in range(args.warmup + args.steps):
        order = (big, small) if i % 2 == 0 else (small, big)
        for side in order:
            losses[side.num_items].append(side.step(i, record=i >= args.warmup))
    ratios = {p: statistics.median(b / s for b, s in zip(big.times[p], small.times[p], strict=True)) for p in PHASES}
    result = {
        "loss": args.loss, "pool_size": args.pool_size, "optimizer": args.optimizer, "ids": args.ids, "steps": args.steps, "threads": args.threads,
        "batch_size": args.batch_size, "maxlen": args.maxlen, "dim": args.dim,
        "big_items": big.num_items, "small_items": small.num_items,
        "big_median_s": {p: statistics.median(big.times[p]) for p in PHASES},
        "small_median_s": {p: statistics.median(small.times[p]) for p in PHASES},
        "pair_ratio_median": ratios,
        "loss_first_last_big": [statistics.mean(losses[big.num_items][:10]), statistics.mean(losses[big.num_items][-10:])],
        "load_avg_end": os.getloadavg(),
    }
    step = result["big_median_s"]["step"]
    result["epoch_hours_big"] = args.epoch_users / args.batch_size * step / 3600
    if args.bandwidth:
        gbs = copy_bandwidth()
        table = (big.num_items + 1) * args.dim * 4
        # AdamW reads param, grad, exp_avg, exp_avg_sq and writes param, exp_avg, exp_avg_sq: 7 passes.
        result["copy_bandwidth_gb_s"] = gbs
        result["adamw_floor_s_6_passes"] = 6 * table / (gbs * 1e9)
        result["adamw_floor_s_7_passes"] = 7 * table / (gbs * 1e9)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs=2, default=[4_800_000, 3_416], metavar=("BIG", "SMALL"))
    parser.add_argument("--losses", nargs="+", default=["bce", "infonce"])
    parser.add_argument("--optimizer", default="sparse", choices=["sparse", "dense"])
    parser.add_argument("--ids", default="uniform", choices=["uniform", "zipf"])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--maxlen", type=int, default=101)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pool-size", type=int, default=None,
                        help="InfoNCE: loss.pool_size, the same cap at both sizes (default: the whole in-batch pool)")
    parser.add_argument("--epoch-users", type=int, default=1_000_000)
    parser.add_argument("--bandwidth", action="store_true", help="also measure copy bandwidth and the AdamW floor")
    parser.add_argument("--torch-sparse-adam", action="store_true",
                        help="sparse: torch.optim.SparseAdam on the item table instead of RowSparseAdam (baseline)")
    parser.add_argument("--jsonl", type=Path, help="append one JSON line per loss here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    for loss in args.losses:
        args.loss = loss
        r = run(args)
        if args.jsonl:
            with open(args.jsonl, "a") as handle:
                handle.write(json.dumps(r) + "\n")
        b, s, q = r["big_median_s"], r["small_median_s"], r["pair_ratio_median"]
        print(f"{loss} {args.optimizer} ids={args.ids}, {args.steps} steps each, {args.threads} threads" + (f", loss.pool_size={args.pool_size}" if args.pool_size else "") + ":")
        for p in PHASES:
            print(f"  {p:9s} {r['big_items']:>9,} items {b[p]*1e3:8.1f} ms | {r['small_items']:>7,} items "
                  f"{s[p]*1e3:8.1f} ms | ratio (median of pairs) {q[p]:.3f}")
        print(f"  loss big first/last 10: {r['loss_first_last_big'][0]:.3f} -> {r['loss_first_last_big'][1]:.3f}; "
              f"projected epoch of {args.epoch_users:,} users at the big step: {r['epoch_hours_big']:.2f} h; "
              f"load at end {r['load_avg_end'][0]:.2f}")
        if args.bandwidth:
            print(f"  copy bandwidth {r['copy_bandwidth_gb_s']:.1f} GB/s; dense AdamW floor (read+write table + 2 "
                  f"moments, 6 passes) {r['adamw_floor_s_6_passes']*1e3:.0f} ms, with the gradient read (7 passes) "
                  f"{r['adamw_floor_s_7_passes']*1e3:.0f} ms; measured optimizer step {b['optimizer']*1e3:.0f} ms")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
