"""The training loop: a truncated-BPTT step, the budget, the validation and save cadence, signals and the early
check of the speed.

It reports through events (`on_event(kind, data)`, see events.py) and prints nothing itself. The rest of the run
lives beside it: its set-up (setup.py), the validations, end reserve and samples (evaluation.py), the checkpoint
and summaries (checkpointing.py), and below them the budget and schedule (budget.py), resuming (resume.py),
scoring the validation split (validation.py) and the run directory (runs/directory.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from charlstm.config import (
    MIN_STEPS_BETWEEN_VALIDATIONS,
    VALIDATIONS_PER_RUN,
    ModelConfig,
    TrainConfig,
    format_duration,
)
from charlstm.data.corpus import Corpus
from charlstm.data.streams import Streams, fit_batch_shape
from charlstm.errors import CharlstmError
from charlstm.model.charrnn import detach_state
from charlstm.runs import directory as rundir
from charlstm.runtime import distributed, threads
from charlstm.runtime.device import autocast, autocast_dtype, check_autocast, configure_backends, pick_device
from charlstm.runtime.signals import StopSignals
from charlstm.training import budget as schedule
from charlstm.training import resume, setup, sizing, validation
from charlstm.training.budget import Progress, has_budget, lr_at
from charlstm.training.checkpointing import Checkpointing
from charlstm.training.evaluation import Evaluation
from charlstm.training.events import EventSink
from charlstm.training.loss import compiled_loss, window_loss_sum
from charlstm.training.summary import TrainResult, chars_per_second

# (train_chars, vocab_size, model_config, train_config) -> (model_config, train_config, plan): see run.py's
# --size auto
SizeFor = Callable[[int, int, ModelConfig, TrainConfig], tuple[ModelConfig, TrainConfig, "sizing.Plan"]]
# the early check of the training speed: after SPEED_WARMUP_STEPS steps (allocations, caches), over at least
# SPEED_CHECK_STEPS more and SPEED_CHECK_SHARE of a time budget (SPEED_CHECK_SECONDS at least), so that it ends
# within about the first 5% of the budget
SPEED_WARMUP_STEPS, SPEED_CHECK_STEPS, SPEED_CHECK_SHARE, SPEED_CHECK_SECONDS = 3, 10, 0.03, 1.0
REPLAN_WITHIN = 0.2  # a new shape replaces the model only while at most this share of the budget is spent


class Trainer(Checkpointing, Evaluation):
    """One run's training: set up by `__init__` (setup.py does the work), trained by `train()`. Its saves and
    summaries (checkpointing.py) and its validations, end reserve and samples (evaluation.py) are methods of the
    same object, written beside it."""

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
        `on_event(kind, data)` receives progress events (see events.py); `clock_start` is when the command
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
        if self.resume:
            model_config, train_config, notices = resume.merge_configs(
                self.resume, model_config, train_config, explicit
            )
            for text in notices:
                self._notice(text)
        self.dist, self.device = distributed.setup(pick_device(train_config.device))

        # data; then --size auto's shape for it (every rank measures, and all take rank 0's choice: the ranks must
        # build the same model) and a batch shape that fits it
        self.corpus = corpus
        self.data = setup.prepare_data(corpus, train_config, self.resume, self.run_dir, self.dist, self.emit)
        self.vocab = self.data.vocab
        self.plan: sizing.Plan | None = None  # what --size auto chose from (to choose again: _check_speed)
        if size_for is not None and self.resume is None:
            sized = size_for(len(self.data.train), len(self.vocab), model_config, train_config)
            model_config, train_config, self.plan = self.dist.gather_objects(sized)[0]
        setup.check_validation_split(len(self.data.val), self.dist)
        batch, seq_len, notice = fit_batch_shape(len(self.data.train), train_config.batch_size, train_config.seq_len)
        if notice:
            self._notice(notice)
            train_config = replace(train_config, batch_size=batch, seq_len=seq_len)
        configure_backends(self.device)
        self.amp = autocast_dtype(train_config.precision, self.device)
        check_autocast(self.device, self.amp)
        self.train_streams = Streams(self.data.train, batch, seq_len, self.device, rows=self.dist.rows(batch))
        # the periodic check scores a fixed, seeded slice spread over the split; the final evaluation the whole
        # split (or, for a huge one, a larger seeded slice), the periodic slice first: bounded, at inference speed
        val_chars = len(self.data.val)
        self.periodic_slice = validation.choose_slice(val_chars, train_config.eval_chars, train_config.seed)
        self.final_slice = validation.final_slice(
            val_chars, train_config.final_eval_chars, self.periodic_slice, train_config.seed + 1
        )
        # measured as the run goes (evaluation.py): for the reserve at the end of a time budget (None: not yet)
        self.last_eval_seconds = 0.0  # how long the last periodic validation took (to fit the budget)
        self.seconds_per_segment: float | None = None
        self.step_seconds_then: float | None = None  # the training step's time when seconds_per_segment was measured
        self.save_seconds: float | None = None
        self.sample_seconds = 0.0
        self.final_scored: tuple[int, bool] | None = None  # (characters, whole split) of this session's final
        self.start_states: tuple[int, list[torch.Tensor]] | None = None  # (step, states) of the last save, for samples
        self.sampled_at = -1  # the step of the last sample shown while training
        self.governor: threads.ThreadGovernor | None = None  # the CPU thread count (set while training)

        # model and optimiser, and where a resumed run was
        self.model_config = replace(model_config, vocab_size=len(self.vocab))
        self.config = train_config
        self.model, self.forward_model, self.optimizer = setup.build_model(
            self.model_config, train_config, self.device, self.dist
        )
        self.loss_sum = compiled_loss(self.device) if train_config.compile else window_loss_sum
        self.progress = Progress()
        self.state = None
        self.recent_loss: float | None = None  # smoothed, for the progress bar
        if self.resume:
            self.progress, self.state, notices = setup.restore_run(
                self.resume,
                self.model,
                self.optimizer,
                self.train_streams,
                self.config,
                self.run_dir,
                self.device,
                self.dist,
            )
            for text in notices:
                self._notice(text)

    def _notice(self, text: str) -> None:
        self.emit("note", {"text": f"note: {text}"})

    # ---------------------------------------------------------------------------- budget and clock

    def budget_fraction(self) -> float:
        """How much of the budget is spent, 0..1: the most advanced of the budgets given."""
        return schedule.budget_fraction(self.config, self.progress, self.train_streams.num_targets)

    def _budget_reason(self) -> str | None:
        return schedule.budget_reason(self.config, self.progress, self.train_streams.num_targets)

    def _tick(self) -> None:
        """Advance the run's wall clock to now (this rank's clock; the loop agrees on rank 0's)."""
        self.progress.elapsed_seconds = self.session_base + (time.perf_counter() - self.clock_start)

    @contextmanager
    def _phase(self, phase: str):
        """A slow part of the run: the bar says so, and a signal during it is handled as the phase allows."""
        self.emit("phase", {"phase": phase})
        try:
            with self.signals.phase_of(phase):
                yield
        finally:
            self.emit("phase", {"phase": "training"})

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
        streams, world = self.train_streams, self.dist.world_size
        self.signals.phase = "training"
        self.forward_model.train()
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
        pending: list[torch.Tensor] = []  # losses of steps not read off the device yet
        last_save_time, steps_since_save = p.train_seconds, 0
        session_started, session_step, session_chars = time.perf_counter(), p.step, p.chars_seen
        session_elapsed = p.elapsed_seconds
        speed_from: tuple[int, int, float] | None = None  # (step, chars_seen, train_seconds) after the warm-up
        while stopped_by is None:
            lr = self._step(pending, sync_every)
            steps_since_save += 1
            self._tick()
            stopped_by = self._stop_reason(should_stop)
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
                    self.forward_model.train()
                    pending.clear()
                    last_save_time, steps_since_save = 0.0, 0
                    session_started, session_step, session_chars = time.perf_counter(), 0, 0
                    continue
            if self._validate_or_save(stopped_by, pending, steps_since_save, p.train_seconds - last_save_time):
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

    def _step(self, pending: list[torch.Tensor], sync_every: int) -> float:
        """One truncated-BPTT step on the window at `progress.position`, at the learning rate of this point of the
        budget; its loss joins `pending` (read off the device every `sync_every` steps). Returns the rate."""
        p, c, streams = self.progress, self.config, self.train_streams
        started = time.perf_counter()
        lr = lr_at(c, self.budget_fraction(), p)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if p.position == 0:
            self.state = None  # the streams wrapped around: start from a zero state
        x, y = streams.batch_at(p.position)  # (R, T) each: this rank's rows (R = B single-process)
        targets = streams.targets_in(p.position)  # real targets of the window, all ranks' rows
        with autocast(self.device, self.amp):
            logits, state = self.forward_model(x, self.state)  # (R, T, V)
        # summed over this rank's rows, divided by the real targets of the window on all ranks, times the ranks:
        # DDP's gradient average is then the gradient of the mean over all B rows, exactly
        loss = self.loss_sum(logits, y) * (self.dist.world_size / targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.forward_model.parameters(), c.grad_clip, foreach=True)
        pending.append(loss.detach())
        if len(pending) >= sync_every:
            self._consume(pending)  # raises on a NaN/inf loss, before the step poisons the weights
        self.optimizer.step()
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
        return lr

    def _stop_reason(self, should_stop: Callable[[int], bool] | None) -> str | None:
        """What stops the run after this step, if anything: its budget, `should_stop`, or a signal. Every rank
        takes rank 0's clock, and stops when any rank asks to or got a signal."""
        p = self.progress
        requested = should_stop is not None and should_stop(p.step)
        p.elapsed_seconds, requested, signalled = self.dist.agree(
            p.elapsed_seconds, requested, self.signals.received is not None
        )
        self.session_base = p.elapsed_seconds - (time.perf_counter() - self.clock_start)
        stopped_by = self._budget_reason()
        if stopped_by is None and requested:
            stopped_by = "stop_request"
        if stopped_by is None and signalled:
            stopped_by = "interrupt"
        return stopped_by

    def _validate_or_save(
        self, stopped_by: str | None, pending: list[torch.Tensor], steps_since_save: int, seconds_since_save: float
    ) -> bool:
        """After a step: the final evaluation when the budget is spent, a periodic validation when one is due, else
        a save when one is due or the run stops. Returns whether the run saved."""
        p, c = self.progress, self.config
        if stopped_by in ("max_steps", "max_time", "epochs"):
            self._consume(pending)
            self._evaluate_and_save(final=True)
            return True
        if stopped_by is None and self._validation_due():
            self._consume(pending)
            # a validation that would end past a time budget is left to the final one, which comes anyway
            # (single-process only: each rank times its own validations, and ranks must decide alike)
            left = schedule.training_seconds(c, p) - p.elapsed_seconds if c.max_time else None
            if self.dist.world_size == 1 and left is not None and left < self.last_eval_seconds:
                return False
            self._evaluate_and_save()
            return True
        if stopped_by is not None or self._save_due(steps_since_save, seconds_since_save):
            self._consume(pending)
            if stopped_by is not None and self._validation_due():
                p.eval_pending = True  # stopped where a validation was due: it runs first on resume
            self.save()
            return True
        return False

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
        self.model, self.forward_model, self.optimizer = setup.build_model(
            self.model_config, train_config, self.device, self.dist
        )
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
