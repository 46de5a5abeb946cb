"""The training loop: truncated BPTT over parallel streams, AdamW, clipping, warm-up + cosine schedule,
periodic validation, atomic checkpoints and exact resume. Knows nothing about flags or terminal colours."""

from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint as ckpt
from .config import DEVICES, ModelConfig, TrainConfig, from_dict
from .data import IGNORE_INDEX, Corpus, Streams, Vocab, check_trainable, fit_batch_shape, split_train_val
from .errors import CharlstmError
from .model import CharRNN, detach_state, state_from_list, state_to_list

# Flags that fix the data layout and the architecture: on resume the checkpoint's values win.
LAYOUT_FIELDS = ("batch_size", "seq_len", "val_frac", "seed", "encoding")
ARCH_FIELDS = ("cell", "layers", "hidden", "embed", "dropout")


@dataclass
class TrainResult:
    run_dir: Path
    stopped_by: str  # max_steps | max_time | epochs | interrupt | stop_request
    step: int
    chars_seen: int
    train_seconds: float
    chars_per_second: float
    best_val_loss: float
    last_val_loss: float
    params: int
    vocab_size: int
    device: str
    precision: str
    resumed_from: str | None = None
    notices: list[str] = field(default_factory=list)


@dataclass
class Progress:
    """Everything about where a run is, saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # window index within the epoch
    chars_seen: int = 0
    train_seconds: float = 0.0
    best_val_loss: float = math.inf
    last_val_loss: float = math.nan
    loss_sum: float = 0.0  # training loss summed since the last evaluation
    loss_count: int = 0


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


def lr_at(config: TrainConfig, progress: float) -> float:
    """Linear warm-up over the first `warmup_frac` of the budget, then cosine decay to lr * min_lr_frac."""
    if progress < config.warmup_frac:
        return config.lr * (progress + 1e-3) / (config.warmup_frac + 1e-3)
    span = max(1e-9, 1.0 - config.warmup_frac)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - config.warmup_frac) / span)))
    return config.lr * (config.min_lr_frac + (1.0 - config.min_lr_frac) * cosine)


@torch.no_grad()
def evaluate(model: CharRNN, streams: Streams, amp: torch.dtype | None) -> float:
    """Mean loss in nats/char over every target of `streams`, hidden state carried across windows."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=streams.inputs.device)
    state = None
    for x, y in streams:
        with _autocast(x.device, amp):
            logits, state = model(x, state)
        total += F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
    model.train(was_training)
    return total.item() / streams.num_targets


def _autocast(device: torch.device, amp: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()


@contextmanager
def _catch_stop_signals():
    """SIGINT/SIGTERM set a flag the loop checks after each step; a second SIGINT aborts at once."""
    flag = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["signal"] = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


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
    ):
        self.log = log
        self.run_dir = Path(run_dir)
        self.notices: list[str] = []
        self.resumed_from: str | None = None
        payload = None
        if resume_from is not None:
            path = ckpt.resolve_checkpoint(resume_from, prefer=ckpt.LATEST)
            payload = ckpt.load_model_checkpoint(path)
            self.resumed_from = str(path)
            if Path(resume_from).is_dir():
                self.run_dir = Path(resume_from)
            elif path.name in (ckpt.LATEST, ckpt.BEST):
                self.run_dir = path.parent
            model_config, train_config = self._merge_resumed(payload, model_config, train_config, explicit)
        model_config.validate()
        train_config.validate()

        # data
        check_trainable(corpus.text, train_config.val_frac)
        vocab = Vocab(payload["vocab"]) if payload else Vocab.from_text(corpus.text)
        if payload:
            unknown = vocab.unknown(corpus.text)
            if unknown:
                shown = " ".join(repr(c) for c in unknown[:20]) + (" …" if len(unknown) > 20 else "")
                raise CharlstmError(
                    f"cannot resume: the corpus has {len(unknown)} character(s) not in the checkpoint's vocabulary: {shown}"
                )
        ids = vocab.encode(corpus.text)
        train_ids, val_ids = split_train_val(ids, train_config.val_frac)
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
        self.device = pick_device(train_config.device)
        self.amp = autocast_dtype(train_config.precision, self.device)
        self.train_streams = Streams(train_ids, batch, seq_len, self.device)
        val_batch = max(1, min(batch, (len(val_ids) - 1) // seq_len or 1))
        self.val_streams = Streams(val_ids, val_batch, seq_len, self.device)

        # model and optimiser
        model_config = replace(model_config, vocab_size=len(vocab))
        self.model_config, self.config = model_config, train_config
        torch.manual_seed(train_config.seed)
        self.model = CharRNN(model_config).to(self.device)
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
        budget = ("max_steps", "epochs", "max_time")
        if explicit.intersection(budget):
            merged_train = replace(merged_train, **{b: getattr(train_config, b) for b in budget})
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
            self.optimizer.load_state_dict(payload["optimizer"])
            _check_optimizer_state(self.optimizer)
            self.progress = from_dict(Progress, payload.get("progress", {}))
            if not 0 <= self.progress.position < len(self.train_streams):
                self.progress.position = 0
            hidden = payload.get("hidden") or []
            if _hidden_fits(hidden, self.model_config, self.train_streams.batch):
                self.state = state_from_list(hidden, self.model_config.cell, self.device)
            rng = payload.get("rng", {})
            if "torch" in rng:
                torch.set_rng_state(rng["torch"])
            if "cuda" in rng and self.device.type == "cuda" and rng["cuda"]:
                torch.cuda.set_rng_state_all(rng["cuda"])
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, CharlstmError) as exc:
            raise CharlstmError(f"{self.resumed_from} cannot be resumed: {str(exc).splitlines()[0]}") from None
        rows = [r for r in ckpt.read_metrics(self.run_dir) if r.get("step", 0) <= self.progress.step]
        ckpt.rewrite_metrics(self.run_dir, rows)  # drop evaluations made after this checkpoint

    # ------------------------------------------------------------------------------------ budget

    def budget_fraction(self) -> float:
        """How much of the budget is spent, 0..1: the most advanced of the budgets given."""
        p, c = self.progress, self.config
        fractions = []
        if c.max_steps:
            fractions.append(p.step / c.max_steps)
        if c.max_time:
            fractions.append(p.train_seconds / c.max_time)
        if c.epochs:
            fractions.append(p.chars_seen / (c.epochs * self.train_streams.num_targets))
        return min(1.0, max(fractions)) if fractions else 0.0

    def _budget_reason(self) -> str | None:
        p, c = self.progress, self.config
        if c.max_steps and p.step >= c.max_steps:
            return "max_steps"
        if c.max_time and p.train_seconds >= c.max_time:
            return "max_time"
        if c.epochs and p.chars_seen >= c.epochs * self.train_streams.num_targets:
            return "epochs"
        return None

    # ------------------------------------------------------------------------------------ saving

    def checkpoint_payload(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "model_config": asdict(self.model_config),
            "train_config": asdict(self.config),
            "vocab": self.vocab.chars,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "progress": asdict(self.progress),
            "hidden": state_to_list(self.state),
            "rng": rng,
            "corpus": {"name": self.corpus.name, "sources": self.corpus.sources},
        }

    def save(self, best: bool = False) -> None:
        if not all(torch.isfinite(t).all() for t in self.model.parameters()):  # a NaN/inf step got through
            raise CharlstmError(
                f"the weights became NaN or infinite by step {self.progress.step}; stopped without saving them "
                f"(the last good checkpoint is kept); try a lower --lr (now {self.config.lr:g})"
            )
        ckpt.save_checkpoint(self.checkpoint_payload(), self.run_dir / ckpt.LATEST)
        if best:
            ckpt.copy_checkpoint(self.run_dir / ckpt.LATEST, self.run_dir / ckpt.BEST)
        ckpt.write_json(self.run_dir / ckpt.RUN_JSON, self.run_summary())

    def run_summary(self) -> dict[str, Any]:
        p = self.progress
        return {
            "corpus": {"name": self.corpus.name, "sources": self.corpus.sources, "chars": len(self.corpus.text)},
            "model_config": asdict(self.model_config),
            "train_config": asdict(self.config),
            "vocab_size": len(self.vocab),
            "params": self.model.num_params,
            "device": str(self.device),
            "precision": "bf16" if self.amp == torch.bfloat16 else "fp32",
            "step": p.step,
            "epoch": p.epoch,
            "chars_seen": p.chars_seen,
            "best_val_loss": _finite_or_none(p.best_val_loss),
            "best_val_bits_per_char": _finite_or_none(p.best_val_loss / math.log(2)),
            "last_val_loss": _finite_or_none(p.last_val_loss),
            "train_seconds": round(p.train_seconds, 3),
            "chars_per_second": round(p.chars_seen / p.train_seconds, 1) if p.train_seconds > 0 else 0.0,
            "checkpoint_format_version": ckpt.VERSION,
        }

    def _evaluate_and_save(self, save: bool = True) -> float:
        p = self.progress
        val_loss = evaluate(self.model, self.val_streams, self.amp)
        p.last_val_loss = val_loss
        improved = val_loss < p.best_val_loss
        if improved:
            p.best_val_loss = val_loss
        row = {
            "step": p.step,
            "chars_seen": p.chars_seen,
            "train_loss": p.loss_sum / p.loss_count if p.loss_count else None,
            "val_loss": val_loss,
            "val_bits_per_char": val_loss / math.log(2),
            "seconds": round(p.train_seconds, 3),
        }
        p.loss_sum, p.loss_count = 0.0, 0
        if save:
            self.save(best=improved)
        ckpt.append_metrics(self.run_dir, row)
        return val_loss

    # -------------------------------------------------------------------------------------- loop

    def train(
        self, should_stop: Callable[[int], bool] | None = None, show_progress: bool = True
    ) -> TrainResult:
        p, c = self.progress, self.config
        ckpt.prepare_run_dir(self.run_dir)
        model, optimizer, streams = self.model, self.optimizer, self.train_streams
        vocab_size = len(self.vocab)
        model.train()
        stopped_by = self._budget_reason()
        if stopped_by is None and not (c.max_steps or c.max_time or c.epochs):
            raise CharlstmError("no training budget: give --max-steps, --epochs or --max-time")
        # on GPU, reading the loss every step would stall the pipeline: read it every few steps
        sync_every = 1 if self.device.type == "cpu" else 16
        pending: list[torch.Tensor] = []
        last_save_time = p.train_seconds
        steps_since_save = 0
        bar = tqdm(
            total=1000,
            initial=int(self.budget_fraction() * 1000),
            disable=not show_progress,
            bar_format="{l_bar}{bar}| {elapsed}<{remaining}{postfix}",
            desc="train",
            dynamic_ncols=True,
            leave=False,
        )
        last_postfix = 0.0
        with _catch_stop_signals() as signals:
            while stopped_by is None:
                started = time.perf_counter()
                lr = lr_at(c, self.budget_fraction())
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if p.position == 0:
                    self.state = None  # the streams wrapped around: start from a zero state
                x, y = streams.batch_at(p.position)  # (B, T) each
                with _autocast(self.device, self.amp):
                    logits, state = model(x, self.state)  # (B, T, V)
                loss = F.cross_entropy(
                    logits.float().reshape(-1, vocab_size), y.reshape(-1), ignore_index=IGNORE_INDEX
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if c.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip, foreach=True)
                pending.append(loss.detach())
                if len(pending) >= sync_every:
                    self._consume(pending)  # raises on a NaN/inf loss, before the step poisons the weights
                optimizer.step()
                self.state = detach_state(state)
                p.chars_seen += streams.targets_in(p.position)
                p.step += 1
                p.position += 1
                if p.position == len(streams):
                    p.position = 0
                    p.epoch += 1
                p.train_seconds += time.perf_counter() - started
                steps_since_save += 1

                stopped_by = self._budget_reason()
                if stopped_by is None and should_stop is not None and should_stop(p.step):
                    stopped_by = "stop_request"
                if stopped_by is None and signals["signal"]:
                    stopped_by = "interrupt"
                if stopped_by in (None, "max_steps", "max_time", "epochs") and (
                    p.step % c.eval_every == 0 or stopped_by is not None
                ):
                    self._consume(pending)
                    self._evaluate_and_save()
                    last_save_time, steps_since_save = p.train_seconds, 0
                elif stopped_by is not None or self._save_due(steps_since_save, p.train_seconds - last_save_time):
                    self._consume(pending)
                    self.save()
                    last_save_time, steps_since_save = p.train_seconds, 0

                now = time.perf_counter()
                if show_progress and (now - last_postfix > 0.5 or stopped_by is not None):
                    last_postfix = now
                    bar.set_postfix_str(
                        f"step {p.step} loss {self.recent_loss or float('nan'):.3f} {p.chars_seen / max(p.train_seconds, 1e-9):,.0f} chars/s"
                        f" lr {lr:.2e}",
                        refresh=False,
                    )
                    bar.update(int(self.budget_fraction() * 1000) - bar.n)
        bar.close()
        if stopped_by == "interrupt":
            stopped_by = f"interrupt ({signals['signal']})"
        return self.result(stopped_by)

    def _consume(self, pending: list[torch.Tensor]) -> None:
        """Read the pending losses off the device into the running mean; a NaN/inf stops the run unsaved."""
        if not pending:
            return
        values = torch.stack(pending).tolist()
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
            params=self.model.num_params,
            vocab_size=len(self.vocab),
            device=str(self.device),
            precision="bf16" if self.amp == torch.bfloat16 else "fp32",
            resumed_from=self.resumed_from,
            notices=self.notices,
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
) -> TrainResult:
    trainer = Trainer(corpus, model_config, train_config, run_dir, resume_from, explicit, log)
    return trainer.train(should_stop=should_stop, show_progress=show_progress)
