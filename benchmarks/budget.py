"""Does `--max-time` keep its word? Wall-clock time of `charlstm train --max-time T` (the whole command: reading
and encoding the corpus, training, periodic validations and saves, the final evaluation and save) against T, on
several corpora, for several budgets.

    .venv/bin/python benchmarks/budget.py [--budgets 60 240] [--corpora shakespeare tweets builtin big100]
    .venv/bin/python benchmarks/budget.py --root ../old-checkout     # the same measurement of another checkout

The 100 MB corpus is generated (shuffled Tiny Shakespeare lines, in bench-out/, git-ignored). Corpora from
../shared/data are skipped with a message where absent. A run that goes past --give-up seconds is stopped and
reported as such. Prints one row per run: wall seconds, wall / budget, steps, validations, final val loss.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
SHARED = ROOT.parent / "shared" / "data"

from common import train_command  # noqa: E402  (benchmarks/ is on the path only from here)


def corpus_args(name: str, scratch: Path) -> list[str] | None:
    if name == "shakespeare":
        path = SHARED / "tinyshakespeare.txt"
        return [str(path)] if path.exists() else None
    if name == "tweets":
        path = SHARED / "tweets.csv"
        return [str(path), "--field", "Text"] if path.exists() else None
    if name == "builtin":
        return []
    if name.startswith("big"):
        from huge_corpus import make_corpus

        size_mb = int(name[3:])
        path = scratch / f"generated-{size_mb}mb.txt"
        if not path.exists() or path.stat().st_size < size_mb * 1e6 * 0.99:
            print(f"generating {path} ({size_mb} MB)", flush=True)
            make_corpus(path, size_mb)
        return [str(path)]
    raise SystemExit(f"unknown corpus {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[60, 240], help="--max-time values, seconds")
    parser.add_argument("--corpora", nargs="+", default=["shakespeare", "tweets", "builtin", "big100"])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose charlstm is measured")
    parser.add_argument("--give-up", type=float, default=900, help="stop a run after this many seconds")
    parser.add_argument("--scratch", type=Path, default=ROOT / "bench-out" / "budget")
    args = parser.parse_args()
    args.scratch.mkdir(parents=True, exist_ok=True)
    root = args.root.resolve()
    env = {**os.environ, "PYTHONPATH": str(root)}
    rows = []
    for name in args.corpora:
        corpus = corpus_args(name, args.scratch)
        if corpus is None:
            print(f"skipping {name}: not found under {SHARED}", flush=True)
            continue
        for budget in args.budgets:
            out = args.scratch / f"run-{name}-{budget:g}"
            command = train_command(budget, out, corpus)
            print("$", " ".join(command), flush=True)
            started = time.perf_counter()
            try:
                done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=args.give_up)
                wall, code = time.perf_counter() - started, done.returncode
                if code != 0:
                    print(done.stderr[-2000:], flush=True)
            except subprocess.TimeoutExpired:
                wall, code = time.perf_counter() - started, "stopped"
            run = {}
            if (out / "run.json").exists() and code == 0:
                run = json.loads((out / "run.json").read_text())
            evals = len((out / "metrics.jsonl").read_text().splitlines()) if (out / "metrics.jsonl").exists() else 0
            final = run.get("final_val_loss", run.get("last_val_loss"))
            row = (name, budget, wall, code, run.get("step"), evals, final)
            rows.append(row)
            print(f"  -> {wall:.1f} s wall for a {budget:g} s budget ({wall / budget:.2f}x), exit {code}", flush=True)
    print(f"\ncharlstm at {root}")
    print(
        f"{'corpus':<12} {'budget s':>8} {'wall s':>8} {'wall/budget':>11} {'exit':>7} {'steps':>7} {'evals':>5} "
        f"{'final val':>9}"
    )
    for name, budget, wall, code, steps, evals, final in rows:
        ratio = f"{wall / budget:.2f}x" if code == 0 else f">{wall / budget:.2f}x"
        final_text = f"{final:.4f}" if isinstance(final, float) else "-"
        print(
            f"{name:<12} {budget:>8g} {wall:>8.1f} {ratio:>11} {code!s:>7} {steps or '-'!s:>7} {evals:>5} "
            f"{final_text:>9}"
        )


if __name__ == "__main__":
    main()
