# Sourced by run.sh and test.sh: creates .venv if missing and installs seqrec into it.
# Usage: . scripts/setup-env.sh [extra]   (extra: "" for runtime deps, "dev" for tests)
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_extra="${1:-}"
_venv="$_root/.venv"
_py="${PYTHON:-python3}"
if [ ! -x "$_venv/bin/python" ]; then
  echo "seqrec: creating virtual environment in $_venv" >&2
  "$_py" -m venv "$_venv"
fi
_stamp="$_venv/.seqrec-installed${_extra:+-$_extra}"
# Reinstall only when the packaging files changed since the last install.
if [ ! -f "$_stamp" ] || [ "$_root/pyproject.toml" -nt "$_stamp" ] || [ "$_root/constraints.txt" -nt "$_stamp" ]; then
  echo "seqrec: installing dependencies (torch CPU build via constraints.txt)" >&2
  "$_venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
  # constraints.txt pins torch to the CPU build at hand; without it pip would fetch a multi-GB CUDA wheel.
  "$_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c "$_root/constraints.txt" -e "$_root${_extra:+[$_extra]}"
  touch "$_stamp"
fi
# The browser test of the service's page (tests/test_serve_page.py) drives Debian's headless Chromium;
# install it where it is missing and this runs as root with apt-get (elsewhere that test is skipped).
if [ "$_extra" = "dev" ] && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; } \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "seqrec: installing chromium and chromium-driver (apt-get) for the browser test" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >/dev/null \
    || echo "seqrec: could not install chromium; tests/test_serve_page.py will fail until it is installed" >&2
fi
export PATH="$_venv/bin:$PATH"
