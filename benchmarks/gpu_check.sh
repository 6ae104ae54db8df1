#!/usr/bin/env bash
# The prepared GPU check (see benchmarks/gpu_check.py): one table, sized for 8 minutes on one H100.
# Without CUDA, or with --cpu, it runs the same steps on tiny models and marks the CUDA rows skipped.
# PYTHON picks the interpreter (default: the project's .venv, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
exec "$python" benchmarks/gpu_check.py "$@"
