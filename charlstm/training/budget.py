"""Where a run is and what it may still spend: the `Progress` record every checkpoint holds, the budget
(--max-steps, --epochs, --max-time: totals for the run), and the learning rate at each point of it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from charlstm.config import DEFAULT_MAX_TIME, TrainConfig, format_count, format_duration

BUDGET_FIELDS = ("max_steps", "epochs", "max_time")
SCHEDULE_FIELDS = (*BUDGET_FIELDS, "lr", "warmup_frac", "min_lr_frac")  # what the learning-rate curve depends on


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
    last_eval_step: int = 0  # the step of the last periodic validation (the cadence counts from it)
    last_eval_fraction: float = 0.0  # the budget fraction it was at
    # seconds of a time budget kept for its end: the final evaluation, its save and sample (measured as the run
    # goes); training stops this much before --max-time
    end_reserve_seconds: float = 0.0
    checked_chars_per_second: float = 0.0  # the training speed measured early in the run (0: not yet)
    # a budget or learning rate changed on resume: the rate ramps from `ramp_lr` at fraction `ramp_from` to the
    # re-planned curve at `ramp_to` (fractions of the budget); ramp_to <= ramp_from means no ramp
    ramp_from: float = 0.0
    ramp_to: float = 0.0
    ramp_lr: float = 0.0


def has_budget(config: TrainConfig) -> bool:
    return bool(config.max_steps or config.epochs or config.max_time)


def with_default_budget(config: TrainConfig) -> TrainConfig:
    """A new run given no budget trains for DEFAULT_MAX_TIME (a resumed run keeps its own)."""
    if has_budget(config):
        return config
    config.max_time = DEFAULT_MAX_TIME
    return config


def lr_at(config: TrainConfig, fraction: float, state: Progress | None = None) -> float:
    """Linear warm-up over the first `warmup_frac` of the budget, then cosine decay to lr * min_lr_frac.

    After a resume that changed the budget (or the learning rate), the curve is re-planned for the new budget
    (the rate a run given that budget from the start would have now), and the rate moves there linearly from
    the rate the run stopped at, over the next `warmup_frac` of the budget (`state.ramp_*`)."""
    planned = planned_lr(config, fraction)
    if state is not None and state.ramp_to > state.ramp_from and fraction < state.ramp_to:
        t = max(0.0, (fraction - state.ramp_from) / (state.ramp_to - state.ramp_from))
        return state.ramp_lr + (planned_lr(config, state.ramp_to) - state.ramp_lr) * t
    return planned


def planned_lr(config: TrainConfig, fraction: float) -> float:
    """The rate a run given this budget from the start has at `fraction` of it."""
    if fraction < config.warmup_frac:
        return config.lr * (fraction + 1e-3) / (config.warmup_frac + 1e-3)
    span = max(1e-9, 1.0 - config.warmup_frac)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, (fraction - config.warmup_frac) / span)))
    return config.lr * (config.min_lr_frac + (1.0 - config.min_lr_frac) * cosine)


def training_seconds(config: TrainConfig, progress: Progress) -> float:
    """The part of --max-time that training may use: all of it but the end's reserve (see Progress)."""
    assert config.max_time
    return max(1e-9, config.max_time - progress.end_reserve_seconds)


def budget_fraction(config: TrainConfig, progress: Progress, num_targets: int) -> float:
    """How much of the budget for training is spent, 0..1: the most advanced of the budgets given (of a time
    budget, the part before the end's reserve)."""
    fractions = []
    if config.max_steps:
        fractions.append(progress.step / config.max_steps)
    if config.max_time:
        fractions.append(progress.elapsed_seconds / training_seconds(config, progress))
    if config.epochs:
        fractions.append(progress.chars_seen / (config.epochs * num_targets))
    return min(1.0, max(fractions)) if fractions else 0.0


def budget_reason(config: TrainConfig, progress: Progress, num_targets: int) -> str | None:
    """The budget the run has used up (max_steps | max_time | epochs), or None."""
    if config.max_steps and progress.step >= config.max_steps:
        return "max_steps"
    if config.max_time and progress.elapsed_seconds >= training_seconds(config, progress):
        return "max_time"
    if config.epochs and progress.chars_seen >= config.epochs * num_targets:
        return "epochs"
    return None


def remaining_seconds(
    config: TrainConfig,
    progress: Progress,
    num_targets: int,
    session_seconds: float,
    session_steps: int,
    session_chars: int,
) -> float | None:
    """Time left until the budget that will stop the run first, at this session's pace (validations and saves
    included)."""
    estimates = []
    if config.max_time:
        estimates.append(config.max_time - progress.elapsed_seconds)
    if config.max_steps and session_steps:
        estimates.append((config.max_steps - progress.step) * session_seconds / session_steps)
    if config.epochs and session_chars:
        left = config.epochs * num_targets - progress.chars_seen
        estimates.append(left * session_seconds / session_chars)
    return max(0.0, min(estimates)) if estimates else None


def run_fraction(config: TrainConfig, progress: Progress, num_targets: int) -> float:
    """How much of the whole budget is spent, 0..1, for a person to read: of a time budget, the wall clock against
    --max-time (the end's final evaluation included), else the budget fraction."""
    fraction = budget_fraction(config, progress, num_targets)
    if config.max_time:
        before_end = 1.0 - min(progress.end_reserve_seconds, config.max_time) / config.max_time
        fraction = max(fraction * before_end, progress.elapsed_seconds / config.max_time)
    return min(1.0, fraction)


def budget_text(config: TrainConfig, *, flags: bool = True, chars_per_second: float | None = None) -> str:
    """The budget, each limit given: as the flags that give it ('--max-steps 5000 or --max-time 4m00s'), or in
    words for --size auto's note (`flags=False`), the time first with the speed it was planned at ('10m00s at
    ~42.5k chars/s or 5,000 steps')."""
    duration = format_duration(config.max_time)
    given = [
        config.max_time and not flags and f"{duration} at ~{format_count(chars_per_second or 0)} chars/s",
        config.max_steps and (f"--max-steps {config.max_steps}" if flags else f"{config.max_steps:,} steps"),
        config.epochs and (f"--epochs {config.epochs:g}" if flags else f"{config.epochs:g} epochs"),
        config.max_time and flags and f"--max-time {duration}",
    ]
    return " or ".join(part for part in given if part) or ("no budget" if flags else "the budget")


def extended_budget(config: TrainConfig) -> str:
    """The same kind of budget, doubled: what to suggest to a user whose run has used its budget."""
    if config.max_time:
        return f"--max-time {format_duration(2 * config.max_time)}"
    if config.max_steps:
        return f"--max-steps {2 * config.max_steps}"
    if config.epochs:
        return f"--epochs {2 * config.epochs:g}"
    return "--max-time 10m"


def replan(saved: TrainConfig, config: TrainConfig, progress: Progress, num_targets: int) -> str | None:
    """On resume with another budget or learning rate: re-plan the curve for the new budget and ramp to it from
    the rate the run stopped at (sets `progress.ramp_*`); returns what to tell the user. An unchanged schedule
    continues exactly (None)."""
    if all(getattr(saved, f) == getattr(config, f) for f in SCHEDULE_FIELDS):
        return None
    old_fraction = budget_fraction(saved, progress, num_targets)
    new_fraction = budget_fraction(config, progress, num_targets)
    if new_fraction >= 1.0:
        return None  # the new budget is spent too: the trainer says so
    was = lr_at(saved, old_fraction, progress)
    change = f"budget {budget_text(saved)} -> {budget_text(config)}"
    if saved.lr != config.lr:
        change += f", --lr {saved.lr:g} -> {config.lr:g}"
    progress.ramp_from, progress.ramp_to, progress.ramp_lr = (
        new_fraction,
        min(1.0, new_fraction + config.warmup_frac),
        was,
    )
    return (
        f"{change} ({new_fraction:.0%} of it used): the learning-rate schedule is re-planned for the new budget; "
        f"the rate goes from {was:.2e} to {planned_lr(config, progress.ramp_to):.2e} over the next "
        f"{config.warmup_frac:.0%} of the budget, then follows the cosine down to "
        f"{config.lr * config.min_lr_frac:.2e} at its end"
    )
