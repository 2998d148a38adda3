"""The streamed InfoNCE kernel of this tree against the one of an earlier git revision, in the same run.

Times ``_softmax_ce_sum`` (forward + every gradient) on a real ML-1M batch shape: ~13,500 valid positions
against a ~3,300-id pool with log-count biases and one accidental hit per row, D=64, temperature 0.07.
The two kernels alternate (ref, ours, ref, ours, ...) so this shared machine's noise hits both alike;
the table gives both medians and the median of the per-pair ratios, and checks that the two agree.

Example:
    python benchmarks/kernel_ab.py --ref ab9c4fb --repeats 15
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import seqrec.losses.infonce as ours

ROOT = Path(__file__).resolve().parents[1]


def load_revision(rev: str):
    """``seqrec.losses.infonce`` as it was at git revision ``rev``, imported under another name."""
    source = subprocess.run(["git", "show", f"{rev}:src/seqrec/losses/infonce.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"infonce_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"infonce_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", required=True, help="git revision whose kernel is the baseline")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rows", type=int, default=13_500)
    parser.add_argument("--pool", type=int, default=3_300)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    n, u, d, tau = args.rows, args.pool, args.dim, 0.07
    q = (F.normalize(torch.randn(n, d), dim=1) / tau).requires_grad_()
    pool = F.normalize(torch.randn(u, d), dim=1).requires_grad_()
    pos = ((torch.rand(n) * 2 - 1) / tau).requires_grad_()
    bias = torch.log(torch.randint(1, 20, (u,)).float()).requires_grad_()
    rows, cols = torch.arange(n), torch.randint(0, u, (n,))
    inputs = (q, pos, pool, bias)

    def run(module):
        out = module._softmax_ce_sum(q, pos, pool, bias, rows, cols, include_pos=True, scale=1 / n,
                                     chunk_size=4096, logit_bound=1.001 / tau)
        return out.detach(), torch.autograd.grad(out, inputs)

    kernels = {f"ref {args.ref}": load_revision(args.ref), "this tree": ours}
    (ref_out, ref_grads), (out, grads) = (run(m) for m in kernels.values())
    loss_err = float((out - ref_out).abs() / ref_out.abs())
    grad_err = max(float((a - b).norm() / b.norm()) for a, b in zip(grads, ref_grads, strict=True))
    times: dict[str, list[float]] = {name: [] for name in kernels}
    for _ in range(args.repeats):
        for name, module in kernels.items():
            start = time.perf_counter()
            run(module)
            times[name].append(time.perf_counter() - start)
    ref_t, our_t = times.values()
    ratio = statistics.median(a / b for a, b in zip(ref_t, our_t, strict=True))
    print(f"`python benchmarks/kernel_ab.py {' '.join(sys.argv[1:])}`\n")
    print(f"Machine: {platform.machine()}, {args.threads} threads, torch {torch.__version__}; "
          f"{n} rows x {u} pool ids, D={d}; forward + gradients, {args.repeats} interleaved repeats.\n")
    print("| kernel | median ms |\n| --- | ---: |")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values) * 1e3:.1f} |")
    print(f"\nspeed-up (median of per-pair ratios): {ratio:.2f}x; relative difference of the loss "
          f"{loss_err:.1e}, of the gradients (worst) {grad_err:.1e}")


if __name__ == "__main__":
    main()
