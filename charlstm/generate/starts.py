"""Record start states: the hidden states a record-trained model starts its records from, for sampling.

In training (truncated BPTT, state carried across windows and records) a record's first character is read
after the end-of-record marker that closes the previous record, from the state the previous record left.
Sampling from a zero state instead puts the model where it was only ever at the start of a stream (mid-record,
in all but the first stream), so its samples began mid-record. `record_start_states` takes K of the states
training actually has right BEFORE a marker (the model run over the `context` tokens leading up to it), and
sampling feeds the marker from one of them, as training does.

Why the state before the marker, not after it: sampling then starts exactly as it did from a zero state
(feed [marker] + prime, read the last logits), only from another state, so every stepper (plain, NumPy,
CUDA graph) runs the same start code and gives the same text; a state after the marker would need the
marker's logits stored or recomputed beside it, and an empty feed for an unprimed sample.
"""

from __future__ import annotations

import numpy as np
import torch

from charlstm.model.charrnn import CharRNN

SCAN_ALL_UPTO = 1 << 24  # tokens: up to this, every marker is found (one compare over the array, ~10 ms)
SEARCH_FIRST = 1 << 12  # tokens read after a random offset at first; the window grows 4x until a marker shows
SEARCH_MOST = 1 << 20  # ... up to this (a 1 MB read of a uint8 corpus)
TRIES_PER_STATE = 4  # random offsets tried per wanted state in a huge corpus (repeats and misses are dropped)


def record_start_states(
    model: CharRNN, ids, end_of_record: int | None, k: int = 64, context: int = 256, seed: int = 0
) -> list[torch.Tensor] | None:
    """States to start sampled records from: `[h]`, or `[h, c]` for an LSTM, float32 CPU tensors (layers, K, H).

    Each is the model's state after reading the `context` tokens of `ids` (the training split: an array, a
    memory map, or a CPU tensor of token ids) just before one of K <= k end-of-record markers, chosen with
    `seed`, run from a zero state (fewer tokens for a marker nearer the start, which training also reads from
    a zero state); sampling feeds the marker from it. None when `ids` holds no marker (a corpus without
    records). Runs in eval mode under inference_mode, on the model's device; leaves the model's mode and every
    random generator as they were (a resumed run must continue exactly).
    """
    if end_of_record is None or k < 1 or len(ids) == 0:
        return None
    if isinstance(ids, torch.Tensor):
        ids = ids.cpu().numpy()
    ends = _marker_positions(ids, end_of_record, k, np.random.default_rng(seed))
    if not len(ends):
        return None
    device = next(model.parameters()).device
    columns: list[list[torch.Tensor]] = [[] for _ in ends]  # per marker: its state tensors (layers, 1, H) each
    windows: dict[int, list[int]] = {}  # window length -> indices into `ends`: one batch per length
    for index, end in enumerate(ends.tolist()):
        windows.setdefault(min(context, end), []).append(index)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch.autocast(device.type, enabled=False):  # fp32 whatever training used
            for length, members in windows.items():
                if length == 0:  # a marker first in the array: the zero state (nothing read yet)
                    state = model.initial_state(len(members), device)
                else:
                    starts = ends[members] - length  # (M,)
                    batch = np.stack([np.asarray(ids[s : s + length]) for s in starts.tolist()])  # (M, T)
                    x = torch.from_numpy(batch.astype(np.int64)).to(device)  # (M, T)
                    _, state = model.rnn(model.embed(x))  # from a zero state; the head's logits are not needed
                tensors = state if isinstance(state, tuple) else (state,)
                for j, index in enumerate(members):
                    columns[index] = [t[:, j : j + 1] for t in tensors]  # (layers, 1, H) each
    finally:
        model.train(was_training)
    parts = len(columns[0])
    return [
        torch.cat([col[p] for col in columns], dim=1).float().cpu().contiguous() for p in range(parts)
    ]  # (layers, K, H)


def _marker_positions(ids, end_of_record: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Up to k distinct positions of the marker in `ids`, sorted (a memory map is then read front to back).

    Up to SCAN_ALL_UPTO tokens: k drawn without replacement from all of them (each record as likely as any
    other to follow). Beyond: from random offsets, the first marker after each, found in windows read near
    the offset only, so a memory-mapped corpus of gigabytes costs a few MB of reads (a record is then picked
    with the length of the record before it; nothing ties that to how the next one starts).
    """
    n = len(ids)
    if n <= SCAN_ALL_UPTO:
        found = np.flatnonzero(np.asarray(ids) == end_of_record)
        if len(found) > k:
            found = rng.choice(found, size=k, replace=False)
        return np.sort(found)
    chosen: set[int] = set()
    for offset in rng.integers(0, n, size=k * TRIES_PER_STATE).tolist():
        position = _next_marker(ids, end_of_record, offset)
        if position is not None:
            chosen.add(position)
            if len(chosen) == k:
                break
    return np.array(sorted(chosen), dtype=np.int64)


def _next_marker(ids, end_of_record: int, offset: int) -> int | None:
    """The first marker at or after `offset` within SEARCH_MOST tokens, reading growing windows."""
    window, searched = SEARCH_FIRST, offset
    while searched < len(ids) and searched - offset < SEARCH_MOST:
        stop = min(len(ids), searched + window, offset + SEARCH_MOST)
        hits = np.flatnonzero(np.asarray(ids[searched:stop]) == end_of_record)
        if len(hits):
            return searched + int(hits[0])
        searched, window = stop, window * 4
    return None
