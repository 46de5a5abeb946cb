"""Training speed: charlstm's Trainer against a bare `nn.LSTM` + Adam loop of the same shape on the same device,
and the share of the device's matrix-multiply rate (measured in the same run) that each of them reaches.

The two loops are timed in alternating rounds over the same data (the best round of each is reported, so a
burst of load from elsewhere costs a round, not the figure). The shape defaults to charlstm's own defaults
(config.py), read at run time. One command per row of the GPU table:

    python benchmarks/train_speed.py                                    # CPU, fp32, charlstm's defaults
    python benchmarks/train_speed.py --device cuda --precision bf16 --layers 3 --hidden 512 --batch-size 128
    python benchmarks/train_speed.py --device cuda --precision bf16 --layers 3 --hidden 1024 --batch-size 256 --compile

Training FLOPs per character are counted as 3x the forward pass (backward ~ 2x forward): per layer the gate
matrix multiplies, 2 * gates * H * (input + H) with gates = 4 for an LSTM, plus the head, 2 * H * V.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from charlstm.config import ModelConfig, TrainConfig  # noqa: E402
from charlstm.data.corpus import default_corpus, load_corpus  # noqa: E402
from charlstm.data.streams import IGNORE_INDEX, Streams  # noqa: E402
from charlstm.data.tokens import prepare_tokens  # noqa: E402
from charlstm.runtime.device import autocast_dtype, configure_backends, pick_device  # noqa: E402
from charlstm.training.trainer import Trainer  # noqa: E402

SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """FLOP/s of torch.mm on large square matrices: the device's practical matrix-multiply rate."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up
    synchronize(device)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(4 if device.type == "cuda" else 1):
            torch.mm(a, b)
            count += 1
        synchronize(device)
    return 2 * n**3 * count / (time.perf_counter() - started)


def train_flops_per_char(model: ModelConfig) -> float:
    gates = GATES[model.cell]
    forward = 2 * model.hidden * model.vocab_size
    for layer in range(model.layers):
        width_in = model.embed if layer == 0 else model.hidden
        forward += 2 * gates * model.hidden * (width_in + model.hidden)
    return 3 * forward


def bare_loop_speed(
    ids, model: ModelConfig, config: TrainConfig, device: torch.device, seconds: float, warmup: int
) -> float:
    """Characters/s of a plain loop: embedding -> nn.LSTM -> linear, Adam, carried state, same data and shape."""
    torch.manual_seed(0)
    cell = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[model.cell]
    embed = nn.Embedding(model.vocab_size, model.embed).to(device)
    rnn = cell(model.embed, model.hidden, model.layers, batch_first=True).to(device)
    head = nn.Linear(model.hidden, model.vocab_size).to(device)
    optimizer = torch.optim.Adam([*embed.parameters(), *rnn.parameters(), *head.parameters()], lr=config.lr)
    amp = autocast_dtype(config.precision, device)
    streams = Streams(ids, config.batch_size, config.seq_len, device)
    state, k, step, chars, started = None, 0, 0, 0, None
    while True:
        if step == warmup:
            synchronize(device)
            started, chars = time.perf_counter(), 0
        if started is not None and time.perf_counter() - started >= seconds:
            break
        if k == len(streams):
            k, state = 0, None
        x, y = streams.batch_at(k)  # (B, T)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out, state = rnn(embed(x), state)  # (B, T, H)
            logits = head(out)  # (B, T, V)
        loss = F.cross_entropy(logits.float().reshape(-1, model.vocab_size), y.reshape(-1), ignore_index=IGNORE_INDEX)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        chars += streams.targets_in(k)
        k += 1
        step += 1
    synchronize(device)
    return chars / (time.perf_counter() - started)


def trainer_speed(corpus, model: ModelConfig, config: TrainConfig, seconds: float, warmup: int) -> float:
    """Characters/s of charlstm's own Trainer, wall clock between step `warmup` and `seconds` later."""
    config = replace(config, max_steps=10**12, eval_every=10**12)  # no evaluation inside the measurement
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(corpus, model, config, Path(run_dir))
        marks: dict[str, float] = {}

        def should_stop(step: int) -> bool:
            if step == warmup:
                synchronize(trainer.device)
                marks["start"], marks["chars"] = time.perf_counter(), trainer.progress.chars_seen
                return False
            if "start" not in marks or time.perf_counter() - marks["start"] < seconds:
                return False
            synchronize(trainer.device)
            marks["end"], marks["chars_end"] = time.perf_counter(), trainer.progress.chars_seen
            return True

        trainer.train(should_stop=should_stop)
    return (marks["chars_end"] - marks["chars"]) / (marks["end"] - marks["start"])


def main() -> None:
    model_defaults, train_defaults = ModelConfig(), TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus", type=Path, default=None, help="text file (default: Tiny Shakespeare, else the built-in corpus)"
    )
    parser.add_argument("--cell", default=model_defaults.cell)
    parser.add_argument("--layers", type=int, default=model_defaults.layers)
    parser.add_argument("--hidden", type=int, default=model_defaults.hidden)
    parser.add_argument("--embed", type=int, default=model_defaults.embed)
    parser.add_argument("--batch-size", type=int, default=train_defaults.batch_size)
    parser.add_argument("--seq-len", type=int, default=train_defaults.seq_len)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--precision", default=train_defaults.precision, help="auto, fp32 or bf16 (both loops)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile charlstm's loss, as charlstm train --compile does (not the bare loop's)",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per loop per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each loop counts")
    parser.add_argument("--warmup-steps", type=int, default=5, help="untimed steps first (cuDNN tuning, compiling)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    path = args.corpus or (SHAKESPEARE if SHAKESPEARE.exists() else None)
    corpus = load_corpus([path]) if path else default_corpus()
    tokens = prepare_tokens(corpus, train_defaults.val_frac)
    vocab, train_ids = tokens.vocab, tokens.train
    device = pick_device(args.device)
    configure_backends(device)
    model = ModelConfig(vocab_size=len(vocab), cell=args.cell, layers=args.layers, hidden=args.hidden, embed=args.embed)
    config = TrainConfig(
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
    )
    amp = autocast_dtype(args.precision, device)
    matrix_dtype = amp or torch.float32
    precision = "bf16 autocast" if amp == torch.bfloat16 else "fp32"
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(
        f"corpus {corpus.name} ({tokens.chars:,} chars), vocabulary {len(vocab)}, device {device}{threads}, {precision}"
    )
    print(
        f"shape: {model.layers} x {model.hidden} {model.cell}, embed {model.embed}, batch {config.batch_size}, "
        f"seq {config.seq_len}{', compiled' if args.compile else ''}",
        flush=True,
    )

    rate = matmul_rate(device, matrix_dtype)
    print(f"torch.mm rate ({str(matrix_dtype).replace('torch.', '')}): {rate / 1e9:,.1f} GFLOP/s", flush=True)
    bare, ours = [], []
    for round_ in range(1, args.rounds + 1):
        bare.append(bare_loop_speed(train_ids, model, config, device, args.seconds, args.warmup_steps))
        ours.append(trainer_speed(corpus, model, config, args.seconds, args.warmup_steps))
        print(f"round {round_}: bare loop {bare[-1]:,.0f} chars/s, charlstm {ours[-1]:,.0f} chars/s", flush=True)

    flops = train_flops_per_char(model)
    best_bare, best_ours = max(bare), max(ours)
    print()
    print(f"| figure | charlstm Trainer | bare nn.{model.cell.upper()} + Adam loop, same run |")
    print("| --- | --- | --- |")
    print(f"| training chars/s (best of {args.rounds}) | {best_ours:,.0f} | {best_bare:,.0f} |")
    print(
        f"| share of the measured torch.mm rate ({rate / 1e9:,.1f} GFLOP/s) | "
        f"{best_ours * flops / rate:.1%} | {best_bare * flops / rate:.1%} |"
    )
    print(f"| charlstm overhead over the bare loop | {1 - best_ours / best_bare:+.1%} | (target <= 10%) |")
    print(f"training FLOPs per char: {flops / 1e6:.2f} M (3 x forward)")


if __name__ == "__main__":
    main()
