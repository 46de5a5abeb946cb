"""Training speed of each cell of charlstm/cells.py against the fused nn.LSTM, in the same run.

Every cell is a `CharRNN` of charlstm's default shape (config.py: 1 x 384, embedding 64, batch 32 x 32
characters; vocabulary 65, Tiny Shakespeare's) trained as charlstm trains it: carried (detached) state, the
summed cross-entropy, backward, gradient clipping, AdamW. The cells are timed in alternating rounds over the same
random characters, and each one's best round is reported (a burst of load from elsewhere costs a round, not the
figure), as chars/s and as a ratio to `lstm` (nn.LSTM, oneDNN's fused kernel on CPU).

    python benchmarks/cell_speed.py                       # CPU, every cell
    python benchmarks/cell_speed.py --cells lstm,pseudo2 --rounds 5 --seconds 4
    python benchmarks/cell_speed.py --device cuda         # a GPU, where one is lent
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from charlstm.config import CELLS, ModelConfig, TrainConfig  # noqa: E402
from charlstm.model.charrnn import CharRNN, detach_state  # noqa: E402

VOCAB = 65


def train_steps(model, optimizer, batches, state, device) -> tuple[int, object]:
    """One pass over `batches` as charlstm's trainer does it; returns the characters trained and the state."""
    chars = 0
    for x, y in batches:
        logits, state = model(x, state)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum") / y.numel()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state = detach_state(state)
        chars += y.numel()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return chars, state


def main() -> None:
    model_defaults, train_defaults = ModelConfig(), TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default=",".join(CELLS[:1] + CELLS[3:]), help="comma-separated; lstm first")
    parser.add_argument("--layers", type=int, default=model_defaults.layers)
    parser.add_argument("--hidden", type=int, default=model_defaults.hidden)
    parser.add_argument("--embed", type=int, default=model_defaults.embed)
    parser.add_argument("--batch-size", type=int, default=train_defaults.batch_size)
    parser.add_argument("--seq-len", type=int, default=train_defaults.seq_len)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per cell (the best is reported)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cells = args.cells.split(",")
    generator = torch.Generator().manual_seed(0)
    batches = [
        (ids[:, :-1].to(device), ids[:, 1:].to(device))
        for ids in (torch.randint(VOCAB, (args.batch_size, args.seq_len + 1), generator=generator) for _ in range(8))
    ]
    runs = {}
    for cell in cells:
        torch.manual_seed(0)
        config = ModelConfig(vocab_size=VOCAB, cell=cell, layers=args.layers, hidden=args.hidden, embed=args.embed)
        model = CharRNN(config).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        _, state = train_steps(model, optimizer, batches[:3], None, device)  # warm-up (and TorchScript's profiling)
        runs[cell] = {"model": model, "optimizer": optimizer, "state": state, "best": 0.0, "params": model.num_params}
    for _ in range(args.rounds):
        for cell in cells:
            run = runs[cell]
            chars, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                done, run["state"] = train_steps(run["model"], run["optimizer"], batches, run["state"], device)
                chars += done
            run["best"] = max(run["best"], chars / (time.perf_counter() - start))
    reference = runs[cells[0]]["best"]
    print(
        f"device {device}, {torch.get_num_threads()} threads; {args.layers} x {args.hidden}, embed {args.embed}, "
        f"batch {args.batch_size} x {args.seq_len}; best of {args.rounds} rounds of {args.seconds:g} s"
    )
    print(f"{'cell':<10} {'params':>9} {'chars/s':>10} {'x ' + cells[0]:>9}")
    for cell in cells:
        run = runs[cell]
        print(f"{cell:<10} {run['params']:>9,} {run['best']:>10,.0f} {run['best'] / reference:>9.2f}")


if __name__ == "__main__":
    main()
