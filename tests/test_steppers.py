"""The fast samplers reproduce the plain per-character path: same uniforms, same rule, same text."""

import numpy as np
import pytest
import torch

from charlstm.config import SampleConfig
from charlstm.generate import next_char as draw
from charlstm.generate import steppers
from charlstm.generate.next_char import draw_ids, draw_ids_numpy, uniform_chunks
from charlstm.generate.sample import sample_text
from charlstm.generate.starts import record_start_states
from charlstm.generate.steppers import (
    ChunkedTorchStepper,
    NumpyGRURNNStepper,
    NumpyLSTMStepper,
    TorchStepper,
    make_stepper,
)

from .helpers import END_OF_RECORD, torch_threads
from .helpers import SAMPLE_CHARS as CHARS
from .helpers import random_loaded_model as random_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (see conftest.one_thread)


def test_uniform_chunks_are_the_per_step_stream():
    for n, chunk in [(1, 64), (5, 3), (256, 7)]:
        per_step = torch.Generator().manual_seed(11)
        chunked = torch.Generator().manual_seed(11)
        expected = torch.stack([torch.rand(n, generator=per_step) for _ in range(20)])
        got = torch.cat(list(uniform_chunks(chunked, n, 20, chunk)))
        assert torch.equal(got, expected)


@pytest.mark.parametrize("rows", [1, 7, 40])  # 40: exp and cumsum in torch
@pytest.mark.parametrize(
    "temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 5, 1.0), (0.9, 0, 0.8), (1.0, 10, 0.6), (0, 0, 1.0)]
)
def test_numpy_draw_matches_torch_draw(rows, temperature, top_k, top_p):
    generator = torch.Generator().manual_seed(rows * 100 + top_k)
    for _ in range(300):
        logits = torch.randn(rows, 40, generator=generator) * 3  # (N, V)
        uniforms = torch.rand(rows, generator=generator, dtype=torch.float64)
        expected = draw_ids(logits, uniforms, temperature, top_k, top_p)
        got = draw_ids_numpy(logits.numpy(), uniforms.numpy(), temperature, top_k, top_p)
        assert got.tolist() == expected.tolist()


def test_numpy_draw_filters_like_torch():
    logits = np.array([[0.0, 1.0, 2.0, 3.0]], np.float32)
    below_top = np.array([0.999])
    assert draw_ids_numpy(logits, below_top, 1.0, 2, 1.0).tolist() == [3]
    assert draw_ids_numpy(logits, np.array([0.0]), 1.0, 2, 1.0).tolist() == [2]  # top-2 keeps ids 2 and 3
    assert draw_ids_numpy(logits, np.array([0.0]), 1.0, 0, 0.5).tolist() == [3]  # 0.64 alone reaches 0.5
    assert draw_ids_numpy(logits, np.array([0.0]), 1.0, 0, 0.7).tolist() == [2]


@pytest.fixture(params=["tanh cell, row matmuls", "sigmoid cell, gemm"])
def cell_variant(request, monkeypatch):
    """Both ways NumpyLSTMStepper computes a step, whatever the batch size (normally chosen by batch size)."""
    if request.param.startswith("sigmoid"):
        monkeypatch.setattr(steppers, "SIGMOID_FROM", 1)
        monkeypatch.setattr(steppers, "ROW_MATMUL_UPTO", 1)
        monkeypatch.setattr(draw, "TORCH_ROWS_FROM", 1)  # the draw's torch exp and cumsum too
    else:
        monkeypatch.setattr(steppers, "SIGMOID_FROM", 10**9)
    return request.param


@pytest.mark.slow
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_fast_lstm_text_equals_plain_text(layers, cell_variant):
    loaded = random_model(layers=layers, seed=layers)
    settings = [
        dict(seed=1),
        dict(seed=2, temperature=1.4),
        dict(seed=3, temperature=0.6, top_k=4),
        dict(seed=4, top_p=0.7),
        dict(seed=5, temperature=0),
        dict(seed=6, num_samples=3, temperature=1.1, top_k=8, top_p=0.9),
        dict(seed=7, prime="the cat", num_samples=2),
        dict(seed=8, num_samples=4, stop=["."]),
    ]
    for extra in settings:
        config = SampleConfig(length=400, **extra)
        assert isinstance(make_stepper(loaded.model, config.num_samples), NumpyLSTMStepper)
        fast = sample_text(loaded, config)
        assert fast == sample_text(loaded, config, fast=False), extra
        if not config.stop:
            assert all(len(text) == len(config.prime) + 400 for text in fast)


@pytest.mark.parametrize("num_samples", [2, 5, 40])
def test_batch_sizes_choose_their_step_and_match_plain(num_samples):
    """Defaults: row-by-row matmuls for a few samples, gemm beyond; the sigmoid cell from SIGMOID_FROM on."""
    loaded = random_model(layers=2, hidden=40, seed=num_samples)
    config = SampleConfig(length=120, seed=num_samples, temperature=0.9, num_samples=num_samples)
    stepper = make_stepper(loaded.model, num_samples)
    assert stepper.sigmoid == (num_samples >= steppers.SIGMOID_FROM)
    assert len(stepper.first_matmul) == (num_samples if num_samples <= steppers.ROW_MATMUL_UPTO else 1)
    with torch_threads(2):  # not the module's one thread: the fast path's own setting must not stay
        assert sample_text(loaded, config) == sample_text(loaded, config, fast=False)
        assert torch.get_num_threads() == 2  # restored after sampling on one torch thread


@pytest.mark.parametrize("cell", ["gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_fast_gru_and_rnn_text_equals_plain_text(cell, layers):
    loaded = random_model(cell=cell, layers=layers, seed=layers + 10)
    settings = [
        dict(seed=1),
        dict(seed=2, temperature=1.4),
        dict(seed=3, temperature=0.6, top_k=4, top_p=0.9),
        dict(seed=5, temperature=0),
        dict(seed=6, num_samples=3, temperature=1.1),  # row-by-row matmuls
        dict(seed=7, prime="the cat", num_samples=6, stop=["."]),  # one gemm per matmul
        dict(seed=8, num_samples=40, top_p=0.8),  # a batch: the draw's exp and cumsum in torch
    ]
    for extra in settings:
        config = SampleConfig(length=300, **extra)
        assert isinstance(make_stepper(loaded.model, config.num_samples), NumpyGRURNNStepper)
        assert sample_text(loaded, config) == sample_text(loaded, config, fast=False), extra


def test_fast_path_ends_records_like_plain():
    loaded = random_model(seed=5, chars=[END_OF_RECORD, *CHARS])
    with torch.no_grad():
        loaded.model.head.bias[0] -= 1.0  # end-of-record: likely enough to end some samples, not all
    config = SampleConfig(length=200, seed=3, num_samples=6)
    fast, plain = sample_text(loaded, config), sample_text(loaded, config, fast=False)
    assert fast == plain
    assert min(len(t) for t in fast) < 200 < max(len(t) for t in fast) + 1  # some ended early, not all at once


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_chunked_stepper_eager_equals_plain(cell):
    """What the CUDA graph replays, run eagerly on the CPU: same rows as the plain stepper."""
    model = random_model(cell=cell, seed=9).model
    config = SampleConfig(length=53, seed=0, temperature=0.9, top_k=6, top_p=0.95, num_samples=3)
    x = torch.tensor([[1, 5, 7]] * 3)  # (N, P)
    with torch.inference_mode():
        plain = list(TorchStepper(model).sample_ids(x, config, torch.Generator().manual_seed(4)))
        for chunk in (1, 5, 64):
            stepper = ChunkedTorchStepper(model, chunk=chunk, use_graph=False)
            chunked = list(stepper.sample_ids(x, config, torch.Generator().manual_seed(4)))
            assert chunked == plain
    assert len(plain) == 53 and all(len(row) == 3 for row in plain)


def test_stepper_choice():
    assert isinstance(make_stepper(random_model().model, 1), NumpyLSTMStepper)
    assert type(make_stepper(random_model().model, 1, fast=False)) is TorchStepper
    assert isinstance(make_stepper(random_model(cell="gru").model, 1), NumpyGRURNNStepper)
    assert isinstance(make_stepper(random_model(cell="rnn").model, 64), NumpyGRURNNStepper)
    assert isinstance(make_stepper(random_model().model, 64), NumpyLSTMStepper)


@pytest.mark.parametrize("cell,layers", [("lstm", 2), ("lstm", 3), ("gru", 2), ("rnn", 1)])
def test_fast_text_equals_plain_text_from_record_start_states(cell, layers):
    """A record model whose checkpoint holds start states: each sample reads the marker from one of them.
    Batches of 1, 3, 6 and 20 take each LSTM step variant (tanh cell by rows, by gemm; sigmoid cell)."""
    loaded = random_model(cell=cell, layers=layers, seed=layers + 20, chars=[END_OF_RECORD, *CHARS])
    with torch.no_grad():
        loaded.model.head.bias[0] -= 2.0  # end-of-record: rare enough that most samples run long
    ids = np.random.default_rng(layers).integers(0, len(CHARS) + 1, size=4000).astype(np.uint8)  # id 0: markers
    loaded.payload["start_states"] = record_start_states(loaded.model, ids, 0, k=32, context=64)
    for extra in [
        dict(seed=1),
        dict(seed=2, prime="the cat"),
        dict(seed=3, num_samples=3, top_k=8),
        dict(seed=4, num_samples=6, prime="a", stop=["."]),
        dict(seed=5, num_samples=20, top_p=0.9),
    ]:
        config = SampleConfig(length=150, **extra)
        fast = sample_text(loaded, config)
        assert fast == sample_text(loaded, config, fast=False), extra
        assert fast != sample_text(loaded, config, start="zeros"), extra  # the start states are in use
