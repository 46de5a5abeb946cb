"""The next-character draw: temperature, top-k, top-p, then an inverse-CDF choice from a given uniform.

One rule, two implementations: torch (any device; the reference path, and what the CUDA graph captures) and
NumPy (the fast CPU path, where a torch op's dispatch overhead would cost more than the arithmetic). Both
build the CDF in float64 and pick the first id whose cumulative probability exceeds u * total; torch filters
in float32 and NumPy in float64, so the same logits and uniforms give the same ids unless a uniform lands
within float32 rounding of a CDF boundary (tests/test_steppers.py compares them).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

UNIFORM_CHUNK = 64  # rows of uniforms drawn from the generator at once (same stream as one row per step)
TORCH_ROWS_FROM = 16  # NumPy draw: from this many rows on, exp and cumsum run as torch ops on the same memory


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Next-character probabilities (N, V) after temperature, top-k and nucleus (top-p) filtering."""
    logits = logits.float()
    # shifted so that a tiny temperature cannot overflow; below 1e-30 (float32 rounds ~1e-45 to 0) it is greedy anyway
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / max(temperature, 1e-30)
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        # stable: ties keep vocabulary order, as in the NumPy twin
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass strictly before each entry
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)  # always keeps the most likely
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return probs


def choose(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: the first id whose cumulative probability exceeds u * total. (N, V), (N,) -> (N,)"""
    cdf = torch.cumsum(probs.double(), dim=-1)
    targets = (uniforms.double() * cdf[:, -1]).unsqueeze(-1)  # (N, 1)
    ids = torch.searchsorted(cdf, targets, right=True).squeeze(-1)
    return ids.clamp_(max=probs.size(-1) - 1)


def draw_ids(
    logits: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_k: int, top_p: float
) -> torch.Tensor:
    """Next ids (N,) from logits (N, V); temperature 0 is greedy (its uniforms are drawn but unused)."""
    if temperature == 0:
        return torch.argmax(logits, dim=-1)
    return choose(filter_logits(logits, temperature, top_k, top_p), uniforms.to(logits.device))


def draw_ids_numpy(
    logits: np.ndarray, uniforms: np.ndarray, temperature: float, top_k: int, top_p: float
) -> np.ndarray:
    """`draw_ids` in NumPy: float32 logits (N, V), float64 uniforms (N,) -> int64 ids (N,).

    Filters in float64 (torch filters in float32: the two differ in the last bits only) and skips the
    normalisation where it cannot change the draw (u * total scales with the weights).
    """
    if temperature == 0:
        return logits.argmax(axis=-1)
    n, vocab = logits.shape
    if n == 1 and not (top_k and top_k < vocab) and top_p >= 1.0:
        return _draw_one(logits[0], float(uniforms[0]), temperature)
    weights = logits.astype(np.float64)  # (N, V)
    weights -= logits[np.arange(n), logits.argmax(axis=-1), None]  # the row's top; argmax is cheaper than max
    weights /= temperature
    if top_k and top_k < vocab:
        kth = np.partition(weights, vocab - top_k, axis=-1)[:, vocab - top_k, None]  # (N, 1)
        weights[weights < kth] = -np.inf
    _exp_(weights)
    if top_p < 1.0:
        weights /= np.add.reduce(weights, axis=-1, keepdims=True)
        order = np.argsort(-weights, axis=-1, kind="stable")  # ties keep vocabulary order, as torch's stable sort
        sorted_probs = np.take_along_axis(weights, order, axis=-1)
        before = np.add.accumulate(sorted_probs, axis=-1) - sorted_probs  # mass strictly before each entry
        sorted_probs[before >= top_p] = 0.0  # always keeps the most likely
        np.put_along_axis(weights, order, sorted_probs, axis=-1)
    cdf = _cumsum_(weights)  # (N, V)
    targets = uniforms * cdf[:, -1]  # (N,)
    if n == 1:  # the single-stream hot path: one binary search
        ids = np.array([cdf[0].searchsorted(targets[0], side="right")])
    else:
        ids = np.add.reduce(cdf <= targets[:, None], axis=-1, dtype=np.int64)  # == searchsorted(right) per row
    return np.minimum(ids, vocab - 1, out=ids)


def _exp_(weights: np.ndarray) -> None:
    """weights = exp(weights), float64 (N, V) in place: torch's vectorised exp for a batch (NumPy's float64
    exp is scalar code here, 4x slower at 256 x 65)."""
    if weights.shape[0] < TORCH_ROWS_FROM:
        np.exp(weights, out=weights)
    else:
        torch.from_numpy(weights).exp_()


def _cumsum_(weights: np.ndarray) -> np.ndarray:
    """Running sums along each row, in place (same order of additions in NumPy and torch: the same floats)."""
    if weights.shape[0] < TORCH_ROWS_FROM:
        return np.add.accumulate(weights, axis=-1, out=weights)
    whole = torch.from_numpy(weights)
    torch.cumsum(whole, dim=-1, out=whole)  # ~6x NumPy's accumulate over rows this short
    return weights


def _draw_one(logits: np.ndarray, uniform: float, temperature: float) -> np.ndarray:
    """The single-stream hot path of `draw_ids_numpy` (temperature only): the same arithmetic in fewer,
    cheaper calls (per-call overhead, not arithmetic, is what a 65-entry row costs)."""
    weights = logits.astype(np.float64)  # (V,)
    weights -= float(logits[logits.argmax()])
    weights /= temperature
    np.exp(weights, out=weights)
    cdf = np.add.accumulate(weights, out=weights)
    index = int(cdf.searchsorted(uniform * float(cdf[-1]), side="right"))
    return np.array([min(index, logits.shape[0] - 1)])


def uniform_chunks(
    rng: torch.Generator, num_samples: int, rows: int, chunk: int = UNIFORM_CHUNK
) -> Iterator[torch.Tensor]:
    """`rows` rows of (num_samples,) uniforms, `chunk` rows at a time: (k, N) tensors on the CPU.

    torch's CPU generator fills a tensor element by element, so this is the very same stream as
    `torch.rand(num_samples, generator=rng)` called once per row (tests/test_steppers.py checks it).
    """
    done = 0
    while done < rows:
        k = min(chunk, rows - done)
        yield torch.rand(k, num_samples, generator=rng)
        done += k
