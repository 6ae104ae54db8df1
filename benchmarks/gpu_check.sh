#!/usr/bin/env bash
# The prepared GPU check (see benchmarks/gpu_check.py): one table, sized for 8 minutes on one H100.
# Without CUDA, or with --cpu, it runs the same steps on tiny models and marks the CUDA rows skipped.
# PYTHON picks the interpreter (default: the project's .venv, else python3).
#
# A lent GPU machine has torch and transformers but reaches no package index, so first, here:
#   bash benchmarks/gpu_check.sh --fetch-wheels     # the wheels its image lacks, into .whl/ (git-ignored)
# then run it there with .whl carried along; it installs them into /tmp/blip2-site.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS="httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5 bitsandbytes==0.50.2"
if [ "${1:-}" = "--fetch-wheels" ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  platforms=""
  for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    platforms="$platforms --platform ${tag}_x86_64"
  done
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
    -d .whl $WHEELS
  ls -l .whl
  exit 0
fi
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/blip2-site .whl/*.whl
  export PYTHONPATH="/tmp/blip2-site${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$python" benchmarks/gpu_check.py "$@"
