"""Tiny Shakespeare, 100 s on this machine, default settings: best validation loss and training speed.

Prints charlstm's figures next to references measured in the same run:
  * speed: a bare `nn.LSTM` + Adam loop of the same shape (embedding -> nn.LSTM -> linear, same batch and
    sequence length, same data, carried state) timed for the same kind of stretch; target overhead <= 10%;
  * loss: a plain PyTorch nn.LSTM script (1 x 256, batch 64, seq 64, Adam 5e-3, cosine) trained for the same
    time; charlstm's target is <= 1.55 nats/char.

    .venv/bin/python benchmarks/shakespeare.py [--time 100] [--skip-reference-loss]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import train_for  # noqa: E402

from charlstm.config import ModelConfig, TrainConfig  # noqa: E402
from charlstm.data.streams import Streams  # noqa: E402
from charlstm.data.tokens import split_train_val  # noqa: E402
from charlstm.data.vocab import Vocab  # noqa: E402
from charlstm.model.charrnn import CharRNN  # noqa: E402
from charlstm.training.validation import evaluate_carried  # noqa: E402

CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def bare_loop(
    ids, model_config: ModelConfig, train_config: TrainConfig, seconds: float, lr: float, cosine: bool, eval_ids=None
) -> tuple[float, float | None]:
    """A plain nn.LSTM + Adam loop: returns (chars/s, val loss or None)."""
    torch.manual_seed(0)
    V = model_config.vocab_size
    embed = nn.Embedding(V, model_config.embed)
    lstm = nn.LSTM(model_config.embed, model_config.hidden, model_config.layers, batch_first=True)
    head = nn.Linear(model_config.hidden, V)
    params = [*embed.parameters(), *lstm.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    streams = Streams(ids, train_config.batch_size, train_config.seq_len)
    state, k, chars, spent = None, 0, 0, 0.0
    while spent < seconds:
        started = time.perf_counter()
        if cosine:
            for g in optimizer.param_groups:
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(1.0, spent / seconds)))
        if k == len(streams):
            k, state = 0, None
        x, y = streams.batch_at(k)
        out, state = lstm(embed(x), state)
        loss = F.cross_entropy(head(out).reshape(-1, V), y.reshape(-1), ignore_index=-1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state = tuple(s.detach() for s in state)
        chars += streams.targets_in(k)
        k += 1
        spent += time.perf_counter() - started
    val = None
    if eval_ids is not None:  # score it exactly as charlstm scores itself
        model = CharRNN(model_config)
        model.embed, model.rnn, model.head = embed, lstm, head
        val = evaluate_carried(model, Streams(eval_ids, train_config.batch_size, train_config.seq_len), None)
    return chars / spent, val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", type=float, default=100.0, help="training seconds for each run")
    parser.add_argument("--speed-seconds", type=float, default=30.0, help="seconds for the bare speed loop")
    parser.add_argument("--skip-reference-loss", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "shakespeare")
    args = parser.parse_args()
    if not CORPUS.exists():
        sys.exit(f"{CORPUS} not found (the shared reference data)")
    torch.set_num_threads(torch.get_num_threads())

    ours = train_for(args.time, args.out, [str(CORPUS)])  # default settings
    model_config = ModelConfig(**ours["model_config"])
    train_config = TrainConfig(**ours["train_config"])
    text = CORPUS.read_text(encoding="utf-8")
    vocab = Vocab.from_text(text)
    train_ids, val_ids = split_train_val(vocab.encode(text), train_config.val_frac)

    print(f"bare nn.LSTM loop, same shape, {args.speed_seconds:g} s …", flush=True)
    bare_speed, _ = bare_loop(
        train_ids, model_config, train_config, args.speed_seconds, lr=train_config.lr, cosine=False
    )
    ref_loss = None
    if not args.skip_reference_loss:
        print(
            f"reference plain nn.LSTM script (1x256, batch 64, seq 64, Adam 5e-3, cosine), {args.time:g} s …",
            flush=True,
        )
        ref_model = ModelConfig(vocab_size=len(vocab), layers=1, hidden=256, embed=64)
        ref_train = TrainConfig(batch_size=64, seq_len=64)
        _, ref_loss = bare_loop(train_ids, ref_model, ref_train, args.time, lr=5e-3, cosine=True, eval_ids=val_ids)

    overhead = 1.0 - ours["chars_per_second"] / bare_speed
    shape = f"{model_config.layers}x{model_config.hidden} {model_config.cell}, batch {train_config.batch_size}, seq {train_config.seq_len}"
    print()
    print(f"| figure | charlstm (defaults: {shape}) | reference, same run | target |")
    print("| --- | --- | --- | --- |")
    ref_text = f"{ref_loss:.4f} (plain nn.LSTM 1x256 script)" if ref_loss is not None else "skipped"
    final = ours.get("final_val_loss") or ours["best_val_loss"]  # the whole split, at the end of the run
    print(
        f"| val loss (whole split, end of run), nats/char, --max-time {args.time:g}s | {final:.4f} | {ref_text} | <= 1.55 |"
    )
    if "final_val_loss" in ours:
        print(
            f"| best periodic val loss ({ours['validation']['periodic_chars']:,}-character slice) | {ours['best_val_loss']:.4f} | | |"
        )
        print(f"| wall clock, training steps | {ours['elapsed_seconds']:.1f} s, {ours['train_seconds']:.1f} s | | |")
    print(
        f"| training chars/s | {ours['chars_per_second']:,.0f} | {bare_speed:,.0f} (bare nn.LSTM + Adam loop, same shape) | overhead <= 10% |"
    )
    print(f"| overhead over the bare loop | {overhead * 100:+.1f}% | | |")
    print(f"| steps, chars seen | {ours['step']:,}, {ours['chars_seen']:,} | | |")


if __name__ == "__main__":
    main()
