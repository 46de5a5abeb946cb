#!/usr/bin/env bash
# Create .venv and install charlstm with its dependencies (idempotent; fast when already done).
# PyTorch is pinned and installed first: a bare `torch` requirement on a fresh machine would pull the newest
# release with several GB of CUDA packages. On a machine with an NVIDIA GPU the same pin gets a CUDA build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TORCH_VERSION="${CHARLSTM_TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "Creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "Installing torch==$TORCH_VERSION"
  .venv/bin/python -m pip install --quiet "torch==$TORCH_VERSION"
fi
stamp=.venv/.charlstm-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "Installing charlstm (editable) with its test tools"
  .venv/bin/python -m pip install --quiet -e ".[test]"
  touch "$stamp"
fi
