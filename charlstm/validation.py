"""Validation at inference speed, with a bounded cost on any corpus size.

The validation split is cut into segments of `SEGMENT` characters. Each segment is scored with the hidden state
warmed up on the `BURN_IN` characters before it (read, not scored), so a segment's loss is close to what a
carried state would give, and all segments of a batch run side by side as parallel streams under
`torch.inference_mode`: many streams at once, no autograd.

* The periodic check (every `--eval-every` steps) scores a fixed, seeded subset of the segments, about
  `--eval-chars` characters: the same slice every time, so the curve is comparable from one check to the next.
* The final evaluation scores every segment when the split holds at most `--final-eval-chars` characters, else
  a larger seeded subset of that size (a few seconds at the defaults however big the corpus).

A validation can be cut short (Ctrl-C) between two chunks of `CHUNK` characters: it then returns None.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from . import distributed
from .device import autocast
from .loss import window_loss_sum
from .model import CharRNN
from .streams import IGNORE_INDEX, Streams

SEGMENT = 1024  # characters scored per segment
BURN_IN = 128  # characters read before a segment to warm the state up (not scored)
CHUNK = 128  # characters per forward call (a Ctrl-C is seen between two)
ROWS = 64  # segments scored side by side


@dataclass
class Slice:
    """Which segments of the validation split are scored, and how many characters that is."""

    segments: np.ndarray  # (S,) segment indices, sorted
    chars: int  # targets scored
    whole: bool  # every segment of the split


def num_segments(val_len: int) -> int:
    return max(1, -(-(val_len - 1) // SEGMENT))  # ceil((targets) / SEGMENT); the first character is never a target


def choose_slice(val_len: int, chars: int, seed: int) -> Slice:
    """About `chars` scored characters: every segment when the split has no more, else a seeded subset."""
    total = num_segments(val_len)
    wanted = max(1, -(-chars // SEGMENT))
    if wanted >= total:
        return Slice(np.arange(total), val_len - 1, True)
    rng = np.random.default_rng([seed, val_len, wanted])  # the same slice for the same run, whatever the step
    segments = np.sort(rng.choice(total, size=wanted, replace=False))
    scored = sum(_bounds(int(s), val_len)[1] - _bounds(int(s), val_len)[0] for s in segments)
    return Slice(segments, scored, False)


def _bounds(segment: int, val_len: int) -> tuple[int, int]:
    """Target positions [start, end) of a segment (position p is predicted from position p - 1)."""
    start = 1 + segment * SEGMENT
    return start, min(start + SEGMENT, val_len)


def _batch(ids, segments: np.ndarray, val_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets for a batch of segments, each (rows, BURN_IN + SEGMENT): a row starts with its burn-in
    (targets ignored) and ends in padding where it is shorter (targets ignored)."""
    width = BURN_IN + SEGMENT
    inputs = np.zeros((len(segments), width), dtype=np.int64)
    targets = np.full((len(segments), width), IGNORE_INDEX, dtype=np.int64)
    for row, segment in enumerate(segments):
        start, end = _bounds(int(segment), val_len)
        first = max(0, start - 1 - BURN_IN)  # the first input read (burn-in, then the segment's inputs)
        window = np.asarray(ids[first:end], dtype=np.int64)  # inputs first..end-2, targets first+1..end-1
        n = len(window) - 1  # from a zero state at column 0; padding (ignored) after the end
        inputs[row, :n] = window[:-1]
        scored_from = start - (first + 1)  # targets before the segment are burn-in
        targets[row, scored_from:n] = window[1 + scored_from :]
    return inputs, targets


@torch.no_grad()
def evaluate_slice(
    model: CharRNN,
    ids,
    chosen: Slice,
    device: torch.device,
    amp: torch.dtype | None,
    dist: distributed.Distributed = distributed.SINGLE,
    should_abort: Callable[[], bool] | None = None,
) -> float | None:
    """Mean loss in nats/char over the chosen segments of `ids` (the validation split), or None when
    `should_abort` said so between two chunks. Distributed, each rank scores its share of each batch's rows
    and the sums are added up over the ranks (every rank runs the same number of chunks)."""
    was_training = model.training
    model.eval()
    val_len = len(ids)
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    world, rank = dist.world_size, dist.rank
    rows = max(world, ROWS // world * world)
    try:
        with torch.inference_mode():
            for first in range(0, len(chosen.segments), rows):
                segments = chosen.segments[first : first + rows]
                share = -(-rows // world)  # rows per rank; missing rows are padding
                mine = segments[rank * share : (rank + 1) * share]
                inputs, targets = _batch(ids, mine, val_len)
                count += int(sum(_bounds(int(s), val_len)[1] - _bounds(int(s), val_len)[0] for s in segments))
                if len(mine) == 0:  # this rank has no rows in the last batch: run the chunks on padding
                    inputs = np.zeros((1, BURN_IN + SEGMENT), dtype=np.int64)
                    targets = np.full_like(inputs, IGNORE_INDEX)
                x = torch.from_numpy(inputs).to(device)  # (R, W)
                y = torch.from_numpy(targets).to(device)  # (R, W)
                state = None
                for column in range(0, x.size(1), CHUNK):
                    if should_abort is not None and _agreed(dist, should_abort()):
                        return None
                    with autocast(device, amp):
                        logits, state = model(x[:, column : column + CHUNK], state)  # (R, T, V)
                    total += window_loss_sum(logits, y[:, column : column + CHUNK])
    finally:
        model.train(was_training)
    return dist.sum_(total).item() / max(1, count)


def _agreed(dist: distributed.Distributed, flag: bool) -> bool:
    """A stop seen by any rank stops the validation on every rank at the same chunk."""
    if not dist.enabled:
        return flag
    return dist.agree(0.0, flag)[1]


@torch.no_grad()
def evaluate(
    model: CharRNN, streams: Streams, amp: torch.dtype | None, dist: distributed.Distributed = distributed.SINGLE
) -> float:
    """Mean loss in nats/char over every target of `streams`, hidden state carried across windows: the
    reference the segmented validation is checked against (and the benchmarks' plain evaluation).

    Distributed, each rank scores its own rows of `streams` and the sums are added up over the ranks."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=streams.device)
    state = None
    for x, y in streams:
        with autocast(x.device, amp):
            logits, state = model(x, state)
        total += window_loss_sum(logits, y)
    model.train(was_training)
    return dist.sum_(total).item() / streams.num_targets
