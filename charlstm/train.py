"""The training loop: truncated BPTT over parallel streams, AdamW, clipping, warm-up + cosine schedule,
periodic validation, atomic checkpoints and exact resume. Knows nothing about flags or terminal colours."""

from __future__ import annotations

import math
import shutil
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from . import checkpoint as ckpt
from . import distributed
from . import validation
from .config import DEVICES, ModelConfig, TrainConfig, from_dict
from .data import IGNORE_INDEX, Corpus, Streams, Vocab, check_trainable, fit_batch_shape, prepare_tokens
from .errors import CharlstmError
from .model import CharRNN, detach_state, state_from_list
from .progress import ConsoleProgress, EventSink, duration
from .runlock import RunLock
from .starts import record_start_states

# Flags that fix the data layout and the architecture: on resume the checkpoint's values win.
LAYOUT_FIELDS = ("batch_size", "seq_len", "val_frac", "seed", "encoding")
ARCH_FIELDS = ("cell", "layers", "hidden", "embed", "dropout")
BUDGET_FIELDS = ("max_steps", "epochs", "max_time")
SCHEDULE_FIELDS = (*BUDGET_FIELDS, "lr", "warmup_frac", "min_lr_frac")  # what the learning-rate curve depends on


@dataclass
class TrainResult:
    run_dir: Path
    stopped_by: str  # max_steps | max_time | epochs | interrupt (SIGNAL) | stop_request | budget_spent
    step: int
    chars_seen: int
    train_seconds: float
    chars_per_second: float
    best_val_loss: float
    last_val_loss: float
    final_val_loss: float  # the final evaluation (NaN when the run stopped before it)
    elapsed_seconds: float  # the run's wall clock, validations and saves included (what --max-time limits)
    budget: str  # the budget that applies, e.g. "--max-time 4m"
    extend_with: str  # a larger budget of the same kind, for a run that has used its own
    params: int
    vocab_size: int
    device: str
    precision: str
    resumed_from: str | None = None
    notices: list[str] = field(default_factory=list)
    world_size: int = 1  # processes that trained together (torchrun)


@dataclass
class Progress:
    """Everything about where a run is, saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # window index within the epoch
    chars_seen: int = 0
    train_seconds: float = 0.0  # training steps only (chars/s)
    elapsed_seconds: float = 0.0  # the run's wall clock: set-up, steps, validations and saves (--max-time)
    best_val_loss: float = math.inf  # the lowest periodic validation loss (it chose best.pt)
    last_val_loss: float = math.nan
    final_val_loss: float = math.nan  # the final evaluation of the run's end
    loss_sum: float = 0.0  # training loss summed since the last evaluation
    loss_count: int = 0
    eval_pending: bool = False  # a validation was cut short by a signal: it runs first on resume
    # a budget or learning rate changed on resume: the rate ramps from `ramp_lr` at fraction `ramp_from` to the
    # re-planned curve at `ramp_to` (fractions of the budget); ramp_to <= ramp_from means no ramp
    ramp_from: float = 0.0
    ramp_to: float = 0.0
    ramp_lr: float = 0.0


def pick_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise CharlstmError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CharlstmError("--device cuda: no CUDA GPU is available here (use --device cpu or auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CharlstmError("--device mps: Apple MPS is not available here (use --device cpu or auto)")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA when asked or (auto) when the GPU supports it; fp32 elsewhere."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def check_autocast(device: torch.device, amp: torch.dtype | None) -> None:
    """Refuse, in one line and before any work, a precision this device cannot run a recurrent layer in
    (oneDNN has bf16 LSTM kernels only on CPUs with bf16 instructions)."""
    if amp is None or device.type == "cuda":
        return
    probe = torch.nn.LSTM(4, 4).to(device)
    try:
        with torch.autocast(device.type, dtype=amp):
            probe(torch.zeros(1, 1, 4, device=device))
    except RuntimeError:
        name = str(amp).replace("torch.bfloat16", "bf16")
        raise CharlstmError(
            f"--precision {name}: this {device.type} cannot run recurrent layers in {name}; use --precision fp32"
        ) from None


def configure_backends(device: torch.device) -> None:
    """Fast kernels on CUDA: cuDNN picks its fastest algorithms, fp32 matrix multiplies may use TF32."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")


def window_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over the real targets of a window, in fp32 whatever the logits' precision."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)),  # (R*T, V)
        targets.reshape(-1),  # (R*T,)
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def compiled_loss(device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`window_loss_sum` through torch.compile: the fp32 cast, log-softmax and NLL become fused kernels.

    The model itself stays eager: Dynamo refuses to trace nn.LSTM/GRU/RNN (it would skip the whole forward),
    and the recurrent stack is a single fused cuDNN/oneDNN call already."""
    if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        raise CharlstmError("--compile on CPU needs a C++ compiler (g++ or clang++) on the PATH")
    return torch.compile(window_loss_sum)


def lr_at(config: TrainConfig, progress: float, state: Progress | None = None) -> float:
    """Linear warm-up over the first `warmup_frac` of the budget, then cosine decay to lr * min_lr_frac.

    After a resume that changed the budget (or the learning rate), the curve is re-planned for the new budget
    (the rate a run given that budget from the start would have now), and the rate moves there linearly from
    the rate the run stopped at, over the next `warmup_frac` of the budget (`state.ramp_*`)."""
    planned = _planned_lr(config, progress)
    if state is not None and state.ramp_to > state.ramp_from and progress < state.ramp_to:
        t = max(0.0, (progress - state.ramp_from) / (state.ramp_to - state.ramp_from))
        return state.ramp_lr + (_planned_lr(config, state.ramp_to) - state.ramp_lr) * t
    return planned


def _planned_lr(config: TrainConfig, progress: float) -> float:
    if progress < config.warmup_frac:
        return config.lr * (progress + 1e-3) / (config.warmup_frac + 1e-3)
    span = max(1e-9, 1.0 - config.warmup_frac)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - config.warmup_frac) / span)))
    return config.lr * (config.min_lr_frac + (1.0 - config.min_lr_frac) * cosine)


def budget_fraction(config: TrainConfig, progress: Progress, num_targets: int) -> float:
    """How much of the budget is spent, 0..1: the most advanced of the budgets given."""
    fractions = []
    if config.max_steps:
        fractions.append(progress.step / config.max_steps)
    if config.max_time:
        fractions.append(progress.elapsed_seconds / config.max_time)
    if config.epochs:
        fractions.append(progress.chars_seen / (config.epochs * num_targets))
    return min(1.0, max(fractions)) if fractions else 0.0


def budget_text(config: TrainConfig) -> str:
    """The budget as the flags that give it: '--max-time 4m', '--max-steps 5,000 or --max-time 10m'."""
    parts = []
    if config.max_steps:
        parts.append(f"--max-steps {config.max_steps}")
    if config.epochs:
        parts.append(f"--epochs {config.epochs:g}")
    if config.max_time:
        parts.append(f"--max-time {duration(config.max_time)}")
    return " or ".join(parts) or "no budget"


def spent_text(config: TrainConfig, progress: Progress) -> str:
    parts = []
    if config.max_steps:
        parts.append(f"{progress.step:,} of {config.max_steps:,} steps")
    if config.epochs:
        parts.append(f"epoch {progress.epoch:,} of {config.epochs:g}")
    if config.max_time:
        parts.append(f"{duration(progress.elapsed_seconds)} of {duration(config.max_time)}")
    return ", ".join(parts)


def extended_budget(config: TrainConfig) -> str:
    """The same kind of budget, doubled: what to suggest to a user whose run has used its budget."""
    if config.max_time:
        return f"--max-time {duration(2 * config.max_time)}"
    if config.max_steps:
        return f"--max-steps {2 * config.max_steps}"
    if config.epochs:
        return f"--epochs {2 * config.epochs:g}"
    return "--max-time 10m"


@torch.no_grad()
def evaluate(
    model: CharRNN, streams: Streams, amp: torch.dtype | None, dist: distributed.Distributed = distributed.SINGLE
) -> float:
    """Mean loss in nats/char over every target of `streams`, hidden state carried across windows.

    Distributed, each rank scores its own rows of `streams` and the sums are added up over the ranks."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=streams.device)
    state = None
    for x, y in streams:
        with _autocast(x.device, amp):
            logits, state = model(x, state)
        total += window_loss_sum(logits, y)
    model.train(was_training)
    return dist.sum_(total).item() / streams.num_targets


def _autocast(device: torch.device, amp: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()


class StopSignals:
    """Ctrl-C and SIGTERM for the whole of a run: acknowledged the moment they arrive, acted on where it is safe.

    The first signal is recorded and reported (`on_signal`); what happens next depends on the phase:
    during set-up (reading and encoding the corpus) nothing is worth saving, so it stops at once
    (KeyboardInterrupt); during training and validation the loop sees the flag at the end of the step or of the
    validation chunk, saves and exits; during a save, the save finishes first. A second Ctrl-C aborts at once
    (the last checkpoint is intact: saves are atomic).
    """

    def __init__(self, on_signal: Callable[[str, str], None] | None = None):
        self.received: str | None = None
        self.phase = "setup"
        self.on_signal = on_signal
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.received = name
        if self.on_signal is not None:
            self.on_signal(name, self.phase)
        if self.phase == "setup":
            raise KeyboardInterrupt

    @contextmanager
    def phase_of(self, phase: str):
        """Run a block in `phase`; a signal that arrived during set-up stops before the block starts."""
        previous, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = previous


class Trainer:
    def __init__(
        self,
        corpus: Corpus,
        model_config: ModelConfig,
        train_config: TrainConfig,
        run_dir: Path,
        resume_from: Path | None = None,
        explicit: set[str] = frozenset(),
        log: Callable[[str], None] = print,
        on_event: EventSink | None = None,
        clock_start: float | None = None,
        signals: StopSignals | None = None,
    ):
        """`on_event(kind, data)` receives progress events (see progress.py); `clock_start` is when the command
        started (time.perf_counter()), so that --max-time counts reading the corpus too (default: now); `signals`
        are the run's signal handlers when installed already (by `train()`, before the corpus is read)."""
        self.clock_start = time.perf_counter() if clock_start is None else clock_start
        self.session_base = 0.0  # the run's wall clock when this session's clock started
        self.emit_is_silent = on_event is None
        self.signals_installed = signals is not None
        self.signals = signals if signals is not None else StopSignals()
        self.log = log if distributed.is_main_process() else (lambda line: None)  # rank 0 speaks for all
        self.emit: EventSink = (on_event if on_event is not None and distributed.is_main_process()
                                else (lambda kind, data: None))  # fmt: skip
        self.run_dir = Path(run_dir)
        self.notices: list[str] = []
        self.resumed_from: str | None = None
        self.saved_config: TrainConfig | None = None  # the checkpoint's own training config, on resume
        payload = None
        if resume_from is not None:
            path = ckpt.resolve_checkpoint(resume_from, prefer=ckpt.LATEST)
            payload = ckpt.load_model_checkpoint(path)
            self.resumed_from = str(path)
            self.run_dir = run_dir_for(run_dir, resume_from)
            model_config, train_config = self._merge_resumed(payload, model_config, train_config, explicit)
        model_config.validate()
        train_config.validate()

        self.dist, self.device = distributed.setup(pick_device(train_config.device))

        # data: ids in a compact dtype (memory-mapped for a large corpus), split on a record boundary; with
        # several ranks, rank 0 encodes (and caches) first, and the others then reuse its cache
        self.data = self.dist.in_turn(
            lambda: prepare_tokens(
                corpus, train_config.val_frac, vocab=Vocab(payload["vocab"]) if payload else None, cache_dir=self.run_dir
            )
        )
        for note in self.data.notes:
            self.log(note)
        vocab, train_ids, val_ids = self.data.vocab, self.data.train, self.data.val
        distinct = [c for c in vocab.chars if c] if payload is None else None  # a checkpoint's vocabulary says nothing
        check_trainable(len(self.data.ids), distinct, train_config.val_frac)
        if len(val_ids) < 2:
            raise CharlstmError(
                f"validation split too small ({len(val_ids)} characters); add text or raise --val-frac"
            )
        batch, seq_len, notice = fit_batch_shape(len(train_ids), train_config.batch_size, train_config.seq_len)
        if notice:
            self._notice(notice)
            train_config = replace(train_config, batch_size=batch, seq_len=seq_len)
        self.vocab = vocab
        self.corpus = corpus
        configure_backends(self.device)
        self.amp = autocast_dtype(train_config.precision, self.device)
        check_autocast(self.device, self.amp)
        self.train_streams = Streams(train_ids, batch, seq_len, self.device, rows=self.dist.rows(batch))
        if self.dist.world_size > len(val_ids) - 1:
            raise CharlstmError(
                f"validation split too small ({len(val_ids)} characters) for {self.dist.world_size} processes; "
                f"add text or raise --val-frac"
            )
        # the periodic check scores a fixed, seeded slice of the split; the final evaluation the whole split
        # (or, for a huge one, a larger seeded slice): both bounded, at inference speed
        self.periodic_slice = validation.choose_slice(len(val_ids), train_config.eval_chars, train_config.seed)
        self.final_slice = validation.choose_slice(len(val_ids), train_config.final_eval_chars, train_config.seed + 1)
        self.last_eval_seconds = 0.0  # how long the last periodic validation took (to fit the budget)

        # model and optimiser
        model_config = replace(model_config, vocab_size=len(vocab))
        self.model_config, self.config = model_config, train_config
        torch.manual_seed(train_config.seed)
        self.model = CharRNN(model_config).to(self.device)
        if self.dist.rank > 0:
            torch.manual_seed(train_config.seed + self.dist.rank)  # the same weights, its own dropout masks
        self.forward_model = self._wrap(self.model)  # what a training step calls
        self.loss_sum = compiled_loss(self.device) if train_config.compile else window_loss_sum
        self.optimizer = self._make_optimizer()
        self.progress = Progress()
        self.state = None
        self.recent_loss: float | None = None  # smoothed, for the progress bar
        if payload:
            self._restore(payload)

    # ------------------------------------------------------------------------------ set-up helpers

    def _notice(self, text: str) -> None:
        self.notices.append(text)
        self.log(f"note: {text}")

    def _wrap(self, model: CharRNN) -> torch.nn.Module:
        """DistributedDataParallel around the model when there are several ranks (`self.model` stays the bare
        module: checkpoints and evaluation use it)."""
        if not self.dist.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _merge_resumed(self, payload, model_config: ModelConfig, train_config: TrainConfig, explicit: set[str]):
        saved_model = from_dict(ModelConfig, payload["model_config"])
        saved_train = from_dict(TrainConfig, payload.get("train_config", {}))
        for name in ARCH_FIELDS:
            mine, theirs = getattr(model_config, name), getattr(saved_model, name)
            if name in explicit and mine != theirs:
                self._notice(f"--{name.replace('_', '-')} {mine} differs from the checkpoint's {theirs}; using {theirs}")
        merged_train = saved_train
        for f in asdict(train_config):
            if f in explicit:
                mine, theirs = getattr(train_config, f), getattr(saved_train, f)
                if f in LAYOUT_FIELDS:
                    if mine != theirs:
                        self._notice(
                            f"--{f.replace('_', '-')} {mine} differs from the checkpoint's {theirs}; using {theirs}"
                        )
                else:
                    merged_train = replace(merged_train, **{f: mine})
        # a fresh budget flag replaces the saved budget as a whole
        if explicit.intersection(BUDGET_FIELDS):
            merged_train = replace(merged_train, **{b: getattr(train_config, b) for b in BUDGET_FIELDS})
        self.saved_config = saved_train
        return saved_model, merged_train

    def _make_optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (no_decay if p.ndim < 2 or name.startswith("embed") else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=self.config.lr, betas=(0.9, 0.99), fused=True)

    def _restore(self, payload: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(payload["model"])
            if payload.get("optimizer") is not None:
                self.optimizer.load_state_dict(payload["optimizer"])
                _check_optimizer_state(self.optimizer)
            else:  # weights only (e.g. shared without its optimizer): training goes on, Adam's moments start at zero
                self._notice("the checkpoint holds no optimizer state; AdamW starts afresh from its weights")
            self.progress = from_dict(Progress, payload.get("progress", {}))
            if "elapsed_seconds" not in payload.get("progress", {}):  # written before the wall clock was kept
                self.progress.elapsed_seconds = self.progress.train_seconds
            if not 0 <= self.progress.position < len(self.train_streams):
                self.progress.position = 0
            hidden = payload.get("hidden") or []  # every stream row's state, (layers, B, H) each
            if _hidden_fits(hidden, self.model_config, self.train_streams.batch):
                mine = [h[:, self.train_streams.rows].float() for h in hidden]  # (layers, R, H): this rank's rows
                self.state = state_from_list(mine, self.model_config.cell, self.device)
            self._restore_rng(payload.get("rng", {}))
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, CharlstmError) as exc:
            raise CharlstmError(f"{self.resumed_from} cannot be resumed: {str(exc).splitlines()[0]}") from None
        if self.dist.is_main:
            rows = [r for r in ckpt.read_metrics(self.run_dir) if r.get("step", 0) <= self.progress.step]
            ckpt.rewrite_metrics(self.run_dir, rows)  # drop evaluations made after this checkpoint
        self._continue_schedule()

    def _continue_schedule(self) -> None:
        """On resume with another budget or learning rate: re-plan the curve for the new budget, ramp to it from
        the rate the run stopped at, and say so. An unchanged schedule continues exactly."""
        saved, c, p = self.saved_config, self.config, self.progress
        if saved is None or all(getattr(saved, f) == getattr(c, f) for f in SCHEDULE_FIELDS):
            return
        targets = self.train_streams.num_targets
        old_fraction, new_fraction = budget_fraction(saved, p, targets), budget_fraction(c, p, targets)
        was = lr_at(saved, old_fraction, p)
        change = f"budget {budget_text(saved)} -> {budget_text(c)}"
        if saved.lr != c.lr:
            change += f", --lr {saved.lr:g} -> {c.lr:g}"
        if new_fraction >= 1.0:
            return  # the new budget is spent too: train() says so
        p.ramp_from, p.ramp_to, p.ramp_lr = new_fraction, min(1.0, new_fraction + c.warmup_frac), was
        self._notice(
            f"{change} ({new_fraction:.0%} of it used): the learning-rate schedule is re-planned for the new budget; "
            f"the rate goes from {was:.2e} to {_planned_lr(c, p.ramp_to):.2e} over the next {c.warmup_frac:.0%} of "
            f"the budget, then follows the cosine down to {c.lr * c.min_lr_frac:.2e} at its end"
        )

    def _rng_state(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _restore_rng(self, rng: dict[str, Any]) -> None:
        """Each rank's own RNG state when the number of ranks is unchanged; with another number, rank 0 takes
        the saved rank 0's and the other ranks keep their fresh seeds (only their dropout masks differ)."""
        per_rank = rng.get("ranks") or [rng]
        if len(per_rank) == self.dist.world_size:
            mine = per_rank[self.dist.rank]
        elif self.dist.is_main:
            mine = rng
        else:
            return
        if "torch" in mine:
            torch.set_rng_state(mine["torch"])
        cuda = mine.get("cuda")
        if isinstance(cuda, list):  # written by an earlier version: one state per visible GPU
            index = self.device.index or 0
            cuda = cuda[index] if index < len(cuda) else None
        if cuda is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda, self.device)

    # ------------------------------------------------------------------------------------ budget

    def budget_fraction(self) -> float:
        """How much of the budget is spent, 0..1: the most advanced of the budgets given."""
        return budget_fraction(self.config, self.progress, self.train_streams.num_targets)

    def _budget_reason(self) -> str | None:
        p, c = self.progress, self.config
        if c.max_steps and p.step >= c.max_steps:
            return "max_steps"
        if c.max_time and p.elapsed_seconds >= c.max_time:
            return "max_time"
        if c.epochs and p.chars_seen >= c.epochs * self.train_streams.num_targets:
            return "epochs"
        return None

    def _remaining_seconds(self, session_seconds: float, session_steps: int, session_chars: int) -> float | None:
        """Time left until the budget that will stop the run first, at this session's pace (validations and
        saves included)."""
        p, c = self.progress, self.config
        estimates = []
        if c.max_time:
            estimates.append(c.max_time - p.elapsed_seconds)
        if c.max_steps and session_steps:
            estimates.append((c.max_steps - p.step) * session_seconds / session_steps)
        if c.epochs and session_chars:
            left = c.epochs * self.train_streams.num_targets - p.chars_seen
            estimates.append(left * session_seconds / session_chars)
        return max(0.0, min(estimates)) if estimates else None

    def checkpoint_payload(self) -> dict[str, Any]:
        """Everything to resume; distributed, every rank must call it (it gathers hidden and RNG states)."""
        rng = self._rng_state()
        if self.dist.enabled:
            rng["ranks"] = self.dist.gather_objects(self._rng_state())
        return {
            "model_config": asdict(self.model_config),
            "train_config": asdict(self.config),
            "vocab": self.vocab.chars,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "progress": asdict(self.progress),
            "hidden": self._all_rows_hidden(),
            "rng": rng,
            "corpus": self.corpus_summary(),
            **({"start_states": states} if (states := self._start_states()) is not None else {}),
        }

    def _start_states(self) -> list[torch.Tensor] | None:
        """For a record corpus: the states training has at K record boundaries (just before the end-of-record
        marker), which sampling starts each record from (see starts.py; rank 0 only: only it writes)."""
        eor = self.vocab.end_of_record if self.data.record_lengths is not None else None
        if eor is None or not self.dist.is_main:
            return None
        # 128 characters of context: on trained models, the first-character distribution from these states
        # matched that of 1,024-character contexts (benchmarks/record_starts.py runs), at an eighth of the cost
        return record_start_states(self.model, self.data.train, eor, context=128, seed=self.config.seed)

    def _all_rows_hidden(self) -> list[torch.Tensor]:
        """The carried state of all B stream rows, gathered from every rank, as CPU tensors."""
        if self.state is None:  # None on every rank at once: the state resets at the same step everywhere
            return []
        on_device = [s.detach() for s in (self.state if isinstance(self.state, tuple) else (self.state,))]
        return [t.cpu() for t in self.dist.gather_rows(on_device)]  # (layers, B, H) each

    def save(self, best: bool = False) -> None:
        """Every rank calls this (the payload is gathered); only rank 0 writes."""
        if not all(torch.isfinite(t).all() for t in self.model.parameters()):  # a NaN/inf step got through
            raise CharlstmError(
                f"the weights became NaN or infinite by step {self.progress.step}; stopped without saving them "
                f"(the last good checkpoint is kept); try a lower --lr (now {self.config.lr:g})"
            )
        with self._phase("saving"):
            self._tick()
            payload = self.checkpoint_payload()
            error = None
            if self.dist.is_main:
                try:
                    ckpt.save_checkpoint(payload, self.run_dir / ckpt.LATEST)
                    if best:
                        ckpt.copy_checkpoint(self.run_dir / ckpt.LATEST, self.run_dir / ckpt.BEST)
                    ckpt.write_json(self.run_dir / ckpt.RUN_JSON, self.run_summary())
                except BaseException as exc:  # a full disk, say: every rank stops, not only rank 0
                    error = exc
            self.dist.settle(error, "saving a checkpoint")

    @contextmanager
    def _phase(self, phase: str):
        """A slow part of the run: the bar says so, and a signal during it is handled as the phase allows."""
        self.emit("phase", {"phase": phase})
        try:
            with self.signals.phase_of(phase):
                yield
        finally:
            self.emit("phase", {"phase": "training"})

    def _tick(self) -> None:
        """Advance the run's wall clock to now (this rank's clock; the loop agrees on rank 0's)."""
        self.progress.elapsed_seconds = self.session_base + (time.perf_counter() - self.clock_start)

    def corpus_summary(self) -> dict[str, Any]:
        """Where the corpus came from, how to load it again, and its size in characters and records."""
        config = self.corpus.config
        return {
            "name": self.corpus.name,
            "sources": self.corpus.sources,
            "config": asdict(config) if config is not None else None,
            **self.data.summary(),
        }

    def run_summary(self) -> dict[str, Any]:
        p = self.progress
        corpus = self.corpus_summary()
        return {
            "corpus": corpus,
            "records": corpus["records"],
            "record_lengths": corpus["record_lengths"],
            "model_config": asdict(self.model_config),
            "train_config": asdict(self.config),
            "vocab_size": len(self.vocab),
            "params": self.model.num_params,
            "device": str(self.device),
            "precision": "bf16" if self.amp == torch.bfloat16 else "fp32",
            "world_size": self.dist.world_size,
            "step": p.step,
            "epoch": p.epoch,
            "chars_seen": p.chars_seen,
            "best_val_loss": _finite_or_none(p.best_val_loss),
            "best_val_bits_per_char": _finite_or_none(p.best_val_loss / math.log(2)),
            "last_val_loss": _finite_or_none(p.last_val_loss),
            "final_val_loss": _finite_or_none(p.final_val_loss),
            "validation": self.validation_summary(),
            "train_seconds": round(p.train_seconds, 6),
            "elapsed_seconds": round(p.elapsed_seconds, 3),
            "chars_per_second": round(p.chars_seen / p.train_seconds, 1) if p.train_seconds > 0 else 0.0,
            "checkpoint_format_version": ckpt.VERSION,
        }

    def validation_summary(self) -> dict[str, Any]:
        """Which validation figure is which: the periodic one (best_val_loss, last_val_loss, metrics.jsonl's
        val_loss) scores a fixed slice; the final one (final_val_loss) the whole split or a larger slice."""
        return {
            "split_chars": len(self.data.val) - 1,
            "periodic_chars": self.periodic_slice.chars,
            "periodic_whole_split": self.periodic_slice.whole,
            "final_chars": self.final_slice.chars,
            "final_whole_split": self.final_slice.whole,
        }

    def _validate(self, chosen: validation.Slice) -> float | None:
        """The loss over a slice of the validation split, or None when a signal cut it short."""
        return validation.evaluate_slice(
            self.model, self.data.val, chosen, self.device, self.amp, self.dist,
            should_abort=lambda: self.signals.received is not None,
        )  # fmt: skip

    def _evaluate_and_save(self, final: bool = False) -> None:
        """The periodic validation, then a save (best.pt too when it improved); at the end of the budget also the
        final evaluation. A signal during a validation leaves it pending (run first on resume) and saves."""
        p = self.progress
        started = time.perf_counter()
        with self._phase("validating"):
            val_loss = self._validate(self.periodic_slice)
        if val_loss is None:
            p.eval_pending = True
            self.save()
            return
        self.last_eval_seconds = time.perf_counter() - started
        p.eval_pending = False
        p.last_val_loss = val_loss
        improved = val_loss < p.best_val_loss
        if improved:
            p.best_val_loss = val_loss
        self._tick()
        row = {
            "step": p.step,
            "chars_seen": p.chars_seen,
            "train_loss": p.loss_sum / p.loss_count if p.loss_count else None,
            "val_loss": val_loss,
            "val_bits_per_char": val_loss / math.log(2),
            "val_chars": self.periodic_slice.chars,
            "seconds": round(p.train_seconds, 3),
            "elapsed": round(p.elapsed_seconds, 3),
        }
        p.loss_sum, p.loss_count = 0.0, 0
        if final and self.periodic_slice.whole:  # the periodic slice is the whole split already
            p.final_val_loss = val_loss
            row.update(final_val_loss=val_loss, final_val_chars=self.final_slice.chars, final_whole=True)
        elif final:
            self._final_evaluation(row)
        self.save(best=improved)
        if self.dist.is_main:
            ckpt.append_metrics(self.run_dir, row)
        self.emit("validation", {"row": row, "improved": improved})
        if final and math.isfinite(p.final_val_loss):
            self.emit("validation", {"row": row, "improved": False, "final": True})

    def _final_evaluation(self, row: dict[str, Any]) -> None:
        with self._phase("final evaluation"):
            final = self._validate(self.final_slice)
        if final is None:
            self.log("note: the final evaluation was cut short; the periodic validation loss stands")
            return
        self.progress.final_val_loss = final
        row.update(final_val_loss=final, final_val_chars=self.final_slice.chars, final_whole=self.final_slice.whole)

    # -------------------------------------------------------------------------------------- loop

    def train(
        self, should_stop: Callable[[int], bool] | None = None, show_progress: bool = True
    ) -> TrainResult:
        """Run until the budget is spent, `should_stop(step)` says so, or a signal arrives. `show_progress`
        without an `on_event` sink draws the default console progress (a bar, or log lines when piped)."""
        console = None
        if show_progress and self.dist.is_main and self.emit_is_silent:
            console = ConsoleProgress()
            self.emit, log = console, self.log
            self.log = console.write
        if not self.signals_installed:
            self.signals.on_signal = self._on_signal
        try:
            with self.signals if not self.signals_installed else nullcontext():
                return self._train(should_stop)
        finally:
            if console is not None:
                console.close()
                self.log = log

    def _on_signal(self, name: str, phase: str) -> None:
        self.emit("signal", {"signal": name, "phase": phase})
        if self.emit_is_silent and self.dist.is_main:  # nobody draws events: still acknowledge it
            self.log(f"{name}: stopping, then saving")

    def _train(self, should_stop: Callable[[int], bool] | None) -> TrainResult:
        p, c = self.progress, self.config
        self.session_base = p.elapsed_seconds
        if self.dist.is_main:
            ckpt.prepare_run_dir(self.run_dir)
            if self.resumed_from is None and p.step == 0:
                ckpt.rewrite_metrics(self.run_dir, [])  # a new run: no evaluations from an earlier one
        model, optimizer, streams = self.forward_model, self.optimizer, self.train_streams
        world = self.dist.world_size
        self.signals.phase = "training"
        model.train()
        self.emit("phase", {"phase": "training"})
        if p.eval_pending:  # a validation cut short by a signal: it belongs to this checkpoint's step
            self._evaluate_and_save(final=self._budget_reason() is not None)
            if p.eval_pending:  # cut short again
                return self.result(f"interrupt ({self.signals.received})")
        stopped_by = self._budget_reason()
        if stopped_by is not None and self.resumed_from is not None:
            if not math.isfinite(p.final_val_loss) and self.signals.received is None:
                self._evaluate_and_save(final=True)  # the run was stopped before its final evaluation
            return self.result("budget_spent")
        if stopped_by is None and not (c.max_steps or c.max_time or c.epochs):
            raise CharlstmError("no training budget: give --max-steps, --epochs or --max-time")
        # on GPU, reading the loss every step would stall the pipeline: read it every few steps
        sync_every = 1 if self.device.type == "cpu" else 16
        pending: list[torch.Tensor] = []
        last_save_time = p.train_seconds
        steps_since_save = 0
        session_started, session_step, session_chars = time.perf_counter(), p.step, p.chars_seen
        lr = lr_at(c, self.budget_fraction(), p)
        while stopped_by is None:
            started = time.perf_counter()
            lr = lr_at(c, self.budget_fraction(), p)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if p.position == 0:
                self.state = None  # the streams wrapped around: start from a zero state
            x, y = streams.batch_at(p.position)  # (R, T) each: this rank's rows (R = B single-process)
            targets = streams.targets_in(p.position)  # real targets of the window, all ranks' rows
            with _autocast(self.device, self.amp):
                logits, state = model(x, self.state)  # (R, T, V)
            # summed over this rank's rows, divided by the real targets of the window on all ranks, times
            # the ranks: DDP's gradient average is then the gradient of the mean over all B rows, exactly
            loss = self.loss_sum(logits, y) * (world / targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if c.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip, foreach=True)
            pending.append(loss.detach())
            if len(pending) >= sync_every:
                self._consume(pending)  # raises on a NaN/inf loss, before the step poisons the weights
            optimizer.step()
            self.state = detach_state(state)
            p.chars_seen += targets
            p.step += 1
            p.position += 1
            if p.position == len(streams):
                p.position = 0
                p.epoch += 1
            p.train_seconds += time.perf_counter() - started
            steps_since_save += 1
            self._tick()

            requested = should_stop is not None and should_stop(p.step)
            # every rank takes rank 0's clock, and stops when any rank asks to or got a signal
            p.elapsed_seconds, requested, signalled = self.dist.agree(
                p.elapsed_seconds, requested, self.signals.received is not None
            )
            self.session_base = p.elapsed_seconds - (time.perf_counter() - self.clock_start)
            stopped_by = self._budget_reason()
            if stopped_by is None and requested:
                stopped_by = "stop_request"
            if stopped_by is None and signalled:
                stopped_by = "interrupt"
            remaining = self._remaining_seconds(
                time.perf_counter() - session_started, p.step - session_step, p.chars_seen - session_chars
            )
            if stopped_by in ("max_steps", "max_time", "epochs"):
                self._consume(pending)
                self._evaluate_and_save(final=True)
                last_save_time, steps_since_save = p.train_seconds, 0
            elif stopped_by is None and p.step % c.eval_every == 0:
                self._consume(pending)
                # a validation that would end past a time budget is left to the final one, which comes anyway
                # (single-process only: each rank times its own validations, and ranks must decide alike)
                if not (world == 1 and c.max_time and remaining is not None and remaining < self.last_eval_seconds):
                    self._evaluate_and_save()
                    last_save_time, steps_since_save = p.train_seconds, 0
            elif stopped_by is not None or self._save_due(steps_since_save, p.train_seconds - last_save_time):
                self._consume(pending)
                self.save()
                last_save_time, steps_since_save = p.train_seconds, 0
            # a signal during a validation (every rank cut it short together and saved) or, single-process,
            # during a save or the bookkeeping after the step: stop here (saved unless already)
            if stopped_by is None and (p.eval_pending or (world == 1 and self.signals.received is not None)):
                stopped_by = "interrupt"
                if not p.eval_pending and steps_since_save:
                    self._consume(pending)
                    self.save()
            self.emit("step", {
                "step": p.step, "fraction": self.budget_fraction(), "loss": self.recent_loss,
                "chars_per_second": p.chars_seen / max(p.train_seconds, 1e-9), "lr": lr,
                "elapsed": p.elapsed_seconds, "remaining": remaining, "last": stopped_by is not None,
            })  # fmt: skip
        if stopped_by == "interrupt":
            stopped_by = f"interrupt ({self.signals.received or 'signal to another rank'})"
        return self.result(stopped_by)

    def _consume(self, pending: list[torch.Tensor]) -> None:
        """Read the pending losses off the device into the running mean; a NaN/inf stops the run unsaved."""
        if not pending:
            return
        world = self.dist.world_size
        values = (self.dist.sum_(torch.stack(pending)) / world).tolist()  # each rank's share -> the mean loss
        pending.clear()
        bad = [v for v in values if not math.isfinite(v)]
        if bad:
            raise CharlstmError(
                f"loss became {bad[0]} at step {self.progress.step + 1}; stopped without saving the poisoned "
                f"weights (the last good checkpoint is kept); try a lower --lr (now {self.config.lr:g})"
            )
        self.progress.loss_sum += sum(values)
        self.progress.loss_count += len(values)
        self.recent_loss = values[-1] if self.recent_loss is None else 0.9 * self.recent_loss + 0.1 * values[-1]

    def _save_due(self, steps: int, seconds: float) -> bool:
        c = self.config
        return bool((c.save_every and steps >= c.save_every) or (c.save_every_seconds and seconds >= c.save_every_seconds))

    def result(self, stopped_by: str) -> TrainResult:
        p = self.progress
        return TrainResult(
            run_dir=self.run_dir,
            stopped_by=stopped_by,
            step=p.step,
            chars_seen=p.chars_seen,
            train_seconds=p.train_seconds,
            chars_per_second=p.chars_seen / p.train_seconds if p.train_seconds > 0 else 0.0,
            best_val_loss=p.best_val_loss,
            last_val_loss=p.last_val_loss,
            final_val_loss=p.final_val_loss,
            elapsed_seconds=p.elapsed_seconds,
            budget=budget_text(self.config),
            extend_with=extended_budget(self.config),
            params=self.model.num_params,
            vocab_size=len(self.vocab),
            device=str(self.device),
            precision="bf16" if self.amp == torch.bfloat16 else "fp32",
            resumed_from=self.resumed_from,
            notices=self.notices,
            world_size=self.dist.world_size,
        )


def _check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """load_state_dict checks parameter counts, not shapes: a mismatched moment would crash at the first step."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                raise CharlstmError(f"optimizer {key} has shape {tuple(value.shape)} for a weight of {tuple(param.shape)}")


def _hidden_fits(hidden: list, config: ModelConfig, batch: int) -> bool:
    """Whether a saved hidden state can continue: a state for another batch size is dropped (a fresh start of
    the streams); one whose shape contradicts the model is refused."""
    if not hidden:
        return False
    if not isinstance(hidden, list) or not all(isinstance(h, torch.Tensor) for h in hidden):
        raise CharlstmError("its hidden state is not a list of tensors")
    if any(h.dim() != 3 for h in hidden):
        raise CharlstmError(f"its hidden state has shapes {[tuple(h.shape) for h in hidden]}, not (layers, batch, hidden)")
    if hidden[0].shape[1] != batch:
        return False
    expected = [(config.layers, batch, config.hidden)] * (2 if config.cell == "lstm" else 1)
    if [tuple(h.shape) for h in hidden] != expected:
        raise CharlstmError(f"its hidden state has shapes {[tuple(h.shape) for h in hidden]}, the model needs {expected}")
    return True


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def run_dir_for(run_dir: Path, resume_from: Path | None) -> Path:
    """The directory a run writes to: a resumed run's own directory (or its checkpoint's), else `run_dir`."""
    if resume_from is not None:
        resume_from = Path(resume_from)
        if resume_from.is_dir():
            return resume_from
        if resume_from.name in (ckpt.LATEST, ckpt.BEST):
            return resume_from.parent
    return Path(run_dir)


def train(
    corpus: Corpus,
    model_config: ModelConfig,
    train_config: TrainConfig,
    run_dir: Path,
    resume_from: Path | None = None,
    explicit: set[str] = frozenset(),
    should_stop: Callable[[int], bool] | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
    on_event: EventSink | None = None,
    clock_start: float | None = None,
) -> TrainResult:
    """Train (or resume) a run. Under `torchrun` with several processes, every rank calls this.

    Progress goes to `on_event` (see progress.py); without one, `show_progress` draws the default console
    progress on stderr. Ctrl-C and SIGTERM are handled from the start (reading the corpus included)."""
    console = None
    if on_event is None and show_progress and distributed.is_main_process():
        console = ConsoleProgress()
        on_event, log = console, console.write

    def acknowledge(name: str, phase: str) -> None:
        if not distributed.is_main_process():
            return
        if on_event is not None:
            on_event("signal", {"signal": name, "phase": phase})
        else:
            log(f"{name}: stopping" + (" (nothing trained yet)" if phase == "setup" else ", then saving"))

    # one trainer per run directory: a second one (another terminal, a script run twice) is refused at once
    lock = RunLock.acquire(run_dir_for(run_dir, resume_from), enabled=distributed.is_main_process())
    if lock.note:
        log(lock.note)
    trainer = None
    try:
        with StopSignals(acknowledge) as signals:
            trainer = Trainer(
                corpus, model_config, train_config, run_dir, resume_from, explicit, log,
                on_event=on_event, clock_start=clock_start, signals=signals,
            )  # fmt: skip
            result = trainer.train(should_stop=should_stop, show_progress=False)
    except BaseException:
        # leave the group without waiting: the other ranks may never arrive (torchrun stops them); a process
        # that exits with its group alive can abort in gloo's threads ("terminate called without an active
        # exception") instead of printing its one-line error
        if trainer is not None:
            trainer.forward_model = None  # the DDP wrapper: not the last holder of the group (see _destroy_group)
        distributed.abandon()
        raise
    finally:
        lock.release()
        if console is not None:
            console.close()
    trainer.forward_model = None
    distributed.teardown(trainer.dist)
    return result
