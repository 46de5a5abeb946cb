"""trace.py and features.py: the quantities are exactly the model's, the features are what they say, and the
saturation counts are right."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from charlstm.errors import CharlstmError
from charlstm.insight.features import (
    bracket_depth,
    feature_values,
    in_quotes,
    indent,
    line_position,
    pearson,
    rank_units,
)
from charlstm.insight.trace import GRU_QUANTITIES, LSTM_QUANTITIES, Trace, gate_saturation, trace
from tests.helpers import scaled_random_model

pytestmark = pytest.mark.usefixtures("one_thread")


def fused_outputs(model, ids: np.ndarray, state=None):
    """h of every layer, from the fused module itself (layer by layer, each fed the one below's output)."""
    with torch.no_grad():
        x = model.embed(torch.as_tensor(ids)[None])  # (1, T, E)
        outs = []
        rnn = model.rnn
        for layer in range(model.config.layers):
            single = type(rnn)(x.size(-1), rnn.hidden_size, batch_first=True)
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(single, f"{kind}_l0").copy_(getattr(rnn, f"{kind}_l{layer}"))
            if isinstance(rnn, nn.RNN):
                single.nonlinearity = rnn.nonlinearity
            layer_state = None if state is None else tuple(s[layer : layer + 1] for s in state)
            if layer_state is not None and not isinstance(rnn, nn.LSTM):
                layer_state = layer_state[0]
            x, _ = single(x, layer_state)
            outs.append(x[0])
        top, _ = rnn(model.embed(torch.as_tensor(ids)[None]), state)  # the whole stack in one fused call
    return outs, top[0]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_h_matches_the_fused_module_over_three_layers(cell):
    model = scaled_random_model(vocab_size=20, cell=cell, layers=3, hidden=16, gain=2.0)
    ids = np.random.default_rng(0).integers(0, 20, size=120)
    result = trace(model, ids)
    per_layer, top = fused_outputs(model, ids)
    for layer, expected in enumerate(per_layer):
        assert np.abs(result.layers[layer]["h"] - expected.numpy()).max() < 1e-5
    assert np.abs(result.layers[-1]["h"] - top.numpy()).max() < 1e-5
    expected_names = {"lstm": LSTM_QUANTITIES, "gru": GRU_QUANTITIES, "rnn": ("h",)}[cell]
    assert tuple(result.layers[0]) == expected_names


def test_lstm_cell_state_and_a_given_start_state_match_the_fused_module():
    model = scaled_random_model(vocab_size=12, cell="lstm", layers=2, hidden=8)
    ids = np.random.default_rng(1).integers(0, 12, size=60)
    generator = torch.Generator().manual_seed(3)
    state = tuple(torch.randn(2, 1, 8, generator=generator) for _ in range(2))
    result = trace(model, ids, state)
    with torch.no_grad():
        _, (h_n, c_n) = model.rnn(model.embed(torch.as_tensor(ids)[None]), state)
    for layer in range(2):
        assert np.abs(result.layers[layer]["h"][-1] - h_n[layer, 0].numpy()).max() < 1e-5
        assert np.abs(result.layers[layer]["c"][-1] - c_n[layer, 0].numpy()).max() < 1e-5
    gates = result.layers[0]["forget gate"]
    assert gates.min() >= 0 and gates.max() <= 1


def test_surprise_and_top_predictions_are_the_models():
    model = scaled_random_model(vocab_size=15, cell="gru", layers=2, hidden=12)
    ids = np.random.default_rng(2).integers(0, 15, size=40)
    result = trace(model, ids)
    with torch.no_grad():
        logits, _ = model(torch.as_tensor(ids)[None])
    log_probs = torch.log_softmax(logits[0], -1).numpy()  # (T, V)
    expected = -log_probs[np.arange(39), ids[1:]]
    assert np.allclose(result.surprise[:-1], expected, atol=1e-5)
    assert np.isnan(result.surprise[-1])
    assert (result.top_ids[:, 0] == log_probs.argmax(-1)).all()
    assert np.allclose(result.top_probs, np.sort(np.exp(log_probs), -1)[:, ::-1][:, :5], atol=1e-6)
    assert (result.top_probs.sum(1) <= 1 + 1e-6).all()


class StepLSTMLayer(nn.Module):
    """A layer as the cell contract has it (`step`, `QUANTITIES`), computing an LSTM with nn.LSTMCell."""

    QUANTITIES = ("h", "c", "gate-free sum")

    def __init__(self, cell: nn.LSTMCell):
        super().__init__()
        self.cell = cell

    def step(self, x, state):
        h, c = self.cell(x, state)
        return h, (h, c), {"h": h, "c": c, "gate-free sum": h + c}


class StepStack(nn.Module):
    def __init__(self, fused: nn.LSTM):
        super().__init__()
        cells = []
        for layer in range(fused.num_layers):
            cell = nn.LSTMCell(fused.input_size if layer == 0 else fused.hidden_size, fused.hidden_size)
            with torch.no_grad():
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(cell, kind).copy_(getattr(fused, f"{kind}_l{layer}"))
            cells.append(StepLSTMLayer(cell))
        self.layers = nn.ModuleList(cells)


def test_any_other_cell_is_stepped_through_its_layers_step():
    model = scaled_random_model(vocab_size=10, cell="lstm", layers=2, hidden=8)
    ids = np.random.default_rng(3).integers(0, 10, size=50)
    _, fused_top = fused_outputs(model, ids)
    model.rnn = StepStack(model.rnn)  # no longer an nn.LSTM: only the contract's `layers[i].step` is left
    result = trace(model, ids)
    assert tuple(result.layers[1]) == StepLSTMLayer.QUANTITIES
    assert np.abs(result.layers[1]["h"] - fused_top.numpy()).max() < 1e-5
    assert result.saturation == [{}, {}]  # no quantity called a gate


def test_saturation_counts_characters_below_and_above_the_thresholds():
    gate = np.array([[0.05, 0.5], [0.95, 0.5], [0.02, 0.91], [0.5, 0.099]], dtype=np.float32)  # (T=4, H=2)
    made = Trace(
        ids=np.zeros(4, dtype=np.int64),
        layers=[{"h": np.zeros((4, 2), np.float32), "input gate": gate, "candidate": gate}],
        surprise=np.zeros(4),
        top_ids=np.zeros((4, 1), dtype=np.int64),
        top_probs=np.ones((4, 1)),
    )
    saturation = gate_saturation(made)
    assert list(saturation[0]) == ["input gate"]  # the candidate is no gate
    assert saturation[0]["input gate"]["left"].tolist() == [2, 1]
    assert saturation[0]["input gate"]["right"].tolist() == [1, 1]


def test_features_on_hand_made_text():
    text = "ab\n  cd(e[f])\n\tx 'q' don't\n"
    assert line_position(text).tolist()[:6] == [0, 1, 2, 0, 1, 2]
    assert indent(text).tolist() == [0] * 3 + [2] * 11 + [1] * 13
    depth = bracket_depth("a(b[c]d)e")
    assert depth.tolist() == [0, 1, 1, 2, 2, 2, 1, 1, 0]
    quotes = in_quotes("x 'q' don't \"s\" y")
    assert "".join("1" if v else "0" for v in quotes) == "00111000000011100"
    assert feature_values("in-word", "a_1 !").tolist() == [1, 1, 1, 0, 0]
    tags = feature_values("in-tag", "hi @bob see #tag1 at http://t.co/x ok")
    assert "".join(c for c, v in zip("hi @bob see #tag1 at http://t.co/x ok", tags) if v) == "@bob#tag1http://t.co/x"
    assert feature_values("[0-9]+", "ab12c3").tolist() == [0, 0, 1, 1, 0, 1]  # any other text is a regex


def test_a_bad_regex_is_one_clear_error():
    with pytest.raises(CharlstmError, match="neither a built-in feature"):
        feature_values("(unclosed", "text")


def test_units_are_ranked_by_absolute_pearson_r():
    rng = np.random.default_rng(4)
    feature = rng.normal(size=200).astype(np.float32)
    values = rng.normal(size=(200, 5)).astype(np.float32)
    values[:, 3] = -2 * feature + 0.01 * values[:, 3]  # anti-correlated: |r| near 1
    values[:, 1] = 0.0  # constant: r = 0, not NaN
    layers = [{"h": values}, {"h": values[:, ::-1].copy()}]
    ranked = rank_units(layers, feature, "f", top=3)
    assert [(m.layer, m.unit) for m in ranked[:2]] in ([(0, 3), (1, 1)], [(1, 1), (0, 3)])
    assert ranked[0].r < -0.99
    assert np.allclose(
        pearson(values, feature)[[0, 2, 4]], [np.corrcoef(values[:, i], feature)[0, 1] for i in (0, 2, 4)]
    )
    assert pearson(values, feature)[1] == 0.0
    with pytest.raises(CharlstmError, match="same at every character"):
        rank_units(layers, np.ones(200, np.float32), "flat")


def test_joined_traces_are_each_reading_from_zeros_one_after_another():
    """inspect_model's pieces (a probe's sequences): each read from zeros, then laid end to end."""
    from charlstm.insight.inspector import join_traces

    model = scaled_random_model(7, "lstm", layers=2, hidden=6, seed=3)
    first, second = [1, 2, 3, 4], [5, 6, 0]
    joined = join_traces([trace(model, first), trace(model, second)])
    alone = trace(model, second)
    assert joined.ids.tolist() == first + second
    for layer in range(2):
        for name in LSTM_QUANTITIES:
            assert np.array_equal(joined.layers[layer][name][4:], alone.layers[layer][name])  # from zeros again
    assert np.isnan(joined.surprise[3]) and np.array_equal(joined.top_ids[4:], alone.top_ids)
    counts = joined.saturation[0]["input gate"]
    both = [trace(model, first).saturation[0]["input gate"], alone.saturation[0]["input gate"]]
    for side in counts:
        assert np.array_equal(counts[side], both[0][side] + both[1][side])
