"""Validation at inference speed, with a bounded cost on any corpus size and a periodic figure that stands for
the whole split.

The validation split is cut into segments of `SEGMENT` characters. Each segment is scored with the hidden state
warmed up on the `BURN_IN` characters before it (read, not scored), so a segment's loss is close to what a
carried state would give, and many segments run side by side as parallel streams under `torch.inference_mode`.

* The periodic check scores about `--eval-chars` characters: one segment drawn (seeded) from each of as many
  equal stretches of the split, so the slice covers the split from end to end in proportion to its characters
  (records, files and their lengths alike, since a record corpus is one character stream) and its figure
  estimates the whole split's: the same slice every time, so the curve is comparable from one check to the next.
* The final evaluation scores every segment when the split holds at most `--final-eval-chars` characters, else
  a larger seeded slice of that size. It scores the periodic slice's segments first (in a seeded order), so the
  last periodic figure comes out of it for free, and then the others in rounds that each cover the split again
  (one segment of every stretch, in a seeded order): a final evaluation cut short by a deadline (`--max-time` on
  a machine that slowed down) is still a sample of the whole split, and says how many characters it scored.

A validation can be cut short (Ctrl-C) between two chunks of `CHUNK` characters: it then returns None.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from charlstm.data.streams import IGNORE_INDEX, Streams
from charlstm.model.charrnn import CharRNN
from charlstm.runtime import distributed
from charlstm.runtime.device import autocast
from charlstm.training.loss import window_loss_sum

SEGMENT = 512  # characters scored per segment
BURN_IN = 128  # characters read before a segment to warm the state up (not scored)
CHUNK = 128  # characters per forward call (a Ctrl-C is seen between two)
ROWS = 64  # segments scored side by side


@dataclass
class Slice:
    """Which segments of the validation split are scored (in the order they are scored), and how many characters
    that is. `periodic`: how many of the first segments are the periodic slice (the final evaluation's prefix)."""

    segments: np.ndarray  # (S,) segment indices
    chars: int  # targets scored
    whole: bool  # every segment of the split
    periodic: int = 0


@dataclass
class Scores:
    """What scoring (part of) a slice found: loss sums and target counts per segment of the slice, in its order;
    `done` segments were scored (all of them unless a deadline ended the scoring early)."""

    sums: np.ndarray  # (S,) float64 nats
    counts: np.ndarray  # (S,) int64 targets
    done: int

    def mean(self, first: int = 0, last: int | None = None) -> float:
        """Nats per character over the scored segments in [first, last)."""
        last = self.done if last is None else min(last, self.done)
        return float(self.sums[first:last].sum() / max(1, self.counts[first:last].sum()))

    @property
    def chars(self) -> int:
        return int(self.counts[: self.done].sum())


def num_segments(val_len: int) -> int:
    return max(1, -(-(val_len - 1) // SEGMENT))  # ceil((targets) / SEGMENT); the first character is never a target


def _chars_of(segments: np.ndarray, val_len: int) -> int:
    return int(sum(_bounds(int(s), val_len)[1] - _bounds(int(s), val_len)[0] for s in segments))


def _stratified(total: int, wanted: int, rng: np.random.Generator, exclude: np.ndarray | None = None) -> np.ndarray:
    """`wanted` distinct segments of `total`, one from each of `wanted` equal stretches of the split (seeded), in
    the split's order; segments in `exclude` are not drawn (a stretch with none left gives none)."""
    edges = np.linspace(0, total, wanted + 1).round().astype(np.int64)
    taken = np.zeros(total, dtype=bool)
    if exclude is not None:
        taken[exclude] = True
    chosen = []
    for low, high in itertools.pairwise(edges):
        free = np.flatnonzero(~taken[low:high]) + low
        if len(free):
            pick = int(rng.choice(free))
            taken[pick] = True
            chosen.append(pick)
    return np.asarray(chosen, dtype=np.int64)


def choose_slice(val_len: int, chars: int, seed: int) -> Slice:
    """The periodic slice: about `chars` scored characters, one segment from each of as many equal stretches of
    the split (seeded), or every segment when the split has no more."""
    total = num_segments(val_len)
    wanted = max(1, -(-chars // SEGMENT))
    if wanted >= total:
        return Slice(np.arange(total), val_len - 1, True, periodic=total)
    rng = np.random.default_rng([seed, val_len, wanted])  # the same slice for the same run, whatever the step
    segments = _stratified(total, wanted, rng)
    return Slice(segments, _chars_of(segments, val_len), False, periodic=len(segments))


def final_slice(val_len: int, chars: int, periodic: Slice, seed: int) -> Slice:
    """The final evaluation: the periodic slice's segments first, then the others in rounds that each draw one
    segment of every stretch of the split (seeded), up to about `chars` characters (every segment when the split
    has no more)."""
    total = num_segments(val_len)
    wanted = max(1, -(-chars // SEGMENT))
    if periodic.whole:
        return Slice(periodic.segments, periodic.chars, True, periodic=len(periodic.segments))
    rng = np.random.default_rng([seed, val_len, wanted, 1])
    first = periodic.segments.copy()
    rng.shuffle(first)  # so that any first part of it is a sample of the whole split too
    order = [first]
    count = len(periodic.segments)
    taken = periodic.segments.copy()
    stretches = max(1, len(periodic.segments))
    while count < min(wanted, total):
        more = _stratified(total, stretches, rng, exclude=taken)
        rng.shuffle(more)
        more = more[: min(wanted, total) - count]
        order.append(more)
        taken = np.concatenate([taken, more])
        count += len(more)
    segments = np.concatenate(order)
    whole = len(segments) >= total
    return Slice(segments, _chars_of(segments, val_len), whole, periodic=len(periodic.segments))


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
def score_slice(
    model: CharRNN,
    ids,
    chosen: Slice,
    device: torch.device,
    amp: torch.dtype | None,
    dist: distributed.Distributed = distributed.SINGLE,
    should_abort: Callable[[], bool] | None = None,
    deadline: float | None = None,
    at_least: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
) -> Scores | None:
    """Loss sums per segment of the chosen slice of `ids` (the validation split), in the slice's order; None when
    `should_abort` said so between two chunks. With a `deadline` (time.perf_counter()), scoring stops at the first
    batch of segments that would start past it, once `at_least` segments are scored. `on_progress(done, total)`
    after each batch. Distributed, each rank scores its share of each batch's rows and the sums are added up over
    the ranks (every rank runs the same number of chunks, and all stop at the same batch)."""
    was_training = model.training
    model.eval()
    val_len = len(ids)
    total_segments = len(chosen.segments)
    sums = torch.zeros(total_segments, dtype=torch.float64, device=device)
    counts = np.array(
        [_bounds(int(s), val_len)[1] - _bounds(int(s), val_len)[0] for s in chosen.segments], dtype=np.int64
    )
    world, rank = dist.world_size, dist.rank
    rows = max(world, ROWS // world * world)
    done = 0
    try:
        with torch.inference_mode():
            for first in range(0, total_segments, rows):
                late = deadline is not None and first >= at_least and time.perf_counter() > deadline
                if _agreed(dist, late):
                    break
                segments = chosen.segments[first : first + rows]
                share = -(-rows // world)  # rows per rank; missing rows are padding
                mine = segments[rank * share : (rank + 1) * share]
                inputs, targets = _batch(ids, mine, val_len)
                if len(mine) == 0:  # this rank has no rows in the last batch: run the chunks on padding
                    inputs = np.zeros((1, BURN_IN + SEGMENT), dtype=np.int64)
                    targets = np.full_like(inputs, IGNORE_INDEX)
                x = torch.from_numpy(inputs).to(device)  # (R, W)
                y = torch.from_numpy(targets).to(device)  # (R, W)
                row_sums = torch.zeros(x.size(0), dtype=torch.float64, device=device)  # (R,)
                state = None
                for column in range(0, x.size(1), CHUNK):
                    if should_abort is not None and _agreed(dist, should_abort()):
                        return None
                    with autocast(device, amp):
                        logits, state = model(x[:, column : column + CHUNK], state)  # (R, T, V)
                    target = y[:, column : column + CHUNK]  # (R, T)
                    losses = F.cross_entropy(
                        logits.float().transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none"
                    )  # (R, T), 0 where ignored
                    row_sums += losses.sum(dim=1, dtype=torch.float64)
                offset = first + rank * share
                if len(mine):
                    sums[offset : offset + len(mine)] = row_sums[: len(mine)]
                done = first + len(segments)
                if on_progress is not None:
                    on_progress(done, total_segments)
    finally:
        model.train(was_training)
    return Scores(dist.sum_(sums).cpu().numpy(), counts, done)


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
    `should_abort` said so between two chunks."""
    scores = score_slice(model, ids, chosen, device, amp, dist, should_abort)
    return None if scores is None else scores.mean()


def _agreed(dist: distributed.Distributed, flag: bool) -> bool:
    """A stop seen by any rank stops the validation on every rank at the same chunk."""
    if not dist.enabled:
        return flag
    return dist.agree(0.0, flag)[1]


@torch.no_grad()
def evaluate_carried(
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
