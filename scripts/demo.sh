#!/usr/bin/env bash
# The main job: set up, train a small model on the built-in corpus (this Python's standard library sources)
# for about two minutes on CPU, and print a sample.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh  # charlstm and its runtime dependencies only (scripts/test.sh adds the test and docs extras)
.venv/bin/charlstm train --max-time "${DEMO_TIME:-2m}" --out checkpoints/demo --overwrite
echo
echo "──────── sample (charlstm sample checkpoints/demo --prime 'def ' --length 800) ────────"
.venv/bin/charlstm sample checkpoints/demo --prime "def " --length 800 --seed 1
