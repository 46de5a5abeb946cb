"""Record start states (charlstm/starts.py): what they hold, and that samples start records from them."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from charlstm.config import ModelConfig, SampleConfig, TrainConfig
from charlstm.data.corpus import Corpus
from charlstm.data.tokens import prepare_tokens
from charlstm.data.vocab import Vocab
from charlstm.errors import CharlstmError
from charlstm.generate import starts
from charlstm.generate.sample import sample_text
from charlstm.generate.starts import record_start_states
from charlstm.generate.steppers import (
    ChunkedTorchStepper,
    NumpyGRURNNStepper,
    NumpyLSTMStepper,
    TorchStepper,
    make_stepper,
)
from charlstm.model.charrnn import CharRNN
from charlstm.runs.model_file import LoadedModel, load_model
from charlstm.training.run import train

from .helpers import END_OF_RECORD, SAMPLE_CHARS, scaled_random_model, torch_threads

pytestmark = pytest.mark.usefixtures("one_thread")

EOR = 0  # the end-of-record marker's id: Vocab puts "" first
CHARS = [END_OF_RECORD, *SAMPLE_CHARS]


def random_model(
    cell: str = "lstm", layers: int = 2, hidden: int = 24, seed: int = 0, gain: float = 2.0, dropout: float = 0.0
) -> CharRNN:
    """Random weights scaled up so that states and next-character distributions are far from uniform."""
    return scaled_random_model(len(CHARS), cell, layers, hidden, seed, gain, dropout)


def random_ids(n: int, seed: int = 0) -> np.ndarray:
    """n ids without a marker, uint8 as the trainer holds them."""
    return np.random.default_rng(seed).integers(1, len(CHARS), size=n).astype(np.uint8)


def with_markers(n: int, every: int, seed: int = 0) -> np.ndarray:
    ids = random_ids(n, seed)
    ids[every - 1 :: every] = EOR
    return ids


def loaded_with_states(model: CharRNN, states: list[torch.Tensor] | None) -> LoadedModel:
    payload = {} if states is None else {"start_states": states}
    return LoadedModel(model=model, vocab=Vocab(CHARS), path=Path("random"), payload=payload)


# ------------------------------------------------------------------------------------ the states


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_shapes_and_none_without_records(cell):
    model = random_model(cell)
    ids = random_ids(3000)
    assert record_start_states(model, ids, EOR) is None  # no marker in the ids: a model without records
    assert record_start_states(model, ids, None) is None
    ids[[100, 900, 2000]] = EOR
    states = record_start_states(model, ids, EOR, k=64, context=50)
    assert len(states) == (2 if cell == "lstm" else 1)
    for t in states:  # what the checkpoint loader accepts: float32, contiguous, (layers, K, hidden) on the CPU
        assert t.shape == (2, 3, 24) and t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()
    many = with_markers(3000, every=30)  # 100 markers
    assert record_start_states(model, many, EOR, k=64)[0].shape == (2, 64, 24)
    assert record_start_states(model, many, EOR, k=5)[0].shape == (2, 5, 24)
    assert torch.equal(
        record_start_states(model, torch.from_numpy(many), EOR)[0], record_start_states(model, many, EOR)[0]
    )


def test_same_seed_same_states_and_another_seed_other_markers():
    model = random_model()
    ids = with_markers(20000, every=97)  # 206 markers, 64 taken
    a, b = record_start_states(model, ids, EOR, seed=3), record_start_states(model, ids, EOR, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    other = record_start_states(model, ids, EOR, seed=4)
    assert not torch.equal(a[0], other[0])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_states_are_the_models_own_state_just_before_each_marker(cell):
    """Computed by hand, marker by marker: the state after the `context` tokens before it, from zeros; fewer
    tokens near the start (where training too reads from a zero state); a marker first: the zero state."""
    model = random_model(cell, layers=2, dropout=0.3)  # dropout: the states must be computed in eval mode
    model.train()
    ids = random_ids(1500)
    markers = [0, 30, 400, 1000, 1003, 1499]
    ids[markers] = EOR
    context = 100
    rng_before = torch.get_rng_state()
    states = record_start_states(model, ids, EOR, k=64, context=context)
    assert model.training and torch.equal(torch.get_rng_state(), rng_before)  # mode and random stream untouched
    assert states[0].shape[1] == len(markers)  # all of them, in corpus order
    model.eval()
    with torch.no_grad():
        for column, position in enumerate(markers):
            window = torch.from_numpy(ids[max(0, position - context) : position].astype(np.int64))[None]  # (1, T)
            if window.size(1) == 0:
                expected = [torch.zeros(2, 1, 24)] * len(states)
            else:
                _, state = model(window)
                expected = list(state) if isinstance(state, tuple) else [state]
            for got, want in zip(states, expected):
                torch.testing.assert_close(got[:, column : column + 1], want, rtol=1e-5, atol=1e-6)


def test_huge_ids_are_read_near_random_offsets_only(monkeypatch):
    """Beyond SCAN_ALL_UPTO tokens the markers are found from random offsets, reading little of the array."""
    monkeypatch.setattr(starts, "SCAN_ALL_UPTO", 10_000)
    monkeypatch.setattr(starts, "SEARCH_FIRST", 64)
    ids = random_ids(2_000_000, seed=5)
    rng = np.random.default_rng(6)
    ids[rng.integers(0, len(ids), size=4000)] = EOR  # records of ~500 tokens on average, lengths vary

    class CountingIds:
        """Array-like that counts the tokens read through it (as a memory map would page them in)."""

        def __init__(self, array):
            self.array, self.read = array, 0

        def __len__(self):
            return len(self.array)

        def __getitem__(self, key):
            assert isinstance(key, slice), "whole-array reads are what a memory map must avoid"
            part = self.array[key]
            self.read += len(part)
            return part

    counted = CountingIds(ids)
    positions = starts._marker_positions(counted, EOR, 64, np.random.default_rng(0))
    assert len(positions) == 64 and len(set(positions.tolist())) == 64 and np.all(np.diff(positions) > 0)
    assert np.all(ids[positions] == EOR)
    assert counted.read < len(ids) // 10, counted.read  # about 4% here
    again = starts._marker_positions(ids, EOR, 64, np.random.default_rng(0))
    assert np.array_equal(positions, again)
    states = record_start_states(random_model(), CountingIds(ids), EOR, context=64)
    assert states[0].shape == (2, 64, 24)


# ------------------------------------------------------------------------------ sampling from them


SETTINGS = [
    dict(seed=1),  # one stream, unprimed
    dict(seed=2, temperature=1.3, prime="the"),  # one stream, primed
    dict(seed=3, num_samples=3, temperature=0.9, top_k=6),  # a few: row-by-row matmuls
    dict(seed=4, num_samples=5, prime="a cat", stop=["."]),
    dict(seed=5, num_samples=40, top_p=0.9),  # a batch: the LSTM's sigmoid cell, the draw's torch exp and cumsum
]


@pytest.mark.parametrize("cell,layers", [("lstm", 1), ("lstm", 2), ("gru", 2), ("rnn", 2)])
def test_fast_and_plain_paths_give_the_same_text_from_start_states(cell, layers):
    model = random_model(cell, layers=layers, seed=layers)
    with torch.no_grad():
        model.head.bias[EOR] -= 2.0  # records long enough to compare
    states = record_start_states(model, with_markers(5000, every=53, seed=layers), EOR, k=16, context=64)
    loaded = loaded_with_states(model, states)
    fast_kind = NumpyLSTMStepper if cell == "lstm" else NumpyGRURNNStepper
    differ = 0
    for extra in SETTINGS:
        config = SampleConfig(length=150, **extra)
        assert isinstance(make_stepper(model, config.num_samples), fast_kind)
        fast = sample_text(loaded, config)
        assert fast == sample_text(loaded, config, fast=False), extra
        differ += fast != sample_text(loaded, config, start="zeros")
    assert differ >= len(SETTINGS) - 1  # the states are used (a stray identical greedy-ish run is allowed)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_chunked_stepper_from_a_start_state_equals_plain(cell):
    """What the CUDA graph replays, run eagerly on the CPU, from a start state."""
    model = random_model(cell, seed=7)
    stored = record_start_states(model, with_markers(2000, every=41), EOR, k=3, context=64)
    state = tuple(stored) if cell == "lstm" else stored[0]  # (layers, 3, H): one per sample
    config = SampleConfig(length=45, seed=0, temperature=0.9, num_samples=3)
    x = torch.tensor([[EOR, 5, 7]] * 3)  # (N, P)
    with torch.inference_mode():
        plain = list(TorchStepper(model).sample_ids(x, config, torch.Generator().manual_seed(4), state))
        zeros = list(TorchStepper(model).sample_ids(x, config, torch.Generator().manual_seed(4)))
        for chunk in (1, 16):
            stepper = ChunkedTorchStepper(model, chunk=chunk, use_graph=False)
            assert list(stepper.sample_ids(x, config, torch.Generator().manual_seed(4), state)) == plain
    assert plain != zeros


def test_without_start_states_sampling_is_the_zero_state_path_as_before():
    """A checkpoint without start states samples exactly as before: the marker fed from zeros, the seeded
    generator giving the uniforms only (checked against the bare stepper loop)."""
    model = random_model(seed=11)
    with torch.no_grad():
        model.head.bias[EOR] -= 2.0
    plain_old = loaded_with_states(model, None)
    config = SampleConfig(length=80, seed=9, num_samples=4, temperature=1.1)
    texts = sample_text(plain_old, config)
    assert texts == sample_text(plain_old, config, start="zeros") == sample_text(plain_old, config, fast=False)
    with torch.inference_mode():
        rows = list(TorchStepper(model).sample_ids(torch.tensor([[EOR]] * 4), config, torch.Generator().manual_seed(9)))
    by_hand = []
    for column in zip(*rows):
        ids = list(column)
        by_hand.append(Vocab(CHARS).decode(ids[: ids.index(EOR)] if EOR in ids else ids))
    assert texts == by_hand
    stored = record_start_states(model, with_markers(3000, every=61), EOR)
    with_states = loaded_with_states(model, stored)
    assert sample_text(with_states, config, start="zeros") == texts  # "zeros": the old start, states or not
    assert sample_text(with_states, config) != texts
    with pytest.raises(CharlstmError, match="no record start states"):
        sample_text(plain_old, config, start="states")


def test_start_states_that_do_not_fit_the_model_are_one_error():
    model = random_model()
    wrong = [torch.zeros(2, 4, 24)]  # an LSTM needs [h, c]
    with pytest.raises(CharlstmError, match="start states"):
        sample_text(loaded_with_states(model, wrong), SampleConfig(length=5, seed=0))
    with pytest.raises(ValueError, match="start must be one of"):
        sample_text(loaded_with_states(model, None), SampleConfig(length=5, seed=0), start="random")


# ------------------------------------------------------------------------ a trained record model


def a_records(count: int = 400, seed: int = 0) -> list[str]:
    """Records that all begin with 'A', then a few to a few dozen words: the zero state, which training only
    ever saw at a stream's start (mid-record), says little about where a record starts."""
    rng = random.Random(seed)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "runs", "away", "home"]
    return ["A" + " ".join(rng.choice(words) for _ in range(rng.randint(10, 30))) for _ in range(count)]


def add_start_states(run: Path, corpus: Corpus, val_frac: float) -> None:
    """What the trainer stores in each checkpoint it saves, added to the run's checkpoints where missing:
    the start states of the model of each file, from the training split of the corpus."""
    train_ids = prepare_tokens(corpus, val_frac).train
    for name in ("best.pt", "latest.pt"):
        path = run / name
        payload = torch.load(path, weights_only=True)
        if payload.get("start_states") is None:
            model = CharRNN(ModelConfig(**payload["model_config"]))
            model.load_state_dict(payload["model"])
            payload["start_states"] = record_start_states(model, train_ids, Vocab(payload["vocab"]).end_of_record)
            torch.save(payload, path)


@pytest.fixture(scope="module")
def a_model(tmp_path_factory):
    """A small LSTM trained briefly on the 'A' records, many streams (so many zero-state starts mid-record)."""
    run = tmp_path_factory.mktemp("a-records")
    corpus = Corpus(records=a_records(), name="a")
    config = TrainConfig(batch_size=64, seq_len=16, max_steps=200, eval_every=200, lr=1e-2)
    with torch_threads(1):  # a tiny model: one thread is faster on a loaded machine
        train(corpus, ModelConfig(hidden=48, embed=16), config, run)
        add_start_states(run, corpus, config.val_frac)
    return load_model(run)


def test_start_states_make_unprimed_samples_start_records(a_model):
    states = a_model.payload["start_states"]  # through the checkpoint loader
    assert [tuple(t.shape) for t in states] == [(1, 64, 48)] * 2
    config = SampleConfig(length=1, num_samples=100, seed=0, temperature=1.0)
    after = sample_text(a_model, config)
    before = sample_text(a_model, config, start="zeros")
    starts_with_a = [sum(text.startswith("A") for text in texts) for texts in (before, after)]
    assert starts_with_a[1] >= 95, (starts_with_a, after)  # the records' own first character
    assert starts_with_a[0] <= starts_with_a[1] - 25, (starts_with_a, before)  # from zeros: mid-record, often


def test_trained_checkpoint_fast_and_plain_agree_from_start_states(a_model):
    for extra in [dict(seed=1), dict(seed=2, prime="A", num_samples=3), dict(seed=3, num_samples=20, top_k=5)]:
        config = SampleConfig(length=60, temperature=0.9, **extra)
        fast = sample_text(a_model, config)
        assert fast == sample_text(a_model, config, fast=False), extra
