#!/usr/bin/env bash
# Quick start: set up, train the design note's InfoNCE model (temperature 0.07), evaluate, recommend.
# Without arguments it trains configs/demo.yaml on the built-in synthetic dataset. Arguments pass through to `seqrec train`,
# e.g. ./run.sh --data ../shared/data/ml-1m/ml-1m.txt.xz --config configs/ml-1m.yaml
set -euo pipefail
cd "$(dirname "$0")"
. scripts/setup-env.sh ""   # the explicit "": sourced without arguments, it would see run.sh's own

out="runs/run-$(date +%Y%m%d-%H%M%S)"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --out) out="${args[$((i + 1))]}" ;;
    --out=*) out="${args[$i]#--out=}" ;;
  esac
done

if [ $# -eq 0 ]; then
  set -- --config configs/demo.yaml   # no arguments: the quick-start demo on the built-in synthetic data
fi
seqrec train --out "$out" "$@"
seqrec evaluate "$out" --quiet --json > "$out/evaluation.json"
seqrec recommend "$out" --k 10 --out "$out/recommendations.csv" --quiet
echo
echo "run directory:    $out"
echo "  config:         $out/config.yaml"
echo "  metrics:        $out/metrics.jsonl (per epoch), $out/results.json (best epoch, test)"
echo "  checkpoints:    $out/checkpoints/best.pt, $out/checkpoints/last.pt"
echo "  evaluation:     $out/evaluation.json"
echo "  top-10 items:   $out/recommendations.csv"
