"""Long-run check that the fast sampler writes the same text as the plain per-character path (CPU).

Random-weight LSTMs (2 x 128 and 3 x 64), a 2 x 128 GRU and a 2 x 128 RNN (vocabulary 31, no end-of-record,
so every sample runs its full length), six settings each: temperature, top-k, top-p, a batch of 3 (row-by-row
matmuls) and one of 64 (the LSTM's torch-sigmoid cell; the draw's torch exp and cumsum). Then the same four
as record models whose checkpoint holds record start states (an end-of-record marker in the vocabulary, made
rare so that samples run long; each sample starts from one of the states, primed or not). Prints, per run,
whether the texts are identical and where they first differ if not.

    .venv/bin/python benchmarks/sampling_equality.py [--length 4000] [--gain 1.5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from charlstm.config import ModelConfig, SampleConfig  # noqa: E402
from charlstm.data.vocab import Vocab  # noqa: E402
from charlstm.generate.sample import sample_text  # noqa: E402
from charlstm.generate.starts import record_start_states  # noqa: E402
from charlstm.model.charrnn import CharRNN  # noqa: E402
from charlstm.runs.model_file import LoadedModel  # noqa: E402

CHARS = list("\n .,;abcdefghijklmnopqrstuvwxyz")
SETTINGS = [
    dict(seed=1),
    dict(seed=2, temperature=1.2),
    dict(seed=3, top_k=10),
    dict(seed=4, top_p=0.9),
    dict(seed=5, num_samples=3, temperature=0.7),
    dict(seed=6, num_samples=64, temperature=0.9),
]
RECORD_SETTINGS = [
    dict(seed=1),
    dict(seed=2, temperature=1.2, prime="the "),
    dict(seed=5, num_samples=3, temperature=0.7),
    dict(seed=6, num_samples=64, temperature=0.9, prime="a"),
]


def random_model(cell: str, layers: int, hidden: int, seed: int, gain: float, records: bool = False) -> LoadedModel:
    """Random weights; with `records`, an end-of-record marker (id 0, made rare) and start states in the payload."""
    chars = [Vocab.END_OF_RECORD, *CHARS] if records else CHARS
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(vocab_size=len(chars), cell=cell, layers=layers, hidden=hidden, embed=8))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(gain)  # sharper distributions than the default initialisation
        if records:
            model.head.bias[0] -= 6.0  # a record ends now and then, not within a few characters
    payload = {}
    if records:
        ids = torch.randint(len(chars), (20_000,), generator=torch.Generator().manual_seed(seed)).to(torch.uint8)
        payload["start_states"] = record_start_states(model.eval(), ids, 0)  # 64 states, from ~600 markers
    return LoadedModel(model=model.eval(), vocab=Vocab(chars), path=Path("random"), payload=payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=4000)
    parser.add_argument("--gain", type=float, default=1.5)
    args = parser.parse_args()
    total = mismatches = 0
    shapes = [("lstm", 2, 128), ("lstm", 3, 64), ("gru", 2, 128), ("rnn", 2, 128)]
    runs = [(shape, False, SETTINGS) for shape in shapes] + [(shape, True, RECORD_SETTINGS) for shape in shapes]
    for (cell, layers, hidden), records, settings in runs:
        loaded = random_model(cell, layers, hidden, seed=layers, gain=args.gain, records=records)
        for extra in settings:
            config = SampleConfig(length=args.length, **extra)
            fast, plain = sample_text(loaded, config), sample_text(loaded, config, fast=False)
            chars = sum(len(text) for text in plain)
            total += chars
            kind = " records, start states" if records else ""
            line = f"{cell} {layers}x{hidden}{kind} {extra}: {chars} chars, identical={fast == plain}"
            if fast != plain:
                mismatches += 1
                first = min(
                    next((i for i, (a, b) in enumerate(zip(f, p)) if a != b), min(len(f), len(p)))
                    for f, p in zip(fast, plain)
                    if f != p
                )
                line += f", first difference at character {first}"
            print(line, flush=True)
    print(f"total {total:,} characters compared, {mismatches} runs differ")


if __name__ == "__main__":
    main()
