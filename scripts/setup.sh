#!/usr/bin/env bash
# Create .venv and install blip2plugins with its test extras, and the LangChain and Label Studio adapters.
# Idempotent. TORCH_SPEC picks the torch build: the default is the CPU wheel; for CUDA, e.g.
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" bash scripts/setup.sh
#
#   --with-label-studio   also make the real Label Studio server's own virtual environment (for the slow
#                         tier's end-to-end tests), cached in $BLIP2_LS_VENV
#                         (default ~/.cache/blip2plugins/label-studio-venv); reused while its version matches
#   --label-studio-only   only that environment
#   --with-torchvision    also make an environment where transformers' image processors use their torchvision
#                         backend (torch 2.14.1 and torchvision 0.29.1, the pair pip finds on this kind of
#                         machine), so the tests can check that the host's pixels equal the processor's with
#                         either backend; cached in $BLIP2_TV_VENV (default ~/.cache/blip2plugins/torchvision-venv)
set -euo pipefail
cd "$(dirname "$0")/.."

LABEL_STUDIO_VERSION=1.23.2
# Label Studio 1.23.2 asks for sentry-sdk>=2.16 and passes options that sentry-sdk 3 refuses ("Unknown option
# 'send_default_pii'"): the server does not start. The stamp names the constraint, so older caches are rebuilt.
LABEL_STUDIO_EXTRAS="sentry-sdk<3"
LS_VENV="${BLIP2_LS_VENV:-$HOME/.cache/blip2plugins/label-studio-venv}"
TORCHVISION_SPEC="torch==2.14.1 torchvision==0.29.1"
TV_VENV="${BLIP2_TV_VENV:-$HOME/.cache/blip2plugins/torchvision-venv}"
project=1
label_studio=0
torchvision=0
usage="usage: bash scripts/setup.sh [--with-label-studio | --label-studio-only] [--with-torchvision]"
for option in "$@"; do
  case "$option" in
    --with-label-studio) label_studio=1 ;;
    --label-studio-only) label_studio=1; project=0 ;;
    --with-torchvision) torchvision=1 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done

pip_install() { "$1" -m pip install -q --disable-pip-version-check "${@:2}"; }

if [ "$project" = 1 ]; then
  python3 -m venv .venv
  # shellcheck disable=SC2086
  pip_install .venv/bin/python ${TORCH_SPEC:-torch==2.13.0}
  pip_install .venv/bin/python -e ".[test,quantization]"
  pip_install .venv/bin/python -e "adapters/langchain[test]"
  pip_install .venv/bin/python -e "adapters/label-studio[test]"
  pip_install .venv/bin/python -e "adapters/ray[test]"
fi

# cached_venv DIR STAMP WHAT PIP_ARGS...: make the virtual environment DIR with PIP_ARGS installed, once; it is
# reused while DIR/STAMP exists (a stamp names what was installed, so a change rebuilds it).
cached_venv() {
  local dir=$1 stamp=$2 what=$3
  shift 3
  if [ ! -f "$dir/$stamp" ]; then
    echo "setup: installing $what into $dir (about a minute, once)" >&2
    rm -rf "$dir"
    mkdir -p "$(dirname "$dir")"
    python3 -m venv "$dir"
    pip_install "$dir/bin/python" "$@"
    touch "$dir/$stamp"
  fi
}

if [ "$label_studio" = 1 ]; then
  cached_venv "$LS_VENV" ".blip2-label-studio-$LABEL_STUDIO_VERSION-sentry2" "Label Studio $LABEL_STUDIO_VERSION" \
    "label-studio==$LABEL_STUDIO_VERSION" "$LABEL_STUDIO_EXTRAS"
fi

if [ "$torchvision" = 1 ]; then
  # shellcheck disable=SC2086
  cached_venv "$TV_VENV" ".blip2-${TORCHVISION_SPEC// /-}" "$TORCHVISION_SPEC (5.7 GB)" $TORCHVISION_SPEC
  pip_install "$TV_VENV/bin/python" -e . "pytest>=8" "pytest-timeout>=2.3"
fi
