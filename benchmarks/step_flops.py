"""How close a training epoch runs to this CPU's matrix-multiply speed (issue 16, target 2).

Counts the floating-point operations of one training epoch of a configuration (forward and backward of
the encoder and the loss, as ``torch.utils.flop_counter`` counts them: matrix products and attention;
element-wise work is not counted) on a sample of the epoch's real, length-bucketed batches, and times
fp32 matrix products of the shapes the step is made of on the same threads. With a measured epoch time
(``--epoch-seconds``, e.g. a run's ``metrics.jsonl``) it prints the achieved GFLOP/s next to that ceiling:
if an epoch already runs near the ceiling, only fewer operations (a smaller model, a shorter window,
fewer candidates) or fewer epochs to a quality level can make a time budget reach further.

Example (the ML-1M preset; its 10-minute run alone on two threads took ~50 s per epoch):
    python benchmarks/step_flops.py --config configs/ml-1m.yaml --data ../shared/data/ml-1m/ml-1m.txt.xz \
        --threads 2 --epoch-seconds 49.8
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from run_setup import resolved_run  # benchmarks/run_setup.py (scripts run from benchmarks/)
from torch.utils.flop_counter import FlopCounterMode

from seqrec.model.features import build_model
from seqrec.train.loop import item_counts
from seqrec.train.objective import Objective


def gemm_gflops(m: int, k: int, n: int, repeats: int = 20) -> float:
    """Median GFLOP/s of an (m, k) @ (k, n) fp32 product on the current threads."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * m * k * n / float(np.median(times)) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config")
    parser.add_argument("--data", required=True)
    parser.add_argument("--set", action="append", default=[], help="section.key=value overrides")
    parser.add_argument("--sample", type=int, default=24, help="batches of the epoch whose FLOPs are counted")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for the GEMM timing (0 = default)")
    parser.add_argument("--epoch-seconds", type=float, help="a measured training epoch, to compare with")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config, inter, features, split, builder = resolved_run(args.config, args.data, args.set)
    tc, mc = config.train, config.model
    torch.manual_seed(tc.seed)
    model = build_model(inter.num_items, mc, features)
    objective = Objective(config.loss, item_counts(split))
    steps = builder.num_batches(tc.batch_size)
    picked = np.unique(np.linspace(0, steps - 1, min(args.sample, steps)).round().astype(int))
    order = builder.epoch_order(tc.seed, 0, tc.batch_size)
    flops, tokens, real = 0, 0, 0
    for step in picked:
        batch = builder.batch(tc.seed, 0, int(step), tc.batch_size, order)
        counter = FlopCounterMode(display=False)
        with counter:
            loss = objective(model, batch)
            loss.backward()
        model.zero_grad(set_to_none=True)
        flops += counter.get_total_flops()
        tokens += batch.input_ids.numel()
        real += int((batch.input_ids != 0).sum())
    scale = steps / len(picked)
    epoch_flops = flops * scale
    d, items, width = mc.hidden_dim, inter.num_items, tokens // (len(picked) * tc.batch_size)
    rows = tc.batch_size * width
    peaks = {
        f"loss logits ({rows} x {d}) @ ({d} x {items})": gemm_gflops(rows, d, items),
        f"projection ({rows} x {d}) @ ({d} x {3 * d})": gemm_gflops(rows, d, 3 * d),
        "square 1024 x 1024": gemm_gflops(1024, 1024, 1024),
    }
    print(f"config: maxlen {mc.maxlen}, hidden {d}, {mc.num_blocks} blocks, batch {tc.batch_size}, "
          f"loss {config.loss.name}/{config.loss.mode}, {items} items; {steps} steps per epoch")
    print(f"sampled {len(picked)} batches: mean width {width}, {real / tokens:.0%} of the encoder's tokens are real")
    print(f"training FLOPs per epoch (forward + backward, counted): {epoch_flops / 1e12:.2f} TFLOP "
          f"({epoch_flops / steps / 1e9:.1f} GFLOP per step)")
    print(f"fp32 GEMM on {torch.get_num_threads()} thread(s):")
    for name, value in peaks.items():
        print(f"  {name}: {value:.0f} GFLOP/s")
    if args.epoch_seconds:
        achieved = epoch_flops / args.epoch_seconds / 1e9
        best = max(peaks.values())
        print(f"measured epoch {args.epoch_seconds:.1f} s: {achieved:.0f} GFLOP/s, {achieved / best:.0%} of the "
              f"fastest GEMM above; at that GEMM speed the epoch would take {epoch_flops / best / 1e9:.1f} s")


if __name__ == "__main__":
    main()
