"""Every quantity inside the model, per layer and per character: the inspector's data.

For the fused cells (`nn.LSTM`, `nn.GRU`, `nn.RNN`) the recurrence is written out here from the module's own
weights, so that the gates, which the fused kernels never return, can be recorded; tests check that its h
matches the fused module's output to 1e-5. Any other cell is stepped through its layers' `step(x, state)`
(the cell contract: `model.rnn.layers[i].step(x, (h, c)) -> (h, new_state, quantities)`), found by duck typing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from charlstm.model.charrnn import CharRNN

TOP_K = 5  # next characters kept per position
SATURATION_LOW, SATURATION_HIGH = 0.1, 0.9  # a gate is left-saturated below, right-saturated above (Karpathy 2015)

LSTM_QUANTITIES = ("h", "c", "input gate", "forget gate", "output gate", "candidate")
GRU_QUANTITIES = ("h", "reset gate", "update gate", "candidate")


@dataclass
class Trace:
    """What the model computed while reading `ids`: position t is the state after reading character t."""

    ids: np.ndarray  # (T,) the characters read
    layers: list[dict[str, np.ndarray]]  # per layer, quantity name -> (T, H) float32, in the cell's order
    surprise: np.ndarray  # (T,) -log p(character t+1 | characters up to t), nats; NaN at the last position
    top_ids: np.ndarray  # (T, K) the K most likely next characters, most likely first
    top_probs: np.ndarray  # (T, K) their probabilities
    saturation: list[dict[str, dict[str, np.ndarray]]] = field(default_factory=list)  # see gate_saturation

    @property
    def length(self) -> int:
        return len(self.ids)


@torch.no_grad()
def trace(model: CharRNN, ids: np.ndarray | list[int], state=None) -> Trace:
    """Read `ids` (one sequence) from `state` (the model's `(L, 1, H)` state, or zeros) and record everything.

    Eval-mode maths: no dropout between layers.
    """
    model = model.eval()
    device = model.head.weight.device
    x = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=device)  # (T,)
    if state is None:
        state = model.initial_state(1, device)
    layer_input = model.embed(x)  # (T, E)
    layers = []
    for layer in range(model.config.layers):
        layer_state = _layer_state(state, layer)
        quantities = _run_layer(model.rnn, layer, layer_input, layer_state)
        layers.append({name: value.float().cpu().numpy() for name, value in quantities.items()})
        layer_input = quantities["h"]  # (T, H)
    logits = model.head(layer_input).float()  # (T, V)
    log_probs = torch.log_softmax(logits, dim=-1)  # (T, V)
    surprise = torch.full((len(x),), float("nan"))
    if len(x) > 1:
        surprise[:-1] = -log_probs[:-1].gather(1, x[1:, None]).squeeze(1).cpu()
    top = log_probs.topk(min(TOP_K, log_probs.size(1)), dim=-1)
    result = Trace(
        ids=x.cpu().numpy(),
        layers=layers,
        surprise=surprise.numpy(),
        top_ids=top.indices.cpu().numpy(),
        top_probs=top.values.exp().cpu().numpy(),
    )
    result.saturation = gate_saturation(result)
    return result


def _layer_state(state, layer: int):
    """One layer's (1, H) state (a tuple (h, c) for LSTM-like cells) out of the model's (L, 1, H) state."""
    if isinstance(state, tuple):
        return tuple(s[layer] for s in state)
    return state[layer]


def _run_layer(rnn: nn.Module, layer: int, inputs: torch.Tensor, state) -> dict[str, torch.Tensor]:
    """One layer over a sequence: quantity name -> (T, H)."""
    if isinstance(rnn, (nn.LSTM, nn.GRU, nn.RNN)):
        w_ih = getattr(rnn, f"weight_ih_l{layer}")  # (G*H, in)
        w_hh = getattr(rnn, f"weight_hh_l{layer}")  # (G*H, H)
        b_ih = getattr(rnn, f"bias_ih_l{layer}", None)
        b_hh = getattr(rnn, f"bias_hh_l{layer}", None)
        projected = inputs @ w_ih.T  # (T, G*H): the input's share of every gate, for the whole text at once
        if b_ih is not None:
            projected = projected + b_ih
        if isinstance(rnn, nn.LSTM):
            return _lstm(projected, w_hh, b_hh, state)
        if isinstance(rnn, nn.GRU):
            return _gru(projected, w_hh, b_hh, state)
        return _rnn(projected, w_hh, b_hh, state, rnn.nonlinearity)
    return _custom(rnn.layers[layer], inputs, state)


def _recurrent(h: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor | None) -> torch.Tensor:
    out = h @ w_hh.T  # (1, G*H)
    return out + b_hh if b_hh is not None else out


def _lstm(projected, w_hh, b_hh, state) -> dict[str, torch.Tensor]:
    h, c = state  # (1, H) each
    names = LSTM_QUANTITIES
    steps = {name: [] for name in names}
    for t in range(projected.size(0)):
        gates = projected[t : t + 1] + _recurrent(h, w_hh, b_hh)  # (1, 4H): i, f, g, o as nn.LSTM orders them
        i, f, g, o = gates.chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * c + i * g
        h = o * torch.tanh(c)
        for name, value in zip(names, (h, c, i, f, o, g)):
            steps[name].append(value)
    return {name: torch.cat(values) for name, values in steps.items()}  # (T, H) each


def _gru(projected, w_hh, b_hh, state) -> dict[str, torch.Tensor]:
    h = state  # (1, H)
    steps = {name: [] for name in GRU_QUANTITIES}
    for t in range(projected.size(0)):
        x_r, x_z, x_n = projected[t : t + 1].chunk(3, dim=1)  # r, z, n as nn.GRU orders them
        h_r, h_z, h_n = _recurrent(h, w_hh, b_hh).chunk(3, dim=1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h = (1 - z) * n + z * h
        for name, value in zip(GRU_QUANTITIES, (h, r, z, n)):
            steps[name].append(value)
    return {name: torch.cat(values) for name, values in steps.items()}


def _rnn(projected, w_hh, b_hh, state, nonlinearity: str) -> dict[str, torch.Tensor]:
    h = state  # (1, H)
    activation = torch.tanh if nonlinearity == "tanh" else torch.relu
    steps = []
    for t in range(projected.size(0)):
        h = activation(projected[t : t + 1] + _recurrent(h, w_hh, b_hh))
        steps.append(h)
    return {"h": torch.cat(steps)}


def _custom(layer_module: nn.Module, inputs, state) -> dict[str, torch.Tensor]:
    """A cell beyond the fused ones, through its own per-character `step` (see the module's docstring)."""
    names = tuple(type(layer_module).QUANTITIES)
    steps = {name: [] for name in names}
    for t in range(inputs.size(0)):
        h, state, quantities = layer_module.step(inputs[t : t + 1], state)
        for name in names:
            steps[name].append(quantities[name])
        if "h" not in quantities:
            steps.setdefault("h", []).append(h)
    return {name: torch.cat(values) for name, values in steps.items()}


def gate_saturation(result: Trace) -> list[dict[str, dict[str, np.ndarray]]]:
    """Per layer, per gate: for each unit, how many characters found it left-saturated (< 0.1) and
    right-saturated (> 0.9), as Karpathy, Johnson & Fei-Fei (2015) plot them. A gate is a quantity whose
    name says so."""
    per_layer = []
    for quantities in result.layers:
        gates = {}
        for name, values in quantities.items():
            if name.split()[-1] == "gate":
                gates[name] = {
                    "left": (values < SATURATION_LOW).sum(axis=0),  # (H,) characters
                    "right": (values > SATURATION_HIGH).sum(axis=0),  # (H,)
                }
        per_layer.append(gates)
    return per_layer
