"""Recurrent cells beyond the fused nn.LSTM/GRU/RNN: peephole, pseudo, pseudo2, cifg and lnlstm.

Notation: x the layer's input, (h, c) the carried state, sigma the logistic sigmoid, * elementwise. Every cell keeps
the state as the (h, c) pair, h being what the layer passes up (and to the head), so carried states,
checkpoints and record start states work as for nn.LSTM.

peephole -- the LSTM with peephole connections (Gers & Schmidhuber 2000, "Recurrent nets that time and
    count"; as in Graves 2013, "Generating sequences with recurrent neural networks", eqs. 7-11, whose
    peephole weights p are diagonal, i.e. vectors):
        i = sigma(W_i x + U_i h + p_i * c_prev + b_i)      f = sigma(W_f x + U_f h + p_f * c_prev + b_f)
        g = tanh(W_g x + U_g h + b_g)                      c = f * c_prev + i * g
        o = sigma(W_o x + U_o h + p_o * c + b_o)           h = o * tanh(c)
    (r2rt's "Written Memories" writes the peepholes as full n x n matrices; Graves's diagonal form is kept.)

pseudo -- r2rt's pseudo LSTM ("Written Memories: Understanding, Deriving and Extending the LSTM"): the state
    s is squashed whenever it is read, never when written, and the read comes before the write:
        r = tanh(s_prev)                                   (the squashed prior state: h_prev)
        i, o, f = sigma(W x + U r + b)                     (write, read and forget gates)
        s~ = tanh(W_s x + U_s (o * r) + b_s)               (the candidate write, from the read-gated state)
        s = f * s_prev + i * s~                            h = tanh(s)
    Carried as (h, c) = (tanh(s), s).

pseudo2 -- the pseudo LSTM plus r2rt's "LSTM Diff 2" (his architecture 5, the best of his PTB comparison):
    the write and forget gates are computed from the read-gated squashed state, like the candidate:
        r = tanh(s_prev)          o = sigma(W_o x + U_o r + b_o)          q = o * r
        i, f = sigma(W x + U q + b)     s~ = tanh(W_s x + U_s q + b_s)
        s = f * s_prev + i * s~         h = tanh(s)

cifg -- coupled input and forget gate (Greff et al. 2017, "LSTM: A search space odyssey", variant CIFG):
    the LSTM with f = 1 - i (gates i, g, o; three quarters of the LSTM's weights):
        i = sigma(W_i x + U_i h + b_i)   g = tanh(W_g x + U_g h + b_g)   o = sigma(W_o x + U_o h + b_o)
        c = (1 - i) * c_prev + i * g     h = o * tanh(c)

lnlstm -- the layer-normalised LSTM (Ba, Kiros & Hinton 2016, "Layer normalization", eqs. 20-22): the input
    and recurrent projections normalised separately over the 4H gate pre-activations, and the cell before
    its read:
        (i, f, o, g) = LN(W x; a_x, b_x) + LN(U h; a_h, b_h)      (b_x is the gates' bias)
        c = sigma(f) * c_prev + sigma(i) * tanh(g)     h = sigma(o) * tanh(LN(c; a_c, b_c))

Initialisation (ModelConfig.init): "default" is PyTorch's nn.LSTM rule, every weight and bias
U(-1/sqrt(H), 1/sqrt(H)) (layer-norm gains 1 and shifts 0); "xavier" is Xavier-Glorot uniform
(Glorot & Bengio 2010, argued for in "Written Memories") on each gate's input and recurrent matrix separately,
biases and peepholes zero. Then the forget-gate bias (ModelConfig.forget_bias) is set: for cifg, whose forget
gate is 1 - i, the input gate's bias is set to -F, which gives its forget gate the pre-activation bias F.

Speed: a layer's input projection for a whole window is one matrix multiply (`project`); per step the recurrent
matrix multiply carries the projection in as its bias (addmm) and the gates come apart with one `split`, and the
window is taken apart with one `unbind`: indexing `xp[t]` or slicing gates makes autograd zero-fill a whole
window's (or gate block's) gradient at every step, which had cost more than the matrix multiplies. In training,
the recurrent matrices' gradients are one matrix multiply over the window too (`_RecurrentWeightGrads`; all cells
but lnlstm, whose recurrent product is normalised before it meets xp), instead of one of B rows per step. The loop
itself is plain Python: written to be scriptable (`_cell` and `_recurrence` compile with torch.jit.script), the
scripted loop trained slower than the eager one on this CPU (benchmarks/cell_speed.py; TorchScript's profiling
executor adds work per op), so it is not used; `torch.compile` of `_cell` took ~3 minutes to compile on the
loaded 2-core machine and was no faster per window (pseudo2: 740-780 ms against eager 570-910), so neither is
it. Plain ops also keep `torch.jit.trace` and ONNX export working (at T = 1 as at any T). `step` is the same math
per character, returning the named quantities an inspector shows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from charlstm.config import CUSTOM_CELLS, ModelConfig

# cell -> (gate rows of the input projection, per unit; its kind number in the scripted cell)
_GATES = {"peephole": 4, "pseudo": 4, "pseudo2": 4, "cifg": 3, "lnlstm": 4}
_KIND = {"peephole": 0, "pseudo": 1, "pseudo2": 2, "cifg": 3, "lnlstm": 4}
LN_EPS = 1e-5


def _cell(
    kind: int, xp: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """One step of every custom cell: xp (B, G*H) is the input's projection (bias included), (h, c) (B, H) the
    prior state, w the layer's recurrent weights (`_Layer.recurrent_weights`). Returns the new (h, c) and the
    step's other named values, in the layer's QUANTITIES order after "h" and "c". Scripted by `_recurrence`."""
    hidden = h.size(1)
    if kind == 0:  # peephole: w = [U (4H, H) transposed, peepholes (3, H)]
        # split, not slices: one backward node that concatenates (a slice's backward zero-fills a (B, 4H) each)
        zi, zf, zg, zo = torch.addmm(xp, h, w[0]).split(hidden, 1)  # (B, H) each: i, f, g, o
        p = w[1]
        i = torch.sigmoid(torch.addcmul(zi, p[0], c))
        f = torch.sigmoid(torch.addcmul(zf, p[1], c))
        g = torch.tanh(zg)
        c_new = f * c + i * g
        o = torch.sigmoid(torch.addcmul(zo, p[2], c_new))
        return o * torch.tanh(c_new), c_new, [i, f, o, g]
    if kind == 1:  # pseudo: w = [U_gates (H, 3H), U_candidate (H, H)], both transposed
        # (B, H): the squashed prior state tanh(s_prev), which h_prev is (in every state this cell produces, and
        # zeros); reading h saves a tanh and keeps both halves of the state inputs of an exported graph
        read = h
        x_gates, x_candidate = xp.split([3 * hidden, hidden], 1)
        i, o, f = torch.sigmoid(torch.addmm(x_gates, read, w[0])).split(hidden, 1)  # (B, H) each
        candidate = torch.tanh(torch.addmm(x_candidate, o * read, w[1]))
        c_new = f * c + i * candidate
        return torch.tanh(c_new), c_new, [i, o, f, candidate, read]
    if kind == 2:  # pseudo2: w = [U_read (H, H), U_rest (H, 3H)], both transposed
        read = h  # tanh(s_prev), as in pseudo
        x_read, x_rest = xp.split([hidden, 3 * hidden], 1)
        o = torch.sigmoid(torch.addmm(x_read, read, w[0]))  # (B, H): the read gate, from the squashed state
        gated = o * read  # (B, H): Diff 2, the gates below are computed from the read-gated state
        z_gates, z_candidate = torch.addmm(x_rest, gated, w[1]).split([2 * hidden, hidden], 1)
        i, f = torch.sigmoid(z_gates).split(hidden, 1)
        candidate = torch.tanh(z_candidate)
        c_new = f * c + i * candidate
        return torch.tanh(c_new), c_new, [i, o, f, candidate, gated]
    if kind == 3:  # cifg: w = [U (H, 3H) transposed]
        zi, zg, zo = torch.addmm(xp, h, w[0]).split(hidden, 1)  # (B, H) each: i, g, o
        i = torch.sigmoid(zi)
        g = torch.tanh(zg)
        o = torch.sigmoid(zo)
        f = 1.0 - i
        c_new = f * c + i * g
        return o * torch.tanh(c_new), c_new, [i, f, o, g]
    # lnlstm: w = [U (H, 4H) transposed, a_h (4H), b_h (4H), a_c (H), b_c (H)]
    recurrent = torch.layer_norm(torch.mm(h, w[0]), [4 * hidden], w[1], w[2], 1e-5)  # (B, 4H)
    zi, zf, zg, zo = (xp + recurrent).split(hidden, 1)  # (B, H) each: i, f, g, o
    i = torch.sigmoid(zi)
    f = torch.sigmoid(zf)
    g = torch.tanh(zg)
    o = torch.sigmoid(zo)
    c_new = f * c + i * g
    c_normal = torch.layer_norm(c_new, [hidden], w[3], w[4], 1e-5)  # 1e-5: LN_EPS (TorchScript takes no globals)
    return o * torch.tanh(c_normal), c_new, [i, f, o, g, c_normal]


def _recurrence(
    kind: int, xp: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The window: xp (T, B, G*H) -> outputs (B, T, H) and the last (h, c)."""
    outputs: list[torch.Tensor] = []
    for xp_t in xp.unbind(0):  # unbind: one backward node (indexing xp[t] would zero-fill all of xp per step)
        h, c, _ = _cell(kind, xp_t, h, c, w)
        outputs.append(h)
    return torch.stack(outputs, 1), h, c


class _RecurrentWeightGrads(torch.autograd.Function):
    """Identity on a window's input projections xp (T, B, G*H) whose backward also returns the gradients of the
    recurrent matrices, each as one matrix multiply over the whole window.

    In peephole, pseudo, pseudo2 and cifg every recurrent product is added to a slice of xp_t (`addmm`), so the
    gradient of that product is the gradient of the slice: dU = sum_t input_t^T dxp_t, one (in, T*B) @ (T*B, out)
    product instead of T small ones of B rows inside the loop (which then runs with the matrices detached). The
    loop fills `inputs` (per matrix, the T inputs it was multiplied with) before backward runs; the backward runs
    after every step's, since every step reads xp."""

    @staticmethod
    def forward(ctx, xp, inputs, splits, *matrices):
        ctx.inputs, ctx.splits, ctx.dtypes = inputs, splits, [m.dtype for m in matrices]
        return xp.view_as(xp)

    @staticmethod
    def backward(ctx, dxp):
        rows = dxp.reshape(-1, dxp.size(-1))  # (T*B, G*H)
        # under autocast the inputs may be bf16 and dxp fp32 (backward runs outside autocast): fp32 products, then
        # each gradient in its matrix's dtype
        grads = [
            torch.cat(inputs).float().t().mm(block.float()).to(dtype)  # (in, T*B) @ (T*B, out), transposed like it
            for inputs, block, dtype in zip(ctx.inputs, rows.split(ctx.splits, dim=1), ctx.dtypes)
        ]
        return (dxp, None, None, *grads)


class _Layer(nn.Module):
    """One layer of a custom cell: its weights, `project` (the input side), `step` (one character, eager)."""

    cell = ""
    QUANTITIES: tuple[str, ...] = ()

    def __init__(self, in_features: int, hidden: int):
        super().__init__()
        gates = _GATES[self.cell]
        self.in_features, self.hidden = in_features, hidden
        self.weight_ih = nn.Parameter(torch.empty(gates * hidden, in_features))
        self.weight_hh = nn.Parameter(torch.empty(gates * hidden, hidden))
        self.bias = nn.Parameter(torch.empty(gates * hidden))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The input side of every gate: (..., in) -> (..., G*H), bias included."""
        return F.linear(x, self.weight_ih, self.bias)

    def recurrent_weights(self) -> list[torch.Tensor]:
        """What `_cell` takes as `w` (matrices transposed for `h @ U`)."""
        return [self.weight_hh.t()]

    # per recurrent matrix, the columns of xp its product is added to (None: the product is not added to xp)
    SPLITS: tuple[int, ...] | None = None

    def run(self, xp: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """The recurrence over a window: xp (B, T, G*H), (h, c) (B, H) -> (B, T, H), h, c."""
        weights, kind = self.recurrent_weights(), _KIND[self.cell]
        training = torch.is_grad_enabled() and self.weight_hh.requires_grad
        if self.SPLITS is None or not training or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return _recurrence(kind, xp.transpose(0, 1), h, c, weights)
        matrices = len(self.SPLITS)
        inputs: list[list[torch.Tensor]] = [[] for _ in range(matrices)]
        splits = [size * self.hidden for size in self.SPLITS]
        xp = _RecurrentWeightGrads.apply(xp.transpose(0, 1), inputs, splits, *weights[:matrices])  # (T, B, G*H)
        detached = [w.detach() for w in weights[:matrices]] + weights[matrices:]
        outputs = []
        for xp_t in xp.unbind(0):
            inputs[0].append(h.detach())
            h, c, others = _cell(kind, xp_t, h, c, detached)
            if matrices == 2:  # the pseudo cells' second product: of the read-gated state
                inputs[1].append(self._second_input(others).detach())
            outputs.append(h)
        return torch.stack(outputs, 1), h, c

    def _second_input(self, others: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError  # only the cells with two recurrent matrices have one

    def step(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        """One character in eager torch: x (B, in), state (h, c) of (B, H) -> (h, (h, c), quantities)."""
        h, c = state
        h_new, c_new, others = _cell(_KIND[self.cell], self.project(x), h, c, self.recurrent_weights())
        quantities = dict(zip(self.QUANTITIES, [h_new, c_new, *others]))
        return h_new, (h_new, c_new), quantities

    def reset_parameters(self, init: str, forget_bias: float) -> None:
        with torch.no_grad():
            if init == "xavier":
                for matrix in (self.weight_ih, self.weight_hh):
                    for block in matrix.split(self.hidden, dim=0):  # each gate's matrix on its own
                        nn.init.xavier_uniform_(block)
                self.bias.zero_()
            else:
                bound = 1.0 / math.sqrt(self.hidden)
                for p in (self.weight_ih, self.weight_hh, self.bias):
                    p.uniform_(-bound, bound)
            self._set_forget_bias(forget_bias)

    def _set_forget_bias(self, forget_bias: float) -> None:
        H = self.hidden
        self.bias[H : 2 * H] = forget_bias  # i, f, ... order


class PeepholeLayer(_Layer):
    cell = "peephole"
    SPLITS = (4,)
    QUANTITIES = ("h", "c", "input gate", "forget gate", "output gate", "candidate")

    def __init__(self, in_features: int, hidden: int):
        super().__init__(in_features, hidden)
        self.peephole = nn.Parameter(torch.empty(3, hidden))  # p_i, p_f, p_o (diagonal peepholes)

    def recurrent_weights(self) -> list[torch.Tensor]:
        return [self.weight_hh.t(), self.peephole]

    def reset_parameters(self, init: str, forget_bias: float) -> None:
        super().reset_parameters(init, forget_bias)
        with torch.no_grad():
            if init == "xavier":
                self.peephole.zero_()
            else:
                bound = 1.0 / math.sqrt(self.hidden)
                self.peephole.uniform_(-bound, bound)


class PseudoLayer(_Layer):
    """Input rows: i, o, f (gates), then the candidate; recurrent rows the same."""

    cell = "pseudo"
    SPLITS = (3, 1)
    QUANTITIES = ("h", "state", "write gate", "read gate", "forget gate", "candidate write", "squashed state")

    def _second_input(self, others: list[torch.Tensor]) -> torch.Tensor:
        return others[1] * others[4]  # o * read: what the candidate's matrix multiplied

    def recurrent_weights(self) -> list[torch.Tensor]:
        H = self.hidden
        return [self.weight_hh[: 3 * H].t(), self.weight_hh[3 * H :].t()]

    def _set_forget_bias(self, forget_bias: float) -> None:
        H = self.hidden
        self.bias[2 * H : 3 * H] = forget_bias  # i, o, f, candidate order


class Pseudo2Layer(_Layer):
    """Input rows: o (read gate), then i, f, candidate; recurrent rows the same."""

    cell = "pseudo2"
    SPLITS = (1, 3)
    QUANTITIES = ("h", "state", "write gate", "read gate", "forget gate", "candidate write", "read-gated state")

    def _second_input(self, others: list[torch.Tensor]) -> torch.Tensor:
        return others[4]  # o * read

    def recurrent_weights(self) -> list[torch.Tensor]:
        H = self.hidden
        return [self.weight_hh[:H].t(), self.weight_hh[H:].t()]

    def _set_forget_bias(self, forget_bias: float) -> None:
        H = self.hidden
        self.bias[2 * H : 3 * H] = forget_bias  # o, i, f, candidate order


class CIFGLayer(_Layer):
    """Rows: i, g, o. The forget gate is 1 - i."""

    cell = "cifg"
    SPLITS = (3,)
    QUANTITIES = ("h", "c", "input gate", "forget gate", "output gate", "candidate")

    def _set_forget_bias(self, forget_bias: float) -> None:
        self.bias[: self.hidden] = -forget_bias  # f = 1 - sigma(z_i) = sigma(-z_i)


class LNLSTMLayer(_Layer):
    """Rows: i, f, g, o. `ln_ih` normalises the input projection (its shift is `bias`), `ln_hh` the recurrent
    one, `ln_c` the cell before it is read."""

    cell = "lnlstm"
    QUANTITIES = ("h", "c", "input gate", "forget gate", "output gate", "candidate", "normalised c")

    def __init__(self, in_features: int, hidden: int):
        super().__init__(in_features, hidden)
        self.ln_ih_weight = nn.Parameter(torch.empty(4 * hidden))
        self.ln_hh_weight = nn.Parameter(torch.empty(4 * hidden))
        self.ln_hh_bias = nn.Parameter(torch.empty(4 * hidden))
        self.ln_c_weight = nn.Parameter(torch.empty(hidden))
        self.ln_c_bias = nn.Parameter(torch.empty(hidden))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        projected = F.linear(x, self.weight_ih)  # (..., 4H)
        return F.layer_norm(projected, (4 * self.hidden,), self.ln_ih_weight, self.bias, LN_EPS)

    def recurrent_weights(self) -> list[torch.Tensor]:
        return [self.weight_hh.t(), self.ln_hh_weight, self.ln_hh_bias, self.ln_c_weight, self.ln_c_bias]

    def reset_parameters(self, init: str, forget_bias: float) -> None:
        super().reset_parameters(init, forget_bias)
        with torch.no_grad():
            for gain in (self.ln_ih_weight, self.ln_hh_weight, self.ln_c_weight):
                gain.fill_(1.0)
            for shift in (self.ln_hh_bias, self.ln_c_bias):
                shift.zero_()
            self.bias.zero_()  # the input normaliser's shift: zero but the forget gate's
            self._set_forget_bias(forget_bias)


LAYERS: dict[str, type[_Layer]] = {
    "peephole": PeepholeLayer,
    "pseudo": PseudoLayer,
    "pseudo2": Pseudo2Layer,
    "cifg": CIFGLayer,
    "lnlstm": LNLSTMLayer,
}
assert set(LAYERS) == set(CUSTOM_CELLS)


class CustomRNN(nn.Module):
    """A stack of custom layers called like nn.LSTM(batch_first=True): (B, T, E), (h, c) of (L, B, H) ->
    (B, T, H), (h, c). Dropout between layers in training, as nn.LSTM's."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        layer_type = LAYERS[config.cell]
        self.hidden, self.num_layers = config.hidden, config.layers
        self.dropout = config.dropout if config.layers > 1 else 0.0
        self.layers = nn.ModuleList(
            layer_type(config.embed if n == 0 else config.hidden, config.hidden) for n in range(config.layers)
        )

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        if state is None:
            zeros = x.new_zeros(self.num_layers, x.size(0), self.hidden)
            state = (zeros, zeros)
        hs, cs = [], []
        for n, layer in enumerate(self.layers):
            if n > 0 and self.dropout > 0:
                x = F.dropout(x, self.dropout, self.training)
            x, h, c = layer.run(layer.project(x), state[0][n], state[1][n])  # (B, T, H), (B, H), (B, H)
            hs.append(h)
            cs.append(c)
        return x, (torch.stack(hs), torch.stack(cs))  # (B, T, H), (L, B, H) x 2


def parameter_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The state dict of `CustomRNN(config)`, name -> shape, in order, without building it (the custom cells' part
    of charrnn.py's `weight_shapes`)."""
    gates, hidden = _GATES[config.cell], config.hidden
    shapes: dict[str, tuple[int, ...]] = {}
    for n in range(config.layers):
        prefix = f"layers.{n}."
        shapes[prefix + "weight_ih"] = (gates * hidden, config.embed if n == 0 else hidden)
        shapes[prefix + "weight_hh"] = (gates * hidden, hidden)
        shapes[prefix + "bias"] = (gates * hidden,)
        if config.cell == "peephole":
            shapes[prefix + "peephole"] = (3, hidden)
        if config.cell == "lnlstm":
            for name, size in (("ln_ih_weight", 4), ("ln_hh_weight", 4), ("ln_hh_bias", 4)):
                shapes[prefix + name] = (size * hidden,)
            shapes[prefix + "ln_c_weight"] = (hidden,)
            shapes[prefix + "ln_c_bias"] = (hidden,)
    return shapes


def initialise(rnn: nn.Module, config: ModelConfig) -> None:
    """Apply `config.init` and the forget bias to a freshly built recurrent stack (fused or custom). The fused
    cells' "default" with no forget bias leaves PyTorch's initialisation untouched (and its random draws)."""
    forget_bias = config.effective_forget_bias
    if isinstance(rnn, CustomRNN):
        for layer in rnn.layers:
            layer.reset_parameters(config.init, forget_bias)
        return
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            if config.init == "xavier":
                if name.startswith("weight"):
                    for block in p.split(config.hidden, dim=0):
                        nn.init.xavier_uniform_(block)
                else:
                    p.zero_()
            if forget_bias is not None and config.cell == "lstm" and name.startswith("bias"):
                H = config.hidden  # nn.LSTM rows: i, f, g, o; bias_ih + bias_hh is the gate's bias
                p[H : 2 * H] = forget_bias if name.startswith("bias_ih") else 0.0
