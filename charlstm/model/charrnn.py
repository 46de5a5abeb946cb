"""CharRNN: character embedding -> stacked recurrent cells -> linear head. LSTM/GRU/RNN are the fused
cuDNN/oneDNN kernels; the other cells are cells.py's `CustomRNN`, called the same way."""

from __future__ import annotations

import math

import torch
from torch import nn

from charlstm.config import FUSED_CELLS, ModelConfig, is_lstm_like
from charlstm.model.cells import CustomRNN, initialise, parameter_shapes

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
_FUSED_GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # gate rows per unit of nn.LSTM, nn.GRU, nn.RNN


class CharRNN(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed)
        if config.cell in FUSED_CELLS:
            self.rnn = _CELLS[config.cell](
                config.embed,
                config.hidden,
                num_layers=config.layers,
                dropout=config.dropout if config.layers > 1 else 0.0,
                batch_first=True,
            )
        else:
            self.rnn = CustomRNN(config)
        initialise(self.rnn, config)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, config.vocab_size)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        emb = self.embed(x)  # (B, T, E)
        out, state = self.rnn(emb, state)  # (B, T, H)
        logits = self.head(self.drop(out))  # (B, T, V)
        return logits, state

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> State:
        device = device or self.head.weight.device
        zeros = torch.zeros(self.config.layers, batch, self.config.hidden, device=device)
        return (zeros, zeros.clone()) if self.config.state_tensors == 2 else zeros

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The state dict of `CharRNN(config)`, name -> shape, in its order, without building it (a model on the meta
    device costs seconds of imports the first time): the one table of the model's weights, which checkpoints are
    checked against and parameters counted from."""
    vocab, hidden, embed = config.vocab_size, config.hidden, config.embed
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (vocab, embed)}
    if config.cell in FUSED_CELLS:
        gates = _FUSED_GATES[config.cell]
        for layer in range(config.layers):
            shapes[f"rnn.weight_ih_l{layer}"] = (gates * hidden, embed if layer == 0 else hidden)
            shapes[f"rnn.weight_hh_l{layer}"] = (gates * hidden, hidden)
            shapes[f"rnn.bias_ih_l{layer}"] = (gates * hidden,)
            shapes[f"rnn.bias_hh_l{layer}"] = (gates * hidden,)
    else:
        shapes.update({f"rnn.{name}": shape for name, shape in parameter_shapes(config).items()})
    shapes["head.weight"] = (vocab, hidden)
    shapes["head.bias"] = (vocab,)
    return shapes


def count_params(config: ModelConfig) -> int:
    """The parameters of `CharRNN(config)` (its `num_params`), without building it."""
    return sum(math.prod(shape) for shape in weight_shapes(config).values())


def detach_state(state: State | None) -> State | None:
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def state_from_list(tensors: list[torch.Tensor], cell: str, device: torch.device | str) -> State | None:
    if not tensors:
        return None
    moved = [t.to(device) for t in tensors]
    return (moved[0], moved[1]) if is_lstm_like(cell) else moved[0]
