"""Sampling speed: charlstm's sampler next to a naive per-character nn.LSTM loop, same shapes, same run.

For each LSTM shape (random weights, vocabulary 65, temperature 0.8, no stop strings) it prints chars/s of
  * reference: embedding -> nn.LSTM -> linear -> softmax -> torch.multinomial, the LSTM called once per
    character, each character read back to the host (batch 1, and batch 256);
  * charlstm plain path (generate(..., fast=False)), batch 1;
  * charlstm default path (generate()), batch 1 and --num-samples 256;
with the ratios the targets speak of (single >= 15,000 / 1,500 chars/s; batch 256 >= 20x single).
Each figure is given as chars per wall-clock second and, in brackets, chars per CPU-second of this process
(less sensitive to other processes on a shared machine; with several threads it sums their CPU time).

    .venv/bin/python benchmarks/sampling.py [--threads N] [--seconds 3] [--shapes 2x128,3x512]

--threads sets torch's and OpenBLAS's thread count (it must be known before NumPy loads, hence here).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--threads", type=int, default=None, help="torch and OpenBLAS threads (default: theirs)")
parser.add_argument("--seconds", type=float, default=3.0, help="time spent on each figure")
parser.add_argument("--shapes", default="2x128,3x512", help="comma-separated LAYERSxHIDDEN")
parser.add_argument("--batch", type=int, default=256, help="samples in the batched figure")
parser.add_argument("--device", default="cpu", help="cpu or cuda (on CUDA charlstm uses its CUDA-graph stepper)")
args = parser.parse_args()
if args.threads:
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(args.threads)

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from charlstm.config import ModelConfig, SampleConfig  # noqa: E402
from charlstm.data.vocab import Vocab  # noqa: E402
from charlstm.generate.sample import generate  # noqa: E402
from charlstm.model.charrnn import CharRNN  # noqa: E402
from charlstm.runs.model_file import LoadedModel  # noqa: E402

VOCAB = [chr(c) for c in range(32, 97)]  # 65 printable characters, no end-of-record entry
TEMPERATURE = 0.8


class Rate:
    """chars per wall-clock second and per CPU-second of this process."""

    def __init__(self, chars: int, wall: float, cpu: float):
        self.wall, self.cpu = chars / wall, chars / max(cpu, 1e-9)

    def __str__(self) -> str:
        return f"{self.wall:,.0f} ({self.cpu:,.0f})"

    def times(self, other: Rate) -> str:
        return f"{self.wall / other.wall:.1f}x ({self.cpu / other.cpu:.1f}x)"


def naive_loop(model: CharRNN, batch: int, seconds: float) -> Rate:
    """The reference: nn.LSTM (and embedding, head, multinomial) called once per character."""
    torch.manual_seed(0)
    x = torch.zeros(batch, 1, dtype=torch.long, device=args.device)  # (B, 1)
    state, steps = None, 0
    with torch.inference_mode():
        started, cpu_started = time.perf_counter(), time.process_time()
        while time.perf_counter() - started < seconds:
            for _ in range(16):
                out, state = model.rnn(model.embed(x), state)  # (B, 1, H)
                probs = torch.softmax(model.head(out[:, -1]) / TEMPERATURE, dim=-1)  # (B, V)
                x = torch.multinomial(probs, 1)  # (B, 1)
                x.view(-1).tolist()  # the characters reach the host, as a streaming sampler's must
            steps += 16
        return Rate(steps * batch, time.perf_counter() - started, time.process_time() - cpu_started)


def charlstm_rate(loaded: LoadedModel, batch: int, seconds: float, fast: bool) -> Rate:
    """charlstm's generate(), streamed as the CLI consumes it; the length is sized to take ~`seconds`."""
    length = 64
    while True:
        config = SampleConfig(length=length, temperature=TEMPERATURE, seed=1, num_samples=batch)
        started, cpu_started = time.perf_counter(), time.process_time()
        chars = sum(len(piece) for _, piece in generate(loaded, config, fast=fast))
        elapsed = time.perf_counter() - started
        if elapsed >= seconds or length >= 10_000_000:
            return Rate(chars, elapsed, time.process_time() - cpu_started)
        length = int(length * min(16.0, 1.3 * seconds / max(elapsed, 1e-3)))


def main() -> None:
    print(
        f"device {args.device}, torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    rows = []
    for shape in args.shapes.split(","):
        layers, hidden = (int(v) for v in shape.lower().split("x"))
        torch.manual_seed(0)
        model = (
            CharRNN(ModelConfig(vocab_size=len(VOCAB), layers=layers, hidden=hidden, embed=64)).to(args.device).eval()
        )
        loaded = LoadedModel(model=model, vocab=Vocab(VOCAB), path=Path("random"), payload={})
        seconds = args.seconds
        naive_single = naive_loop(model, 1, seconds)
        plain_single = charlstm_rate(loaded, 1, seconds, fast=False)
        fast_single = charlstm_rate(loaded, 1, seconds, fast=True)
        naive_batch = naive_loop(model, args.batch, seconds)
        fast_batch = charlstm_rate(loaded, args.batch, seconds, fast=True)
        rows.append((shape, naive_single, plain_single, fast_single, naive_batch, fast_batch))
        print(f"\n{layers} x {hidden} LSTM (vocab {len(VOCAB)}, temperature {TEMPERATURE}), chars/s (per CPU-s):")
        print(f"  reference: naive nn.LSTM loop, batch 1      {naive_single}")
        print(
            f"  charlstm plain path (fast=False), batch 1   {plain_single}   = {plain_single.times(naive_single)} reference"
        )
        print(
            f"  charlstm sampler, batch 1                   {fast_single}   = {fast_single.times(naive_single)} reference"
        )
        print(f"  reference: naive nn.LSTM loop, batch {args.batch}    {naive_batch}")
        print(
            f"  charlstm sampler, batch {args.batch}                 {fast_batch}   = {fast_batch.times(fast_single)} "
            f"charlstm batch 1, {fast_batch.times(naive_single)} reference batch 1, "
            f"{fast_batch.times(naive_batch)} reference batch {args.batch}"
        )
    print("\nchars/s (chars per CPU-second); ratios likewise")
    print(
        f"| shape | naive b1 | charlstm plain b1 | charlstm b1 | vs naive b1 | naive b{args.batch} "
        f"| charlstm b{args.batch} | vs charlstm b1 | vs naive b1 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for shape, naive_single, plain_single, fast_single, naive_batch, fast_batch in rows:
        print(
            f"| {shape} | {naive_single} | {plain_single} | {fast_single} | {fast_single.times(naive_single)} "
            f"| {naive_batch} | {fast_batch} | {fast_batch.times(fast_single)} | {fast_batch.times(naive_single)} |"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
