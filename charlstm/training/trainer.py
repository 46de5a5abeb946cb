"""The training loop: set-up, a truncated-BPTT step, periodic validation, the save cadence and signals.

It reports through events (`on_event(kind, data)`, see progress.py) and prints nothing itself. The decisions
around it live below it: the budget and schedule (schedule.py), resuming (resume.py), validation
(validation.py), the checkpoint and run directory (checkpoint.py, rundir.py) and the summaries (summary.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from charlstm.checkpoint import store as checkpoint
from charlstm.config import (
    MIN_STEPS_BETWEEN_VALIDATIONS,
    VALIDATIONS_PER_RUN,
    ModelConfig,
    SampleConfig,
    TrainConfig,
    format_duration,
)
from charlstm.data.corpus import Corpus
from charlstm.data.streams import Streams, fit_batch_shape
from charlstm.data.tokens import check_trainable, prepare_tokens
from charlstm.data.vocab import Vocab
from charlstm.errors import CharlstmError
from charlstm.generate.sample import LoadedModel, sample_text
from charlstm.generate.starts import record_start_states
from charlstm.model.charrnn import CharRNN, detach_state
from charlstm.runs import directory as rundir
from charlstm.runtime import distributed, threads
from charlstm.runtime.device import (
    autocast,
    autocast_dtype,
    check_autocast,
    configure_backends,
    pick_device,
    precision_name,
)
from charlstm.runtime.signals import StopSignals
from charlstm.training import budget as schedule
from charlstm.training import resume, sizing, validation
from charlstm.training.budget import Progress, has_budget, lr_at
from charlstm.training.events import EventSink
from charlstm.training.loss import compiled_loss, window_loss_sum
from charlstm.training.summary import TrainResult, chars_per_second, run_summary

# (train_chars, vocab_size, model_config, train_config) -> (model_config, train_config, plan): see train.py's
# --size auto
SizeFor = Callable[[int, int, ModelConfig, TrainConfig], tuple[ModelConfig, TrainConfig, "sizing.Plan"]]
START_STATE_CONTEXT = 128  # characters read before each record start state (see _start_states)
# the early check of the training speed: after SPEED_WARMUP_STEPS steps (allocations, caches), over at least
# SPEED_CHECK_STEPS more and SPEED_CHECK_SHARE of a time budget (SPEED_CHECK_SECONDS at least), so that it ends
# within about the first 5% of the budget
SPEED_WARMUP_STEPS, SPEED_CHECK_STEPS, SPEED_CHECK_SHARE, SPEED_CHECK_SECONDS = 3, 10, 0.03, 1.0
REPLAN_WITHIN = 0.2  # a new shape replaces the model only while at most this share of the budget is spent
# the end of a time budget is reserved for the final evaluation, its save and its sample: their measured cost
# times RESERVE_MARGIN plus RESERVE_SECONDS (a machine that slows down at the end gets a shorter final evaluation)
RESERVE_MARGIN, RESERVE_SECONDS = 1.25, 0.25
# the final evaluation takes at most this share of a time budget (the periodic slice at least): past it, the final
# slice is scored in part (a representative part, see validation.py), so that a short run does not spend a third
# of its budget scoring a large split
FINAL_SHARE = 0.1


class Trainer:
    def __init__(
        self,
        corpus: Corpus,
        model_config: ModelConfig,
        train_config: TrainConfig,
        run_dir: Path | str,
        resume_from: Path | resume.Resume | None = None,
        explicit: set[str] = frozenset(),
        on_event: EventSink | None = None,
        clock_start: float | None = None,
        signals: StopSignals | None = None,
        size_for: SizeFor | None = None,
    ):
        """`resume_from`: a run directory or checkpoint (or one loaded already) to continue, whose directory the
        run then writes to; `explicit`: the config fields the user gave (on resume they replace the saved ones);
        `on_event(kind, data)` receives progress events (see progress.py); `clock_start` is when the command
        started (time.perf_counter()), so that --max-time counts reading the corpus too (default: now);
        `signals` are the run's signal handlers when installed already (by `train()`, before the corpus is
        read); without them, `train()` installs its own. `size_for(train_chars, vocab_size, model_config,
        train_config)`, for a new run, may replace both configs once the corpus is read (`--size auto`)."""
        self.clock_start = time.perf_counter() if clock_start is None else clock_start
        self.session_base = 0.0  # the run's wall clock when this session's clock started
        self.own_signals = signals is None  # installed by train() below, for the loop only
        self.signals = signals if signals is not None else StopSignals()
        self.emit: EventSink = on_event if on_event is not None and distributed.is_main_process() else _ignore
        self.resume = resume.load(resume_from) if isinstance(resume_from, (str, Path)) else resume_from
        self.run_dir = self.resume.run_dir(run_dir) if self.resume else Path(run_dir)
        self.saved_config: TrainConfig | None = None  # the checkpoint's own training config, on resume
        if self.resume:
            self.saved_config = self.resume.train_config
            model_config, train_config, notices = resume.merge_configs(
                self.resume, model_config, train_config, explicit
            )
            for text in notices:
                self._notice(text)

        self.dist, self.device = distributed.setup(pick_device(train_config.device))

        # data: ids in a compact dtype (memory-mapped for a large corpus), split on a record boundary; with
        # several ranks, rank 0 encodes (and caches) first, and the others then reuse its cache
        saved_vocab = Vocab(self.resume.payload["vocab"]) if self.resume else None
        self.data = self.dist.in_turn(
            lambda: prepare_tokens(corpus, train_config.val_frac, vocab=saved_vocab, cache_dir=self.run_dir)
        )
        for note in self.data.notes:
            self.emit("note", {"text": note})
        vocab, train_ids, val_ids = self.data.vocab, self.data.train, self.data.val
        distinct = [c for c in vocab.chars if c] if saved_vocab is None else None  # a saved vocabulary says nothing
        check_trainable(len(self.data.ids), distinct, train_config.val_frac)
        unknown = vocab.unknown(train_config.sample_prime) if train_config.sample_every != 0 else []
        if unknown:  # before --size auto measures anything
            raise CharlstmError(
                "--sample-prime has characters the corpus does not have: " + " ".join(repr(c) for c in unknown[:20])
            )
        self.plan: sizing.Plan | None = None  # what --size auto chose from (to choose again: _check_speed)
        if size_for is not None and self.resume is None:
            # every rank measures, and all take rank 0's choice: the ranks must build the same model
            sized = size_for(len(train_ids), len(vocab), model_config, train_config)
            model_config, train_config, self.plan = self.dist.gather_objects(sized)[0]
        if len(val_ids) < max(2, self.dist.world_size + 1):
            processes = f" for {self.dist.world_size} processes" if self.dist.enabled else ""
            raise CharlstmError(
                f"validation split too small ({len(val_ids)} characters){processes}; add text or raise --val-frac"
            )
        batch, seq_len, notice = fit_batch_shape(len(train_ids), train_config.batch_size, train_config.seq_len)
        if notice:
            self._notice(notice)
            train_config = replace(train_config, batch_size=batch, seq_len=seq_len)
        self.vocab = vocab
        self.corpus = corpus
        self.start_states: tuple[int, list[torch.Tensor]] | None = None  # (step, states) of the last save, for samples
        self.sampled_at = -1  # the step of the last sample shown while training
        configure_backends(self.device)
        self.amp = autocast_dtype(train_config.precision, self.device)
        check_autocast(self.device, self.amp)
        self.train_streams = Streams(train_ids, batch, seq_len, self.device, rows=self.dist.rows(batch))
        # the periodic check scores a fixed, seeded slice spread over the split; the final evaluation the whole
        # split (or, for a huge one, a larger seeded slice), the periodic slice first: bounded, at inference speed
        self.periodic_slice = validation.choose_slice(len(val_ids), train_config.eval_chars, train_config.seed)
        self.final_slice = validation.final_slice(
            len(val_ids), train_config.final_eval_chars, self.periodic_slice, train_config.seed + 1
        )
        self.last_eval_seconds = 0.0  # how long the last periodic validation took (to fit the budget)
        # measured costs, for the reserve at the end of a time budget (None: not measured yet)
        self.seconds_per_segment: float | None = None
        self.step_seconds_then: float | None = None  # the training step's time when seconds_per_segment was measured
        self.save_seconds: float | None = None
        self.sample_seconds = 0.0
        self.final_scored: tuple[int, bool] | None = None  # (characters, whole split) of this session's final
        self.governor: threads.ThreadGovernor | None = None  # the CPU thread count (set while training)

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
        if self.resume:
            self.progress, self.state, notices = resume.restore(
                self.resume, self.model, self.optimizer, self.train_streams, self.device, self.dist
            )
            for text in notices:
                self._notice(text)
            if self.dist.is_main:
                rows = [r for r in rundir.read_metrics(self.run_dir) if r.get("step", 0) <= self.progress.step]
                rundir.rewrite_metrics(self.run_dir, rows)  # drop evaluations made after this checkpoint
                samples = [r for r in rundir.read_samples(self.run_dir) if r.get("step", 0) <= self.progress.step]
                rundir.rewrite_samples(self.run_dir, samples)  # and the samples
            notice = schedule.replan(self.saved_config, self.config, self.progress, self.train_streams.num_targets)
            if notice:
                self._notice(notice)

    # ------------------------------------------------------------------------------ set-up helpers

    def _notice(self, text: str) -> None:
        self.emit("note", {"text": f"note: {text}"})

    def _wrap(self, model: CharRNN) -> torch.nn.Module:
        """DistributedDataParallel around the model when there are several ranks (`self.model` stays the bare
        module: checkpoints and evaluation use it)."""
        if not self.dist.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (no_decay if p.ndim < 2 or name.startswith("embed") else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=self.config.lr, betas=(0.9, 0.99), fused=True)

    # ------------------------------------------------------------------------------------ budget

    def budget_fraction(self) -> float:
        """How much of the budget is spent, 0..1: the most advanced of the budgets given."""
        return schedule.budget_fraction(self.config, self.progress, self.train_streams.num_targets)

    def _budget_reason(self) -> str | None:
        return schedule.budget_reason(self.config, self.progress, self.train_streams.num_targets)

    # ------------------------------------------------------------------------------------ saving

    def checkpoint_payload(self) -> dict[str, Any]:
        """Everything to resume; distributed, every rank must call it (it gathers hidden and RNG states)."""
        rng = resume.rng_state(self.device)
        if self.dist.enabled:
            rng["ranks"] = self.dist.gather_objects(resume.rng_state(self.device))
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
        states = record_start_states(
            self.model, self.data.train, eor, context=START_STATE_CONTEXT, seed=self.config.seed
        )
        self.start_states = (self.progress.step, states)  # a sample at this step starts from them too
        return states

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
        started = time.perf_counter()
        with self._phase("saving"):
            self._tick()
            payload = self.checkpoint_payload()
            error = None
            if self.dist.is_main:
                try:
                    checkpoint.save_checkpoint(payload, self.run_dir / rundir.LATEST)
                    if best:
                        checkpoint.copy_checkpoint(self.run_dir / rundir.LATEST, self.run_dir / rundir.BEST)
                    rundir.write_run_json(self.run_dir, self.summary())
                except BaseException as exc:  # a full disk, say: every rank stops, not only rank 0
                    error = exc
            self.dist.settle(error, "saving a checkpoint")
        self.save_seconds = time.perf_counter() - started

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

    # --------------------------------------------------------------------------------- summaries

    def corpus_summary(self) -> dict[str, Any]:
        """Where the corpus came from, how to load it again, and its size in characters and records."""
        return {**self.corpus.summary(), **self.data.summary()}

    def summary(self) -> dict[str, Any]:
        """run.json's content (and the result's)."""
        return run_summary(
            corpus=self.corpus_summary(),
            model_config=asdict(self.model_config),
            train_config=asdict(self.config),
            vocab_size=len(self.vocab),
            params=self.model.num_params,
            progress=self.progress,
            validation=self.validation_summary(),
            device=str(self.device),
            precision=precision_name(self.amp),
            world_size=self.dist.world_size,
            threads=self.governor.current if self.governor is not None and self.governor.enabled else None,
        )

    def validation_summary(self) -> dict[str, Any]:
        """Which validation figure is which: the periodic one (best_val_loss, last_val_loss, metrics.jsonl's
        val_loss) scores a fixed slice; the final one (final_val_loss) the whole split or a larger slice."""
        return {
            "split_chars": len(self.data.val) - 1,
            "periodic_chars": self.periodic_slice.chars,
            "periodic_whole_split": self.periodic_slice.whole,
            "final_chars": self.final_slice.chars,
            # what the final evaluation scored: less than its slice when --max-time ended it early
            "final_scored_chars": self.final_scored[0] if self.final_scored else None,
            "final_whole_split": self.final_slice.whole if not self.final_scored else self.final_scored[1],
        }

    def result(self, stopped_by: str) -> TrainResult:
        return TrainResult(
            run_dir=self.run_dir,
            stopped_by=stopped_by,
            summary=self.summary(),
            budget=schedule.budget_text(self.config),
            extend_with=schedule.extended_budget(self.config),
            resumed_from=str(self.resume.path) if self.resume else None,
        )

    # -------------------------------------------------------------------------------- validation

    def _score(self, chosen: validation.Slice, deadline: float | None = None) -> validation.Scores | None:
        """Loss sums over a slice of the validation split (see validation.py), or None when a signal cut it short.
        Scored in fp32 whatever the training precision: the weights as saved, as sampling and `charlstm eval` read
        them (bf16 autocast moves the figure by a few thousandths of a nat/char). With a `deadline`, the scoring
        ends there (once a first batch of segments is scored). The bar follows it."""

        def progress(done: int, total: int) -> None:
            self._tick()
            self.emit("progress", {"done": done, "total": total, **self._clock()})

        return validation.score_slice(
            self.model,
            self.data.val,
            chosen,
            self.device,
            None,
            self.dist,
            should_abort=lambda: self.signals.received is not None,
            deadline=deadline,
            at_least=min(chosen.periodic, validation.ROWS),
            on_progress=progress,
        )

    def _clock(self) -> dict[str, Any]:
        """Where the run is, for the bar: the share of the whole budget spent, elapsed and remaining seconds."""
        p, c = self.progress, self.config
        remaining = max(0.0, c.max_time - p.elapsed_seconds) if c.max_time else None
        fraction = schedule.run_fraction(c, p, self.train_streams.num_targets)
        return {"fraction": fraction, "elapsed": p.elapsed_seconds, "remaining": remaining}

    def _final_deadline(self) -> float | None:
        """When the final evaluation must end (time.perf_counter()) for the run to end by --max-time: the time
        left less its save and sample (None without a time budget)."""
        if not self.config.max_time:
            return None
        self._tick()
        after = RESERVE_MARGIN * ((self.save_seconds or 0.0) + self.sample_seconds) * self._slowdown()
        return time.perf_counter() + self.config.max_time - self.progress.elapsed_seconds - after

    def _update_reserve(self) -> None:
        """The seconds a time budget keeps for its end (Progress.end_reserve_seconds), from the costs measured so
        far: scoring the final slice at the periodic validations' speed, a save and a sample. Every rank takes
        rank 0's figure (their decisions depend on it)."""
        c, p = self.config, self.progress
        if not c.max_time:
            return
        if self.seconds_per_segment is not None:
            per_segment = self.seconds_per_segment * self._slowdown()
        else:  # nothing measured yet: inference reads characters about 3 times as fast as training does
            speed = chars_per_second(p.chars_seen, p.train_seconds) or c.planned_chars_per_second or 0.0
            per_segment = (validation.SEGMENT + validation.BURN_IN) / (3 * speed) if speed else 0.0
        whole = per_segment * len(self.final_slice.segments)
        evaluation = min(whole, max(per_segment * self.final_slice.periodic, FINAL_SHARE * c.max_time))
        save = (self.save_seconds if self.save_seconds is not None else 0.0) * self._slowdown()
        reserve = RESERVE_MARGIN * (evaluation + save + self.sample_seconds * self._slowdown()) + RESERVE_SECONDS
        p.end_reserve_seconds = self.dist.agree(min(reserve, 0.5 * c.max_time))[0]

    def _slowdown(self) -> float:
        """How much slower the machine is now than when the costs were measured, from the training step's time
        (on a CPU shared with other processes, evaluation slows down as training does)."""
        now = self.governor.median() if self.governor is not None else None
        if now is None or self.step_seconds_then is None:
            return 1.0
        return min(20.0, max(0.25, now / self.step_seconds_then))

    def _evaluate_and_save(self, final: bool = False) -> None:
        """The periodic validation, then a save (best.pt too when it improved); at the end of the budget the final
        evaluation, whose first segments are the periodic slice's (one pass gives both figures). A signal during
        a validation leaves it pending (run first on resume) and saves."""
        p = self.progress
        chosen = self.final_slice if final else self.periodic_slice
        started = time.perf_counter()
        with self._phase("final evaluation" if final else "validating"):
            scores = self._score(chosen, deadline=self._final_deadline() if final else None)
        if scores is None:
            p.eval_pending = True
            self.save()
            return
        seconds = time.perf_counter() - started
        if scores.done:
            self.seconds_per_segment = seconds / scores.done
            self.step_seconds_then = self.governor.median() if self.governor is not None else None
        if not final:
            self.last_eval_seconds = seconds
        val_loss = scores.mean(0, chosen.periodic)
        p.eval_pending = False
        p.last_val_loss = val_loss
        p.last_eval_step, p.last_eval_fraction = p.step, self.budget_fraction()
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
            "val_chars": int(scores.counts[: chosen.periodic].sum()),
            "seconds": round(p.train_seconds, 3),
            "elapsed": round(p.elapsed_seconds, 3),
        }
        p.loss_sum, p.loss_count = 0.0, 0
        if final:
            whole = chosen.whole and scores.done == len(chosen.segments)
            p.final_val_loss = scores.mean()
            row.update(final_val_loss=p.final_val_loss, final_val_chars=scores.chars, final_whole=whole)
            self.final_scored = (scores.chars, whole)
            if scores.done < len(chosen.segments):
                self._notice(
                    f"the final evaluation scored {scores.chars:,} of {chosen.chars:,} characters to end within "
                    f"--max-time (the machine ran slower than the run measured)"
                )
        else:
            self._update_reserve()
        self.save(best=improved)
        if self.dist.is_main:
            rundir.append_metrics(self.run_dir, row)
        self.emit("validation", {"row": row, "improved": improved})
        if final:
            self.emit("validation", {"row": row, "improved": False, "final": True})
        if self.config.sample_every is None or (final and self.config.sample_every):
            self.sample_while_training()

    # ----------------------------------------------------------------------------------- samples

    def sample_while_training(self) -> None:
        """A short seeded sample of the model as it is now: emitted as a "sample" event and appended to
        samples.jsonl (rank 0 only; nothing else of the run changes, so a resumed run stays exact).

        It runs on a CPU copy of the weights in eval mode (no dropout), with charlstm's fast CPU sampler and
        its own seeded generator: the model, the optimizer and the training random state are not touched.
        The seed is the run's, the same at every sample, so that samples differ by what the model learned."""
        p, c = self.progress, self.config
        if not self.dist.is_main or self.sampled_at == p.step or self.signals.received is not None:
            return
        self.sampled_at = p.step
        started = time.perf_counter()
        with self._phase("sampling"):
            with torch.random.fork_rng(devices=[]):  # a new model's initial weights must not use the run's RNG
                model = CharRNN(self.model_config)
            model.load_state_dict({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
            model.eval()
            payload = {"start_states": self._sample_start_states(model)} if self.data.record_lengths is not None else {}
            loaded = LoadedModel(model=model, vocab=self.vocab, path=self.run_dir, payload=payload)
            config = SampleConfig(length=c.sample_length, temperature=c.sample_temp, prime=c.sample_prime, seed=c.seed)
            text = sample_text(loaded, config)[0]
        self.sample_seconds = time.perf_counter() - started
        self._tick()
        row = {
            "step": p.step,
            "chars_seen": p.chars_seen,
            "val_loss": p.last_val_loss if math.isfinite(p.last_val_loss) else None,
            "temperature": c.sample_temp,
            "text": text,
            "seconds": round(time.perf_counter() - started, 4),
        }
        rundir.append_sample(self.run_dir, row)
        self.emit("sample", {"row": row})

    def _sample_start_states(self, model: CharRNN) -> list[torch.Tensor] | None:
        """A record-trained model's start states at this step: those the save at this step computed, else
        computed now on the sample's CPU copy (from the step's weights alone, so a resumed run samples alike)."""
        eor = self.vocab.end_of_record
        if self.start_states is not None and self.start_states[0] == self.progress.step:
            return self.start_states[1]
        if eor is None:
            return None
        return record_start_states(model, self.data.train, eor, context=START_STATE_CONTEXT, seed=self.config.seed)

    # -------------------------------------------------------------------------------------- loop

    def train(self, should_stop: Callable[[int], bool] | None = None) -> TrainResult:
        """Run until the budget is spent, `should_stop(step)` says so, or a signal arrives (Ctrl-C and SIGTERM
        are handled here unless `train()` installed them already)."""
        start = self.plan.cost.threads if self.plan is not None and self.plan.cost is not None else None
        self.governor = threads.ThreadGovernor(enabled=self.device.type == "cpu", start=start)
        try:
            if not self.own_signals:
                return self._train(should_stop)
            self.signals.on_signal = lambda name, phase: self.emit("signal", {"signal": name, "phase": phase})
            with self.signals:
                return self._train(should_stop)
        finally:
            self.governor.close()

    def _train(self, should_stop: Callable[[int], bool] | None) -> TrainResult:
        p, c = self.progress, self.config
        self.session_base = p.elapsed_seconds
        if self.dist.is_main:
            rundir.prepare_run_dir(self.run_dir)
            if self.resume is None and p.step == 0:
                rundir.rewrite_metrics(self.run_dir, [])  # a new run: no evaluations from an earlier one
                rundir.rewrite_samples(self.run_dir, [])
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
        if stopped_by is not None and self.resume is not None:
            if not math.isfinite(p.final_val_loss) and self.signals.received is None:
                self._evaluate_and_save(final=True)  # the run was stopped before its final evaluation
            return self.result("budget_spent")
        if stopped_by is None and not has_budget(c):
            raise CharlstmError("no training budget: give --max-steps, --epochs or --max-time")
        if p.step == 0:
            self._update_reserve()  # estimated until the first validation measures it
        # on GPU, reading the loss every step would stall the pipeline: read it every few steps
        sync_every = 1 if self.device.type == "cpu" else 16
        pending: list[torch.Tensor] = []
        last_save_time = p.train_seconds
        steps_since_save = 0
        session_started, session_step, session_chars = time.perf_counter(), p.step, p.chars_seen
        session_elapsed = p.elapsed_seconds
        speed_from: tuple[int, int, float] | None = None  # (step, chars_seen, train_seconds) after the warm-up
        while stopped_by is None:
            started = time.perf_counter()
            lr = lr_at(c, self.budget_fraction(), p)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if p.position == 0:
                self.state = None  # the streams wrapped around: start from a zero state
            x, y = streams.batch_at(p.position)  # (R, T) each: this rank's rows (R = B single-process)
            targets = streams.targets_in(p.position)  # real targets of the window, all ranks' rows
            with autocast(self.device, self.amp):
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
            step_seconds = time.perf_counter() - started
            p.train_seconds += step_seconds
            self.governor.after_step(step_seconds)
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
            remaining = schedule.remaining_seconds(
                c,
                p,
                streams.num_targets,
                time.perf_counter() - session_started,
                p.step - session_step,
                p.chars_seen - session_chars,
            )
            if c.max_time and (world == 1 or p.step % 10 == 0):
                self._update_reserve()  # follows the machine's speed (the ranks agree on rank 0's)
            if stopped_by is None and p.checked_chars_per_second == 0:
                if speed_from is None and p.step - session_step >= SPEED_WARMUP_STEPS:
                    speed_from = (p.step, p.chars_seen, p.train_seconds)
                due = speed_from is not None and self._speed_check_due(speed_from, p.elapsed_seconds - session_elapsed)
                if due and self._check_speed(speed_from):  # a new model: the run starts again with it
                    p, c = self.progress, self.config
                    model, optimizer = self.forward_model, self.optimizer
                    model.train()
                    pending.clear()
                    last_save_time, steps_since_save = 0.0, 0
                    session_started, session_step, session_chars = time.perf_counter(), 0, 0
                    continue
            if stopped_by in ("max_steps", "max_time", "epochs"):
                self._consume(pending)
                self._evaluate_and_save(final=True)
                last_save_time, steps_since_save = p.train_seconds, 0
            elif stopped_by is None and self._validation_due():
                self._consume(pending)
                # a validation that would end past a time budget is left to the final one, which comes anyway
                # (single-process only: each rank times its own validations, and ranks must decide alike)
                left = schedule.training_seconds(c, p) - p.elapsed_seconds if c.max_time else None
                if not (world == 1 and left is not None and left < self.last_eval_seconds):
                    self._evaluate_and_save()
                    last_save_time, steps_since_save = p.train_seconds, 0
            elif stopped_by is not None or self._save_due(steps_since_save, p.train_seconds - last_save_time):
                self._consume(pending)
                if stopped_by is not None and self._validation_due():
                    p.eval_pending = True  # stopped where a validation was due: it runs first on resume
                self.save()
                last_save_time, steps_since_save = p.train_seconds, 0
            if stopped_by is None and c.sample_every and p.step % c.sample_every == 0:
                self.sample_while_training()
            # a signal during a validation (every rank cut it short together and saved) or, single-process,
            # during a save or the bookkeeping after the step: stop here (saved unless already)
            if stopped_by is None and (p.eval_pending or (world == 1 and self.signals.received is not None)):
                stopped_by = "interrupt"
                if not p.eval_pending and steps_since_save:
                    self._consume(pending)
                    self.save()
            self.emit(
                "step",
                {
                    "step": p.step,
                    "fraction": schedule.run_fraction(c, p, streams.num_targets),
                    "loss": self.recent_loss,
                    "chars_per_second": chars_per_second(p.chars_seen, p.train_seconds),
                    "lr": lr,
                    "elapsed": p.elapsed_seconds,
                    "remaining": remaining,
                    "last": stopped_by is not None,
                },
            )
        if stopped_by == "interrupt":
            stopped_by = f"interrupt ({self.signals.received or 'signal to another rank'})"
        return self.result(stopped_by)

    def _validation_due(self) -> bool:
        """Whether a periodic validation is due after this step: every --eval-every steps when given, else each
        time another 1/VALIDATIONS_PER_RUN of the budget is spent (by the clock for a time budget, so that a run
        draws the same curve on a fast or a slow machine), MIN_STEPS_BETWEEN_VALIDATIONS steps apart at least."""
        c, p = self.config, self.progress
        if c.eval_every:
            return p.step % c.eval_every == 0
        if p.step - p.last_eval_step < MIN_STEPS_BETWEEN_VALIDATIONS:
            return False
        return int(self.budget_fraction() * VALIDATIONS_PER_RUN) > int(p.last_eval_fraction * VALIDATIONS_PER_RUN)

    def _speed_check_due(self, speed_from: tuple[int, int, float], session_elapsed: float) -> bool:
        """The early check of the speed: SPEED_CHECK_STEPS steps after the warm-up at least, and a few seconds of
        the run's clock (the ranks agree on it)."""
        c = self.config
        wanted = max(SPEED_CHECK_SECONDS, SPEED_CHECK_SHARE * c.max_time) if c.max_time else SPEED_CHECK_SECONDS
        return self.progress.step - speed_from[0] >= SPEED_CHECK_STEPS and session_elapsed >= wanted

    def _check_speed(self, speed_from: tuple[int, int, float]) -> bool:
        """Measure the training speed since the warm-up and record it. Where it is more than REPLAN_FACTOR times
        off what --size auto planned, choose again for it: a new shape starts the run again (what was trained,
        a few percent of the budget, is dropped) unless the run was resumed or is past REPLAN_WITHIN; the
        budget's schedule and validation cadence follow the clock anyway. Says so in one line. Returns whether
        the run starts again."""
        p, c = self.progress, self.config
        _, chars, seconds = speed_from
        measured = chars_per_second(p.chars_seen - chars, p.train_seconds - seconds)
        measured = self.dist.agree(measured)[0]  # rank 0's, so that every rank decides alike
        p.checked_chars_per_second = measured
        planned = c.planned_chars_per_second
        if self.plan is None or not c.max_time or not sizing.off_plan(planned, measured):
            return False
        left = max(1.0, c.max_time - p.elapsed_seconds)
        model_config, train_config, plan = sizing.replan(self.plan, self.model_config, c, measured, left)
        head = sizing.speed_words(measured, planned)
        was = f"{self.model_config.layers} x {self.model_config.hidden}"
        now = f"{model_config.layers} x {model_config.hidden}"
        if now == was or self.resume is not None or self.budget_fraction() > REPLAN_WITHIN:
            text = f"{head}: keeping {was}" + ("" if now == was else f" ({now} would fit that speed; trained too far)")
            self.config = replace(c, replanned=text)
            self._notice(text)
            return False
        text = (
            f"{head}: re-planned to {sizing.shape_words(model_config, train_config)} for the "
            f"{format_duration(left)} left, starting again"
        )
        self.plan = plan
        self._restart(
            model_config,
            replace(
                train_config,
                batch_size=c.batch_size,
                seq_len=c.seq_len,
                planned_chars_per_second=planned,
                replanned=text,
            ),
        )
        self._notice(text)
        return True

    def _restart(self, model_config: ModelConfig, train_config: TrainConfig) -> None:
        """Start the run again with another model (a re-plan early in the run): new weights and optimiser, and the
        progress back to step 0 but for the wall clock; the learning rate warms up again from zero."""
        old = self.progress
        self.model_config, self.config = replace(model_config, vocab_size=len(self.vocab)), train_config
        torch.manual_seed(train_config.seed)
        self.model = CharRNN(self.model_config).to(self.device)
        if self.dist.rank > 0:
            torch.manual_seed(train_config.seed + self.dist.rank)
        self.forward_model = self._wrap(self.model)
        self.optimizer = self._make_optimizer()
        self.progress = Progress(
            elapsed_seconds=old.elapsed_seconds,
            end_reserve_seconds=old.end_reserve_seconds,
            checked_chars_per_second=old.checked_chars_per_second,
        )
        fraction = self.budget_fraction()
        self.progress.ramp_from, self.progress.ramp_to, self.progress.ramp_lr = (
            fraction,
            min(1.0, fraction + train_config.warmup_frac),
            0.0,
        )
        self.state, self.recent_loss, self.start_states, self.sampled_at = None, None, None, -1
        self.governor.reset()
        if self.dist.is_main:
            rundir.rewrite_metrics(self.run_dir, [])
            rundir.rewrite_samples(self.run_dir, [])

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
        return bool(
            (c.save_every and steps >= c.save_every) or (c.save_every_seconds and seconds >= c.save_every_seconds)
        )


def _ignore(kind: str, data: dict[str, Any]) -> None:
    """The event sink of a trainer nobody watches (and of every rank but 0: rank 0 speaks for all)."""
