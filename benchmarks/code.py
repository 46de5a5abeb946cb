"""Code: train on this interpreter's standard library (the built-in corpus, one record per file) for a fixed
time on CPU (or take a trained run: `--run DIR`), sample whole files, and report the share that parse with
`ast.parse`, the share of their `def`/`class` blocks that parse on their own, and the val loss.

A block is a `def`/`class` line at any depth (methods and nested functions too) with the lines after it that are
blank, comments, or indented deeper, up to the first other line indented no deeper; it is dedented by the
header's indentation and parsed alone. A block still open when a sample was cut at the length cap is incomplete
and not counted (one that a sample closed by ending its file is). References measured in the same run: real
standard-library files of the validation split (all parse), the same files cut at the cap, their blocks cut by
the same rule (what the rule itself costs: a string continued at column 0 ends a block), and a
shuffled-character baseline (each real file's characters in random order).

    .venv/bin/python benchmarks/code.py [--time 240] [--samples 40] [--max-length 8000] [--temp 0.7]
    .venv/bin/python benchmarks/code.py --run DIR [--samples 40]     # a run trained already, e.g. by size.py
"""

from __future__ import annotations

import ast
import json
import random
import re
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import record_parser, train_for  # noqa: E402

from charlstm.config import SampleConfig  # noqa: E402
from charlstm.data.corpus import default_corpus  # noqa: E402
from charlstm.data.textio import read_text_file  # noqa: E402
from charlstm.generate.sample import sample_text  # noqa: E402
from charlstm.runs.model_file import load_model  # noqa: E402


def parses(source: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences and the like
        try:
            ast.parse(source)
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            return False
    return True


BLOCK_START = re.compile(r"[ \t]*(?:async[ \t]+)?(?:def|class)[ \t]+\w")


def indent_of(line: str) -> int:
    return len(line.expandtabs()) - len(line.expandtabs().lstrip())


def blocks(text: str, ended: bool) -> list[str]:
    """Every complete `def`/`class` block of `text`, dedented (see the docstring). `ended`: the text ended by
    itself, so a block that runs to its end is complete."""
    lines = text.split("\n")
    found = []
    for start, header in enumerate(lines):
        if not BLOCK_START.match(header):
            continue
        indent = indent_of(header)
        end = next(
            (
                i
                for i in range(start + 1, len(lines))
                if lines[i].strip() and not lines[i].lstrip().startswith("#") and indent_of(lines[i]) <= indent
            ),
            None,
        )
        if end is None and not ended:
            continue  # cut off by the sample's end
        body = lines[start:end]
        found.append(
            "\n".join(line.expandtabs()[indent:] if indent_of(line) >= indent else line.lstrip() for line in body)
        )
    return found


def share(flags: list[bool]) -> str:
    return f"{sum(flags) / max(1, len(flags)):.1%} ({sum(flags)} of {len(flags)})"


def main() -> None:
    parser = record_parser(__doc__, "code", samples=40, temp=0.7, max_length=8000, cap_help="cap per sampled file")
    parser.add_argument(
        "--run", type=Path, help="a run directory trained on the built-in corpus: sample it, no training"
    )
    args = parser.parse_args()

    if args.run:
        args.out = args.run
        run = json.loads((args.run / "run.json").read_text())
        if run["corpus"].get("name") != "python-stdlib":
            sys.exit(f"{args.run} was not trained on the built-in corpus")
        args.time = run["elapsed_seconds"]
    else:
        run = train_for(args.time, args.out, ["--device", "cpu"], args.extra)  # no corpus: the built-in one

    corpus = default_corpus()
    files = [read_text_file(p) for p in corpus.files]
    files = [f for f in files if f]
    val_files = files[
        -max(1, round(len(files) * run["train_config"]["val_frac"])) :
    ]  # about: the split is on a file boundary
    rng = random.Random(0)
    shuffled = ["".join(rng.sample(f, len(f))) for f in val_files]

    loaded = load_model(args.out)
    samples = sample_text(
        loaded, SampleConfig(length=args.max_length, temperature=args.temp, num_samples=args.samples, seed=0)
    )
    ended = [len(s) < args.max_length for s in samples]
    parsed = [bool(s.strip()) and parses(s) for s in samples]  # an empty file parses; it is not counted
    lengths = [len(s) for s in samples]
    sampled_blocks = [b for s, e in zip(samples, ended) for b in blocks(s, e)]
    real_blocks = [b for f in val_files for b in blocks(f, True)]

    print()
    print(
        f"| figure | charlstm, {args.time:g} s on CPU, {args.samples} sampled files at temperature {args.temp:g} | reference, same run |"
    )
    print("| --- | --- | --- |")
    print(f"| val loss, nats/char | {run['best_val_loss']:.4f} ({run['best_val_bits_per_char']:.3f} bits/char) | |")
    print(f"| files (records) in the corpus | | {run['records']:,}; lengths {run['record_lengths']} |")
    print(
        f"| parse with ast.parse | {share(parsed)} | real validation files: {share([parses(f) for f in val_files])} |"
    )
    print(
        f"| def/class blocks that parse alone (complete ones, any depth) | {share([parses(b) for b in sampled_blocks])} "
        f"| blocks of the real validation files: {share([parses(b) for b in real_blocks])} |"
    )
    print(
        f"| parse, samples that ended by themselves | {share([p for p, e in zip(parsed, ended) if e])} | real files cut at {args.max_length} chars: {share([parses(f[: args.max_length]) for f in val_files])} |"
    )
    print(
        f"| samples that end by themselves (< {args.max_length} chars) | {share(ended)} | real files under {args.max_length} chars: {share([len(f) < args.max_length for f in val_files])} |"
    )
    print(f"| shuffled-character baseline parses | | {share([parses(f) for f in shuffled])} |")
    print(f"| blank samples (counted as not parsing) | {sum(not s.strip() for s in samples)} | |")
    print(
        f"| sample length median | {np.median(lengths):.0f} | real files: {np.median([len(f) for f in val_files]):.0f} |"
    )
    print(f"| steps, training chars/s | {run['step']:,}, {run['chars_per_second']:,.0f} | |")
    best = sorted((s for s, p in zip(samples, parsed) if p and s.strip()), key=len)[-1:]
    if best:
        print("\nthe longest sample that parses:\n" + best[0][:1500])


if __name__ == "__main__":
    main()
