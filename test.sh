#!/usr/bin/env bash
# Sets up the environment with the test extras and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/setup-env.sh dev
python -m pytest -q "$@"
