"""Generation: prime, temperature, top-k/top-p, stop strings, batches, and a streaming generator."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from . import checkpoint as ckpt
from .config import ModelConfig, SampleConfig, from_dict
from .data import Vocab
from .errors import CharlstmError
from .model import CharRNN


@dataclass
class LoadedModel:
    model: CharRNN
    vocab: Vocab
    path: Path
    payload: dict


def load_model(path: Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint (or a run directory's best) safely and rebuild the model it describes."""
    file = ckpt.resolve_checkpoint(Path(path), prefer=ckpt.BEST)
    payload = ckpt.load_model_checkpoint(file)  # configs, vocabulary and weight shapes checked
    vocab_chars = payload["vocab"]
    model = CharRNN(from_dict(ModelConfig, payload["model_config"]))
    model.load_state_dict(payload["model"])
    model.to(device).eval()
    return LoadedModel(model=model, vocab=Vocab(vocab_chars), path=file, payload=payload)


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
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
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


def generate(loaded: LoadedModel, config: SampleConfig) -> Iterator[tuple[int, str]]:
    """Yield (sample index, text) pieces as they are generated; `config.num_samples` samples run as one batch.

    A sample ends after `config.length` characters, when the model emits its end-of-record marker, or when
    one of `config.stop` appears (the stop text itself is not emitted).
    """
    config.validate()
    model, vocab = loaded.model, loaded.vocab
    device = next(model.parameters()).device
    unknown = vocab.unknown(config.prime)
    if unknown:
        raise CharlstmError(
            "--prime has characters the model never saw: " + " ".join(repr(c) for c in unknown[:20])
        )
    n = config.num_samples
    seed = config.seed if config.seed is not None else int.from_bytes(os.urandom(4), "little")
    rng = torch.Generator(device="cpu").manual_seed(seed)
    eor = vocab.end_of_record

    # what the model reads first: the prime, else a start-of-record marker or a newline (neither printed)
    prime_ids = vocab.encode(config.prime).tolist()
    if prime_ids:
        start = prime_ids
        for i in range(n):
            yield i, config.prime
    elif eor is not None:
        start = [eor]
    elif "\n" in vocab.index:
        start = [vocab.index["\n"]]
    else:
        start = [int(torch.randint(len(vocab), (1,), generator=rng))]
        for i in range(n):
            yield i, vocab.chars[start[0]]

    stops = [s for s in config.stop if s]
    hold = max((len(s) for s in stops), default=1) - 1  # characters held back while a stop may be forming
    texts = [""] * n  # unemitted tail per sample
    emitted_upto = [0] * n
    alive = [True] * n

    with torch.inference_mode():
        x = torch.tensor([start] * n, dtype=torch.long, device=device)  # (N, P)
        logits, state = model(x, None)
        logits = logits[:, -1]  # (N, V)
        for _ in range(config.length):
            if config.temperature == 0:
                ids = torch.argmax(logits, dim=-1).cpu()
                rng_draw = torch.rand(n, generator=rng)  # keep the stream of draws aligned across temperatures
                del rng_draw
            else:
                probs = filter_logits(logits, config.temperature, config.top_k, config.top_p).cpu()
                ids = choose(probs, torch.rand(n, generator=rng))
            for i, token in enumerate(ids.tolist()):
                if not alive[i]:
                    continue
                if token == eor:
                    alive[i] = False
                    continue
                texts[i] += vocab.chars[token]
                cut = _find_stop(texts[i], stops, emitted_upto[i])
                if cut is not None:
                    alive[i] = False
                    if cut > emitted_upto[i]:
                        yield i, texts[i][emitted_upto[i] : cut]
                    emitted_upto[i] = cut
                    continue
                safe = len(texts[i]) - hold
                if safe > emitted_upto[i]:
                    yield i, texts[i][emitted_upto[i] : safe]
                    emitted_upto[i] = safe
            if not any(alive):
                break
            logits, state = model(ids.to(device).unsqueeze(1), state)
            logits = logits[:, -1]
    for i in range(n):
        if alive[i] and len(texts[i]) > emitted_upto[i]:
            yield i, texts[i][emitted_upto[i] :]


def _find_stop(text: str, stops: list[str], emitted: int) -> int | None:
    """Where the earliest stop string that ends at the text's end begins, if any."""
    for stop in stops:
        if text.endswith(stop):
            return max(emitted, len(text) - len(stop))
    return None


def sample_text(loaded: LoadedModel, config: SampleConfig) -> list[str]:
    """All samples, whole."""
    out = [""] * config.num_samples
    for i, piece in generate(loaded, config):
        out[i] += piece
    return out
