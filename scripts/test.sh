#!/usr/bin/env bash
# Set up (if needed) and run the test suite: the style, the import layers, the docs site, then pytest ("$@" goes to
# pytest, e.g. -m 'not slow' or one test file).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh test,docs
.venv/bin/ruff check --quiet . && .venv/bin/ruff format --check --quiet .  # the style pyproject.toml sets
.venv/bin/lint-imports --no-cache >/dev/null || .venv/bin/lint-imports --no-cache  # the layering pyproject.toml declares
# The docs site (mkdocs.yml): strict, so a broken link or anchor, a missing page or one left out of the nav fails it.
# Its log is shown only when it fails: --quiet would hide the warnings from strict mode too, and pass.
site_dir="$(mktemp -d)"
if ! docs_log="$(NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "$site_dir" 2>&1)"; then
  echo "$docs_log" >&2
  rm -rf "$site_dir"
  exit 1
fi
rm -rf "$site_dir"
exec .venv/bin/python -m pytest "$@"
