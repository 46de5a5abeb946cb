"""What a charlstm model checkpoint's payload must hold, checked on the structure `safescan.scan` built (tensors
as TensorSpec, none of their bytes read yet), so that a file that would fail later is refused before anything big
is allocated, and every command (sample, info, train --resume) can trust what it rebuilds, samples or resumes:

- the configs hold plain values (numbers within int64), and the model's sizes stay within bounds far beyond any
  real model (MAX_LAYERS, MAX_WIDTH, MAX_VOCAB);
- the vocabulary is a list of distinct single characters, as many as the config's vocab_size;
- every weight's name, dtype and shape matches the config (`charrnn.weight_shapes`, without building a model);
- the optional optimizer, progress, hidden, rng, corpus and start_states entries have the shapes and types the
  trainer writes and reads (a mismatched optimizer moment would crash only at the first step);
- after `Scanned.materialize`, `check_finite`: the weights and start states are finite numbers.

Each check raises a CharlstmError giving the reason; the caller (store.py) names the file. Keys this does
not know are ignored: the walk already bounded them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch

from charlstm.checkpoint.safepickle import MAX_INT, TensorSpec
from charlstm.checkpoint.safescan import SCALARS, Scanned
from charlstm.config import CELLS, CorpusConfig, ModelConfig, TrainConfig, from_dict
from charlstm.errors import CharlstmError
from charlstm.model.charrnn import weight_shapes

# what a charlstm model may be: far beyond any real one, small enough that every size is a plain int64
MAX_LAYERS = 256
MAX_WIDTH = 1 << 20  # hidden, embed
MAX_VOCAB = 0x110000 + 1  # every Unicode code point, and the end-of-record marker
MAX_START_STATES = 1024
MAX_RNG_BYTES = 1 << 20  # a CPU generator state is 5056 bytes, a CUDA one 16
MAX_RANKS = 4096  # per-process RNG states
MAX_CORPUS_DEPTH = 16
MAX_CORPUS_ITEMS = 200_000
MAX_CORPUS_CHARS = 1 << 24

STEP_DTYPES = (torch.float32, torch.float64, torch.int64)  # an optimizer's step count, as torch versions kept it
FLOATS = (torch.float32, torch.float16, torch.bfloat16)  # what a carried hidden state may be (bf16 autocast)


def _optimizer_orders(config: ModelConfig, shapes: dict[str, tuple[int, ...]]) -> list[list[tuple[int, ...]]]:
    """The parameter shapes in the order an optimizer's state indexes them: training/setup.py's two AdamW groups
    (weights that decay: matrices but the embedding; then the rest), or one group in model order."""
    decay = [s for n, s in shapes.items() if len(s) >= 2 and not n.startswith("embed")]
    rest = [s for n, s in shapes.items() if not (len(s) >= 2 and not n.startswith("embed"))]
    return [decay + rest, list(shapes.values())]


def _bounded_config(cls: type, data: Any) -> Any:
    """The config dataclass from a checkpoint's dict, whose every value (unknown keys included: the CLI prints
    and writes them as JSON) is a plain value or a short list of them, numbers within int64."""
    if type(data) is dict:
        for key, value in data.items():
            values = value if type(value) is list and len(value) <= 4096 else [value]
            if type(key) is not str or not all(type(v) in SCALARS for v in values):
                raise CharlstmError(f"{cls.__name__}.{str(key)[:40]} is not a plain value")
            for v in values:
                if type(v) is int and not -MAX_INT <= v <= MAX_INT:
                    raise CharlstmError(f"{cls.__name__}.{key[:40]} = {str(v)[:20]}... is out of range")
    return from_dict(cls, data)  # types (a CharlstmError naming the field)


def check_model_payload(scanned: Scanned) -> None:
    """Everything a model is rebuilt, sampled or resumed from, checked on the scanned structure before any
    tensor's bytes are read: configs (with bounds), vocabulary, every weight's name, dtype and shape against the
    config, and the optional optimizer, progress, hidden, rng, corpus and start_states. Other keys are ignored
    (they were bounded by the walk). Raises CharlstmError (the reason; the caller names the file)."""
    payload = scanned.payload
    config = _bounded_config(ModelConfig, payload["model_config"])
    if config.cell not in CELLS:
        raise CharlstmError(f"its config's cell {config.cell[:20]!r} is not one of {', '.join(CELLS)}")
    bounds = {"layers": MAX_LAYERS, "hidden": MAX_WIDTH, "embed": MAX_WIDTH, "vocab_size": MAX_VOCAB}
    for name, most in bounds.items():
        value = getattr(config, name)
        if value > most:
            raise CharlstmError(f"its config's {name} {value} is beyond any charlstm model (at most {most})")
    if not math.isfinite(config.dropout):
        raise CharlstmError("its config's dropout is not a number")
    vocab = payload["vocab"]
    if type(vocab) is not list or not all(type(c) is str and len(c) <= 1 for c in vocab):
        raise CharlstmError("its vocabulary is not a list of single characters")
    if len(set(vocab)) != len(vocab):
        raise CharlstmError("its vocabulary repeats characters")
    if config.vocab_size != len(vocab):
        raise CharlstmError(f"its config says vocab_size {config.vocab_size} but it stores {len(vocab)} characters")
    if payload.get("train_config") is not None:
        train_config = _bounded_config(TrainConfig, payload["train_config"])  # validated as it is built
        if not 0 <= train_config.seed <= MAX_INT:
            raise CharlstmError(f"its train config's seed {train_config.seed} is out of range")
    shapes = weight_shapes(config)
    _check_weights(payload["model"], config, shapes)
    if payload.get("optimizer") is not None:
        _check_optimizer(payload["optimizer"], config, shapes)
    if payload.get("progress") is not None:
        _check_progress(payload["progress"])
    states = config.state_tensors
    if payload.get("hidden") is not None:
        _check_hidden(payload["hidden"], config, states)
    if payload.get("rng") is not None:
        _check_rng(payload["rng"], nested=True)
    if payload.get("corpus") is not None:
        _check_corpus(payload["corpus"])
    if payload.get("start_states") is not None:
        _check_start_states(payload["start_states"], config, states)


def _check_weights(weights: Any, config: ModelConfig, shapes: dict[str, tuple[int, ...]]) -> None:
    if type(weights) not in (dict, OrderedDict) or not all(type(t) is TensorSpec for t in weights.values()):
        raise CharlstmError("its weights are not a mapping of tensors")
    if set(weights) != set(shapes):
        odd = sorted(str(name)[:60] for name in set(weights) ^ set(shapes))
        raise CharlstmError(
            f"its weights do not match its config ({config.cell}, {config.layers} layer(s)): {', '.join(odd[:5])}"
        )
    for name, shape in shapes.items():
        tensor = weights[name]
        if tensor.shape != shape:
            raise CharlstmError(
                f"weight {name} has shape {tensor.shape} but its config (hidden {config.hidden}, "
                f"embed {config.embed}, vocabulary {config.vocab_size}) needs {shape}"
            )
        if tensor.dtype != torch.float32:
            raise CharlstmError(f"weight {name} is {str(tensor.dtype).replace('torch.', '')}, not float32")


def _check_optimizer(optimizer: Any, config: ModelConfig, shapes: dict[str, tuple[int, ...]]) -> None:
    """An AdamW state_dict whose moments have the shapes of the weights they belong to, in the optimizer's order
    (its load_state_dict checks only the counts: a mismatched moment would crash at the first step)."""
    if type(optimizer) is not dict or set(optimizer) != {"state", "param_groups"}:
        raise CharlstmError("its optimizer state is not an optimizer's state_dict (state, param_groups)")
    state, groups = optimizer["state"], optimizer["param_groups"]
    if type(groups) is not list or not 1 <= len(groups) <= 16 or not all(type(g) is dict for g in groups):
        raise CharlstmError("its optimizer's param_groups are not a list of a few mappings")
    order: list[Any] = []
    for group in groups:
        params = group.get("params")
        if type(params) is not list or not all(type(i) is int and not isinstance(i, bool) for i in params):
            raise CharlstmError("its optimizer's param_groups do not list parameter numbers")
        order.extend(params)
        for key, value in group.items():
            if type(key) is not str or not (_is_scalar(value) or key == "params" or _is_number_tuple(value)):
                raise CharlstmError(f"its optimizer's setting {str(key)[:40]!r} is not a number, flag or pair")
    if sorted(order) != list(range(len(shapes))):
        raise CharlstmError(f"its optimizer covers {len(order)} parameters, not the model's {len(shapes)} in order")
    if type(state) is not dict or not set(state) <= set(order):
        raise CharlstmError("its optimizer state is not a mapping of the model's parameter numbers")
    candidates = _optimizer_orders(config, shapes)
    problems = []
    for shapes_in_order in candidates:
        problem = _moments_problem(state, order, shapes_in_order)
        if problem is None:
            return
        problems.append(problem)
    raise CharlstmError(problems[0])


def _moments_problem(state: dict, order: list[int], shapes_in_order: list[tuple[int, ...]]) -> str | None:
    for position, index in enumerate(order):
        moments = state.get(index)
        if moments is None:
            continue  # a parameter the optimizer has not stepped yet
        if type(moments) is not dict:
            return f"its optimizer state for parameter {index} is not a mapping"
        for key, value in moments.items():
            if type(key) is not str:
                return f"its optimizer state for parameter {index} has a key that is not a name"
            if type(value) is not TensorSpec:
                if _is_scalar(value):
                    continue
                return f"its optimizer state {index}[{key[:30]!r}] is not a tensor or a number"
            if key == "step":
                if value.numel != 1 or len(value.shape) > 1 or value.dtype not in STEP_DTYPES:
                    return f"its optimizer step for parameter {index} is not one number (shape {value.shape})"
            elif value.shape != shapes_in_order[position] or value.dtype != torch.float32:
                return (
                    f"its optimizer {key[:30]} for parameter {index} is {str(value.dtype).replace('torch.', '')} of "
                    f"shape {value.shape}, its weight is float32 of {shapes_in_order[position]}"
                )
    return None


def _is_scalar(value: Any) -> bool:
    """A number, flag or None (an optimizer's settings and state hold no strings)."""
    return type(value) in (bool, float, type(None)) or (type(value) is int and -MAX_INT <= value <= MAX_INT)


def _is_number_tuple(value: Any) -> bool:
    return type(value) in (tuple, list) and len(value) <= 8 and all(type(v) in (int, float) for v in value)


def _check_progress(progress: Any) -> None:
    if type(progress) is not dict or len(progress) > 64:
        raise CharlstmError("its progress is not a small mapping of numbers")
    for key, value in progress.items():
        if type(key) is not str:
            raise CharlstmError("its progress has a key that is not a name")
        if type(value) not in (int, float, bool):
            raise CharlstmError(f"Progress.{key[:40]} = {str(value)[:40]!r} is not a number")
        if type(value) is int and not -MAX_INT <= value <= MAX_INT:
            raise CharlstmError(f"Progress.{key[:40]} = {str(value)[:20]}... is out of range")


def _state_shapes(tensors: list) -> list[tuple[int, ...]]:
    return [t.shape if type(t) is TensorSpec else type(t).__name__ for t in tensors][:4]


def _check_hidden(hidden: Any, config: ModelConfig, states: int) -> None:
    """The carried state of every training stream: [] or `states` tensors (layers, B, hidden)."""
    if type(hidden) is not list or not all(type(t) is TensorSpec for t in hidden):
        raise CharlstmError("its hidden state is not a list of tensors")
    if not hidden:
        return
    batch = hidden[0].shape[1] if len(hidden[0].shape) == 3 else 0
    if (
        len(hidden) != states
        or batch < 1
        or any(t.shape != (config.layers, batch, config.hidden) or t.dtype not in FLOATS for t in hidden)
    ):
        raise CharlstmError(
            f"its hidden state has shapes {_state_shapes(hidden)}, the model needs {states} of "
            f"(layers {config.layers}, batch, hidden {config.hidden}) in floating point"
        )


def _check_start_states(start_states: Any, config: ModelConfig, states: int) -> None:
    """The record start states sampling draws from: `states` float32 tensors (layers, K, hidden), 1 <= K <= 1024."""
    if type(start_states) is not list or not all(type(t) is TensorSpec for t in start_states):
        raise CharlstmError("its start states are not a list of tensors")
    count = start_states[0].shape[1] if start_states and len(start_states[0].shape) == 3 else 0
    if (
        len(start_states) != states
        or not 1 <= count <= MAX_START_STATES
        or any(t.shape != (config.layers, count, config.hidden) or t.dtype != torch.float32 for t in start_states)
    ):
        raise CharlstmError(
            f"its start states have shapes {_state_shapes(start_states)}, the model needs {states} float32 of "
            f"(layers {config.layers}, K, hidden {config.hidden}) with 1 <= K <= {MAX_START_STATES}"
        )


def _check_rng(rng: Any, nested: bool) -> None:
    """Generator states: uint8 vectors ('torch', 'cuda' or a list of CUDA ones), and per-rank ones in 'ranks'."""
    if type(rng) is not dict:
        raise CharlstmError("its random state is not a mapping")
    for key, value in rng.items():
        if key == "ranks" and nested:
            if type(value) is not list or len(value) > MAX_RANKS:
                raise CharlstmError("its per-process random states are not a list")
            for one in value:
                _check_rng(one, nested=False)
            continue
        for tensor in value if key == "cuda" and type(value) is list and len(value) <= 1024 else [value]:
            if tensor is None and key == "cuda":
                continue
            if type(tensor) is not TensorSpec or tensor.dtype != torch.uint8 or len(tensor.shape) != 1:
                if key in ("torch", "cuda"):
                    raise CharlstmError(f"its random state {str(key)[:20]!r} is not a byte vector")
                break  # a key this version does not know: ignored (bounded by the walk)
            if tensor.numel > MAX_RNG_BYTES:
                raise CharlstmError(
                    f"its random state {str(key)[:20]!r} is {tensor.numel} bytes; at most {MAX_RNG_BYTES}"
                )


def _check_corpus(corpus: Any) -> None:
    """Where the corpus came from: plain JSON-like data (dicts with string keys, lists, strings, numbers, None),
    small and shallow (the CLI prints it and writes it as JSON)."""
    if type(corpus) is not dict:
        raise CharlstmError("its corpus description is not a mapping")
    items = chars = 0
    todo = [(corpus, 0)]
    while todo:
        value, depth = todo.pop()
        if type(value) is dict:
            children = list(value.values())
            if not all(type(k) is str for k in value):
                raise CharlstmError("its corpus description has a key that is not a string")
            chars += sum(len(k) for k in value)
        elif type(value) is list:
            children = value
        elif type(value) is str:
            chars += len(value)
            continue
        elif type(value) in (int, float, bool, type(None)):
            if type(value) is int and not -MAX_INT <= value <= MAX_INT:
                raise CharlstmError("its corpus description holds a number out of range")
            continue
        else:
            raise CharlstmError(f"its corpus description holds a {type(value).__name__}, not plain data")
        items += len(children)
        if depth >= MAX_CORPUS_DEPTH or items > MAX_CORPUS_ITEMS or chars > MAX_CORPUS_CHARS:
            raise CharlstmError("its corpus description is too large or too deeply nested")
        todo.extend((child, depth + 1) for child in children)
    # the fields a save writes (training/checkpointing.py's corpus_summary, tokens.py's TokenData.summary), typed as
    # the CLI prints them
    sources, config, lengths = corpus.get("sources"), corpus.get("config"), corpus.get("record_lengths")
    if sources is not None and (type(sources) is not list or not all(type(s) is str for s in sources)):
        raise CharlstmError("its corpus sources are not a list of paths")
    for key in ("name",):
        if type(corpus.get(key)) not in (str, type(None)):
            raise CharlstmError(f"its corpus {key} is not a string")
    for key in ("chars", "records"):
        if type(corpus.get(key)) not in (int, type(None)):
            raise CharlstmError(f"its corpus {key} is not a whole number")
    numbers = type(lengths) is dict and all(type(v) in (int, float) for v in lengths.values())
    if lengths is not None and not numbers:
        raise CharlstmError("its corpus record lengths are not numbers")
    if config is not None:
        from_dict(CorpusConfig, config)  # validated as it is built


def check_finite(payload: dict[str, Any]) -> None:
    """After materializing: every weight and start state is finite (read in slices: no copy of a big weight)."""
    for name, tensor in payload["model"].items():
        if not _all_finite(tensor):
            raise CharlstmError(f"weight {name} is not finite floating-point numbers")
    for tensor in payload.get("start_states") or []:
        if not _all_finite(tensor):
            raise CharlstmError("its start states are not finite numbers")


def _all_finite(tensor: torch.Tensor, chunk: int = 1 << 20) -> bool:
    flat = tensor.reshape(-1)
    return all(bool(torch.isfinite(flat[i : i + chunk]).all()) for i in range(0, flat.numel(), chunk))
