"""Generation: prime, temperature, top-k/top-p, stop strings, batches, and a streaming generator."""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch

from charlstm.config import SampleConfig
from charlstm.data.vocab import Vocab
from charlstm.errors import CharlstmError
from charlstm.generate.steppers import make_stepper
from charlstm.model.charrnn import State
from charlstm.runs.model_file import LoadedModel

STARTS = ("auto", "states", "zeros")  # where a sample's state starts: see generate()


def pick_seed(seed: int | None) -> int:
    """The seed a sample is drawn with: the one given, else a fresh random one."""
    return seed if seed is not None else int.from_bytes(os.urandom(4), "little")


def check_prime(vocab: Vocab, prime: str) -> None:
    """A prime must be made of characters the model knows."""
    unknown = vocab.unknown(prime)
    if unknown:
        raise CharlstmError("--prime has characters the model never saw: " + " ".join(repr(c) for c in unknown[:20]))


def generate(
    loaded: LoadedModel, config: SampleConfig, fast: bool = True, start: str = "auto"
) -> Iterator[tuple[int, str]]:
    """Yield (sample index, text) pieces as they are generated; `config.num_samples` samples run as one batch.

    A sample ends after `config.length` characters, when the model emits its end-of-record marker, or when
    one of `config.stop` appears (the stop text itself is not emitted). `fast=False` forces the plain
    per-character model call (the reference the fast steppers in steppers.py reproduce).

    On a record-trained model each sample is a record: it feeds the end-of-record marker (then the prime)
    from a state. `start="auto"` takes one of the checkpoint's record start states (`payload["start_states"]`,
    see starts.py) per sample, drawn from the seeded generator, when it has them, else zeros; "states"
    insists on them; "zeros" is the zero state (how every sample started before start states existed).
    """
    if start not in STARTS:
        raise ValueError(f"start must be one of {', '.join(STARTS)}, got {start!r}")
    model, vocab = loaded.model, loaded.vocab
    check_prime(vocab, config.prime)
    n = config.num_samples
    rng = torch.Generator(device="cpu").manual_seed(pick_seed(config.seed))
    eor = vocab.end_of_record
    # the state each sample reads the marker from: one of the states training had before a marker (drawn
    # before any uniform, identically whatever the stepper), so that a record starts as it did in training
    initial = pick_start_states(loaded, n, rng) if eor is not None and start != "zeros" else None
    if initial is None and start == "states":
        raise CharlstmError(
            f"{loaded.path} has no record start states (a model without records, or an older checkpoint)"
        )

    # what the model reads first: the prime (after a start-of-record marker, so that it starts a record),
    # else the marker or a newline alone (neither printed)
    prime_ids = vocab.encode(config.prime).tolist()
    if prime_ids:
        feed = ([eor] if eor is not None else []) + prime_ids
        for i in range(n):
            yield i, config.prime
    elif eor is not None:
        feed = [eor]
    elif "\n" in vocab.index:
        feed = [vocab.index["\n"]]
    else:
        feed = [int(torch.randint(len(vocab), (1,), generator=rng))]
        for i in range(n):
            yield i, vocab.chars[feed[0]]

    stops = [s for s in config.stop if s]
    hold = max((len(s) for s in stops), default=1) - 1  # characters held back while a stop may be forming
    pending = [""] * n  # per sample: drawn, not yet emitted (at most `hold` characters between rows)
    alive = [True] * n
    chars = vocab.chars

    with torch.inference_mode():
        stepper = make_stepper(model, n, fast=fast)
        x = torch.tensor([feed] * n, dtype=torch.long)  # (N, P)
        for ids in stepper.sample_ids(x, config, rng, state=initial):  # config.length rows of N ids
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


def pick_start_states(loaded: LoadedModel, n: int, rng: torch.Generator) -> State | None:
    """One of the checkpoint's record start states per sample, (layers, N, H) each; None without them."""
    stored = loaded.payload.get("start_states")
    if not stored:
        return None
    config = loaded.model.config
    count = stored[0].size(1)  # K
    expected = [(config.layers, count, config.hidden)] * config.state_tensors
    if [tuple(t.shape) for t in stored] != expected or count < 1:  # the loader checks this too; never a traceback
        raise CharlstmError(
            f"{loaded.path}: its start states have shapes {[tuple(t.shape) for t in stored]}, "
            f"the model needs {expected}"
        )
    choice = torch.randint(count, (n,), generator=rng)  # (N,): which stored state each sample starts from
    picked = [t.float()[:, choice].contiguous() for t in stored]  # (layers, N, H) each
    return (picked[0], picked[1]) if config.state_tensors == 2 else picked[0]


def _find_stop(text: str, stops: list[str]) -> int | None:
    """Where the first stop string that ends at the text's end begins, if any."""
    for stop in stops:
        if text.endswith(stop):
            return len(text) - len(stop)
    return None


def sample_text(loaded: LoadedModel, config: SampleConfig, fast: bool = True, start: str = "auto") -> list[str]:
    """All samples, whole (`start`: see generate)."""
    out = [""] * config.num_samples
    for i, piece in generate(loaded, config, fast=fast, start=start):
        out[i] += piece
    return out
