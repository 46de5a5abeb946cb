"""Truncated-BPTT windows over B parallel streams: row i of window k+1 continues row i of window k."""

from __future__ import annotations

import math

import numpy as np
import torch

from charlstm.data.tokens import MIN_TRAIN_CHARS
from charlstm.errors import CharlstmError

IGNORE_INDEX = -1  # target value for padding positions: no loss


class Streams:
    """Truncated-BPTT batches: the token sequence is cut into `batch` contiguous streams, and step k takes
    the k-th `seq_len` window of every stream, so row i of batch k+1 continues row i of batch k.

    Every character is an input exactly once per epoch and a target exactly once (the first is never a
    target). The last stream is padded at its end; padded targets are IGNORE_INDEX, so they carry no loss.
    The last window of an epoch may be shorter than `seq_len`.

    Each window is gathered when asked for: the ids stay in their compact dtype, on the device (a tensor, or
    an in-memory array) or on the host (a memory-mapped array, read a window at a time), never as a copy of
    the corpus in int64. With `rows` (a contiguous slice of range(batch)), only those stream rows are served
    by `batch_at` (distributed training gives each rank its own rows this way); the geometry and the counts
    (`batch`, `len`, `targets_in`, `num_targets`) stay those of all `batch` rows.
    """

    def __init__(
        self,
        ids: torch.Tensor | np.ndarray,
        batch: int,
        seq_len: int,
        device: torch.device | str = "cpu",
        rows: slice | None = None,
        gather_on_host: bool | None = None,
    ):
        """`gather_on_host`: None chooses (numpy on the CPU or for a memory-mapped corpus, torch ops on the
        device otherwise); the tests force the device-side gather on the CPU to check it against numpy's."""
        if len(ids) < 2:
            raise CharlstmError("need at least 2 characters to make training pairs")
        self.device = torch.device(device)
        self.seq_len = seq_len
        self.length = len(ids)  # N
        self.batch = batch  # B, of which this object serves `rows`
        self.stream_len = math.ceil((self.length - 1) / batch)  # L: inputs per stream
        first, last, step = (rows or slice(None)).indices(batch)
        if step != 1 or last <= first:
            raise ValueError(f"rows must be a non-empty contiguous slice of range({batch}), got {rows}")
        self.rows = slice(first, last)
        self.steps_per_epoch = math.ceil(self.stream_len / seq_len)
        all_starts = np.arange(batch, dtype=np.int64) * self.stream_len
        self._targets_per_row = np.clip(self.length - 1 - all_starts, 0, self.stream_len)  # (B,)
        self.num_targets = self.length - 1
        starts = all_starts[first:last]  # the rows served
        # on the CPU, or for a memory-mapped corpus, windows are gathered with numpy (no thread start-up per op)
        auto = self.device.type == "cpu" or isinstance(ids, np.memmap)
        self._on_host = auto if gather_on_host is None else gather_on_host
        if self._on_host:
            self._tokens = ids if isinstance(ids, np.memmap) else _compact_array(ids)
            self._starts = starts[:, None]  # (rows, 1)
        else:
            compact = _compact_array(ids)
            compact = compact.astype(np.int32) if compact.dtype == np.uint16 else compact  # GPU indexing: no uint16
            self._tokens = torch.from_numpy(compact).to(self.device)
            self._starts = torch.as_tensor(starts, device=self.device)[:, None]  # (rows, 1)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _window(self, k: int) -> tuple[int, int]:
        start = k * self.seq_len
        return start, min(start + self.seq_len, self.stream_len)

    def batch_at(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of window k of the epoch, each (rows, T) int64 with T <= seq_len."""
        start, end = self._window(k)
        if self._on_host:
            positions = self._starts + np.arange(start, end + 1)  # (rows, T + 1)
            tokens = self._tokens[np.minimum(positions, self.length - 1)].astype(np.int64)  # (rows, T + 1)
            beyond = positions >= self.length  # padding past the end of the sequence
            inputs, targets = tokens[:, :-1].copy(), tokens[:, 1:].copy()  # (rows, T) each
            inputs[beyond[:, :-1]] = 0
            targets[beyond[:, 1:]] = IGNORE_INDEX
            return torch.from_numpy(inputs).to(self.device), torch.from_numpy(targets).to(self.device)
        positions = self._starts + torch.arange(start, end + 1, device=self.device)  # (rows, T + 1)
        tokens = self._tokens[positions.clamp(max=self.length - 1)].long()  # (rows, T + 1)
        beyond = positions >= self.length  # padding past the end of the sequence
        inputs = tokens[:, :-1].masked_fill(beyond[:, :-1], 0)  # (rows, T)
        targets = tokens[:, 1:].masked_fill(beyond[:, 1:], IGNORE_INDEX)  # (rows, T)
        return inputs, targets

    def targets_in(self, k: int) -> int:
        """How many real (unpadded) targets window k holds, over all `batch` rows."""
        start, end = self._window(k)
        return int(np.clip(np.minimum(self._targets_per_row, end) - start, 0, None).sum())

    def __iter__(self):
        for k in range(self.steps_per_epoch):
            yield self.batch_at(k)


def _compact_array(ids: torch.Tensor | np.ndarray) -> np.ndarray:
    """The ids as a numpy array in a small integer type (uint8 when they fit): an eighth of int64."""
    ids = ids.cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    if ids.dtype in (np.uint8, np.uint16, np.int32):
        return ids
    top = int(ids.max()) if len(ids) else 0
    return ids.astype(np.uint8 if top < 1 << 8 else np.int32)


def fit_batch_shape(num_chars: int, batch: int, seq_len: int) -> tuple[int, int, str | None]:
    """Shrink batch (then seq_len) so one epoch holds at least one full window per stream.

    Returns (batch, seq_len, notice or None). Raises CharlstmError below a sensible minimum.
    """
    minimum = MIN_TRAIN_CHARS
    if num_chars < minimum:
        raise CharlstmError(
            f"training text too short: {num_chars} characters; need at least {minimum} (add text or lower --val-frac)"
        )
    usable = num_chars - 1
    if batch * seq_len <= usable:
        return batch, seq_len, None
    new_batch, new_seq = batch, seq_len
    if new_seq > usable:
        new_seq = usable
    new_batch = max(1, min(batch, usable // new_seq))
    notice = (
        f"training text ({num_chars} characters) is shorter than one batch ({batch} x {seq_len}); "
        f"using --batch-size {new_batch} --seq-len {new_seq}"
    )
    return new_batch, new_seq, notice
