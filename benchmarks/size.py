"""`--size fixed` (the 1 x 384 fp32 recipe, the default before auto) against `--size auto` (the default),
back to back at one budget on one corpus.

Each pair trains through the real CLI (`--max-time` is the run's whole wall clock: start-up, calibration,
validations and saves included) and the final validation loss (the whole split, or the final evaluation's slice
of a larger one) of each is printed side by side with the difference. `--repeats N` runs N pairs (alternating
which goes first) and prints the mean of each: the same setting varies by about +-0.01 nats/char here, so a
difference under ~0.02 over two pairs is noise.

    .venv/bin/python benchmarks/size.py [CORPUS] [--time 100] [--repeats 2]
    (no CORPUS: the built-in code corpus)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import train_for  # noqa: E402

from charlstm.config import format_duration, parse_duration  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", type=Path, help="a text file (default: the built-in code corpus)")
    parser.add_argument("--time", default="100s", help="the budget of each run (--max-time), e.g. 100s or 10m")
    parser.add_argument("--repeats", type=int, default=1, help="pairs to run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "size")
    args = parser.parse_args()
    seconds = parse_duration(args.time)
    corpus_args = [str(args.corpus)] if args.corpus else []
    name = args.corpus.stem if args.corpus else "code"
    losses: dict[str, list[float]] = {"fixed": [], "auto": []}
    chosen = ""
    for repeat in range(args.repeats):
        order = ("fixed", "auto") if repeat % 2 == 0 else ("auto", "fixed")
        for size in order:
            summary = train_for(seconds, args.out / f"{name}-{size}-{repeat}", corpus_args, ["--size", size])
            losses[size].append(summary["final_val_loss"])
            if size == "auto":
                chosen = summary["size_choice"]
            print(
                f"  {size:5}  final val {summary['final_val_loss']:.4f} nats/char  ({summary['step']:,} steps, "
                f"{summary['chars_per_second']:,.0f} chars/s, {summary['elapsed_seconds']:.1f}s)",
                flush=True,
            )
    fixed, auto = statistics.mean(losses["fixed"]), statistics.mean(losses["auto"])
    print(f"\n{name}, --max-time {format_duration(seconds)}, {args.repeats} pair(s); auto chose: {chosen}")
    print("| size | final val loss (each run) | mean |")
    print("| --- | --- | --- |")
    for size, mean in (("fixed", fixed), ("auto", auto)):
        print(f"| {size} | {', '.join(f'{v:.4f}' for v in losses[size])} | {mean:.4f} |")
    print(f"auto - fixed: {auto - fixed:+.4f} nats/char (negative: auto is better; noise about +-0.01 per run)")


if __name__ == "__main__":
    main()
