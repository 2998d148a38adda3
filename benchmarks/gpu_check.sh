#!/usr/bin/env bash
# The prepared GPU check (issues 3 and 7): one script, a few minutes on one H100/H200, results under
# ${OUT:-gpu-results}/. Run from the repository root on a machine with CUDA and the project installed
# (pip install -e '.[dev]' with a CUDA build of torch).
#   - the CUDA tests (bf16 vs fp32 loss, compiled bf16 training with loader workers);
#   - loss forward+backward timings at the three issue-3 sizes;
#   - training throughput at TencentGR scale (4.8M items, L=101): B 256/1024, D 64/256, bf16,
#     BCE and InfoNCE with the full in-batch pool, peak GPU memory, projected TencentGR-1M epoch.
set -euo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
nvidia-smi | tee "$OUT/nvidia-smi.txt"
python -m pytest -q tests/test_fast_paths.py 2>&1 | tee "$OUT/cuda-tests.txt"
python benchmarks/loss_speed.py --device cuda --max-dense-gb 60 --output "$OUT/loss_speed_cuda.md" 2>&1 | tee "$OUT/loss_speed.log"
# 200k users is enough to time steps; the item table is the full 4.8M rows.
python benchmarks/train_throughput.py --device cuda --precision bf16 --workers 6 --threads 4 \
    --users 200000 --items 4800000 --steps 100 --warmup 10 --batch-sizes 256 1024 --dims 64 256 \
    --optimizers dense --cache /tmp/seqrec-scale --jsonl "$OUT/train_throughput.jsonl" 2>&1 | tee "$OUT/train_throughput.log"
