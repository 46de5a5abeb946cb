"""Probe tasks: Edwin Chen's synthetic experiments ("Exploring LSTMs") as one call, for any cell.

Each task is a language of short sequences, each ending with a newline:
    count           a^N X b^N                  (the model must emit N b's: count up, then down)
    count-distract  a^N with X's sprinkled, Y, b^N   (the X's must be ignored)
    memory          A or B, x^K, Y, a or b     (the first letter, remembered across K x's)
    copy            s X s, s a string over {a, b, c}
A small CharRNN is trained as a character model on seeded sequences whose length (N, K or |s|) is within the
training range, each from a zero state; then, for every length of the evaluation range, the model is given each
sequence up to its delimiter (X or Y) and decodes greedily: a sequence is right when the decoded rest is exactly
the true one, newline included. Reported: accuracy per length over `seeds` runs (mean, min, max), in-range
accuracy, the first length that fails (accuracy < 1), and the units that carry the task: ranked by |Pearson r|
between their value (h or c) and the true count still to emit (counters) or the remembered letter (memory).
"""

from __future__ import annotations

import json
import math
import random
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from charlstm.config import CELLS, InvalidValue, ModelConfig
from charlstm.data.vocab import Vocab
from charlstm.errors import CharlstmError
from charlstm.insight.inspector import inspect_model
from charlstm.model.charrnn import CharRNN

TASKS = ("count", "count-distract", "memory", "copy")


@dataclass
class ProbeConfig:
    task: str = "count"
    cell: str = "lstm"
    layers: int | None = None  # None: the task's own (TASK_MODELS)
    hidden: int | None = None
    train_max: int | None = None  # lengths 1..train_max are trained on (None: the task's own)
    eval_max: int | None = None  # lengths 1..eval_max are evaluated (None: the task's own)
    steps: int = 1500  # training steps
    batch_size: int = 32  # sequences per step
    lr: float = 1e-2
    seeds: int = 1  # independent runs (seed, seed + 1, ...)
    seed: int = 1
    eval_samples: int = 16  # sequences per length (count has one sequence per length)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise CharlstmError(f"TASK must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.cell not in CELLS:
            raise InvalidValue("cell", f"must be one of {', '.join(CELLS)}, got {self.cell!r}")
        for name in ("layers", "hidden", "train_max", "eval_max"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidValue(name, f"must be > 0, got {value}")
        for name in ("steps", "batch_size", "seeds", "eval_samples"):
            if getattr(self, name) < 1:
                raise InvalidValue(name, f"must be > 0, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InvalidValue("lr", f"must be a positive number, got {self.lr}")
        if self.train_max is not None and self.eval_max is not None and self.eval_max < self.train_max:
            raise InvalidValue("eval_max", f"must be >= --train-max ({self.train_max}), got {self.eval_max}")

    def resolved(self) -> ProbeConfig:
        """With the task's own defaults filled in (the essay's model and ranges)."""
        layers, hidden, train_max, eval_max = TASK_DEFAULTS[self.task]
        return ProbeConfig(
            **{
                **asdict(self),
                "layers": self.layers or layers,
                "hidden": self.hidden or hidden,
                "train_max": self.train_max or train_max,
                "eval_max": self.eval_max or max(eval_max, self.train_max or 0),
            }
        )


# task -> layers, hidden, train_max, eval_max. count: the essay's 1 x 10 LSTM on N <= 10 (it fails from N ~ 19);
# count-distract names neuron 20, so more units; copy: "a tiny 2-layer LSTM" on 3-character strings
TASK_DEFAULTS = {
    "count": (1, 10, 10, 30),
    "count-distract": (1, 32, 10, 20),
    "memory": (1, 10, 10, 30),
    "copy": (2, 32, 4, 8),
}
VOCABULARY = "\nabcxABXY"


@dataclass
class Example:
    prompt: str  # up to and including the delimiter
    answer: str  # the rest, newline included
    length: int  # N, K or |s|
    letter: int = 0  # memory: +1 for A, -1 for B


def make_example(task: str, length: int, rng: random.Random) -> Example:
    if task == "count":
        return Example("a" * length + "X", "b" * length + "\n", length)
    if task == "count-distract":
        body = "".join("a" + "X" * (rng.random() < 0.3) * rng.randint(1, 2) for _ in range(length))
        if rng.random() < 0.5:
            body = "X" + body
        return Example(body + "Y", "b" * length + "\n", length)
    if task == "memory":
        first = rng.choice("AB")
        return Example(first + "x" * length + "Y", first.lower() + "\n", length, 1 if first == "A" else -1)
    text = "".join(rng.choice("abc") for _ in range(length))
    return Example(text + "X", text + "\n", length)


def remaining_count(example: Example) -> list[float]:
    """The true count still to emit after each character of prompt + answer[:-1] (the counters' target)."""
    counts, seen = [], 0
    for char in example.prompt:
        seen += char == "a"
        counts.append(float(seen))
    left = seen
    for char in example.answer[:-1]:
        left -= char == "b"
        counts.append(float(left))
    return counts


def _encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences -> inputs (B, T) and targets (B, T), padded with -100 (ignored) past each sequence's end."""
    longest = max(len(t) for t in texts)
    x = torch.zeros(len(texts), longest - 1, dtype=torch.long)
    y = torch.full((len(texts), longest - 1), -100, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = torch.tensor([VOCABULARY.index(c) for c in text])
        x[row, : len(ids) - 1] = ids[:-1]
        y[row, : len(ids) - 1] = ids[1:]
    return x, y


def train_probe_model(config: ProbeConfig, seed: int) -> CharRNN:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model_config = ModelConfig(
        vocab_size=len(VOCABULARY), cell=config.cell, layers=config.layers, hidden=config.hidden, embed=8
    )
    model = CharRNN(model_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps, eta_min=config.lr * 0.05)
    for _ in range(config.steps):
        examples = [make_example(config.task, rng.randint(1, config.train_max), rng) for _ in range(config.batch_size)]
        x, y = _encode(["\n" + e.prompt + e.answer for e in examples])  # "\n" first: the start of a sequence
        logits, _ = model(x)  # (B, T, V), from a zero state
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def _decode(model: CharRNN, prompts: list[str], steps: int) -> list[str]:
    """Greedy continuation of prompts of equal length."""
    x = torch.tensor([[VOCABULARY.index(c) for c in "\n" + p] for p in prompts])  # (N, 1 + P)
    logits, state = model(x)
    outputs = [""] * len(prompts)
    for _ in range(steps):
        ids = logits[:, -1].argmax(-1)  # (N,)
        for row, i in enumerate(ids.tolist()):
            outputs[row] += VOCABULARY[i]
        logits, state = model(ids[:, None], state)
    return outputs


def accuracy_by_length(model: CharRNN, config: ProbeConfig, seed: int) -> dict[int, float]:
    rng = random.Random(seed + 10_000)
    accuracy = {}
    for length in range(1, config.eval_max + 1):
        count = 1 if config.task == "count" else config.eval_samples
        examples = [make_example(config.task, length, rng) for _ in range(count)]
        groups: dict[tuple[int, int], list[Example]] = {}
        for e in examples:
            groups.setdefault((len(e.prompt), len(e.answer)), []).append(e)
        right = 0
        for (_, answer_length), group in groups.items():
            decoded = _decode(model, [e.prompt for e in group], answer_length)
            right += sum(d == e.answer for d, e in zip(decoded, group))
        accuracy[length] = right / count
    return accuracy


@torch.no_grad()
def _unit_values(model: CharRNN, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The last layer's h (and c for LSTM-like cells) after each character of `text`: (T, H) each."""
    hs, cs, state = [], [], None
    for char in text:
        _, state = model(torch.tensor([[VOCABULARY.index(char)]]), state)
        if isinstance(state, tuple):
            hs.append(state[0][-1, 0])
            cs.append(state[1][-1, 0])
        else:
            hs.append(state[-1, 0])
    return torch.stack(hs), torch.stack(cs) if cs else None


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson r of each column of a (T, H) with b (T,); 0 where a column is constant."""
    a = a - a.mean(0)
    b = b - b.mean()
    norm = a.norm(dim=0) * b.norm()
    return torch.where(norm > 0, (a * b[:, None]).sum(0) / norm.clamp_min(1e-12), torch.zeros_like(norm))


def carrier_units(model: CharRNN, config: ProbeConfig, seed: int, top: int = 3) -> list[dict]:
    """The units whose value follows the task's hidden variable most closely, over in-range sequences."""
    if config.task == "copy":
        return []
    rng = random.Random(seed + 20_000)
    values = {"h": [], "c": []}
    targets = []
    for length in range(1, config.train_max + 1):
        for _ in range(1 if config.task == "count" else 4):
            e = make_example(config.task, length, rng)
            text = e.prompt + e.answer[:-1]
            h, c = _unit_values(model, "\n" + text)
            values["h"].append(h[1:])
            if c is not None:
                values["c"].append(c[1:])
            targets += remaining_count(e) if config.task != "memory" else [float(e.letter)] * len(text)
    target = torch.tensor(targets)
    ranked = []
    for kind, rows in values.items():
        if rows:
            r = _pearson(torch.cat(rows), target)
            ranked += [{"unit": unit, "value": kind, "r": float(r[unit])} for unit in range(r.numel())]
    ranked.sort(key=lambda u: -abs(u["r"]))
    return ranked[:top]


def write_probe_page(model: CharRNN, config: ProbeConfig, seed: int, out: Path) -> Path:
    """The inspector's page of a probe model reading one in-range sequence of each length, one after another,
    opening on the unit that best follows the task's hidden variable (the count still to emit, or the
    remembered letter), as Edwin Chen's pictures show a counting neuron."""
    rng = random.Random(seed + 30_000)
    pieces, targets = [], []
    for length in range(1, config.train_max + 1):
        e = make_example(config.task, length, rng)
        body = e.prompt + e.answer[:-1]
        pieces.append("\n" + body)  # read from zeros, as carrier_units reads it and training presented it
        targets += [0.0] + (remaining_count(e) if config.task != "memory" else [float(e.letter)] * len(body))
    feature = "remembered letter" if config.task == "memory" else "count still to emit"
    name = f"probe {config.task}, {config.cell} {config.layers} x {config.hidden}, seed {seed}"
    origin = (
        f"one {config.task} sequence of each trained length 1..{config.train_max} (up to its last character), "
        "each read from a zero state as in training"
    )
    loss_note = f"a probe model: {config.steps} steps of {config.batch_size} sequences, no metrics.jsonl"
    vocab = Vocab(list(VOCABULARY))
    inspect_model(model, vocab, pieces, out, {feature: np.asarray(targets)}, name, origin, loss_note)
    return out


@dataclass
class ProbeResult:
    config: ProbeConfig
    per_seed: list[dict] = field(default_factory=list)  # seed, accuracy {length: acc}, in_range, first_fail, units
    page: Path | None = None  # the inspector's page of the first seed's model (--out)

    @property
    def target(self) -> str:
        return "the remembered letter" if self.config.task == "memory" else "the count still to emit"

    def summary(self) -> dict:
        lengths = range(1, self.config.eval_max + 1)
        per_length = {n: [s["accuracy"][n] for s in self.per_seed] for n in lengths}
        in_range = [s["in_range"] for s in self.per_seed]
        fails = [s["first_fail"] for s in self.per_seed]
        return {
            "config": asdict(self.config),
            "per_length": {n: _spread(v) for n, v in per_length.items()},
            "in_range_accuracy": _spread(in_range),
            "first_fail": _spread([f for f in fails if f is not None]) if any(f is not None for f in fails) else None,
            "first_fail_each": fails,
            "seeds": self.per_seed,
            "page": None if self.page is None else str(self.page),
        }

    def to_json(self) -> str:
        return json.dumps(self.summary(), indent=2)

    def render(self) -> str:
        """The terminal table: accuracy per length (mean, and min..max over seeds), then the headline figures."""
        c, summary = self.config, self.summary()
        lines = [
            f"probe {c.task}: {c.cell}, {c.layers} x {c.hidden}; trained on lengths 1..{c.train_max} "
            f"({c.steps} steps of {c.batch_size}); {len(self.per_seed)} seed(s)",
            f"{'length':>6}  {'accuracy':>8}  {'min..max':>10}",
        ]
        for n, spread in summary["per_length"].items():
            mark = "" if n <= c.train_max else "  (beyond training)"
            lines.append(f"{n:>6}  {spread['mean']:>8.2f}  {spread['min']:>4.2f}..{spread['max']:<4.2f}{mark}")
        acc = summary["in_range_accuracy"]
        lines.append(f"in-range accuracy: {acc['mean']:.3f} (min {acc['min']:.3f}, max {acc['max']:.3f})")
        fails = ", ".join("none" if f is None else str(f) for f in summary["first_fail_each"])
        lines.append(f"first failing length per seed: {fails}")
        for s in self.per_seed:
            if s["units"]:
                units = ", ".join(f"{u['value']}[{u['unit']}] r={u['r']:+.2f}" for u in s["units"])
                lines.append(f"seed {s['seed']}: units following {self.target}: {units}")
        return "\n".join(lines)


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def run_probe(config: ProbeConfig, on_seed=None, page: Path | None = None) -> ProbeResult:
    """Train and evaluate `config.seeds` models; `on_seed(index)` after each one (a progress bar); with `page`,
    write the inspector's page of the first seed's model there (not for copy, which has no hidden count)."""
    config = config.resolved()
    if page is not None and config.task == "copy":
        raise CharlstmError("--out: the copy task has no count or letter to follow; a page is for the other tasks")
    result = ProbeResult(config)
    for index in range(config.seeds):
        seed = config.seed + index
        model = train_probe_model(config, seed)
        accuracy = accuracy_by_length(model, config, seed)
        in_range = [accuracy[n] for n in range(1, config.train_max + 1)]
        first_fail = next((n for n, a in accuracy.items() if a < 1.0), None)
        result.per_seed.append(
            {
                "seed": seed,
                "accuracy": accuracy,
                "in_range": statistics.fmean(in_range),
                "first_fail": first_fail,
                "units": carrier_units(model, config, seed),
            }
        )
        if page is not None and index == 0:
            result.page = write_probe_page(model, config, seed, Path(page))
        if on_seed is not None:
            on_seed(index)
    return result
