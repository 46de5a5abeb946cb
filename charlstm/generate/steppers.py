"""Steppers: what turns "the characters so far" into rows of next characters, one row (N,) per step.

`make_stepper` picks the fastest one that reproduces the plain path:
  * `NumpyLSTMStepper` (CPU, LSTM): the recurrence in float32 NumPy with preallocated buffers; the first
    layer's input projection is a (V, 4H) table looked up per character; upper layers do one fused
    [x, h] @ [W_ih; W_hh] matmul. One stream: the four gates share one NumPy tanh
    (sigmoid(x) = (1 + tanh(x / 2)) / 2), fewest calls. A batch: they share one torch sigmoid, in place on
    the same buffers (tanh(x) = 2 sigmoid(2x) - 1), since NumPy's float32 tanh is scalar code (~3 ns an
    element here) and torch's sigmoid is vectorised and threaded (~0.5 ns).
  * `NumpyGRURNNStepper` (CPU, GRU or RNN): the same for those cells (NumPy tanh at every batch size).
  * `ChunkedTorchStepper` (CUDA): `chunk` steps of model + draw captured as one CUDA graph, uniforms copied
    in per chunk, the host reading ids back once per chunk. Without CUDA it runs the same code eagerly.
  * `TorchStepper`: the model called once per character, any cell and device (the plain reference path).
All of them draw the same uniforms from the seeded generator and use the same rule (`charlstm.generate.next_char`), and
all of them start the same way: `TorchStepper.start` feeds the start text through the model in one call, from
zeros or from a given state (a record start state, see starts.py), before their own steps take over.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from charlstm.config import FUSED_CELLS
from charlstm.generate.next_char import draw_ids, draw_ids_numpy, uniform_chunks
from charlstm.model.charrnn import CharRNN, State

GRAPH_CHUNK = 32  # CUDA: characters per graph replay (and per host sync)
SIGMOID_FROM = 16  # CPU: from this many samples on, gates go through torch's sigmoid (see NumpyLSTMStepper)
ROW_MATMUL_UPTO = 4  # CPU: up to this many samples, one matrix-vector product per sample (see _matmul)


class TorchStepper:
    """The plain path: `model(ids, state)` once per character, drawn with the torch rule."""

    def __init__(self, model: CharRNN):
        self.model = model
        self.device = next(model.parameters()).device
        self.state: State | None = None

    def start(self, x: torch.Tensor, state: State | None = None) -> torch.Tensor:
        """Feed the start text (N, P) from `state` (None: zeros); returns the next-character logits (N, V).

        Every stepper starts through this one call (nn.LSTM/GRU/RNN over the whole start text), so a start
        state gives the same logits and state on every path."""
        if state is not None:
            state = tuple(s.to(self.device) for s in state) if isinstance(state, tuple) else state.to(self.device)
        logits, self.state = self.model(x.to(self.device), state)
        return logits[:, -1]

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Feed one character per sample (N,); returns logits (N, V)."""
        logits, self.state = self.model(ids.to(self.device).unsqueeze(1), self.state)
        return logits[:, -1]

    def draw(self, logits: torch.Tensor, uniforms: torch.Tensor, config) -> torch.Tensor:
        return draw_ids(logits, uniforms, config.temperature, config.top_k, config.top_p)

    def sample_ids(
        self, x: torch.Tensor, config, rng: torch.Generator, state: State | None = None
    ) -> Iterator[list[int]]:
        """Rows of next ids, `config.length` of them, after feeding `x` from `state` (None: zeros); the state
        advances only when the next row is asked for."""
        logits = self.start(x, state)
        for chunk in uniform_chunks(rng, x.size(0), config.length):
            for uniforms in self._rows(chunk):
                ids = self.draw(logits, uniforms, config)
                yield ids.tolist()
                logits = self.step(ids)

    def _rows(self, chunk: torch.Tensor):
        return chunk


class _NumpyStepper(TorchStepper):
    """What the NumPy CPU steppers share: logits as arrays, the NumPy twin of the draw, torch on one thread."""

    def sample_ids(
        self, x: torch.Tensor, config, rng: torch.Generator, state: State | None = None
    ) -> Iterator[list[int]]:
        """As the plain path, with torch held to one thread meanwhile: the matmuls are OpenBLAS's (its own
        threads), and torch's OpenMP workers woken for a sigmoid or exp in between fight them for the cores
        (measured on 2 cores: a 2 x 128 step at batch 256 went from 1.6 ms to 17 ms)."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield from super().sample_ids(x, config, rng, state)
        finally:
            torch.set_num_threads(threads)

    def draw(self, logits: np.ndarray, uniforms: np.ndarray, config) -> np.ndarray:
        return draw_ids_numpy(logits, uniforms, config.temperature, config.top_k, config.top_p)

    def _rows(self, chunk: torch.Tensor):
        return chunk.double().numpy()


class NumpyLSTMStepper(_NumpyStepper):
    """CPU LSTM step in NumPy float32: about one µs of overhead per operation instead of several.

    Layout, chosen so that each step is few operations:
      * hs (N, L*H) = [h_0, h_1, ..., h_{L-1}]: layer l > 0 reads [h_{l-1}, h_l] as one slice, one matmul
        with the stacked [W_ih; W_hh];
      * a (N, 5H) buffer per layer = [o, i, f, g, c]: gates written by the matmul, the cell state right
        after g, so [i, f] * [g, c] is one multiply;
      * layer 0's input projection (embedding @ W_ih^T + biases) is a (V, 4H) table looked up per character;
      * gate rows reordered to o, i, f, g, then scaled (by powers of 2, so exactly) for one transcendental
        call over all four gates:
          - below SIGMOID_FROM samples, o i f halved and one NumPy tanh: sigmoid(x) = (1 + tanh(x / 2)) / 2
            (per-call overhead is what a small step costs, and this is the fewest calls);
          - from SIGMOID_FROM samples on, g doubled and one torch sigmoid in place: tanh(x) = 2 sigmoid(2x) - 1
            (the element count is what a batch step costs; NumPy's float32 tanh is scalar code, ~3 ns an
            element here, torch's sigmoid is vectorised and threaded, ~0.5 ns; `tanh(c)` likewise).
    """

    def __init__(self, model: CharRNN, num_samples: int):
        super().__init__(model)
        config = model.config
        self.single = num_samples == 1
        self.sigmoid = num_samples >= SIGMOID_FROM
        scales = (1.0, 1.0, 1.0, 2.0) if self.sigmoid else (0.5, 0.5, 0.5, 1.0)
        self.hs = np.zeros((num_samples, config.layers * config.hidden), np.float32)
        self.layers = [_NumpyLSTMLayer(model, layer, self.hs, scales) for layer in range(config.layers)]
        rnn = model.rnn
        w_ih = rnn.weight_ih_l0.detach().double().cpu()  # (4H, E)
        bias = (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach().double().cpu()  # (4H,)
        embedding = model.embed.weight.detach().double().cpu()  # (V, E)
        self.input_table = _as_f32(_gate_rows(w_ih @ embedding.T + bias[:, None], scales).T)  # (V, 4H)
        self.head_weight = _as_f32(model.head.weight.T)  # (H, V)
        self.head_bias = _as_f32(model.head.bias)  # (V,)
        self.logits = np.zeros((num_samples, config.vocab_size), np.float32)
        first = self.layers[0]
        self.first_matmul = _matmul(first.input, first.weight, first.gates)  # (N, H) @ (H, 4H): recurrent part
        self.operations = self._operations()

    def start(self, x: torch.Tensor, state: State | None = None) -> np.ndarray:
        logits = super().start(x, state)  # the start text goes through nn.LSTM in one call
        h, c = self.state
        for layer, h_l, c_l in zip(self.layers, h, c):
            layer.h[:] = h_l.float().cpu().numpy()
            layer.c[:] = c_l.float().cpu().numpy()
        self.state = None
        return logits.float().cpu().numpy()

    def step(self, ids: np.ndarray) -> np.ndarray:
        for operation, operands in self.first_matmul:
            operation(*operands)
        first = self.layers[0]
        first.gates += self.input_table[ids[0]] if self.single else self.input_table[ids]  # the input part
        for operation, operands in self.operations:  # the rest of the step, a fixed sequence (see _operations)
            operation(*operands)
        return self.logits

    def _operations(self) -> list[tuple[np.ufunc, tuple]]:
        """Every NumPy call of a step after layer 0's matmul and table lookup, operands bound once: (ufunc,
        (inputs..., out)). Looping over this list costs less Python than the same code written out."""
        ops = []
        for layer in self.layers:
            if layer.index > 0:
                ops += _matmul(layer.input, layer.weight, layer.gates)  # (N, 2H) @ (2H, 4H)
                ops += [(np.add, (layer.gates, layer.bias, layer.gates))]
            ops += self._sigmoid_cell(layer) if self.sigmoid else self._tanh_cell(layer)
        top = self.layers[-1]
        ops += _matmul(top.h, self.head_weight, self.logits)  # (N, H) @ (H, V)
        ops += [(np.add, (self.logits, self.head_bias, self.logits))]
        return ops

    @staticmethod
    def _tanh_cell(layer: _NumpyLSTMLayer) -> list[tuple]:
        """The cell from gates o i f (halved) and g: one NumPy tanh for the four gates, one for c."""
        H = layer.hidden
        return [
            (np.tanh, (layer.gates, layer.gates)),
            (np.multiply, (layer.oif, 0.5, layer.oif)),
            (np.add, (layer.oif, 0.5, layer.oif)),  # sigmoid(x) = (1 + tanh(x / 2)) / 2
            (np.multiply, (layer.i_f, layer.g_c, layer.products)),  # [i * g, f * c]
            (np.add, (layer.products[:, :H], layer.products[:, H:], layer.c)),  # c = f * c + i * g
            (np.tanh, (layer.c, layer.scratch)),
            (np.multiply, (layer.o, layer.scratch, layer.h)),  # h = o * tanh(c)
        ]

    @staticmethod
    def _sigmoid_cell(layer: _NumpyLSTMLayer) -> list[tuple]:
        """The cell from gates o i f and g (doubled): one in-place torch sigmoid for the four gates, one for c,
        on torch views of the NumPy buffers; tanh(x) = 2 sigmoid(2x) - 1 (torch on one thread: see sample_ids)."""
        H = layer.hidden
        gates, scratch = torch.from_numpy(layer.gates), torch.from_numpy(layer.scratch)  # share the memory
        return [
            (torch.sigmoid_, (gates,)),
            (np.multiply, (layer.g, 2.0, layer.g)),
            (np.subtract, (layer.g, 1.0, layer.g)),  # g = tanh(g) = 2 sigmoid(2g) - 1
            (np.multiply, (layer.i_f, layer.g_c, layer.products)),  # [i * g, f * c]
            (np.add, (layer.products[:, :H], layer.products[:, H:], layer.c)),  # c = f * c + i * g
            (np.multiply, (layer.c, 2.0, layer.scratch)),
            (torch.sigmoid_, (scratch,)),
            (np.multiply, (layer.scratch, 2.0, layer.scratch)),
            (np.subtract, (layer.scratch, 1.0, layer.scratch)),  # tanh(c)
            (np.multiply, (layer.o, layer.scratch, layer.h)),  # h = o * tanh(c)
        ]


class _NumpyLSTMLayer:
    """One layer's weights (gate rows o, i, f, g, each multiplied by its entry of `scales`) and its buffers,
    as fixed views."""

    def __init__(self, model: CharRNN, layer: int, hs: np.ndarray, scales: tuple[float, ...]):
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
        self.weight = _as_f32(_gate_rows(weight, scales).T)  # (K, 4H)
        self.bias = _as_f32(_gate_rows(bias[:, None], scales)[:, 0])  # (4H,); layer 0's is in the input table
        self.h = hs[:, layer * H : (layer + 1) * H]
        buffer = np.zeros((n, 5 * H), np.float32)  # [o, i, f, g, c]
        self.gates, self.c = buffer[:, : 4 * H], buffer[:, 4 * H :]
        self.oif, self.o, self.i_f, self.g_c = (
            buffer[:, : 3 * H],
            buffer[:, :H],
            buffer[:, H : 3 * H],
            buffer[:, 3 * H :],
        )
        self.g = buffer[:, 3 * H : 4 * H]
        self.products = np.zeros((n, 2 * H), np.float32)
        self.scratch = np.zeros((n, H), np.float32)


class NumpyGRURNNStepper(_NumpyStepper):
    """CPU GRU or vanilla (tanh) RNN step in NumPy float32, at any batch size (measured against the plain
    path, 2 x 128: GRU 1.8x at 16 samples, 1.6x at 64, 1.0x at 256; RNN 3.2x, 2.2x, 1.3x).

    hs (N, L*H) = [h_0, ..., h_{L-1}] as for the LSTM; layer 0's input projection is a (V, G*H) table (G = 3
    gates for a GRU, 1 for an RNN) looked up per character.
      * RNN: h = tanh(x W_ih^T + h W_hh^T + b); an upper layer does one [h_below, h] @ [W_ih; W_hh] matmul.
      * GRU (torch's gates r, z, n): r, z = sigmoid(gi_rz + gh_rz), n = tanh(gi_n + r * gh_n),
        h = n + z * (h - n); the input and hidden parts are two matmuls (r scales only the hidden part of n).
        The r and z rows are halved (exactly) so that one tanh gives both: sigmoid(x) = (1 + tanh(x / 2)) / 2.
    """

    def __init__(self, model: CharRNN, num_samples: int):
        super().__init__(model)
        config = model.config
        self.cell, H, n = config.cell, config.hidden, num_samples
        gates = 3 if self.cell == "gru" else 1
        scales = (0.5, 0.5, 1.0) if self.cell == "gru" else (1.0,)
        rnn = model.rnn

        def weight(name: str, layer: int) -> torch.Tensor:  # (G*H, K) or (G*H,), rows scaled per gate
            w = getattr(rnn, f"{name}_l{layer}").detach().double().cpu()
            return torch.cat([part * scale for part, scale in zip(w.chunk(gates, dim=0), scales)], dim=0)

        self.hs = np.zeros((n, config.layers * H), np.float32)
        embedding = model.embed.weight.detach().double().cpu()  # (V, E)
        table = weight("weight_ih", 0) @ embedding.T + weight("bias_ih", 0)[:, None]  # (G*H, V)
        if self.cell == "rnn":
            table = table + weight("bias_hh", 0)[:, None]  # both biases add up front
        self.input_table = _as_f32(table.T)  # (V, G*H)
        self.first_input = np.zeros((n, gates * H), np.float32)  # layer 0's looked-up input part
        self.head_weight = _as_f32(model.head.weight.T)  # (H, V)
        self.head_bias = _as_f32(model.head.bias)  # (V,)
        self.logits = np.zeros((n, config.vocab_size), np.float32)
        self.h = [self.hs[:, layer * H : (layer + 1) * H] for layer in range(config.layers)]
        ops: list[tuple] = []
        for layer in range(config.layers):
            h = self.h[layer]
            if self.cell == "rnn":
                pre = np.zeros((n, H), np.float32)
                if layer == 0:
                    ops += _matmul(h, _as_f32(weight("weight_hh", 0).T), pre)
                    ops += [(np.add, (pre, self.first_input, pre))]
                else:
                    stacked = torch.cat([weight("weight_ih", layer), weight("weight_hh", layer)], dim=1)  # (H, 2H)
                    ops += _matmul(self.hs[:, (layer - 1) * H : (layer + 1) * H], _as_f32(stacked.T), pre)
                    bias = weight("bias_ih", layer) + weight("bias_hh", layer)
                    ops += [(np.add, (pre, _as_f32(bias), pre))]
                ops += [(np.tanh, (pre, h))]
                continue
            gh = np.zeros((n, 3 * H), np.float32)  # h W_hh^T + b_hh: [r, z, n]
            ops += _matmul(h, _as_f32(weight("weight_hh", layer).T), gh)
            ops += [(np.add, (gh, _as_f32(weight("bias_hh", layer)), gh))]
            if layer == 0:
                gi = self.first_input
            else:
                gi = np.zeros((n, 3 * H), np.float32)  # x W_ih^T + b_ih
                ops += _matmul(self.h[layer - 1], _as_f32(weight("weight_ih", layer).T), gi)
                ops += [(np.add, (gi, _as_f32(weight("bias_ih", layer)), gi))]
            rz, new, diff = np.zeros((n, 2 * H), np.float32), np.zeros((n, H), np.float32), np.zeros((n, H), np.float32)
            ops += [
                (np.add, (gi[:, : 2 * H], gh[:, : 2 * H], rz)),
                (np.tanh, (rz, rz)),
                (np.multiply, (rz, 0.5, rz)),
                (np.add, (rz, 0.5, rz)),  # [r, z] = sigmoid
                (np.multiply, (rz[:, :H], gh[:, 2 * H :], new)),
                (np.add, (new, gi[:, 2 * H :], new)),
                (np.tanh, (new, new)),  # n = tanh(gi_n + r * gh_n)
                (np.subtract, (h, new, diff)),
                (np.multiply, (diff, rz[:, H:], diff)),
                (np.add, (new, diff, h)),  # h = n + z * (h - n)
            ]
        ops += _matmul(self.h[-1], self.head_weight, self.logits)
        ops += [(np.add, (self.logits, self.head_bias, self.logits))]
        self.operations = ops

    def start(self, x: torch.Tensor, state: State | None = None) -> np.ndarray:
        logits = super().start(x, state)  # the start text goes through nn.GRU / nn.RNN in one call
        for layer, h in enumerate(self.state):
            self.h[layer][:] = h.float().cpu().numpy()
        self.state = None
        return logits.float().cpu().numpy()

    def step(self, ids: np.ndarray) -> np.ndarray:
        np.take(self.input_table, ids, axis=0, out=self.first_input)  # the input part of layer 0
        for operation, operands in self.operations:
            operation(*operands)
        return self.logits


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

    def sample_ids(
        self, x: torch.Tensor, config, rng: torch.Generator, state: State | None = None
    ) -> Iterator[list[int]]:
        if config.length == 0:
            return
        n = x.size(0)
        logits = self.start(x, state)
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
    if model.config.cell not in FUSED_CELLS:  # model/cells.py's cells: the plain path, same text
        return TorchStepper(model)
    if fast and device.type == "cuda":
        return ChunkedTorchStepper(model)
    if fast and device.type == "cpu" and model.config.cell == "lstm":
        return NumpyLSTMStepper(model, num_samples)
    if fast and device.type == "cpu":
        return NumpyGRURNNStepper(model, num_samples)
    return TorchStepper(model)  # MPS, or forced plain


def _gate_rows(rows: torch.Tensor, scales: tuple[float, ...]) -> torch.Tensor:
    """(4H, K) in torch's i, f, g, o order -> o, i, f, g, multiplied by `scales` (powers of 2: exact)."""
    i, f, g, o = rows.chunk(4, dim=0)
    return torch.cat([gate * scale for gate, scale in zip((o, i, f, g), scales)], dim=0)


def _matmul(x: np.ndarray, weight: np.ndarray, out: np.ndarray) -> list[tuple]:
    """`out = x @ weight` as step operations. For 2..ROW_MATMUL_UPTO rows, one matrix-vector product per row:
    OpenBLAS's gemm is several times slower at so few rows than that many gemv calls (3 x 512: 2 rows took
    5x one row's time), and a step that small is bound by reading the weights, which stay in cache."""
    if 1 < x.shape[0] <= ROW_MATMUL_UPTO:
        return [(np.matmul, (x[row], weight, out[row])) for row in range(x.shape[0])]
    return [(np.matmul, (x, weight, out))]


def _as_f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))


def _clone_state(state: State) -> State:
    return tuple(s.clone() for s in state) if isinstance(state, tuple) else state.clone()


def _copy_state(into: State, source: State) -> None:
    for dst, src in zip(into, source) if isinstance(into, tuple) else [(into, source)]:
        dst.copy_(src)
