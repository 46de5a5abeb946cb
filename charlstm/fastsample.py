"""Steppers: what turns "the characters so far" into rows of next characters, one row (N,) per step.

`make_stepper` picks the fastest one that reproduces the plain path:
  * `NumpyLSTMStepper` (CPU, LSTM): the recurrence in float32 NumPy with preallocated buffers; the first
    layer's input projection is a (V, 4H) table looked up per character; upper layers do one fused
    [x, h] @ [W_ih; W_hh] matmul; the four gates share one tanh (sigmoid(x) = (1 + tanh(x / 2)) / 2).
  * `ChunkedTorchStepper` (CUDA): `chunk` steps of model + draw captured as one CUDA graph, uniforms copied
    in per chunk, the host reading ids back once per chunk. Without CUDA it runs the same code eagerly.
  * `TorchStepper`: the model called once per character, any cell and device (the plain reference path).
All of them draw the same uniforms from the seeded generator and use the same rule (`charlstm.draw`).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .draw import draw_ids, draw_ids_numpy, uniform_chunks
from .model import CharRNN, State

GRAPH_CHUNK = 32  # CUDA: characters per graph replay (and per host sync)


class TorchStepper:
    """The plain path: `model(ids, state)` once per character, drawn with the torch rule."""

    def __init__(self, model: CharRNN):
        self.model = model
        self.device = next(model.parameters()).device
        self.state: State | None = None

    def start(self, x: torch.Tensor) -> torch.Tensor:
        """Feed the start text (N, P); returns the next-character logits (N, V)."""
        logits, self.state = self.model(x.to(self.device), None)
        return logits[:, -1]

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Feed one character per sample (N,); returns logits (N, V)."""
        logits, self.state = self.model(ids.to(self.device).unsqueeze(1), self.state)
        return logits[:, -1]

    def draw(self, logits: torch.Tensor, uniforms: torch.Tensor, config) -> torch.Tensor:
        return draw_ids(logits, uniforms, config.temperature, config.top_k, config.top_p)

    def sample_ids(self, x: torch.Tensor, config, rng: torch.Generator) -> Iterator[list[int]]:
        """Rows of next ids, `config.length` of them; the state advances only when the next row is asked for."""
        logits = self.start(x)
        for chunk in uniform_chunks(rng, x.size(0), config.length):
            for uniforms in self._rows(chunk):
                ids = self.draw(logits, uniforms, config)
                yield ids.tolist()
                logits = self.step(ids)

    def _rows(self, chunk: torch.Tensor):
        return chunk


class NumpyLSTMStepper(TorchStepper):
    """CPU LSTM step in NumPy float32: about one µs of overhead per operation instead of several.

    Layout, chosen so that each step is few operations:
      * hs (N, L*H) = [h_0, h_1, ..., h_{L-1}]: layer l > 0 reads [h_{l-1}, h_l] as one slice, one matmul
        with the stacked [W_ih; W_hh];
      * a (N, 5H) buffer per layer = [o, i, f, g, c]: gates written by the matmul, the cell state right
        after g, so [i, f] * [g, c] is one multiply;
      * layer 0's input projection (embedding @ W_ih^T + biases) is a (V, 4H) table looked up per character;
      * gate rows reordered to o, i, f, g with o i f halved: one tanh gives all four gates,
        sigmoid(x) = (1 + tanh(x / 2)) / 2.
    """

    def __init__(self, model: CharRNN, num_samples: int):
        super().__init__(model)
        config = model.config
        self.single = num_samples == 1
        self.hs = np.zeros((num_samples, config.layers * config.hidden), np.float32)
        self.layers = [_NumpyLSTMLayer(model, layer, self.hs) for layer in range(config.layers)]
        rnn = model.rnn
        w_ih = rnn.weight_ih_l0.detach().double().cpu()  # (4H, E)
        bias = (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach().double().cpu()  # (4H,)
        embedding = model.embed.weight.detach().double().cpu()  # (V, E)
        self.input_table = _as_f32(_gate_rows(w_ih @ embedding.T + bias[:, None]).T)  # (V, 4H)
        self.head_weight = _as_f32(model.head.weight.T)  # (H, V)
        self.head_bias = _as_f32(model.head.bias)  # (V,)
        self.logits = np.zeros((num_samples, config.vocab_size), np.float32)
        self.operations = self._operations()

    def start(self, x: torch.Tensor) -> np.ndarray:
        logits = super().start(x)  # the start text goes through nn.LSTM in one call
        h, c = self.state
        for layer, h_l, c_l in zip(self.layers, h, c):
            layer.h[:] = h_l.float().cpu().numpy()
            layer.c[:] = c_l.float().cpu().numpy()
        self.state = None
        return logits.float().cpu().numpy()

    def step(self, ids: np.ndarray) -> np.ndarray:
        first = self.layers[0]
        np.matmul(first.input, first.weight, out=first.gates)  # (N, H) @ (H, 4H): the recurrent part
        first.gates += self.input_table[ids[0]] if self.single else self.input_table[ids]  # the input part
        for operation, operands in self.operations:  # the rest of the step, a fixed sequence (see _operations)
            operation(*operands)
        return self.logits

    def _operations(self) -> list[tuple[np.ufunc, tuple]]:
        """Every NumPy call of a step after layer 0's matmul and table lookup, operands bound once: (ufunc,
        (inputs..., out)). Looping over this list costs less Python than the same code written out."""
        ops = []
        for layer in self.layers:
            H = layer.hidden
            if layer.index > 0:
                ops += [(np.matmul, (layer.input, layer.weight, layer.gates)),  # (N, 2H) @ (2H, 4H)
                        (np.add, (layer.gates, layer.bias, layer.gates))]  # fmt: skip
            ops += [
                (np.tanh, (layer.gates, layer.gates)),
                (np.multiply, (layer.oif, 0.5, layer.oif)),
                (np.add, (layer.oif, 0.5, layer.oif)),  # sigmoid(x) = (1 + tanh(x / 2)) / 2
                (np.multiply, (layer.i_f, layer.g_c, layer.products)),  # [i * g, f * c]
                (np.add, (layer.products[:, :H], layer.products[:, H:], layer.c)),  # c = f * c + i * g
                (np.tanh, (layer.c, layer.scratch)),
                (np.multiply, (layer.o, layer.scratch, layer.h)),  # h = o * tanh(c)
            ]
        top = self.layers[-1]
        ops += [(np.matmul, (top.h, self.head_weight, self.logits)),  # (N, H) @ (H, V)
                (np.add, (self.logits, self.head_bias, self.logits))]  # fmt: skip
        return ops

    def draw(self, logits: np.ndarray, uniforms: np.ndarray, config) -> np.ndarray:
        return draw_ids_numpy(logits, uniforms, config.temperature, config.top_k, config.top_p)

    def _rows(self, chunk: torch.Tensor):
        return chunk.double().numpy()


class _NumpyLSTMLayer:
    """One layer's weights (gate rows o, i, f, g; o i f halved) and its buffers, as fixed views."""

    def __init__(self, model: CharRNN, layer: int, hs: np.ndarray):
        rnn, H = model.rnn, model.config.hidden
        n = hs.shape[0]
        self.index, self.hidden = layer, H
        w_hh = getattr(rnn, f"weight_hh_l{layer}").detach().double().cpu()  # (4H, H)
        bias = (getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}")).detach().double().cpu()
        if layer == 0:
            weight = w_hh  # the input part and the biases come from NumpyLSTMStepper.input_table
            self.input = hs[:, :H]  # h_0
        else:
            weight = torch.cat([getattr(rnn, f"weight_ih_l{layer}").detach().double().cpu(), w_hh], dim=1)
            self.input = hs[:, (layer - 1) * H : (layer + 1) * H]  # [h_below, h]
        self.weight = _as_f32(_gate_rows(weight).T)  # (K, 4H)
        self.bias = _as_f32(_gate_rows(bias[:, None])[:, 0])  # (4H,); layer 0's is in the input table
        self.h = hs[:, layer * H : (layer + 1) * H]
        buffer = np.zeros((n, 5 * H), np.float32)  # [o, i, f, g, c]
        self.gates, self.c = buffer[:, : 4 * H], buffer[:, 4 * H :]
        self.oif, self.o, self.i_f, self.g_c = buffer[:, : 3 * H], buffer[:, :H], buffer[:, H : 3 * H], buffer[:, 3 * H :]
        self.products = np.zeros((n, 2 * H), np.float32)
        self.scratch = np.zeros((n, H), np.float32)


class ChunkedTorchStepper(TorchStepper):
    """`chunk` steps of model + draw run back to back on the device; one host read per chunk.

    On CUDA the chunk is captured once as a CUDA graph (static ids, state, uniforms and output buffers) and
    replayed; elsewhere, or if capture fails, the same function runs eagerly. Samples that have ended keep
    stepping to the end of their chunk; generate() ignores what they draw.
    """

    def __init__(self, model: CharRNN, chunk: int = GRAPH_CHUNK, use_graph: bool | None = None):
        super().__init__(model)
        self.chunk = chunk
        self.use_graph = self.device.type == "cuda" if use_graph is None else use_graph
        self.graph = None

    def sample_ids(self, x: torch.Tensor, config, rng: torch.Generator) -> Iterator[list[int]]:
        if config.length == 0:
            return
        n = x.size(0)
        logits = self.start(x)
        chunks = uniform_chunks(rng, n, config.length, self.chunk)
        first = next(chunks)
        self.ids = self.draw(logits, first[0], config)  # (N,) on the device: the first character
        yield self.ids.tolist()
        rest = first[1:]
        self.uniforms = torch.zeros(self.chunk, n, device=self.device)  # static input
        self.out = torch.zeros(self.chunk, n, dtype=torch.long, device=self.device)  # static output
        self.state = _clone_state(self.state)
        self._prepare(config)
        while True:
            while rest.size(0) < self.chunk:  # refill to a whole chunk, or to what is left
                more = next(chunks, None)
                if more is None:
                    break
                rest = torch.cat([rest, more])
            if rest.size(0) == 0:
                return
            count = min(self.chunk, rest.size(0))
            self.uniforms[:count].copy_(rest[:count])
            rest = rest[count:]
            if self.graph is not None:
                self.graph.replay()
            else:
                self._run_chunk(config)
            yield from self.out[:count].tolist()  # the one host sync per chunk

    def _run_chunk(self, config) -> None:
        """Steps `chunk` characters from the static ids and state, writing each row of ids into `out`."""
        ids, state = self.ids, self.state
        for k in range(self.chunk):
            logits, state = self.model(ids.unsqueeze(1), state)
            ids = self.draw(logits[:, -1], self.uniforms[k], config)
            self.out[k].copy_(ids)
        self.ids.copy_(ids)
        _copy_state(self.state, state)

    def _prepare(self, config) -> None:
        if not self.use_graph:
            return
        saved_ids, saved_state = self.ids.clone(), _clone_state(self.state)
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up off the capture, as torch.cuda.graphs asks
                for _ in range(2):
                    self._run_chunk(config)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._run_chunk(config)
            self.graph = graph
        except RuntimeError:
            self.graph = None  # capture not supported here: the eager chunk gives the same ids
        self.ids.copy_(saved_ids)
        _copy_state(self.state, saved_state)


def make_stepper(model: CharRNN, num_samples: int, fast: bool = True) -> TorchStepper:
    """The fastest stepper for this model and device; `fast=False` forces the plain path."""
    device = next(model.parameters()).device
    if fast and device.type == "cuda":
        return ChunkedTorchStepper(model)
    if fast and device.type == "cpu" and model.config.cell == "lstm":
        return NumpyLSTMStepper(model, num_samples)
    return TorchStepper(model)  # GRU/RNN on CPU, MPS, or forced plain


def _gate_rows(rows: torch.Tensor) -> torch.Tensor:
    """(4H, K) in torch's i, f, g, o order -> o, i, f, g with o i f multiplied by 1/2 (exact in binary)."""
    i, f, g, o = rows.chunk(4, dim=0)
    return torch.cat([o * 0.5, i * 0.5, f * 0.5, g], dim=0)


def _as_f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))


def _clone_state(state: State) -> State:
    return tuple(s.clone() for s in state) if isinstance(state, tuple) else state.clone()


def _copy_state(into: State, source: State) -> None:
    for dst, src in zip(into, source) if isinstance(into, tuple) else [(into, source)]:
        dst.copy_(src)

