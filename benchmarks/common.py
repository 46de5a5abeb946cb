"""What the benchmark scripts share: training a run through the real CLI, and the record benchmarks' flags."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# a model that learns more in a few CPU minutes than the defaults do on long records
SMALL_MODEL = ["--hidden", "256", "--batch-size", "32", "--seq-len", "64"]


def train_command(
    seconds: float, out: Path, corpus_args: list[str], extra: list[str] = (), quiet: bool = True
) -> list[str]:
    """`python -m charlstm train CORPUS_ARGS --max-time SECONDS --out OUT --overwrite -q EXTRA` (-q if `quiet`)"""
    return [
        sys.executable,
        "-m",
        "charlstm",
        "train",
        *corpus_args,
        "--max-time",
        f"{seconds:g}s",
        "--out",
        str(out),
        "--overwrite",
        *(["-q"] if quiet else []),
        *extra,
    ]


def train_for(seconds: float, out: Path, corpus_args: list[str], extra: list[str] = ()) -> dict:
    """Train through the real CLI (`train_command`); returns the run's run.json."""
    command = train_command(seconds, out, corpus_args, extra)
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    return json.loads((Path(out) / "run.json").read_text())


def record_parser(
    doc: str, name: str, samples: int, temp: float, max_length: int, cap_help: str
) -> argparse.ArgumentParser:
    """Flags of a benchmark that trains on records and samples whole ones."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--time", type=float, default=240.0, help="training seconds")
    parser.add_argument("--samples", type=int, default=samples)
    parser.add_argument("--temp", type=float, default=temp)
    parser.add_argument("--max-length", type=int, default=max_length, help=cap_help)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / name)
    parser.add_argument(
        "--extra",
        nargs=argparse.REMAINDER,
        default=SMALL_MODEL,
        help=f"`charlstm train` flags for the model (default: {' '.join(SMALL_MODEL)})",
    )
    return parser
