#!/usr/bin/env bash
# Create .venv and install charlstm with its dependencies (idempotent; fast when already done).
#
#   bash scripts/setup.sh              # charlstm and its runtime dependencies only (what scripts/demo.sh needs)
#   bash scripts/setup.sh test,docs    # ... and these extras of pyproject.toml (what scripts/test.sh needs)
#
# The extras can also come from CHARLSTM_EXTRAS. Each set of extras keeps its own stamp in .venv/, so the demo and
# the tests do not reinstall each other's, and pyproject.toml newer than the stamp installs again.
# PyTorch is pinned and installed first: a bare `torch` requirement on a fresh machine would pull the newest
# release with several GB of CUDA packages. On a machine with an NVIDIA GPU the same pin gets a CUDA build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TORCH_VERSION="${CHARLSTM_TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${1:-${CHARLSTM_EXTRAS:-}}"
if [[ ! "$EXTRAS" =~ ^[a-z0-9_,-]*$ ]]; then
  echo "error: extras are names from pyproject.toml separated by commas, e.g. test,docs (got '$EXTRAS')" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  echo "Creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "Installing torch==$TORCH_VERSION"
  .venv/bin/python -m pip install --quiet "torch==$TORCH_VERSION"
fi
if [ -n "$EXTRAS" ]; then
  target=".[$EXTRAS]"
  stamp=".venv/.charlstm-installed-${EXTRAS//,/-}"
else
  target="."
  stamp=.venv/.charlstm-installed
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "Installing charlstm (editable)${EXTRAS:+ with the extras $EXTRAS}"
  .venv/bin/python -m pip install --quiet -e "$target"
  touch "$stamp"
fi
