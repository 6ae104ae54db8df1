#!/usr/bin/env bash
# Set up, then run every test: the fast unit tier first, then the slow real-component tier.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -m "not slow" -q
.venv/bin/python -m pytest -m slow -q
