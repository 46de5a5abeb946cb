"""Code: train on this interpreter's standard library (the built-in corpus, one record per file) for a fixed
time on CPU, sample whole files, and report the share that parse with `ast.parse`, and the val loss.

References measured in the same run: real standard-library files of the validation split (all parse),
the same real files cut at the sample length cap (what the cap alone costs), and a shuffled-character
baseline (each real file's characters in random order).

    .venv/bin/python benchmarks/code.py [--time 240] [--samples 40] [--max-length 8000]
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from charlstm.config import SampleConfig  # noqa: E402
from charlstm.data import default_corpus, read_text_file  # noqa: E402
from charlstm.sample import load_model, sample_text  # noqa: E402


def parses(source: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences and the like
        try:
            ast.parse(source)
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            return False
    return True


def share(flags: list[bool]) -> str:
    return f"{sum(flags) / max(1, len(flags)):.1%} ({sum(flags)} of {len(flags)})"


SMALL_MODEL = ["--hidden", "256", "--batch-size", "32", "--seq-len", "64"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", type=float, default=240.0, help="training seconds")
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--temp", type=float, default=0.7)
    parser.add_argument("--max-length", type=int, default=8000, help="cap per sampled file")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "code")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=SMALL_MODEL,
                        help=f"`charlstm train` flags for the model (default: {' '.join(SMALL_MODEL)}: learns more in a few CPU minutes)")
    args = parser.parse_args()

    command = [sys.executable, "-m", "charlstm", "train", "--max-time", f"{args.time}s", "--out", str(args.out), "--overwrite",
               "--device", "cpu", "-q", *args.extra]  # fmt: skip
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    run = json.loads((args.out / "run.json").read_text())

    corpus = default_corpus()
    files = [read_text_file(p) for p in corpus.files]
    files = [f for f in files if f]
    val_files = files[-max(1, round(len(files) * run["train_config"]["val_frac"])) :]  # about: the split is on a file boundary
    rng = random.Random(0)
    shuffled = ["".join(rng.sample(f, len(f))) for f in val_files]

    loaded = load_model(args.out)
    samples = sample_text(loaded, SampleConfig(length=args.max_length, temperature=args.temp, num_samples=args.samples, seed=0))
    ended = [len(s) < args.max_length for s in samples]
    parsed = [bool(s.strip()) and parses(s) for s in samples]  # an empty file parses; it is not counted
    lengths = [len(s) for s in samples]

    print()
    print(f"| figure | charlstm, {args.time:g} s on CPU, {args.samples} sampled files at temperature {args.temp:g} | reference, same run |")
    print("| --- | --- | --- |")
    print(f"| val loss, nats/char | {run['best_val_loss']:.4f} ({run['best_val_bits_per_char']:.3f} bits/char) | |")
    print(f"| files (records) in the corpus | | {run['records']:,}; lengths {run['record_lengths']} |")
    print(f"| parse with ast.parse | {share(parsed)} | real validation files: {share([parses(f) for f in val_files])} |")
    print(f"| parse, samples that ended by themselves | {share([p for p, e in zip(parsed, ended) if e])} | real files cut at {args.max_length} chars: {share([parses(f[: args.max_length]) for f in val_files])} |")
    print(f"| samples that end by themselves (< {args.max_length} chars) | {share(ended)} | real files under {args.max_length} chars: {share([len(f) < args.max_length for f in val_files])} |")
    print(f"| shuffled-character baseline parses | | {share([parses(f) for f in shuffled])} |")
    print(f"| blank samples (counted as not parsing) | {sum(not s.strip() for s in samples)} | |")
    print(f"| sample length median | {np.median(lengths):.0f} | real files: {np.median([len(f) for f in val_files]):.0f} |")
    print(f"| steps, training chars/s | {run['step']:,}, {run['chars_per_second']:,.0f} | |")
    best = sorted((s for s, p in zip(samples, parsed) if p and s.strip()), key=len)[-1:]
    if best:
        print("\nthe longest sample that parses:\n" + best[0][:1500])


if __name__ == "__main__":
    main()
