"""Configuration dataclasses. Every default lives here, once."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from charlstm.errors import CharlstmError

FUSED_CELLS = ("lstm", "gru", "rnn")  # nn.LSTM / nn.GRU / nn.RNN
CUSTOM_CELLS = ("peephole", "pseudo", "pseudo2", "cifg", "lnlstm")  # model/cells.py
CELLS = FUSED_CELLS + CUSTOM_CELLS
INITS = ("default", "xavier")
# the forget-gate bias of ModelConfig.forget_bias = None: r2rt's 1 for the custom LSTM-like cells; for lstm,
# PyTorch's own initialisation untouched (what every run before these options got)
DEFAULT_FORGET_BIAS = {"lstm": None, "peephole": 1.0, "pseudo": 1.0, "pseudo2": 1.0, "cifg": 1.0, "lnlstm": 1.0}
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_MAX_TIME = 600.0  # seconds of training when no --max-steps/--epochs/--max-time is given
# periodic validations in a run without --eval-every: one each time another 1/8 of the budget is spent (the last
# is the final evaluation), so that every run draws a curve of about eight points on any machine, at least
# MIN_STEPS_BETWEEN_VALIDATIONS steps apart (a short run gets fewer)
VALIDATIONS_PER_RUN = 8
MIN_STEPS_BETWEEN_VALIDATIONS = 10
RECORD_MODES = ("auto", "file", "paragraph", "none")  # and sep:STRING (see record_separator)
SEPARATOR_MODE = "sep:"  # --records sep:STRING: a record ends at a line that is STRING alone
SIZES = ("auto", "fixed")  # --size: a shape chosen for the corpus and budget (sizing.py), or the defaults below


class InvalidValue(CharlstmError):
    """A config value out of its range. `name` is the field; the CLI names it as its flag (`--name`)."""

    def __init__(self, name: str, problem: str):
        self.name, self.problem = name, problem
        super().__init__(f"{name} {problem}")


@dataclass
class CorpusConfig:
    """What to train on, recorded in checkpoints so `--resume` can rebuild the same corpus."""

    paths: list[str] = field(default_factory=list)  # files and directories, in the order given
    globs: list[str] = field(default_factory=list)  # directory files to take, e.g. *.py (empty: every text file)
    text_field: str | None = None  # (--field) the CSV column / JSON Lines key holding the text
    records: str = "auto"  # auto | file | paragraph | none | sep:STRING: what one record is in plain text files
    encoding: str = "utf-8"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if isinstance(self.records, str) and self.records.startswith(SEPARATOR_MODE):
            record_separator(self.records)
        elif self.records not in RECORD_MODES:
            raise InvalidValue(
                "records",
                f"must be one of {', '.join(RECORD_MODES)}, or sep:STRING (a record ends at a line holding only "
                f"STRING, e.g. sep:%), got {self.records!r}",
            )


def record_separator(records: str) -> str | None:
    """The separator line of a `sep:STRING` record mode (STRING without surrounding whitespace, which a separator
    line may have around it too); None for the other modes."""
    if not records.startswith(SEPARATOR_MODE):
        return None
    separator = records[len(SEPARATOR_MODE) :].strip()
    if not separator:
        raise InvalidValue("records", "sep: needs the text of the separator line, e.g. sep:% for a fortune file")
    if "\n" in separator or "\r" in separator:
        raise InvalidValue("records", f"sep: takes one line's text, not several: {separator!r}")
    return separator


def is_lstm_like(cell: str) -> bool:
    """Whether a cell carries an (h, c) pair of states (every cell but gru and rnn)."""
    return cell in DEFAULT_FORGET_BIAS


@dataclass
class ModelConfig:
    vocab_size: int = 0  # set from the corpus
    cell: str = "lstm"  # one of CELLS
    layers: int = 1  # stacked recurrent layers
    hidden: int = 384  # units per layer
    embed: int = 64  # character embedding width
    dropout: float = 0.0  # between layers (and before the head)
    init: str = "default"  # default (PyTorch's uniform rule) | xavier (Xavier-Glorot per gate matrix, zero biases)
    forget_bias: float | None = None  # LSTM-like cells' forget-gate bias (None: DEFAULT_FORGET_BIAS of the cell)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def state_tensors(self) -> int:
        """How many (layers, B, hidden) tensors the carried state is: 2 (h, c) for LSTM-like cells, else 1."""
        return 2 if is_lstm_like(self.cell) else 1

    @property
    def effective_forget_bias(self) -> float | None:
        """The forget bias the model is built with (None: the initialisation's own)."""
        return DEFAULT_FORGET_BIAS.get(self.cell) if self.forget_bias is None else self.forget_bias

    def validate(self) -> None:
        if self.cell not in CELLS:
            raise InvalidValue("cell", f"must be one of {', '.join(CELLS)}, got {self.cell!r}")
        if self.init not in INITS:
            raise InvalidValue("init", f"must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.forget_bias is not None:
            if not is_lstm_like(self.cell):
                raise InvalidValue("forget_bias", f"applies to LSTM-like cells only, not {self.cell}")
            if not (math.isfinite(self.forget_bias) and abs(self.forget_bias) <= 100):
                raise InvalidValue("forget_bias", f"must be a number in [-100, 100], got {self.forget_bias}")
        _positive("layers", self.layers)
        _positive("hidden", self.hidden)
        _positive("embed", self.embed)
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidValue("dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class TrainConfig:
    # Many small updates win on a CPU: on Tiny Shakespeare in 100 s (2 cores), batch 32 x seq 32 reached
    # 1.49 nats/char where 64 x 32 reached 1.51-1.55 and 64 x 64 1.58 (benchmarks/shakespeare.py).
    batch_size: int = 32  # parallel streams
    seq_len: int = 32  # characters per stream per step (truncated BPTT length)
    lr: float = 5e-3  # peak learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    grad_clip: float = 1.0  # global gradient-norm clip (0 = off)
    warmup_frac: float = 0.02  # share of the budget spent warming up the learning rate
    min_lr_frac: float = 0.05  # the schedule decays to lr * min_lr_frac
    max_steps: int | None = None  # stop after this many steps (total for the run)
    epochs: float | None = None  # stop after this many passes over the training split
    max_time: float | None = (
        None  # stop after this many seconds of the run's wall clock (validations and saves included)
    )
    eval_every: int | None = None  # steps between validations (None: VALIDATIONS_PER_RUN spread over the budget)
    eval_chars: int = 65_536  # characters a periodic validation scores (a fixed, seeded slice of the split)
    final_eval_chars: int = 524_288  # the final evaluation scores the whole split, or this many of it if larger
    sample_every: int | None = None  # steps between samples shown while training (None: at each validation; 0: never)
    sample_length: int = 200  # characters of each (at most: a record-trained run's sample is one record)
    sample_temp: float = 0.8  # their temperature
    sample_prime: str = ""  # the text each of them starts with
    save_every: float | None = None  # steps between checkpoints (None: at each eval)
    save_every_seconds: float | None = None  # seconds between checkpoints
    val_frac: float = 0.1  # the last share of the corpus used for validation
    seed: int = 1337
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False  # torch.compile the loss (fp32 cast, log-softmax, NLL; slow to start; GPU mainly)
    encoding: str = "utf-8"
    size: str = "auto"  # auto | fixed: auto chooses the shape and learning rate for the corpus and budget
    size_choice: str | None = None  # what --size auto chose and why (set by the run, recorded for resume)
    planned_chars_per_second: float | None = None  # the training speed --size auto planned for (set by the run)
    replanned: str | None = None  # what the run's check of its real speed changed (set by the run)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.size not in SIZES:
            raise InvalidValue("size", f"must be one of {', '.join(SIZES)}, got {self.size!r}")
        _positive("batch_size", self.batch_size)
        _positive("seq_len", self.seq_len)
        if self.eval_every is not None:
            _positive("eval_every", self.eval_every)
        _positive("eval_chars", self.eval_chars)
        _positive("final_eval_chars", self.final_eval_chars)
        if self.sample_every is not None and self.sample_every < 0:
            raise InvalidValue("sample_every", f"must be >= 0 (0: no samples while training), got {self.sample_every}")
        _positive("sample_length", self.sample_length)
        if not (self.sample_temp >= 0 and math.isfinite(self.sample_temp)):
            raise InvalidValue("sample_temp", f"must be >= 0, got {self.sample_temp}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InvalidValue("lr", f"must be a positive number, got {self.lr}")
        if self.planned_chars_per_second is not None and not (
            self.planned_chars_per_second > 0 and math.isfinite(self.planned_chars_per_second)
        ):
            raise InvalidValue(
                "planned_chars_per_second", f"must be a positive number, got {self.planned_chars_per_second}"
            )
        if self.weight_decay < 0:
            raise InvalidValue("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.grad_clip < 0:
            raise InvalidValue("grad_clip", f"must be >= 0 (0 turns clipping off), got {self.grad_clip}")
        if not 0.0 < self.val_frac <= 0.5:
            raise InvalidValue("val_frac", f"must be in (0, 0.5], got {self.val_frac}")
        if self.max_steps is not None:
            _positive("max_steps", self.max_steps)
        if self.epochs is not None and not self.epochs > 0:
            raise InvalidValue("epochs", f"must be > 0, got {self.epochs}")
        if self.max_time is not None and not self.max_time > 0:
            raise InvalidValue("max_time", f"must be > 0, got {self.max_time}")
        if self.device not in DEVICES:
            raise InvalidValue("device", f"must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise InvalidValue("precision", f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


INTERACTIVE_LENGTH = 300  # characters per continuation in `sample --interactive` (its --length default)
INSPECT_MAX_CHARS = 5000  # characters an inspector page holds by default (--max-chars): a 1 x 384 LSTM's page
# stays under 10 MB


@dataclass
class SampleConfig:
    length: int = 1000  # characters to generate per sample
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 0  # keep the k most likely characters (0 = off)
    top_p: float = 1.0  # keep the smallest set whose probability reaches p (1 = off)
    prime: str = ""  # text fed through the model first, then printed
    seed: int | None = None  # same seed, same text
    num_samples: int = 1  # samples generated together as one batch
    stop: list[str] = field(default_factory=list)  # end a sample when one of these appears

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.length < 0:
            raise InvalidValue("length", f"must be >= 0, got {self.length}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise InvalidValue("temperature", f"must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InvalidValue("top_k", f"must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidValue("top_p", f"must be in (0, 1], got {self.top_p}")
        _positive("num_samples", self.num_samples)


def _positive(name: str, value: int | float) -> None:
    if not value > 0:
        raise InvalidValue(name, f"must be > 0, got {value}")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|secs|m|min|mins|h|hr|hrs|d)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {
    "s": 1,
    "sec": 1,
    "secs": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "d": 86400,
}


def parse_duration(text: str, flag: str = "--max-time") -> float:
    """'90s', '10m', '2h', '1.5h' or a bare number of seconds -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise CharlstmError(f"{flag}: cannot read {text!r} as a duration; use e.g. 90s, 10m or 2h")
    seconds = float(match.group(1)) * _UNIT_SECONDS[(match.group(2) or "s").lower()]
    if seconds <= 0:
        raise CharlstmError(f"{flag} must be longer than zero, got {text!r}")
    return seconds


def format_duration(seconds: float | None) -> str:
    """12s, 4m05s, 1h02m: the inverse of parse_duration, short and exact enough for a progress line."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_count(n: float) -> str:
    """950, 42.5k, 1.2M: a count (characters, chars/s) to three significant figures, for a note."""
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def finite_or_none(value: Any) -> float | None:
    """A number read back (a loss in a checkpoint, run.json or metrics.jsonl) as a float when it is a finite one,
    else None (NaN, infinity, a missing value, a bool or anything else)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def parse_save_every(text: str) -> dict[str, float | int]:
    """--save-every: a number of steps ('200') or a duration ('5m') -> the TrainConfig field it sets."""
    if text.strip().lstrip("+-").isdigit():
        steps = int(text)
        if steps <= 0:
            raise CharlstmError(f"--save-every must be > 0 steps (or a duration such as 5m), got {text}")
        return {"save_every": steps}
    return {"save_every_seconds": parse_duration(text, "--save-every")}


def parse_temperatures(text: str) -> list[float]:
    """'0.8' or a list such as '0.5,0.8,1.0' -> temperatures, each >= 0."""
    temperatures = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise CharlstmError(
                f"--temp: cannot read {part.strip()!r} as a number; use e.g. 0.8 or 0.5,0.8,1.0"
            ) from None
        if not (value >= 0 and math.isfinite(value)):
            raise CharlstmError(f"--temp must be >= 0, got {part.strip()}")
        temperatures.append(value)
    return temperatures


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build a config dataclass from a dict (read from an untrusted checkpoint), ignoring keys it does not
    know (older/newer checkpoints) and refusing values of the wrong type with a CharlstmError."""
    if not isinstance(data, dict):
        raise CharlstmError(f"{cls.__name__} is a {type(data).__name__}, not a mapping")
    known = {f.name: f for f in fields(cls)}
    for key, value in data.items():
        if key in known and not _has_type(value, known[key].type):
            raise CharlstmError(f"{cls.__name__}.{key} = {value!r:.40} is not of type {known[key].type}")
    return cls(**{k: v for k, v in data.items() if k in known})


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),)}


def _has_type(value: Any, annotation: str | type) -> bool:
    """Whether `value` fits an annotation such as 'int', 'float | None' or 'list[str]' (a bool is no number here)."""
    for name in (n.strip() for n in str(annotation).split("|")):
        if name == "list[str]":
            fits = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif name in _TYPES:
            fits = isinstance(value, _TYPES[name]) and not (isinstance(value, bool) and name in ("int", "float"))
        else:
            return True  # an annotation this check does not know: accept
        if fits:
            return True
    return False


@dataclass
class TrainingConfigs:
    """The configs a training command's flags describe (`train`, `compare`)."""

    corpus: CorpusConfig | None  # None: no corpus given (the built-in corpus, or on --resume the run's own)
    model: ModelConfig
    train: TrainConfig
    explicit: set[str]  # the fields the flags gave: they win over --size auto's choices and, on resume, the saved ones


def training_configs(paths: list[Any] | None, flags: dict[str, Any]) -> TrainingConfigs:
    """The configs of a training command: `paths` the corpus files and directories; `flags` each flag's value by
    the name of the config field it sets (None: not given), with --max-time and --save-every as typed and the
    corpus's `glob`, `text_field` and `records`; other keys are ignored. The corpus flags need `paths`."""
    given = {name: value for name, value in flags.items() if value is not None}
    model_values = {f.name: given[f.name] for f in fields(ModelConfig) if f.name in given}
    typed = ("max_time", "save_every")  # as typed (durations, or steps): parsed below
    train_values = {f.name: given[f.name] for f in fields(TrainConfig) if f.name in given and f.name not in typed}
    if "max_time" in given:
        train_values["max_time"] = parse_duration(given["max_time"], "--max-time")
    if "save_every" in given:
        train_values.update(parse_save_every(given["save_every"]))
    explicit = set(model_values) | set(train_values)
    model_config = ModelConfig(**model_values)
    train_config = TrainConfig(**train_values)
    corpus_config = None
    if paths:
        corpus_config = CorpusConfig(
            paths=[str(p) for p in paths],
            globs=list(given.get("glob") or []),
            text_field=given.get("text_field"),
            records=given.get("records") or CorpusConfig.records,
            encoding=train_config.encoding,
        )
    elif given.get("glob") or given.get("text_field") or given.get("records"):
        raise CharlstmError("--glob, --field and --records describe a corpus; give the corpus path too")
    return TrainingConfigs(corpus_config, model_config, train_config, explicit)
