"""The HTML page that writes in the browser: the model's weights (float16 where that stays within PAGE_TOLERANCE
of float32, else float32) in a self-contained page with its own JavaScript step for lstm, gru and rnn, checked
against the model before it is written."""

from __future__ import annotations

import base64
import copy
import json
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from charlstm.errors import CharlstmError
from charlstm.export.formats import (
    Exported,
    _size,
    _write,
    check_probe,
    describe,
    reference_logits,
    start_state_tensor,
)
from charlstm.runs.model_file import LoadedModel

PAGE_PROBE_CHARS = 300  # the page's stated float16 error is measured over this many sampled characters
FLOAT16_MAX = 65504.0
PAGE_TOLERANCE = 1e-3  # max |Δp| against float32 that auto accepts from float16


def page_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights the page needs, named as the page reads them."""
    state = {name: t.detach().float().cpu() for name, t in model.state_dict().items()}
    weights = {"embed": state["embed.weight"], "head.weight": state["head.weight"], "head.bias": state["head.bias"]}
    for layer in range(model.config.layers):
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            weights[f"{kind}_l{layer}"] = state[f"rnn.{kind}_l{layer}"]
    return weights


def rounded_model(model: nn.Module, precision: str) -> nn.Module:
    """A copy of `model` whose weights went through `precision` and back: what the page computes with."""

    copied = copy.deepcopy(model).eval()
    if precision == "float16":
        with torch.no_grad():
            for p in copied.parameters():
                p.copy_(p.half().float())
    return copied


def page_error(loaded: LoadedModel, precision: str) -> float:
    """Max |Δp| of the next-character distribution, the page's weights against the model's, over
    PAGE_PROBE_CHARS characters of the model's own sample."""
    ids = check_probe(loaded, seed=1)[: PAGE_PROBE_CHARS + 1]
    exact = torch.softmax(torch.from_numpy(reference_logits(loaded.model, ids)), -1)
    rounded = torch.softmax(torch.from_numpy(reference_logits(rounded_model(loaded.model, precision), ids)), -1)
    return float((exact - rounded).abs().max())


def _b64(tensor: torch.Tensor, precision: str) -> str:
    array = tensor.numpy().astype(np.float16 if precision == "float16" else np.float32)
    return base64.b64encode(array.astype(array.dtype.newbyteorder("<")).tobytes()).decode("ascii")


def page_precision(loaded: LoadedModel, weights: dict[str, torch.Tensor], asked: str) -> tuple[str, float, str]:
    """(precision, its measured error, why): float16 where asked, or with auto where it is in range and within
    PAGE_TOLERANCE of float32; else float32 (exact)."""
    if asked == "float32":
        return "float32", 0.0, "as asked"
    largest = max(float(t.abs().max()) for t in weights.values())
    if largest >= FLOAT16_MAX:
        if asked == "float16":
            raise CharlstmError(f"--precision float16: a weight of {largest:.3g} is beyond float16's range")
        return "float32", 0.0, f"a weight of {largest:.3g} is beyond float16's range"
    error = page_error(loaded, "float16")
    if asked == "auto" and error > PAGE_TOLERANCE:
        return "float32", 0.0, f"float16 would cost {error:.1e} > {PAGE_TOLERANCE:g} (--precision float16 to take it)"
    return "float16", error, "as asked" if asked == "float16" else f"within {PAGE_TOLERANCE:g} of float32"


def page_html(loaded: LoadedModel, asked: str = "auto") -> tuple[str, str, float, str]:
    """The page's HTML, the weights' precision, the measured error it costs, and why it was chosen."""
    weights = page_weights(loaded.model)
    precision, error, why = page_precision(loaded, weights, asked)
    info = describe(loaded)
    starts = start_state_tensor(loaded)  # (K, S, L, H)
    model_data = {
        **info,
        "precision": precision,
        "error": error,
        "probe_chars": PAGE_PROBE_CHARS,
        "weights": {name: {"shape": list(t.shape), "data": _b64(t, precision)} for name, t in weights.items()},
        "start_states": {"shape": list(starts.shape), "data": _b64(starts, precision)},
    }
    template = resources.files("charlstm").joinpath("pages/export.html").read_text(encoding="utf-8")
    payload = json.dumps(model_data, ensure_ascii=True).replace("</", "<\\/")  # safe inside <script>
    title = f"charlstm · {loaded.path.parent.name or 'model'}"
    html = template.replace("/*CHARLSTM_MODEL*/null", payload).replace("CHARLSTM_TITLE", _escape(title))
    return html, precision, error, why


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def export_html(loaded: LoadedModel, target: Path, precision: str = "auto") -> Exported:
    html, precision, error, why = page_html(loaded, precision)
    _write(target, html.encode("utf-8"))
    stated = (
        f"max |Δp| {error:.1e} against float32 over {PAGE_PROBE_CHARS} sampled characters"
        if precision == "float16"
        else "exact"
    )
    return Exported(
        files=[target],
        notes=[
            f"{target} ({_size(target)}): one self-contained page; open it in a browser (file:// works)",
            f"weights in {precision} ({why}): {stated}",
        ],
    )
