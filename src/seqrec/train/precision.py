"""Which float precision a training run computes in (``train.precision``), chosen by the machine.

``auto`` asks the CPU rather than its name: it times one matrix product of a training step's shape in
float32 and in bfloat16 on the run's threads. CPUs with bfloat16 instructions (AVX512-BF16, AMX) ran it
2-4x faster in bfloat16; CPUs without them emulate bfloat16 at a fraction of float32's speed (5 GFLOP/s
against ~100 on an earlier machine of this project, BENCHMARKS.md). On CUDA ``auto`` keeps float32 with
TF32 matrix products (``processes.enable_tf32``); bfloat16 there is a choice (``train.precision=bf16``).
"""

from __future__ import annotations

import logging
import time

import torch

log = logging.getLogger(__name__)

# bfloat16 is used when its product ran at least this many times faster than float32's: the rest of a step
# (conversions, element-wise work) does not speed up, so a marginal GEMM gain is not worth the rounding.
MIN_SPEEDUP = 1.5


def bf16_speedup(rows: int = 512, dim: int = 128, cols: int = 2048, repeats: int = 5) -> float:
    """float32 time / bfloat16 time of a ``(rows, dim) @ (dim, cols)`` product on the current CPU threads.

    Medians of ``repeats`` timings after one warm-up each; ~10 ms on a 2-core machine with bfloat16
    instructions, ~0.3 s without them.
    """
    a, b = torch.randn(rows, dim), torch.randn(dim, cols)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        x @ y
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            x @ y
            samples.append(time.perf_counter() - start)
        times[dtype] = sorted(samples)[repeats // 2]
    return times[torch.float32] / max(times[torch.bfloat16], 1e-9)


def resolve_precision(name: str, device: torch.device) -> str:
    """``train.precision`` -> ``"fp32"`` or ``"bf16"`` (``auto``: see the module docstring).

    Raises:
        ValueError: ``bf16`` asked for on a GPU without bfloat16 support.
    """
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"train.precision=bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support")
    if name != "auto":
        if name == "bf16" and device.type == "cpu" and (speedup := bf16_speedup()) < 1.0:
            log.warning("train.precision=bf16: bfloat16 products run %.2fx the speed of float32 on this CPU "
                        "(no bfloat16 instructions); fp32 would train faster", speedup)
        return name
    if device.type != "cpu":
        return "fp32"
    return "bf16" if bf16_speedup() >= MIN_SPEEDUP else "fp32"
