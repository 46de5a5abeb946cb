"""Export a trained model to run without charlstm: an ONNX or TorchScript single-step graph, or an HTML page.

Every format is one step: `(ids (B,), state...) -> (logits (B, V), state...)`, the state being `h, c` for an
LSTM-like cell (two (L, B, H) tensors) and `h` for GRU and RNN. The graphs are traced from the model's own
forward at T = 1 (`model(ids[:, None], state)`), so any cell whose forward traces exports; one that does not
is refused in one line naming the cell. The page carries its own JavaScript step, written for lstm, gru and
rnn. Each export carries the vocabulary (an entry "" is the end-of-record marker), the model's config, and
the end-of-record id: a sampler stops a record there.

The checkpoint is read only through charlstm's safe loader (`model_file.load_model`), before anything is written.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, List  # noqa: UP035 (TorchScript knows typing's generics)

import numpy as np
import torch
from torch import nn

from charlstm.config import DEVICES, SampleConfig
from charlstm.errors import CharlstmError
from charlstm.generate.sample import sample_text
from charlstm.runs import directory as rundir
from charlstm.runs.model_file import LoadedModel, load_model
from charlstm.runtime.atomic import atomic_write

FORMATS = ("onnx", "torchscript", "html")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript", "html": ".html"}
PAGE_CELLS = ("lstm", "gru", "rnn")  # the cells the page's JavaScript step implements
EXPORT_EXTRA = ("onnx", "onnxscript", "onnxruntime")  # what --format onnx needs: the `export` extra
INSTALL_EXTRA = "pip install 'charlstm[export]'"
FORMAT_NAME, FORMAT_VERSION = "charlstm-export", 1
PARITY_STEPS = 200  # steps of a prime and a sample each export is checked over
PARITY_LIMIT = 1e-3  # max |Δlogit| beyond which an export is refused (float32 rounding gives ~1e-6)
PRECISIONS = ("auto", "float16", "float32")  # the page's weights; auto: float16 where it is within page.PAGE_TOLERANCE


@dataclass
class Exported:
    """What an export wrote, and what it checked."""

    files: list[Path]
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------- the one step


def state_names(model: nn.Module) -> list[str]:
    """The state tensors' names: ["h", "c"] for an LSTM-like cell (its state is a tuple), ["h"] otherwise."""
    return ["h", "c"] if isinstance(model.initial_state(1, "cpu"), tuple) else ["h"]


class StepHC(nn.Module):
    """One step of an LSTM-like model: (ids (B,), h, c (L, B, H)) -> (logits (B, V), h, c)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        logits, (h, c) = self.model(ids[:, None], (h, c))  # (B, 1, V)
        return logits[:, 0], h, c


class StepH(nn.Module):
    """One step of a GRU or RNN model: (ids (B,), h (L, B, H)) -> (logits (B, V), h)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, h: torch.Tensor):
        logits, h = self.model(ids[:, None], h)  # (B, 1, V)
        return logits[:, 0], h


def step_module(model: nn.Module) -> nn.Module:
    return StepHC(model) if len(state_names(model)) == 2 else StepH(model)


def example_inputs(model: nn.Module, batch: int = 2) -> tuple[torch.Tensor, ...]:
    state = model.initial_state(batch, "cpu")
    states = state if isinstance(state, tuple) else (state,)
    return (torch.zeros(batch, dtype=torch.long), *states)


def describe(loaded: LoadedModel) -> dict[str, Any]:
    """What every export carries (the ONNX metadata, the JSON beside it, the TorchScript and page attributes)."""
    config = loaded.model.config
    names = state_names(loaded.model)
    progress = loaded.payload.get("progress") or {}
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "vocab": list(loaded.vocab.chars),
        "end_of_record": loaded.vocab.end_of_record,
        "config": asdict(config),
        "inputs": ["ids", *names],
        "outputs": ["logits", *[f"{n}_out" for n in names]],
        "state_shape": [config.layers, "batch", config.hidden],
        "step": progress.get("step"),
    }


def check_probe(loaded: LoadedModel, seed: int = 0) -> list[int]:
    """The ids an export is checked over: a prime of the vocabulary's characters, then the model's own sample,
    PARITY_STEPS ids in all (the end-of-record marker first on a record-trained model, as sampling feeds it)."""
    vocab = loaded.vocab
    prime = "".join(c for c in vocab.chars if c)[: PARITY_STEPS // 2]  # every character (of the first 100) read once
    text = sample_text(loaded, SampleConfig(prime=prime, length=PARITY_STEPS, temperature=1.0, seed=seed))[0]
    eor = vocab.end_of_record
    ids = ([eor] if eor is not None else []) + vocab.encode(text).tolist()
    return (ids * (PARITY_STEPS // max(len(ids), 1) + 1))[:PARITY_STEPS]  # a record may end early: repeat it


def reference_logits(model: nn.Module, ids: list[int]) -> np.ndarray:
    """The model's logits (T, V) over `ids`, one step at a time from zeros (charlstm's own forward)."""
    step = step_module(model)
    state = example_inputs(model, 1)[1:]
    rows = []
    with torch.inference_mode():
        for token in ids:
            logits, *state = step(torch.tensor([token]), *state)
            rows.append(logits[0].numpy())
    return np.stack(rows)


def _target(loaded: LoadedModel, fmt: str, out: Path | None) -> Path:
    """Where the export goes: --out, else beside the checkpoint, named after the run (checkpoints/x/x.onnx)."""
    if out is not None:
        out = Path(out)
        if out.is_dir():
            raise CharlstmError(
                f"--out {out} is a directory; give a file name (e.g. {out / ('model' + SUFFIXES[fmt])})"
            )
        if fmt == "onnx" and out.suffix == ".json":
            raise CharlstmError(
                f"--out {out}: the ONNX file's vocabulary and config go to a .json beside it; name it .onnx"
            )
    else:
        name = loaded.path.parent.name if loaded.path.name in (rundir.BEST, rundir.LATEST) else loaded.path.stem
        out = loaded.path.parent / f"{name or 'model'}{SUFFIXES[fmt]}"
    for written in [out, sidecar_path(out)] if fmt == "onnx" else [out]:
        rundir.refuse_run_file(written, reading=loaded.path)
    return out


def sidecar_path(target: Path) -> Path:
    """The JSON beside an ONNX file (`x.onnx` -> `x.onnx.json`: never a run's own run.json, whatever its name)."""
    return target.with_name(target.name + ".json")


def export(
    path: Path, fmt: str, out: Path | None = None, precision: str | None = None, device: str = "auto"
) -> Exported:
    """Export the checkpoint at `path` (a run directory's best.pt, or a .pt file) in format `fmt`; `precision`
    (html only): the page's weights, one of PRECISIONS (default auto). Exports are made and checked on the CPU,
    so that what is written loads anywhere: `device` (a --device name) may be auto or cpu."""
    if device not in DEVICES:
        raise CharlstmError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device not in ("auto", "cpu"):
        raise CharlstmError(
            f"--device {device}: export makes and checks its files on the CPU, so that they load anywhere "
            "(use --device cpu or auto)"
        )
    if fmt not in FORMATS:
        raise CharlstmError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if precision is not None and fmt != "html":
        raise CharlstmError("--precision applies to --format html only (ONNX and TorchScript keep float32)")
    precision = precision or "auto"
    if precision not in PRECISIONS:
        raise CharlstmError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if fmt == "onnx":
        missing_extra()
    loaded = load_model(Path(path), "cpu")  # the safe loader: a bad checkpoint stops here, nothing written
    cell = loaded.model.config.cell
    if fmt == "html" and cell not in PAGE_CELLS:
        raise CharlstmError(
            f"--format html cannot export a {cell!r} model: the page's JavaScript step covers "
            f"{', '.join(PAGE_CELLS)} (use --format onnx or torchscript)"
        )
    target = _target(loaded, fmt, out)
    with torch.inference_mode(False), torch.no_grad():
        if fmt == "onnx":
            return export_onnx(loaded, target)
        if fmt == "torchscript":
            return export_torchscript(loaded, target)
        from charlstm.export.page import export_html  # the page imports this module's checks

        return export_html(loaded, target, precision)


def missing_extra() -> None:
    """Refuse --format onnx, in one line saying how to install it, where the export extra is missing."""
    import importlib.util

    missing = [name for name in EXPORT_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise CharlstmError(f"--format onnx needs {', '.join(missing)}: {INSTALL_EXTRA}")


def _quietly():
    """The exporters' chatter (progress lines, deprecation warnings, log records) kept off the terminal."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    stack.callback(logging.disable, logging.NOTSET)
    return stack


def _cannot(cell: str, fmt: str, exc: BaseException) -> CharlstmError:
    while exc.__cause__ is not None:  # the exporters wrap the reason: the innermost says it
        exc = exc.__cause__
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    first = next((line for line in lines if line), type(exc).__name__)[:200]
    return CharlstmError(f"a {cell!r} model cannot be exported to {fmt}: its forward does not trace ({first})")


def _write(path: Path, data: bytes) -> None:
    """Atomically, readable as the umask allows (an export is meant to be shared, unlike a checkpoint)."""
    atomic_write(path, lambda handle: handle.write(data))
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~umask)


def check_gap(loaded: LoadedModel, fmt: str, gap: float, steps: int) -> None:
    """Refuse an export that does not reproduce the model (a forward whose Python branches the trace froze)."""
    if not gap <= PARITY_LIMIT:
        raise CharlstmError(
            f"a {loaded.model.config.cell!r} model cannot be exported to {fmt}: the traced step does not reproduce "
            f"the model (max |Δlogit| {gap:.1e} over {steps} steps; its forward has branches a trace cannot follow)"
        )


def _size(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} KB"


# ---------------------------------------------------------------------------------------------- onnx


def onnx_bytes(loaded: LoadedModel) -> bytes:
    """The single-step ONNX graph, batch size dynamic, with `describe()` in its metadata_props."""
    import onnx

    model = loaded.model
    step = step_module(model).eval()
    inputs = example_inputs(model)
    info = describe(loaded)
    batch = torch.export.Dim("batch", min=1)
    dynamic = ({0: batch}, *({1: batch} for _ in inputs[1:]))
    try:
        with _quietly():
            program = torch.onnx.export(
                step,
                inputs,
                input_names=info["inputs"],
                output_names=info["outputs"],
                dynamic_shapes=dynamic,
                dynamo=True,
                verbose=False,
            )
    except Exception as exc:
        raise _cannot(model.config.cell, "ONNX", exc) from None
    proto = program.model_proto
    for key, value in metadata(info).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "charlstm"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def metadata(info: dict[str, Any]) -> dict[str, str]:
    """describe() as ONNX metadata_props: strings, each value JSON."""
    return {key: json.dumps(value) for key, value in info.items()}


def onnx_logits(session, names: list[str], ids: list[int], state: list[np.ndarray]) -> np.ndarray:
    """Logits (T, V) of an onnxruntime session stepped over `ids` (batch 1) from `state`."""
    rows = []
    for token in ids:
        logits, *state = session.run(None, {"ids": np.array([token], dtype=np.int64), **dict(zip(names, state))})
        rows.append(logits[0])
    return np.stack(rows)


def export_onnx(loaded: LoadedModel, target: Path) -> Exported:
    import onnxruntime

    data = onnx_bytes(loaded)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    ids = check_probe(loaded)
    names = state_names(loaded.model)
    zeros = [s.numpy() for s in example_inputs(loaded.model, 1)[1:]]
    gap = float(np.abs(onnx_logits(session, names, ids, zeros) - reference_logits(loaded.model, ids)).max())
    check_gap(loaded, "ONNX", gap, len(ids))
    sidecar = sidecar_path(target)
    _write(target, data)
    text = json.dumps(describe(loaded), indent=1, ensure_ascii=False) + "\n"
    _write(sidecar, text.encode("utf-8"))
    return Exported(
        files=[target, sidecar],
        notes=[
            f"{target} ({_size(target)}): inputs {', '.join(describe(loaded)['inputs'])}; metadata and {sidecar.name}"
            " hold the vocabulary and config",
            f"checked with onnxruntime over {len(ids)} steps: max |Δlogit| {gap:.1e}",
        ],
    )


# --------------------------------------------------------------------------------------- torchscript


class _Scripted(nn.Module):
    """The TorchScript module's shared part: the vocabulary and `generate`, around a traced step `core`
    (ids, h, c) -> (logits, h, c) (a one-state cell passes c through untouched)."""

    def __init__(self, core, info: dict[str, Any], start_states: torch.Tensor):
        super().__init__()
        self.core = core
        self.vocab = list(info["vocab"])
        self.index = {c: i for i, c in enumerate(self.vocab) if c}
        eor = info["end_of_record"]
        self.end_of_record = -1 if eor is None else int(eor)  # -1: no records
        self.layers = int(info["config"]["layers"])
        self.hidden = int(info["config"]["hidden"])
        self.config_json = json.dumps(info)
        self.register_buffer("start_states", start_states)  # (K, S, L, H): record start states; K may be 0

    @torch.jit.export
    def generate(self, prime: str = "", length: int = 200, temperature: float = 1.0, seed: int = 0) -> str:
        """The prime, then up to `length` characters drawn at `temperature` (0 = greedy) with `seed`; a
        record-trained model stops at its end-of-record marker (which prints nothing)."""
        feed: List[int] = []  # noqa: UP006
        if self.end_of_record >= 0:
            feed.append(self.end_of_record)
        for ch in prime:
            if ch not in self.index:
                raise ValueError("the prime has a character the model never saw: " + ch)
            feed.append(self.index[ch])
        if len(feed) == 0:
            feed.append(self.index.get("\n", 0))
        rng = seed % 2147483646 + 1  # MINSTD: the same generator as the HTML page's
        h = torch.zeros(self.layers, 1, self.hidden)
        c = torch.zeros(self.layers, 1, self.hidden)
        if self.start_states.size(0) > 0:  # a record starts from one of the states training had before a marker
            rng = rng * 48271 % 2147483647
            k = rng % self.start_states.size(0)
            h = self.start_states[k, 0].unsqueeze(1).clone()
            c = self.start_states[k, self.start_states.size(1) - 1].unsqueeze(1).clone()
        logits = torch.zeros(1, len(self.vocab))
        for token in feed:
            logits, h, c = self.core(torch.tensor([token]), h, c)
        pieces: List[str] = [prime]  # noqa: UP006
        for _ in range(length):
            rng = rng * 48271 % 2147483647
            if temperature <= 0.0:
                token = int(torch.argmax(logits[0]))
            else:
                scaled = (logits[0].double() - logits[0].max().double()) / temperature
                cdf = torch.cumsum(torch.exp(scaled), 0)
                target = (rng / 2147483647.0) * float(cdf[-1])
                token = min(int((cdf <= target).sum()), len(self.vocab) - 1)
            if token == self.end_of_record:
                break
            pieces.append(self.vocab[token])
            logits, h, c = self.core(torch.tensor([token]), h, c)
        return "".join(pieces)

    @torch.jit.export
    def config(self) -> str:
        """describe() as JSON: vocabulary, config, end-of-record id, inputs and outputs."""
        return self.config_json


class _ScriptedHC(_Scripted):
    def forward(
        self, ids: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.core(ids, h, c)


class _ScriptedH(_Scripted):
    def forward(self, ids: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, h, _ = self.core(ids, h, h)
        return logits, h


class _CoreH(nn.Module):
    """StepH with the uniform (ids, h, c) signature `generate` calls; c is passed through."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.step = StepH(model)

    def forward(self, ids: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        logits, h = self.step(ids, h)
        return logits, h, c


def start_state_tensor(loaded: LoadedModel) -> torch.Tensor:
    """The checkpoint's record start states as one (K, S, L, H) float32 tensor; (0, S, L, H) without them."""
    config = loaded.model.config
    count = len(state_names(loaded.model))
    stored = loaded.payload.get("start_states") or []
    if len(stored) != count:
        return torch.zeros(0, count, config.layers, config.hidden)
    return torch.stack([t.float() for t in stored]).permute(2, 0, 1, 3).contiguous()  # (S, L, K, H) -> (K, S, L, H)


def torchscript_module(loaded: LoadedModel) -> torch.jit.ScriptModule:
    model = loaded.model
    two = len(state_names(model)) == 2
    core = StepHC(model) if two else _CoreH(model)
    inputs = example_inputs(model)
    if not two:
        inputs = (*inputs, inputs[1])
    try:
        with _quietly():
            traced = torch.jit.trace(core.eval(), inputs, check_trace=False)
    except Exception as exc:
        raise _cannot(model.config.cell, "TorchScript", exc) from None
    wrapper = (_ScriptedHC if two else _ScriptedH)(traced, describe(loaded), start_state_tensor(loaded))
    with _quietly():
        return torch.jit.script(wrapper.eval())


def export_torchscript(loaded: LoadedModel, target: Path) -> Exported:
    scripted = torchscript_module(loaded)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    data = buffer.getvalue()
    reloaded = torch.jit.load(io.BytesIO(data))
    ids = check_probe(loaded)
    state = list(example_inputs(loaded.model, 1)[1:])
    rows = []
    for token in ids:
        logits, *state = reloaded(torch.tensor([token]), *state)
        rows.append(logits[0].numpy())
    gap = float(np.abs(np.stack(rows) - reference_logits(loaded.model, ids)).max())
    check_gap(loaded, "TorchScript", gap, len(ids))
    _write(target, data)
    inputs = ", ".join(describe(loaded)["inputs"])
    return Exported(
        files=[target],
        notes=[
            f"{target} ({_size(target)}): forward({inputs}) and generate(prime, length, temperature, seed); "
            "torch.jit.load it, no charlstm needed",
            f"checked after reloading over {len(ids)} steps: max |Δlogit| {gap:.1e}",
        ],
    )


# ---------------------------------------------------------------------------------------------- html
