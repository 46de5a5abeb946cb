#!/usr/bin/env bash
# Set up (if needed) and run the test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/ruff check --quiet . && .venv/bin/ruff format --check --quiet .  # the style pyproject.toml sets
.venv/bin/lint-imports --no-cache >/dev/null || .venv/bin/lint-imports --no-cache  # the layering pyproject.toml declares
exec .venv/bin/python -m pytest "$@"
