"""What the samples shown while training cost: the same run (same corpus, model and budget in steps) trained with
samples at their defaults (one of 200 characters after each validation) and with `--sample-every 0`, back to back.

Prints each run's wall clock (run.json's elapsed_seconds, validations and saves included) and the ratio, and the
time the sampling run spent sampling (samples.jsonl's `seconds`) as a share of its wall clock: the direct
figure, which a busy machine's noise between two runs does not blur.

    python benchmarks/sample_overhead.py                      # Tiny Shakespeare if present, else the built-in corpus
    python benchmarks/sample_overhead.py --steps 1000 --rounds 2 --extra --hidden 512
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def train(corpus: list[str], steps: int, out: Path, extra: list[str]) -> tuple[dict, list[dict]]:
    command = [
        sys.executable,
        "-m",
        "charlstm",
        "train",
        *corpus,
        "--max-steps",
        str(steps),
        "--out",
        str(out),
        "--overwrite",
        "-q",
        *extra,
    ]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    summary = json.loads((out / "run.json").read_text())
    samples_file = out / "samples.jsonl"
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()] if samples_file.exists() else []
    return summary, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=250, help="training steps of each run (a validation every 250)")
    parser.add_argument("--rounds", type=int, default=1, help="pairs of runs: off-on, on-off, off-on...")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "sample_overhead")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `charlstm train` flags")
    args = parser.parse_args()
    corpus = [str(SHAKESPEARE)] if SHAKESPEARE.exists() else []
    print(f"corpus: {corpus[0] if corpus else 'the built-in corpus'}; {args.steps} steps per run")

    off_seconds, on_seconds, sampling_seconds, counts = [], [], [], []
    for round_ in range(args.rounds):
        # off-on, then on-off: a machine whose load drifts one way favours neither over two rounds
        order = ("off", "on") if round_ % 2 == 0 else ("on", "off")
        for which in order:
            if which == "off":
                off, _ = train(corpus, args.steps, args.out / f"off{round_}", ["--sample-every", "0", *args.extra])
            else:
                on, samples = train(corpus, args.steps, args.out / f"on{round_}", args.extra)
        off_seconds.append(off["elapsed_seconds"])
        on_seconds.append(on["elapsed_seconds"])
        sampling_seconds.append(sum(row.get("seconds", 0.0) for row in samples))
        counts.append(len(samples))
        length = len(samples[-1]["text"]) if samples else 0
        print(
            f"round {round_ + 1}: samples off {off['elapsed_seconds']:.1f} s · samples on {on['elapsed_seconds']:.1f} s "
            f"({len(samples)} samples of ~{length} characters, {sampling_seconds[-1]:.3f} s sampling)",
            flush=True,
        )
    total_off, total_on, total_sampling = sum(off_seconds), sum(on_seconds), sum(sampling_seconds)
    print()
    print(f"{'':28} {'wall clock':>12}")
    print(f"{'samples off (--sample-every 0)':28} {total_off:>10.1f} s")
    print(f"{'samples on (the defaults)':28} {total_on:>10.1f} s")
    print(f"{'ratio on / off':28} {total_on / total_off:>12.4f}")
    print(
        f"time spent sampling: {total_sampling:.3f} s in {sum(counts)} samples = "
        f"{100 * total_sampling / total_on:.3f}% of the sampling runs' wall clock "
        f"({1000 * total_sampling / max(1, sum(counts)):.1f} ms per sample)"
    )


if __name__ == "__main__":
    main()
