"""An interpolated Kneser–Ney character n-gram model: the baseline `charlstm eval --baseline` sets beside the LSTM.

Fitted in NumPy on the ids of a training text. The n-grams of each length k are numbered level by level: the
k-gram ending at position i is the pair (id of the (k-1)-gram ending at i - 1, character i), so keys stay below
(number of distinct (k-1)-grams) x V and fit an int64 whatever the order and the vocabulary; `np.unique` numbers
them. One fit to the largest order serves every smaller order (only the top level of a model differs: raw counts
there, continuation counts below).

For a model of order n, with history h (the n - 1 characters before w) and h' its suffix one character shorter:

    P_n(w | h) = (max(c(hw) - D, 0) + D * N1+(h .) * P_{n-1}(w | h')) / c(h .)

where at the top level c is the raw count, and at every lower level the continuation count N1+(. hw) (the
number of distinct characters seen before hw); c(h .) sums c(hw) over w; N1+(h .) is the number of w with
c(hw) > 0; D = n1 / (n1 + 2 n2) per level (n1, n2: how many n-grams have count 1 and 2). Below the unigram
level is the uniform distribution over the vocabulary, so every character of the vocabulary has a probability
above zero. A history never seen (c(h .) = 0) passes the lower level's probability through unchanged, and near
the start of a text, where fewer than n - 1 characters precede w, the longest available history is used. Each
level is a proper distribution over the vocabulary given the level below (tests check that they sum to 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from charlstm.errors import CharlstmError

MAX_ORDER = 7


@dataclass
class _Level:
    """The k-grams of one length k, numbered 0..G-1 in the order of their keys."""

    keys: np.ndarray  # (G,) int64, sorted: prefix id * V + last character
    prefix: np.ndarray  # (G,) the id of the (k-1)-gram each k-gram extends (0 for k = 1: the empty history)
    raw: np.ndarray  # (G,) how often each k-gram occurs
    continuation: np.ndarray | None = None  # (G,) distinct characters seen before each k-gram (k < max order)


@dataclass
class _Table:
    """One level of a model as used: the counts c, and per history c(h .), N1+(h .) and the discount D."""

    counts: np.ndarray  # (G,) float64
    history_total: np.ndarray  # (H,) float64: c(h .)
    history_types: np.ndarray  # (H,) float64: N1+(h .)
    discount: float


def parse_orders(text: str) -> list[int]:
    """'5' or '3,5,7' -> [5] or [3, 5, 7]; each order in 1..MAX_ORDER."""
    orders = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            order = int(part)
        except ValueError:
            raise CharlstmError(f"--order takes whole numbers 1..{MAX_ORDER} (e.g. 5 or 3,5,7), got {text!r}") from None
        if not 1 <= order <= MAX_ORDER:
            raise CharlstmError(f"--order must be between 1 and {MAX_ORDER}, got {order}")
        if order not in orders:
            orders.append(order)
    if not orders:
        raise CharlstmError(f"--order takes whole numbers 1..{MAX_ORDER}, got {text!r}")
    return orders


class KneserNey:
    """Interpolated Kneser–Ney models of every order up to `max_order`, fitted on `ids` (ids < vocab_size)."""

    def __init__(self, ids: np.ndarray, vocab_size: int, max_order: int = 5):
        if not 1 <= max_order <= MAX_ORDER:
            raise CharlstmError(f"n-gram order must be between 1 and {MAX_ORDER}, got {max_order}")
        ids = np.asarray(ids).astype(np.int64, copy=False)
        if len(ids) == 0:
            raise CharlstmError("the n-gram baseline needs a non-empty training text")
        if int(ids.max()) >= vocab_size or int(ids.min()) < 0:
            raise ValueError("ids outside the vocabulary")
        self.vocab_size = V = int(vocab_size)
        self.max_order = max_order
        self.levels: list[_Level] = []
        level_ids = ids  # (N,) the id of the k-gram ending at each position (-1 where none ends), k = 1 first
        first = np.bincount(ids, minlength=V)
        self.levels.append(_Level(keys=np.arange(V, dtype=np.int64), prefix=np.zeros(V, np.int64), raw=first))
        for k in range(2, max_order + 1):
            if len(ids) < k:
                break
            keys = level_ids[k - 2 : -1] * V + ids[k - 1 :]  # (N - k + 1,) the k-grams ending at k-1..N-1
            unique, first_at, inverse, counts = _number(keys)
            # the suffix of each distinct k-gram (its last k - 1 characters) is the (k-1)-gram ending where it ends
            suffix = level_ids[first_at + k - 1]
            self.levels[-1].continuation = np.bincount(suffix, minlength=len(self.levels[-1].keys))
            self.levels.append(_Level(keys=unique, prefix=unique // V, raw=counts))
            level_ids = np.full(len(ids), -1, dtype=np.int64)
            level_ids[k - 1 :] = inverse.reshape(-1)
        self.max_order = len(self.levels)  # a text shorter than the order caps it
        self._cached: dict[int, list[_Table]] = {}

    def _tables(self, order: int) -> list[_Table]:
        """The levels 1..order of the model of this order (raw counts at the top, continuation counts below)."""
        if order in self._cached:
            return self._cached[order]
        tables = []
        for k in range(1, order + 1):
            level = self.levels[k - 1]
            counts = (level.raw if k == order else level.continuation).astype(np.float64)
            histories = 1 if k == 1 else len(self.levels[k - 2].keys)
            total = np.bincount(level.prefix, weights=counts, minlength=histories)
            types = np.bincount(level.prefix, weights=(counts > 0).astype(np.float64), minlength=histories)
            n1, n2 = int(np.sum(counts == 1)), int(np.sum(counts == 2))
            discount = n1 / (n1 + 2 * n2) if n1 + n2 else 0.5
            tables.append(_Table(counts, total, types, float(min(max(discount, 0.05), 0.95))))
        self._cached[order] = tables
        return tables

    def target_probabilities(self, ids: np.ndarray, order: int) -> np.ndarray:
        """P(ids[t] | ids[:t]) for t = 1..len(ids)-1 under the model of this order: (len(ids) - 1,) float64."""
        if not 1 <= order <= MAX_ORDER:
            raise CharlstmError(f"n-gram order must be between 1 and {MAX_ORDER}, got {order}")
        order = min(order, self.max_order)
        ids = np.asarray(ids).astype(np.int64, copy=False)
        V = self.vocab_size
        n = len(ids)
        if n < 2:
            return np.zeros(0)
        tables = self._tables(order)
        targets = np.arange(1, n)
        probability = np.full(n - 1, 1.0 / V)
        history = np.zeros(n, dtype=np.int64)  # id of the (k-1)-gram ending at each position (-1: unseen or none)
        for k in range(1, order + 1):
            level, table = self.levels[k - 1], tables[k - 1]
            # the k-gram ending at each position, found among the training k-grams (-1: not seen)
            if k == 1:
                gram = ids.copy()
                h = np.zeros(n - 1, dtype=np.int64)  # the empty history of every target
            else:
                gram = _lookup(level.keys, history[:-1], ids[1:], V)
                gram = np.concatenate([[-1], gram])  # nothing of length k ends at position 0
                h = history[:-1]  # (n - 1,) the history of target t is the (k-1)-gram ending at t - 1
            g = gram[targets]
            known = h >= 0
            total = np.where(known, table.history_total[np.maximum(h, 0)], 0.0)
            usable = total > 0  # a history seen in training (else the lower level stands)
            count = np.where(g >= 0, table.counts[np.maximum(g, 0)], 0.0)
            types = table.history_types[np.maximum(h, 0)]
            mixed = (np.maximum(count - table.discount, 0.0) + table.discount * types * probability) / np.where(
                usable, total, 1.0
            )
            probability = np.where(usable, mixed, probability)
            history = gram
        return probability

    def nats_sum(self, ids: np.ndarray, order: int) -> tuple[float, int]:
        """Summed -log P over the targets 1..len(ids)-1, and how many targets that is."""
        probability = self.target_probabilities(ids, order)
        return float(-np.log(probability).sum()), len(probability)

    def next_distribution(self, context: np.ndarray, order: int) -> np.ndarray:
        """P(w | context) for every w of the vocabulary: (V,). (For tests and inspection; slow for large V.)"""
        context = np.asarray(context, dtype=np.int64)
        if len(context) == 0:
            raise ValueError("a context of at least one character")
        return np.array([self.target_probabilities(np.append(context, w), order)[-1] for w in range(self.vocab_size)])


def _number(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """np.unique(keys, return_index, return_inverse, return_counts), faster: the key and its position packed
    into one int64 and sorted by value (a plain sort is about twice as fast as the argsort np.unique needs)."""
    n = len(keys)
    position_bits = max(1, int(n - 1).bit_length())
    if n == 0 or int(keys.max()) >= 1 << (62 - position_bits):  # does not fit: the general path
        return np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    packed = np.sort((keys << position_bits) | np.arange(n, dtype=np.int64))  # (N,) by key, then position
    sorted_keys = packed >> position_bits
    positions = packed & ((1 << position_bits) - 1)
    del packed
    starts = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))  # (G,) group starts
    groups = np.cumsum(np.concatenate([[0], (sorted_keys[1:] != sorted_keys[:-1]).astype(np.int64)]))
    inverse = np.empty(n, dtype=np.int64)
    inverse[positions] = groups
    counts = np.diff(np.append(starts, n))
    return sorted_keys[starts], positions[starts], inverse, counts


def _lookup(keys: np.ndarray, prefix: np.ndarray, last: np.ndarray, vocab_size: int) -> np.ndarray:
    """The ids of the k-grams (prefix id, last character) among sorted `keys`, -1 where absent or the prefix is."""
    wanted = np.where(prefix >= 0, prefix * vocab_size + last, -1)
    order = np.argsort(wanted)  # sorted queries: each binary search starts where the last one ended
    at = np.empty(len(wanted), dtype=np.int64)
    at[order] = np.searchsorted(keys, wanted[order])
    at_clipped = np.minimum(at, len(keys) - 1)
    found = (prefix >= 0) & (at < len(keys)) & (keys[at_clipped] == wanted)
    return np.where(found, at_clipped, -1)


def bits(nats: float) -> float:
    return nats / math.log(2)
