"""How much of a generated text is copied from the training text: for n = 10, 20, 40, the share of the samples'
n-grams found verbatim in the training text, and the longest span copied (what torch-rnn's novel_substrings.py
reports, as the share copied rather than the share novel, and fast on a large training text).

Every n-gram of the training text is hashed in NumPy with a polynomial hash modulo 2^64 (odd base, unsigned
wrap-around): with prefix sums S of x[j] * B^-j, the hash of x[i:i+n] is (S[i+n] - S[i]) * B^i, so all the
n-grams of any length come from the same two arrays in a few vectorised operations. The training hashes are
then looked up among the (few) sorted sample hashes. A 64-bit hash makes a false match among 10^7 n-grams about
as likely as 10^7 * (sample n-grams) / 2^64, i.e. never in practice.

Windows never span two samples, and a character the training text does not hold never matches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

LENGTHS = (10, 20, 40)
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so invertible modulo 2^64
_MISSING = 0  # the code of a sample character absent from the training text: training codes are >= 1


@dataclass
class Novelty:
    """The figures for one set of samples."""

    samples: int
    chars: int
    copied: dict[int, tuple[int, int]]  # n -> (n-grams found in the training text, n-grams in the samples)
    longest: int  # the longest span of a sample found verbatim in the training text (characters)
    longest_text: str = ""  # that span (the first one found of that length)
    longest_sample: int | None = None  # which sample it is in (0-based)
    notes: list[str] = field(default_factory=list)

    def share(self, n: int) -> float | None:
        found, total = self.copied[n]
        return found / total if total else None

    def as_dict(self) -> dict:
        return {
            "samples": self.samples,
            "chars": self.chars,
            "copied": {
                str(n): {"found": f, "ngrams": t, "share": (f / t if t else None)} for n, (f, t) in self.copied.items()
            },
            "longest_copied": self.longest,
            "longest_copied_text": self.longest_text,
            "longest_copied_sample": None if self.longest_sample is None else self.longest_sample + 1,
        }


class TrainingText:
    """The training text, hashed once; `novelty(samples)` measures any number of samples against it.

    `codes` are the training characters as positive integers (e.g. vocabulary ids + 1); an end-of-record marker
    among them is a code no sample character gets, so no copied span runs across two records."""

    def __init__(self, codes: np.ndarray, code_of: dict[str, int]):
        codes = np.asarray(codes, dtype=np.uint64)
        self.code_of = code_of
        self.length = len(codes)
        n = len(codes)
        powers = np.empty(n + 1, dtype=np.uint64)  # B^i
        inverse_powers = np.empty(n + 1, dtype=np.uint64)  # B^-i
        powers[0] = inverse_powers[0] = 1
        with np.errstate(over="ignore"):
            powers[1:] = _BASE
            np.cumprod(powers, out=powers)
            inverse_powers[1:] = _inverse(_BASE)
            np.cumprod(inverse_powers, out=inverse_powers)
            prefix = np.zeros(n + 1, dtype=np.uint64)
            np.cumsum(codes * inverse_powers[:-1], out=prefix[1:])
        self._powers, self._prefix = powers, prefix

    def hashes(self, n: int) -> np.ndarray:
        """The hash of every n-gram of the training text: (length - n + 1,) uint64."""
        if n > self.length:
            return np.zeros(0, dtype=np.uint64)
        with np.errstate(over="ignore"):
            return (self._prefix[n:] - self._prefix[:-n]) * self._powers[: self.length - n + 1]

    def novelty(self, samples: list[str], lengths: tuple[int, ...] = LENGTHS) -> Novelty:
        coded = [self._encode(s) for s in samples]
        result = Novelty(samples=len(samples), chars=sum(len(s) for s in samples), copied={}, longest=0)
        for n in lengths:
            found, total = self._found(coded, n)
            result.copied[n] = (int(found.sum()), len(found))
        # the longest copied span: "some window of length L is found" holds for every L up to the longest,
        # so a binary search on L finds it (a handful of passes over the training hashes)
        longest_sample = max((len(c) for c in coded), default=0)
        low, high = 0, min(longest_sample, self.length)  # found(low) holds; found(high + 1) does not
        for n, (found, total) in sorted(result.copied.items()):
            if found and n <= high:
                low = max(low, n)
            elif total and not found:
                high = min(high, n - 1)
        while low < high:
            middle = (low + high + 1) // 2
            if self._found(coded, middle)[0].any():
                low = middle
            else:
                high = middle - 1
        result.longest = low
        if low:
            hits, where = self._found(coded, low)
            first = int(np.flatnonzero(hits)[0])
            sample, start = where[first]
            result.longest_sample, result.longest_text = int(sample), samples[sample][start : start + low]
        return result

    def _encode(self, text: str) -> np.ndarray:
        code_of = self.code_of
        return np.array([code_of.get(c, _MISSING) for c in text], dtype=np.uint64)

    def _found(self, coded: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
        """For every window of n characters of the samples: whether the training text holds it (False for a
        window with a character the training text lacks); and where each window is, as (sample, start) rows."""
        hashes, valid, where = [], [], []
        for index, codes in enumerate(coded):
            if len(codes) < n:
                continue
            windows = len(codes) - n + 1
            hashes.append(_window_hashes(codes, n))
            valid.append(_windows_without(codes, n))
            where.append(np.stack([np.full(windows, index), np.arange(windows)], axis=1))
        if not hashes:
            return np.zeros(0, dtype=bool), np.zeros((0, 2), dtype=np.int64)
        sample_hashes, known, places = np.concatenate(hashes), np.concatenate(valid), np.concatenate(where)
        wanted = np.unique(sample_hashes[known])  # (W,) sorted: the training hashes are looked up among these
        if not len(wanted) or n > self.length:
            return np.zeros(len(sample_hashes), dtype=bool), places
        train = self.hashes(n)  # (length - n + 1,)
        # a table of the sample hashes' low bits (it fits in cache) lets through the few training hashes that
        # may match; only those are searched for
        bits = min(24, max(10, (4 * len(wanted)).bit_length()))
        mask = np.uint64((1 << bits) - 1)
        table = np.zeros(1 << bits, dtype=bool)
        table[(wanted & mask).astype(np.int64)] = True
        train = train[table[(train & mask).astype(np.int64)]]
        at = np.minimum(np.searchsorted(wanted, train), len(wanted) - 1)
        present = np.zeros(len(wanted), dtype=bool)
        present[at[wanted[at] == train]] = True
        slot = np.minimum(np.searchsorted(wanted, sample_hashes), len(wanted) - 1)
        return known & (wanted[slot] == sample_hashes) & present[slot], places


def _window_hashes(codes: np.ndarray, n: int) -> np.ndarray:
    """The same hash as TrainingText.hashes, of every window of n characters of one sample."""
    m = len(codes)
    with np.errstate(over="ignore"):
        powers = np.empty(m + 1, dtype=np.uint64)
        powers[0] = 1
        powers[1:] = _BASE
        np.cumprod(powers, out=powers)
        inverse_powers = np.empty(m + 1, dtype=np.uint64)
        inverse_powers[0] = 1
        inverse_powers[1:] = _inverse(_BASE)
        np.cumprod(inverse_powers, out=inverse_powers)
        prefix = np.zeros(m + 1, dtype=np.uint64)
        np.cumsum(codes * inverse_powers[:-1], out=prefix[1:])
        return (prefix[n:] - prefix[:-n]) * powers[: m - n + 1]


def _windows_without(codes: np.ndarray, n: int) -> np.ndarray:
    """For each window of n characters: True when none of them is an unknown character."""
    missing = np.concatenate([[0], np.cumsum(codes == _MISSING)])
    return (missing[n:] - missing[:-n]) == 0


def _inverse(odd: np.uint64) -> np.uint64:
    """The multiplicative inverse of an odd number modulo 2^64 (Newton's iteration)."""
    value = int(odd)
    inverse = 1
    for _ in range(7):
        inverse = (inverse * (2 - value * inverse)) % (1 << 64)
    return np.uint64(inverse)


_SEPARATOR_PREFIXES = ("─── sample ", "═══ temperature ")


def read_samples(text: str) -> list[str]:
    """The samples in a file that `charlstm sample` wrote: JSON Lines (each object's "text"), or the text layout
    (samples after `─── sample N ───` lines, temperatures after `═══ temperature T ═══` lines); any other text is
    one sample."""
    lines = text.splitlines()
    if lines and all(line.strip().startswith("{") for line in lines if line.strip()):
        try:
            objects = [json.loads(line) for line in lines if line.strip()]
        except ValueError:
            objects = []
        if objects and all(isinstance(o, dict) and isinstance(o.get("text"), str) for o in objects):
            return [o["text"] for o in objects]
    if not any(line.startswith(_SEPARATOR_PREFIXES) for line in lines):
        return [text.removesuffix("\n")]
    samples: list[str] = []
    current: list[str] | None = None
    for line in lines:
        if line.startswith(_SEPARATOR_PREFIXES) and line.rstrip().endswith(("───", "═══")):
            if current is not None and (current or not line.startswith("═══")):
                samples.append("\n".join(current))
            current = []
        elif current is not None:
            current.append(line)
        else:
            current = [line]
    if current:
        samples.append("\n".join(current))
    return [s for s in samples if s]
