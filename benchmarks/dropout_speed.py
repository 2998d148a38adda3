"""CPU dropout: ``F.dropout`` (bernoulli_ mask) against ``seqrec.model.dropout`` (uniform draw), same run.

Measures forward + backward of one dropout on the attention weights (B, 1, L, L) and on activations
(B, L, D), and one SASRec encoder forward + backward (B=128, L=200, D=64, 2 blocks, dropout 0.2) with
each dropout, interleaved, median over repeats.

Example:
    python benchmarks/dropout_speed.py --threads 2 --repeats 15
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F

import seqrec.model.dropout as dropout_module
from seqrec.config import ModelConfig
from seqrec.model.sasrec import SASRec


@contextmanager
def torch_dropout():
    """Swaps in F.dropout and F.scaled_dot_product_attention (what the model used before)."""
    import seqrec.model.sasrec as sasrec

    saved = dropout_module.dropout, sasrec.attention
    dropout_module.dropout = lambda x, p, training: F.dropout(x, p, training)  # Dropout modules look it up
    sasrec.attention = lambda q, k, v, attn_mask, p, training: F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=p if training else 0.0)
    try:
        yield
    finally:
        dropout_module.dropout, sasrec.attention = saved


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    B, L, D = 128, 200, 64
    cases = {}
    for name, shape in (("attention weights (128, 1, 200, 200)", (B, 1, L, L)), ("activations (128, 200, 64)", (B, L, D))):
        x = torch.randn(*shape, requires_grad=True)
        g = torch.randn(*shape)
        cases[name] = (
            lambda x=x, g=g: F.dropout(x, 0.2, True).backward(g),
            lambda x=x, g=g: dropout_module.dropout(x, 0.2, True).backward(g),
        )
    model = SASRec(3416, ModelConfig(maxlen=L, hidden_dim=D, num_blocks=2, dropout=0.2)).train()
    lengths = torch.randint(20, L + 1, (B,))
    ids = torch.randint(1, 3417, (B, L)) * (torch.arange(L)[None] >= (L - lengths)[:, None])

    def encoder_step():
        model.zero_grad(set_to_none=True)
        model(ids).square().mean().backward()

    def encoder_step_torch():
        with torch_dropout():
            encoder_step()

    cases["SASRec encoder forward + backward"] = (encoder_step_torch, encoder_step)

    lines = [
        "`python benchmarks/dropout_speed.py" + f" --threads {args.threads} --repeats {args.repeats}`\n",
        f"Machine: {platform.machine()}, {args.threads} threads, torch {torch.__version__}; forward + backward, "
        "dropout 0.2, median ms over interleaved repeats.\n",
        "| case | F.dropout (bernoulli_) ms | seqrec dropout (uniform draw) ms | speed-up |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, (old, new) in cases.items():
        old(), new()  # warm-up
        t_old, t_new = [], []
        for _ in range(args.repeats):
            t_old.append(seconds(old))
            t_new.append(seconds(new))
        a, b = statistics.median(t_old) * 1e3, statistics.median(t_new) * 1e3
        lines.append(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
