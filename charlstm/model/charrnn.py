"""CharRNN: character embedding -> stacked recurrent cells -> linear head. LSTM/GRU/RNN are the fused
cuDNN/oneDNN kernels; the other cells are charlstm/cells.py's `CustomRNN`, called the same way."""

from __future__ import annotations

import torch
from torch import nn

from charlstm.config import FUSED_CELLS, ModelConfig, is_lstm_like
from charlstm.model.cells import CustomRNN, initialise

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


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


def detach_state(state: State | None) -> State | None:
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def state_to_list(state: State | None) -> list[torch.Tensor]:
    """A state as a plain list of CPU tensors (what a checkpoint may hold)."""
    if state is None:
        return []
    return [s.detach().cpu() for s in (state if isinstance(state, tuple) else (state,))]


def state_from_list(tensors: list[torch.Tensor], cell: str, device: torch.device | str) -> State | None:
    if not tensors:
        return None
    moved = [t.to(device) for t in tensors]
    return (moved[0], moved[1]) if is_lstm_like(cell) else moved[0]
