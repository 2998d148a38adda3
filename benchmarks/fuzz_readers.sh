#!/usr/bin/env bash
# Property-based fuzzing of every interaction-log reader (SASRec text plain/.gz/.xz/.bz2, CSV, TSV,
# Parquet): random and mutated files must give valid data or a DataError naming the file, nothing else.
#
#   benchmarks/fuzz_readers.sh [EXAMPLES [PYTEST_ARGS...]]   # default: 10000 examples per reader, all readers
#   benchmarks/fuzz_readers.sh 10000 -k parquet               # one reader
#
# Writes benchmarks/results/fuzz_readers.txt (or $FUZZ_OUT): per-reader counts, outcomes and timings
# from hypothesis. The test suite runs the same properties with 150 derandomized examples per reader.
set -euo pipefail
cd "$(dirname "$0")/.."
examples="${1:-10000}"
shift || true
python="${PYTHON:-.venv/bin/python}"
out="${FUZZ_OUT:-benchmarks/results/fuzz_readers.txt}"
mkdir -p "$(dirname "$out")"
start=$(date +%s)
{
  echo "# benchmarks/fuzz_readers.sh $examples $*  ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs)"
  SEQREC_HYPOTHESIS_EXAMPLES="$examples" "$python" -m pytest -q -p no:cacheprovider \
    tests/test_reliability_hypothesis.py --hypothesis-show-statistics "$@" 2>&1
  echo "# wall time: $(( $(date +%s) - start )) s"
} | tee "$out"
