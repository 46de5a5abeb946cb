"""`charlstm inspect`: trace a text through a run's model, rank units against features, and write the page.

The page is one self-contained HTML file (charlstm/pages/inspect.html, with the data put in its place): inline
CSS and JavaScript, nothing fetched, so it opens from file:// on a machine without a network. The values are
stored in 6 bits (fewer where the page would grow past ~9.5 MB), scaled to their range, and deflated (the
browser inflates them with its own DecompressionStream), so a 5,000-character text read by a 1 x 384 LSTM
makes a page of 8-9 MB.
"""

from __future__ import annotations

import base64
import html
import json
import math
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from charlstm.config import INSPECT_MAX_CHARS, SampleConfig, finite_or_none
from charlstm.data.textio import read_text_chunks
from charlstm.data.vocab import Vocab
from charlstm.errors import CharlstmError
from charlstm.generate.sample import pick_seed, sample_text
from charlstm.insight.features import Match, feature_values, rank_units
from charlstm.insight.trace import Trace, gate_saturation, trace
from charlstm.model.charrnn import CharRNN
from charlstm.runs import directory as rundir
from charlstm.runs.model_file import LoadedModel, load_model
from charlstm.runtime.atomic import atomic_write
from charlstm.runtime.device import pick_device

MAX_CHARS = INSPECT_MAX_CHARS  # characters a page holds by default (--max-chars; config.py, which the CLI reads)
LARGE_PAGE_BYTES = 10_000_000  # a page larger than this gets a note suggesting a --max-chars that fits
READ_BYTES = 1 << 20  # a --text file is read in pieces of this size, and only as far as the cut
DATA_MARK = "__CHARLSTM_INSPECT_DATA__"
# Values are stored in 6 bits (64 levels: colours hardly show more); where the deflated values of a page would
# pass VALUES_BUDGET bytes (base64), in 5, then 4 bits. 8-bit made 10.5 MB for a 5,000-character text read by
# a trained 1 x 384 LSTM, 6-bit 8.9 MB, and an untrained model's busier activations deflate less well.
LEVEL_CHOICES = (63, 31, 15)
VALUES_BUDGET = 9_200_000  # the rest of a 5,000-character page (text, predictions, plots) is ~0.3 MB


@dataclass
class Inspection:
    """What `inspect` made: the page, the text read and what was found in it."""

    page: Path
    text: str
    primed: int  # leading characters that were the prime (0 for --text)
    total_chars: int | None  # characters before the cut (None: a file read only as far as the cut)
    loaded: LoadedModel
    result: Trace
    findings: dict[str, list[Match]] = field(default_factory=dict)
    seed: int | None = None
    notes: list[str] = field(default_factory=list)  # what the command should tell the user besides the path
    origin: str | None = None  # how the text was made, where it is neither a file nor a prime (a probe's)
    loss_note: str | None = None  # what the loss panel says where there is no metrics.jsonl

    @property
    def cut(self) -> bool:
        return self.total_chars is None or self.total_chars > len(self.text)


def read_inspect_text(path: Path, max_chars: int = MAX_CHARS) -> tuple[str, bool]:
    """A text file (CRLF read as LF), read only as far as the cut: (its text, whether the file goes on past it).
    A file that goes on is returned cut at `max_chars`; a whole one whole (its length is then known)."""
    text, continues = "", False
    chunks = read_text_chunks(Path(path), chunk_bytes=READ_BYTES)
    for chunk in chunks:
        text += chunk
        if len(text) > max_chars:
            continues = next(chunks, None) is not None
            chunks.close()
            break
    if not text:
        raise CharlstmError(f"{path} is empty; give a text to inspect")
    return (text[:max_chars] if continues else text), continues


def inspect_run(
    run: Path,
    text: str | None = None,
    prime: str | None = None,
    length: int = SampleConfig.length,
    temperature: float = SampleConfig.temperature,
    seed: int | None = None,
    finds: list[str] | tuple[str, ...] = (),
    out: Path | None = None,
    max_chars: int = MAX_CHARS,
    text_name: str = "--text",
    text_continues: bool = False,
    device: str = "cpu",
) -> Inspection:
    """Read `text` (or what the model writes after `prime`) and write the page; see the module docstring.
    `text_continues`: `text` is the start of a longer text whose length is not known (a large file); `device`:
    where the model reads it (a --device name: auto, cpu, cuda or mps)."""
    if max_chars < 2:
        raise CharlstmError(f"--max-chars must be at least 2, got {max_chars}")
    run = Path(run)
    loaded = load_model(run, pick_device(device))
    vocab = loaded.vocab
    primed = 0
    if prime is not None:
        unknown = vocab.unknown(prime)
        if unknown:
            raise CharlstmError("--prime has characters the model never saw: " + " ".join(map(repr, unknown[:20])))
        seed = pick_seed(seed)
        config = SampleConfig(prime=prime, length=length, temperature=temperature, seed=seed)
        text = sample_text(loaded, config)[0]
        primed = len(prime)
    if not text:
        raise CharlstmError("nothing to inspect: the text is empty")
    total = None if text_continues and prime is None else len(text)
    text = text[:max_chars]
    unknown = vocab.unknown(text)
    if unknown:
        shown = " ".join(repr(c) for c in unknown[:20])
        raise CharlstmError(f"{text_name} has characters the model never saw: {shown}")
    ids = vocab.encode(text)
    if len(ids) < 2:
        raise CharlstmError("the text must be at least 2 characters long")
    with torch.inference_mode():
        result = trace(loaded.model, ids, _start_state(loaded))
    findings = {}
    for feature in finds:
        findings[feature] = rank_units(result.layers, feature_values(feature, text), feature)
    run_dir = run if run.is_dir() else loaded.path.parent
    page = Path(out) if out is not None else run_dir / "inspect.html"
    rundir.refuse_run_file(page, reading=loaded.path)
    inspection = Inspection(page, text, min(primed, len(text)), total, loaded, result, findings, seed)
    write_page(inspection, rundir.read_metrics(run_dir) if rundir.is_run_dir(run_dir) else [])
    return inspection


def inspect_model(
    model: CharRNN,
    vocab: Vocab,
    pieces: list[str],
    out: Path,
    targets: dict[str, np.ndarray],
    name: str,
    origin: str,
    loss_note: str,
) -> Inspection:
    """The page of a model that is not a run (a probe's, trained in memory): each of `pieces` read from zeros (as
    the model was trained), one after another on the page; units ranked against each of `targets` (a value per
    character of the pieces joined), the page opening on the best unit of the first."""
    with torch.inference_mode():
        result = join_traces([trace(model, vocab.encode(piece)) for piece in pieces])
    findings = {feature: rank_units(result.layers, values, feature) for feature, values in targets.items()}
    loaded = LoadedModel(model=model, vocab=vocab, path=Path(name), payload={})
    text = "".join(pieces)
    inspection = Inspection(Path(out), text, 0, len(text), loaded, result, findings)
    inspection.origin, inspection.loss_note = origin, loss_note
    write_page(inspection, [])
    return inspection


def join_traces(traces: list[Trace]) -> Trace:
    """Traces of separate readings, one after another (each piece's last surprise stays unknown: NaN)."""
    layers = [
        {name: np.concatenate([t.layers[layer][name] for t in traces]) for name in traces[0].layers[layer]}
        for layer in range(len(traces[0].layers))
    ]
    joined = Trace(
        ids=np.concatenate([t.ids for t in traces]),
        layers=layers,
        surprise=np.concatenate([t.surprise for t in traces]),
        top_ids=np.concatenate([t.top_ids for t in traces]),
        top_probs=np.concatenate([t.top_probs for t in traces]),
    )
    joined.saturation = gate_saturation(joined)
    return joined


def write_page(inspection: Inspection, metrics: list[dict[str, Any]]) -> None:
    """Write the page atomically, readable by all; a note where it came out larger than LARGE_PAGE_BYTES."""
    page, text = inspection.page, inspection.text
    document = build_page(inspection, metrics)
    try:
        page.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(page, lambda handle: handle.write(document.encode("utf-8")))
        page.chmod(0o644)  # a page to open and share, not a private temporary file
        size = page.stat().st_size
    except OSError as exc:
        raise CharlstmError(f"cannot write {page}: {exc.strerror or exc}") from None
    if size > LARGE_PAGE_BYTES:  # a big model: the values outgrew even 4 bits
        fitting = max(100, int(len(text) * LARGE_PAGE_BYTES * 0.9 / size) // 100 * 100)
        inspection.notes.append(
            f"the page is {size / 1e6:.0f} MB and may open slowly; --max-chars {fitting} would keep it near 10 MB"
        )


def _start_state(loaded: LoadedModel):
    """Zeros, or on a record-trained model the state after reading the end-of-record marker from zeros, so
    that the text is read as the start of a record (as training presents one, give or take the carried state)."""
    eor = loaded.vocab.end_of_record
    if eor is None:
        return None
    _, state = loaded.model(torch.tensor([[eor]], device=loaded.model.head.weight.device))
    return state


# ------------------------------------------------------------------------------------------------ the page


def quantise(values: np.ndarray, levels: int) -> tuple[bytes, list[float], list[float], bool]:
    """(T, H) float -> unit-major (H, T) bytes of `levels` + 1 levels each, the per-unit (low, high) the levels
    span, and whether the quantity is bounded by tanh/sigmoid (-1..1). A bounded quantity shares one range (its
    colours compare across units); an unbounded one (the cell state c) gets each unit's own, so a unit whose c
    stays within ±2 is not flattened by one that reaches 80."""
    low, high = values.min(axis=0), values.max(axis=0)  # (H,)
    bounded = float(low.min()) >= -1.0001 and float(high.max()) <= 1.0001
    if bounded:
        low, high = np.full_like(low, low.min()), np.full_like(high, high.max())
    span = np.where(high > low, high - low, 1.0)  # (H,)
    stored = np.rint((values - low) / span * levels).astype(np.uint8)  # (T, H)
    return np.ascontiguousarray(stored.T).tobytes(), low.tolist(), high.tolist(), bounded


def page_data(inspection: Inspection, metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything the page shows, as one JSON-able dict (the big arrays as one deflated base64 blob)."""
    result, loaded = inspection.result, inspection.loaded
    config = loaded.model.config
    for levels in LEVEL_CHOICES:
        blob, quantities = _stored_values(result, levels)
        if len(blob) <= VALUES_BUDGET:
            break
    chars = [c for c in inspection.text]
    vocab_shown = [_shown(c) for c in loaded.vocab.chars]
    surprise = [None if math.isnan(s) else round(float(s), 3) for s in result.surprise]
    top_probs = np.floor(result.top_probs * 1000).astype(int)  # rounded down: five of them never sum past 1
    saturation_by_layer = [
        {
            gate: {side: (counts / result.length).round(4).tolist() for side, counts in sides.items()}
            for gate, sides in gates.items()
        }
        for gates in result.saturation
    ]
    findings = [
        {"feature": feature, "matches": [m.__dict__ for m in matches]}
        for feature, matches in inspection.findings.items()
    ]
    first = next(iter(inspection.findings.values()), None)
    start = {"layer": first[0].layer, "quantity": first[0].quantity, "unit": first[0].unit} if first else None
    return {
        "title": f"{loaded.path.parent.name or loaded.path.name}",
        "checkpoint": str(loaded.path),
        "model": {"cell": config.cell, "layers": config.layers, "hidden": config.hidden, "embed": config.embed},
        "step": (loaded.payload.get("progress") or {}).get("step"),
        "chars": chars,
        "total_chars": inspection.total_chars,
        "primed": inspection.primed,
        "seed": inspection.seed,
        "vocab": vocab_shown,
        "levels": levels,
        "quantities": quantities,
        "values": blob,
        "surprise": surprise,
        "top_ids": result.top_ids.astype(int).ravel().tolist(),
        "top_probs": top_probs.ravel().tolist(),
        "top_k": int(result.top_ids.shape[1]),
        "saturation": saturation_by_layer,
        "metrics": [
            {
                "step": row.get("step"),
                "train": finite_or_none(row.get("train_loss")),
                "val": finite_or_none(row.get("val_loss")),
            }
            for row in metrics
        ],
        "findings": findings,
        "start": start,
        "origin": inspection.origin,
        "loss_note": inspection.loss_note,
    }


def _stored_values(result: Trace, levels: int) -> tuple[str, list[dict[str, Any]]]:
    """Every quantity's values quantised (see quantise) and deflated into one base64 string, and where each is."""
    blobs, quantities = [], []
    offset = 0
    for layer, values_by_name in enumerate(result.layers):
        for name, values in values_by_name.items():
            raw, low, high, bounded = quantise(values, levels)
            if bounded:  # one range for every unit
                low, high = low[:1], high[:1]
            quantities.append(
                {"layer": layer, "name": name, "low": low, "high": high, "offset": offset, "bounded": bounded}
            )
            blobs.append(raw)
            offset += len(raw)
    deflated = zlib.compress(b"".join(blobs), 6)  # level 9 saves 0.4% and takes 3x as long (8 s for 11 MB)
    return base64.b64encode(deflated).decode("ascii"), quantities


def _shown(char: str) -> str:
    """How a next-character prediction is written on the page."""
    return {"": "⟨end⟩", "\n": "↵", " ": "␣", "\t": "⇥"}.get(char, char)


def build_page(inspection: Inspection, metrics: list[dict[str, Any]]) -> str:
    template = resources.files("charlstm").joinpath("pages/inspect.html").read_text(encoding="utf-8")
    data = json.dumps(page_data(inspection, metrics), ensure_ascii=False, separators=(",", ":"))
    data = data.replace("</", "<\\/")  # the JSON sits in a <script> element: no "</script>" may end it early
    title = html.escape(f"charlstm inspect · {inspection.loaded.path}")
    return template.replace("__CHARLSTM_TITLE__", title).replace(DATA_MARK, data)


# --------------------------------------------------------------------------------------- what is printed


def summary(inspection: Inspection) -> dict[str, Any]:
    """The `--json` object: the page, the text read, the units found and the gate saturation counts."""
    result = inspection.result
    return {
        "page": str(inspection.page),
        "checkpoint": str(inspection.loaded.path),
        "chars": len(inspection.text),
        "total_chars": inspection.total_chars,
        "cut": inspection.cut,
        "primed": inspection.primed,
        "seed": inspection.seed,
        "mean_surprise": float(np.nanmean(result.surprise)),
        "notes": inspection.notes,
        "findings": {feature: [m.__dict__ for m in matches] for feature, matches in inspection.findings.items()},
        "saturation": [
            {
                "layer": layer,
                "gate": gate,
                "chars": result.length,
                "left": sides["left"].tolist(),  # per unit: characters where the gate was < 0.1
                "right": sides["right"].tolist(),  # per unit: characters where it was > 0.9
            }
            for layer, gates in enumerate(result.saturation)
            for gate, sides in gates.items()
        ],
    }
