"""The InfoNCE loss of this tree against the one of an earlier git revision, in the same run.

``--scope kernel`` (default) times the kernel (``infonce_kernel.softmax_ce_sum``) (forward + every gradient) on a real ML-1M batch
shape: ~13,500 valid positions against a ~3,300-id pool with log-count biases and one accidental hit per
row, D=64, temperature 0.07. ``--scope loss --data ML-1M`` times the whole ``infonce_loss`` (gathers,
normalisation, pool grouping, kernel, backward down to the sequence outputs and the item table) on the
first real ML-1M training batches (B=128, L=200, D=64, an untrained 2-block encoder's outputs).
The two versions alternate (ref, ours, ref, ours, ...) so this shared machine's noise hits both alike;
the table gives both medians and the median of the per-pair ratios, and checks that the two agree.

Examples:
    python benchmarks/kernel_ab.py --ref ab9c4fb --repeats 15
    python benchmarks/kernel_ab.py --ref c3cee35 --scope loss --data ../shared/data/ml-1m/ml-1m.txt.xz
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


def _git_source(rev: str, path: str) -> str | None:
    done = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def _load_source(name: str, source: str):
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_revision(rev: str):
    """``seqrec.losses.infonce`` as it was at git revision ``rev``, imported under another name.

    Since the kernel moved to ``infonce_kernel.py``, the revision's kernel is loaded first and stands in
    for ``seqrec.losses.infonce_kernel`` while the revision's ``infonce.py`` is imported.
    """
    kernel_source = _git_source(rev, "src/seqrec/losses/infonce_kernel.py")
    source = _git_source(rev, "src/seqrec/losses/infonce.py")
    if source is None:
        raise SystemExit(f"revision {rev} has no src/seqrec/losses/infonce.py")
    if kernel_source is None:
        return _load_source(f"infonce_{rev}", source)
    current = sys.modules.get("seqrec.losses.infonce_kernel")
    sys.modules["seqrec.losses.infonce_kernel"] = _load_source(f"infonce_kernel_{rev}", kernel_source)
    try:
        return _load_source(f"infonce_{rev}", source)
    finally:
        if current is None:
            del sys.modules["seqrec.losses.infonce_kernel"]
        else:
            sys.modules["seqrec.losses.infonce_kernel"] = current


def _kernel(module):
    """The kernel of an ``infonce`` module: imported from ``infonce_kernel`` now, private before the split."""
    return getattr(module, "softmax_ce_sum", None) or module._softmax_ce_sum


def kernel_case(args):
    """A synthetic batch of the real ML-1M shape; returns (describe, run(module) -> (loss, grads))."""
    torch.manual_seed(0)
    n, u, d, tau = args.rows, args.pool, args.dim, 0.07
    q = (F.normalize(torch.randn(n, d), dim=1) / tau).requires_grad_()
    pool = F.normalize(torch.randn(u, d), dim=1).requires_grad_()
    pos = ((torch.rand(n) * 2 - 1) / tau).requires_grad_()
    bias = torch.log(torch.randint(1, 20, (u,)).float()).requires_grad_()
    rows, cols = torch.arange(n), torch.randint(0, u, (n,))
    inputs = (q, pos, pool, bias)

    def run(module):
        out = _kernel(module)(q, pos, pool, bias, rows, cols, include_pos=True, scale=1 / n,
                                chunk_size=4096, logit_bound=1.001 / tau)
        return out.detach(), torch.autograd.grad(out, inputs)

    return f"the kernel, {n} rows x {u} pool ids, D={d}", run


def loss_case(args):
    """The first ``--batches`` real ML-1M training batches; run(module) does every batch."""
    from seqrec.config import load_config
    from seqrec.data.batches import BatchBuilder
    from seqrec.data.features import read_dataset
    from seqrec.data.split import leave_one_out
    from seqrec.model.features import build_model

    if not args.data:
        raise SystemExit("--scope loss needs --data (the ML-1M file)")
    config = load_config(None, ["model.maxlen=200", f"model.hidden_dim={args.dim}", "model.num_blocks=2",
                                f"data.path={args.data}"])
    inter, features = read_dataset(config.data)
    split = leave_one_out(inter)
    builder = BatchBuilder(inter.offsets, inter.items, split.train_lengths, inter.num_items, 200, 1)
    order = builder.epoch_order(0, 0)
    batches = [builder.batch(0, 0, step, 128, order) for step in range(args.batches)]
    torch.manual_seed(0)
    model = build_model(inter.num_items, config.model, features)
    with torch.no_grad():
        outputs = [model(b.input_ids) for b in batches]
        table = model.item_embeddings().detach()

    def run(module):
        losses, grads = [], []
        for batch, seq in zip(batches, outputs, strict=True):
            seq, emb = seq.clone().requires_grad_(), table.clone().requires_grad_()
            loss = module.infonce_loss(seq, emb[batch.pos_ids], emb[batch.neg_ids], batch.loss_mask,
                                       batch.pos_ids, batch.neg_ids, 0.07)
            losses.append(loss.detach())
            grads.extend(torch.autograd.grad(loss, (seq, emb)))
        return torch.stack(losses), grads

    valid = sum(int(b.loss_mask.sum()) for b in batches)
    return f"the whole loss on {len(batches)} ML-1M batches ({valid} valid positions), D={args.dim}", run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", required=True, help="git revision whose loss is the baseline")
    parser.add_argument("--scope", choices=["kernel", "loss"], default="kernel")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rows", type=int, default=13_500, help="--scope kernel")
    parser.add_argument("--pool", type=int, default=3_300, help="--scope kernel")
    parser.add_argument("--data", help="--scope loss: the ML-1M interactions file")
    parser.add_argument("--batches", type=int, default=4, help="--scope loss")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    what, run = kernel_case(args) if args.scope == "kernel" else loss_case(args)

    versions = {f"ref {args.ref}": load_revision(args.ref), "this tree": ours}
    (ref_out, ref_grads), (out, grads) = (run(m) for m in versions.values())
    loss_err = float(((out - ref_out).abs() / ref_out.abs()).max())
    grad_err = max(float((a - b).norm() / b.norm()) for a, b in zip(grads, ref_grads, strict=True))
    times: dict[str, list[float]] = {name: [] for name in versions}
    for _ in range(args.repeats):
        for name, module in versions.items():
            start = time.perf_counter()
            run(module)
            times[name].append(time.perf_counter() - start)
    ref_t, our_t = times.values()
    ratio = statistics.median(a / b for a, b in zip(ref_t, our_t, strict=True))
    print(f"`python benchmarks/kernel_ab.py {' '.join(sys.argv[1:])}`\n")
    print(f"Machine: {platform.machine()}, {args.threads} threads, torch {torch.__version__}; {what}; "
          f"forward + gradients, {args.repeats} interleaved repeats.\n")
    print("| version | median ms |\n| --- | ---: |")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values) * 1e3:.1f} |")
    print(f"\nspeed-up (median of per-pair ratios): {ratio:.2f}x; relative difference of the loss "
          f"{loss_err:.1e}, of the gradients (worst) {grad_err:.1e}")


if __name__ == "__main__":
    main()
