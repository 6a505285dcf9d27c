#!/usr/bin/env bash
# Sets up everything from nothing and runs the test suite (the README's test command).
#   bash scripts/test.sh [pytest args]
# Needs python3 >= 3.11; installs Debian's chromium for the browser test when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[test]'
export BPR_SHARED_DIR="${BPR_SHARED_DIR:-$(cd .. && pwd)/shared}"
export OPENBLAS_NUM_THREADS=1
exec python -m pytest -q "$@"
