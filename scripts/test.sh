#!/usr/bin/env bash
# Set up, then run every test: the fast unit tier first, then the slow real-component tier (which includes
# the real Label Studio server, installed once into its own cached virtual environment by setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-label-studio
.venv/bin/python -m pytest -m "not slow" -q
.venv/bin/python -m pytest -m slow -q
