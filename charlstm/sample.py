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
from .draw import choose, filter_logits  # noqa: F401  (the draw rule; re-exported for callers of sample.py)
from .errors import CharlstmError
from .fastsample import make_stepper
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


def generate(loaded: LoadedModel, config: SampleConfig, fast: bool = True) -> Iterator[tuple[int, str]]:
    """Yield (sample index, text) pieces as they are generated; `config.num_samples` samples run as one batch.

    A sample ends after `config.length` characters, when the model emits its end-of-record marker, or when
    one of `config.stop` appears (the stop text itself is not emitted). `fast=False` forces the plain
    per-character model call (the reference the fast steppers in fastsample.py reproduce).
    """
    config.validate()
    model, vocab = loaded.model, loaded.vocab
    unknown = vocab.unknown(config.prime)
    if unknown:
        raise CharlstmError(
            "--prime has characters the model never saw: " + " ".join(repr(c) for c in unknown[:20])
        )
    n = config.num_samples
    seed = config.seed if config.seed is not None else int.from_bytes(os.urandom(4), "little")
    rng = torch.Generator(device="cpu").manual_seed(seed)
    eor = vocab.end_of_record

    # what the model reads first: the prime (after a start-of-record marker, so that it starts a record),
    # else the marker or a newline alone (neither printed)
    prime_ids = vocab.encode(config.prime).tolist()
    if prime_ids:
        start = ([eor] if eor is not None else []) + prime_ids
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
    pending = [""] * n  # per sample: drawn, not yet emitted (at most `hold` characters between rows)
    alive = [True] * n
    chars = vocab.chars

    with torch.inference_mode():
        stepper = make_stepper(model, n, fast=fast)
        x = torch.tensor([start] * n, dtype=torch.long)  # (N, P)
        for ids in stepper.sample_ids(x, config, rng):  # config.length rows of N ids
            for i, token in enumerate(ids):
                if not alive[i]:
                    continue
                if token == eor:
                    alive[i] = False
                    if pending[i]:
                        yield i, pending[i]
                    continue
                if not stops:  # the common case: each character is emitted as it is drawn
                    yield i, chars[token]
                    continue
                text = pending[i] + chars[token]
                cut = _find_stop(text, stops)
                if cut is not None:
                    alive[i] = False
                    if cut:
                        yield i, text[:cut]
                    continue
                safe = len(text) - hold
                if safe > 0:
                    yield i, text[:safe]
                pending[i] = text[safe:] if safe > 0 else text
            if not any(alive):
                break
    for i in range(n):
        if alive[i] and pending[i]:
            yield i, pending[i]


def _find_stop(text: str, stops: list[str]) -> int | None:
    """Where the first stop string that ends at the text's end begins, if any."""
    for stop in stops:
        if text.endswith(stop):
            return len(text) - len(stop)
    return None


def sample_text(loaded: LoadedModel, config: SampleConfig, fast: bool = True) -> list[str]:
    """All samples, whole."""
    out = [""] * config.num_samples
    for i, piece in generate(loaded, config, fast=fast):
        out[i] += piece
    return out
