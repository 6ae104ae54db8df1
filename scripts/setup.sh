#!/usr/bin/env bash
# Create .venv and install blip2plugins with its test extras, and the LangChain adapter. Idempotent.
# TORCH_SPEC picks the torch build: the default is the CPU wheel; for CUDA, e.g.
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q --disable-pip-version-check ${TORCH_SPEC:-torch==2.13.0}
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,quantization]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e "adapters/langchain[test]"
