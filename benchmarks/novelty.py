"""How much of a run's samples is copied from its training text, per temperature, next to the same figures for
held-out real text (records, or pieces, of the run's validation split: what unseen text of the same kind
shares with the training text by chance).

    .venv/bin/python benchmarks/novelty.py RUN [--temps 0.5,0.8,1.0] [--samples 20] [--length 280] [--seed 1]

Each temperature's samples are what `charlstm sample RUN -N 20 --length 280 --temp T --seed 1 --novelty` prints.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from charlstm.config import SampleConfig, parse_temperatures  # noqa: E402
from charlstm.evaluate.novelty import LENGTHS, TrainingText  # noqa: E402
from charlstm.evaluate.scoring import training_data  # noqa: E402
from charlstm.generate.sample import sample_text  # noqa: E402
from charlstm.runs.model_file import load_model  # noqa: E402


def row(label: str, result) -> str:
    shares = "".join(f" {result.share(n):>9.1%}" if result.share(n) is not None else f" {'-':>9}" for n in LENGTHS)
    return f"{label:<26} {result.samples:>7} {result.chars:>8,}{shares} {result.longest:>8,}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--temps", default="0.5,0.8,1.0")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--length", type=int, default=280)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--corpus", type=Path, nargs="*", default=None)
    parser.add_argument("--scale-mb", type=float, default=10.0, help="training text size for the timing (0: skip)")
    parser.add_argument("--reference-samples", type=int, default=2, help="samples searched the torch-rnn way")
    args = parser.parse_args()

    loaded = load_model(args.run)
    data = training_data(loaded, args.corpus)
    vocab = loaded.vocab
    started = time.perf_counter()
    code_of = {c: i + 1 for i, c in enumerate(vocab.chars) if c}
    training = TrainingText(np.asarray(data.train).astype(np.int64) + 1, code_of)
    hash_seconds = time.perf_counter() - started
    print(f"{loaded.path}: training split {len(data.train):,} characters (hashed in {hash_seconds:.2f} s)")
    print(f"{'text':<26} {'samples':>7} {'chars':>8}" + "".join(f" {f'{n}-grams':>9}" for n in LENGTHS) + "  longest")
    config = SampleConfig(length=args.length, num_samples=args.samples, seed=args.seed)
    for temperature in parse_temperatures(args.temps):
        texts = sample_text(loaded, replace(config, temperature=temperature))
        started = time.perf_counter()
        result = training.novelty(texts)
        print(row(f"samples, temperature {temperature:g}", result) + f"   ({time.perf_counter() - started:.2f} s)")
    # the reference: held-out real text of the same kind, cut like the samples
    val = np.asarray(data.val)
    eor = vocab.end_of_record
    if eor is not None:
        cuts = np.flatnonzero(val == eor)
        pieces = [val[a + 1 : b] for a, b in zip(np.concatenate([[-1], cuts]), cuts)]
        pieces = [p for p in pieces if len(p)][: args.samples]
    else:
        pieces = [val[i : i + args.length] for i in range(0, len(val), max(args.length, len(val) // args.samples))]
        pieces = pieces[: args.samples]
    held_out = [vocab.decode(p.tolist())[: args.length] for p in pieces]
    print(row("held-out validation text", training.novelty(held_out)))
    print("columns: share of the n-grams found verbatim in the training split; longest copied span in characters")
    if args.scale_mb > 0:
        scale(loaded, data, texts, args.scale_mb, args.reference_samples)


def scale(loaded, data, samples: list[str], megabytes: float, reference_samples: int) -> None:
    """The last temperature's samples against the training split repeated to `megabytes` million characters:
    hashed (novelty.py) next to torch-rnn's way (a substring search of the training text per window) on the
    first few samples, with the counts compared."""
    vocab = loaded.vocab
    size = int(megabytes * 1e6)
    ids = np.resize(np.asarray(data.train), size)
    code_of = {c: i + 1 for i, c in enumerate(vocab.chars) if c}
    started = time.perf_counter()
    training = TrainingText(ids.astype(np.int64) + 1, code_of)
    training.novelty(samples)
    hashed_seconds = time.perf_counter() - started
    text = "\x00".join(
        vocab.decode(p.tolist())
        for p in np.split(ids, np.flatnonzero(ids == (vocab.end_of_record if vocab.end_of_record is not None else -1)))
    )
    few = samples[:reference_samples]
    started = time.perf_counter()
    brute = {n: sum(s[i : i + n] in text for s in few for i in range(len(s) - n + 1)) for n in LENGTHS}
    brute_seconds = time.perf_counter() - started
    hashed_few = training.novelty(few)
    same = all(brute[n] == hashed_few.copied[n][0] for n in LENGTHS)
    windows = sum(max(0, len(s) - n + 1) for s in samples for n in LENGTHS)
    few_windows = max(1, sum(max(0, len(s) - n + 1) for s in few for n in LENGTHS))
    print(
        f"on {size / 1e6:g}M characters (the training split repeated): hashed, all {len(samples)} samples with the "
        f"longest span: {hashed_seconds:.1f} s; torch-rnn's substring search, {len(few)} samples: {brute_seconds:.1f} s "
        f"({brute_seconds / few_windows * windows:.0f} s projected for all {windows:,} windows, without the longest "
        f"span); counts on those samples equal: {same}"
    )


if __name__ == "__main__":
    main()
