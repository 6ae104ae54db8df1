#!/usr/bin/env bash
# Set up, then run every test: the fast unit tier first, then the host's pixel and fidelity tests where
# transformers' image processors use their torchvision backend, then the slow real-component tier (which
# includes the real Label Studio server). setup.sh installs both extra environments once, cached.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-label-studio --with-torchvision
.venv/bin/python -m pytest -m "not slow" -q
"${BLIP2_TV_VENV:-$HOME/.cache/blip2plugins/torchvision-venv}/bin/python" -m pytest -q -p no:cacheprovider \
  tests/test_host.py tests/test_retrieval.py
.venv/bin/python -m pytest -m slow -q
