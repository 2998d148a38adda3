"""Seconds per training step of a configuration in fp32 and in bf16 (train.precision), on real batches.

Builds the configuration's model, objective and Adam, takes the epoch's first length-bucketed batches,
and times forward + backward + optimizer step over the same batches in each precision (a few warm-up
steps first; medians of ``--rounds`` rounds). ``--profile`` also prints torch.profiler's top operators
for the last precision, to see where a step's time goes.

Example (session 12, the ML-1M preset, alone on the 2-core machine):
    python benchmarks/step_time.py --config configs/ml-1m.yaml --data ../shared/data/ml-1m/ml-1m.txt.xz \
        --threads 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from run_setup import resolved_run  # benchmarks/run_setup.py (scripts run from benchmarks/)

from seqrec.model.features import build_model
from seqrec.train.loop import item_counts
from seqrec.train.objective import Objective
from seqrec.train.precision import bf16_speedup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config")
    parser.add_argument("--data", required=True)
    parser.add_argument("--set", action="append", default=[], help="section.key=value overrides")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config, inter, features, split, builder = resolved_run(args.config, args.data, args.set)
    tc, mc = config.train, config.model
    order = builder.epoch_order(tc.seed, 0, tc.batch_size)
    batches = [builder.batch(tc.seed, 0, i, tc.batch_size, order) for i in range(args.steps + 3)]
    print(f"config: maxlen {mc.maxlen}, hidden {mc.hidden_dim}, {mc.num_blocks} blocks, batch {tc.batch_size}, "
          f"dropout {mc.dropout}, {inter.num_items} items; {torch.get_num_threads()} thread(s); "
          f"bf16 GEMM probe {bf16_speedup():.2f}x fp32")
    times = {}
    for precision in args.precisions:
        torch.manual_seed(tc.seed)
        model = build_model(inter.num_items, mc, features)
        model.train()
        objective = Objective(config.loss, item_counts(split), precision=precision)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(batch, objective=objective, model=model, optimizer=optimizer):
            loss = objective(model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        for batch in batches[:3]:
            step(batch)
        rounds = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for batch in batches[3:]:
                step(batch)
            rounds.append((time.perf_counter() - start) / args.steps)
        times[precision] = float(np.median(rounds))
        print(f"{precision}: {times[precision] * 1e3:.0f} ms per step (rounds: "
              + ", ".join(f"{r * 1e3:.0f}" for r in rounds) + ")")
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for batch in batches[3:13]:
                    step(batch)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    if "fp32" in times and "bf16" in times:
        print(f"bf16 step speed-up: {times['fp32'] / times['bf16']:.2f}x")


if __name__ == "__main__":
    main()
