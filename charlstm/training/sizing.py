"""`--size auto`: the model shape (and learning rate) for a corpus, a budget and this device's measured speed.

`choose_size` is a pure function: corpus size, budget and a speed model in, a `SizeChoice` out. `calibrate` is
the measurement it needs: a few timed training steps of two widths on random characters, from which the cost of
a step is fitted as a line in the parameter count.

The rule: a model learns from the characters it sees, and on a fixed budget a larger model sees fewer of them.
For a time budget the chooser takes the largest shape whose characters seen in the budget are at least
`CHARS_PER_PARAM` times its parameter count, and no larger than `PARAMS_PER_CORPUS_CHAR` times the corpus
(beyond that a model memorises rather than generalises: char-rnn's rule of thumb of parameters about the size
of the corpus). `CHARS_PER_PARAM` was measured on Tiny Shakespeare at 100 s on a 2-core CPU: with the recipe's
weight decay, 1 x 448 (~3 characters per parameter there) beat 1 x 384 (~4.5) by about 0.01 over two seeds and
1 x 512 (~2.2) tied with 1 x 448, where without weight decay 1 x 384 and 1 x 512 tied (see the README's "The best
model for the budget"). The line sits below 3 because the calibration, done while the machine is busy, can
underestimate the speed (it measured 33.6k chars/s for a run that trained at 39.8k): at 2.5, auto kept 1 x 384.

The precision is chosen beside the shape (run.py): on a CPU with bf16 instructions auto trains in bf16 autocast,
and the calibration times steps in the precision the run will use.

A measurement made while another process runs can be far off (a busy laptop once measured 513 chars/s for a run
that then trained at 346k). The calibration therefore interleaves its two widths over several rounds and keeps each
width's fastest step, and the run checks its real speed early (trainer.py): where it is more than
`REPLAN_FACTOR` times off the plan, `replan` chooses again from the speed measured, and the run takes the new
shape while little has been trained."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import torch

from charlstm.config import ModelConfig, TrainConfig, format_count
from charlstm.model.charrnn import CharRNN, count_params
from charlstm.runtime import threads
from charlstm.runtime.device import autocast
from charlstm.training.budget import budget_text

CHARS_PER_PARAM = 2.0  # characters seen per parameter at the chosen shape (measured at 100 s, see the docstring)
PARAMS_PER_CORPUS_CHAR = 1.0  # at most this many parameters per character of training text
MIN_HIDDEN, MAX_HIDDEN, HIDDEN_STEP = 64, 2048, 64
MAX_LAYERS_AUTO = 3
WIDE_ENOUGH = 768  # a second layer only once one layer is this wide (on CPU, 2 x 320 lost to 1 x 384 at 100 s)
# the peak rate at the default width: over 2,600 steps of 1 x 384 on Tiny Shakespeare (about 100 s here), with the
# default initialisation 7e-3 reached 1.485 against 5e-3's 1.492 and 1e-2's 1.495, but with Xavier's (the
# recipe's) 5e-3 reached 1.471 and 7e-3 1.476 (benchmarks/size_recipe.py)
RECIPE_LR = 5e-3
# Xavier-Glorot initialisation: 2,600 steps of 1 x 384 on Tiny Shakespeare reached 1.471 against the default
# initialisation's 1.492 (benchmarks/size_recipe.py)
RECIPE_INIT = "xavier"
# what auto chooses (an explicit flag wins)
CHOSEN_FIELDS = ("layers", "hidden", "batch_size", "seq_len", "lr", "init", "dropout", "weight_decay")
# dropout once the budget covers the training text many times: on Tiny Shakespeare at 10 min (17 passes) the fixed
# recipe's validation loss bottomed at 1.517 and ended at 1.559 as the training loss fell to 1.01, while at 100 s
# (~4 passes) dropout 0.2 cost ~0.01 and at 30 min on the code corpus (~5 passes) auto without it did well
MANY_PASSES, RECIPE_DROPOUT = 8.0, 0.2
# AdamW's decoupled weight decay on the matrices (not the embedding or biases), at no cost in speed: on Tiny
# Shakespeare at 100 s, where the training loss ends ~0.25 below the validation loss after ~4 passes, 0.1 moved the
# final validation loss by -0.011 on average over three seeds (0.3 was worse than none); on the code corpus at 10 min,
# where auto's 1 x 640 without it overfitted (training loss 0.72, validation rising to 1.309), auto with it reached
# 1.220 (README, "The best model for the budget")
RECIPE_WEIGHT_DECAY = 0.1
# schedule settings of the recipe (each a TrainConfig field; an explicit flag wins)
RECIPE_SCHEDULE: dict[str, float] = {}
OVERHEAD_SHARE = 0.1  # the share of a time budget that validations, saves and start-up take (measured: ~10 s of 100)
REPLAN_FACTOR = 2.0  # the run re-plans when its measured speed is this many times off the plan (either way)


WARMUP_STEPS = 2  # calibration steps of each width that are not timed


@dataclass(frozen=True)
class StepCost:
    """Seconds per training step of `batch` x `seq_len` characters, as `fixed + per_param * params`."""

    fixed: float
    per_param: float
    batch: int
    seq_len: int
    threads: int | None = None  # the CPU thread count it was measured at (the fastest; None: not chosen)

    def chars_per_second(self, params: int) -> float:
        return self.batch * self.seq_len / max(1e-9, self.fixed + self.per_param * params)

    def scaled(self, factor: float) -> StepCost:
        """The same device `factor` times faster (the cost of every step divided by it)."""
        return StepCost(self.fixed / factor, self.per_param / factor, self.batch, self.seq_len, self.threads)


@dataclass(frozen=True)
class SizeChoice:
    layers: int
    hidden: int
    batch_size: int
    seq_len: int
    lr: float
    init: str
    dropout: float
    weight_decay: float
    params: int
    chars_per_second: float | None  # expected, for a time budget
    passes: float  # how many times the budget covers the training text
    schedule: dict[str, float]  # TrainConfig fields of the recipe's schedule
    reason: str  # the one line that says what was chosen and why


def recipe_batch(fixed: dict[str, int | float]) -> tuple[int, int]:
    """The batch shape: the one given, else the default 32 x 32 (on a CPU, many small updates beat few large
    ones: see TrainConfig)."""
    return int(fixed.get("batch_size", TrainConfig.batch_size)), int(fixed.get("seq_len", TrainConfig.seq_len))


def recipe_lr(hidden: int, layers: int) -> float:
    """The peak learning rate for a shape: RECIPE_LR at 384 units, lower as the model widens (Adam's updates per
    weight are about lr, and a weight's share of a unit's input falls as 1/width)."""
    width = hidden * math.sqrt(layers)
    return round(RECIPE_LR * min(1.0, math.sqrt(ModelConfig.hidden / width)), 5)


def choose_size(
    corpus_chars: int,
    vocab: int,
    train_config: TrainConfig,
    cost: StepCost | None,
    embed: int = ModelConfig.embed,
    cell: str = "lstm",
    fixed: dict[str, int | float] | None = None,
) -> SizeChoice:
    """The shape for `corpus_chars` characters of training text within the budget of `train_config` (its
    --max-time, --max-steps and --epochs: whichever ends first), on a device whose step costs `cost` (measured
    at the batch shape to use; needed for a time budget only). `fixed`: values the user gave (CHOSEN_FIELDS),
    which the choice keeps."""
    fixed = fixed or {}
    batch, seq_len = recipe_batch(fixed)
    if train_config.max_time and cost is None:
        raise ValueError("a time budget needs the device's measured step cost")
    corpus_chars = max(1, corpus_chars)
    cap = PARAMS_PER_CORPUS_CHAR * corpus_chars

    def chars_in_budget(params: int) -> float:
        limits = []
        if train_config.max_time:
            limits.append(train_config.max_time * (1 - OVERHEAD_SHARE) * cost.chars_per_second(params))  # type: ignore[union-attr]
        if train_config.max_steps:
            limits.append(train_config.max_steps * batch * seq_len)
        if train_config.epochs:
            limits.append(train_config.epochs * corpus_chars)
        return min(limits) if limits else math.inf

    shapes = [
        (layers, hidden)
        for layers in range(1, MAX_LAYERS_AUTO + 1)
        for hidden in range(MIN_HIDDEN, MAX_HIDDEN + 1, HIDDEN_STEP)
        if (layers == 1 or hidden >= WIDE_ENOUGH or "layers" in fixed)
        and fixed.get("layers", layers) == layers
        and fixed.get("hidden", hidden) == hidden
    ]
    if not shapes:  # both given, or a width outside the grid
        shapes = [(int(fixed.get("layers", 1)), int(fixed.get("hidden", MIN_HIDDEN)))]

    def params_of(shape: tuple[int, int]) -> int:
        layers, hidden = shape
        return count_params(ModelConfig(vocab_size=vocab, cell=cell, layers=layers, hidden=hidden, embed=embed))

    best, stopped_by = shapes[0], "budget"
    for layers, hidden in sorted(shapes, key=params_of):
        params = params_of((layers, hidden))
        if params > cap:
            stopped_by = "corpus"
            break
        if chars_in_budget(params) < CHARS_PER_PARAM * params:
            break
        best = (layers, hidden)
    layers, hidden = best
    params = params_of(best)
    seen = chars_in_budget(params)
    speed = cost.chars_per_second(params) if cost is not None and train_config.max_time else None
    passes = seen / corpus_chars
    why = budget_text(train_config, flags=False, chars_per_second=speed)
    why += (
        f" covers the {format_count(corpus_chars)}-character corpus ~{passes:.2g} times" if math.isfinite(seen) else ""
    )
    if stopped_by == "corpus":
        why += "; a larger model would have more parameters than the corpus has characters"
    lr = float(fixed.get("lr", recipe_lr(hidden, layers)))
    init = str(fixed.get("init", RECIPE_INIT if cell == "lstm" else ModelConfig.init))  # measured on the LSTM only
    dropout = float(fixed.get("dropout", RECIPE_DROPOUT if passes >= MANY_PASSES else ModelConfig.dropout))
    weight_decay = float(fixed.get("weight_decay", RECIPE_WEIGHT_DECAY))
    given = [f"--{name.replace('_', '-')}" for name in CHOSEN_FIELDS if name in fixed]
    if given:
        why += f" ({', '.join(given)} given)"
    reason = (
        f"{layers} x {hidden} {cell.upper()}, {_params_words(params)} params, batch {batch} x {seq_len}, "
        f"lr {lr:g}, {init} init{f', dropout {dropout:g}' if dropout else ''}"
        f"{f', weight decay {weight_decay:g}' if weight_decay else ''}: {why}"
    )
    return SizeChoice(
        layers=layers,
        hidden=hidden,
        batch_size=batch,
        seq_len=seq_len,
        lr=lr,
        init=init,
        dropout=dropout,
        weight_decay=weight_decay,
        params=params,
        chars_per_second=speed,
        passes=passes if math.isfinite(passes) else math.inf,
        reason=reason,
        schedule=dict(RECIPE_SCHEDULE),
    )


def _params_words(n: int) -> str:
    return f"{n / 1e6:.2g}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def calibrate(
    vocab: int,
    device: torch.device,
    batch: int = TrainConfig.batch_size,
    seq_len: int = TrainConfig.seq_len,
    embed: int = ModelConfig.embed,
    cell: str = "lstm",
    widths: tuple[int, int] = (256, 768),
    rounds: int = 6,
    seconds: float = 1.0,
    amp: torch.dtype | None = None,
) -> tuple[StepCost, float]:
    """Time training steps (forward, backward, fused AdamW; in `amp` autocast if given) of two widths on random
    characters and fit the cost of a step as a line in the parameter count.

    After WARMUP_STEPS untimed steps of each width, the widths take turns, one timed step each a round, for
    `rounds` rounds (at least 3, fewer when they take more than `seconds`), and each width's fastest step counts:
    another process's burst slows some steps, not the device, and taking turns spreads a burst over both widths
    instead of landing on one (on a machine shared with a test suite, the median step once measured 673 chars/s
    where the run then trained at 159k). On a CPU every thread count worth trying (threads.py) takes its turns
    too, and the cost is that of the fastest, which it names (`StepCost.threads`). Returns the cost and the
    seconds the calibration took."""
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq_len + 1), generator=generator).to(device)  # (B, T + 1)
    models, optimizers = [], []
    for hidden in widths:
        model = CharRNN(ModelConfig(vocab_size=vocab, cell=cell, hidden=hidden, embed=embed)).to(device)
        models.append(model)
        # the trainer's optimiser (fused AdamW: on a CPU the unfused one made a step ~30% slower than training's)
        optimizers.append(torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True))

    def step(model: CharRNN, optimizer: torch.optim.Optimizer) -> float:
        begun = time.perf_counter()
        with autocast(device, amp):
            logits, _ = model(ids[:, :-1])  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), ids[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - begun

    # on a CPU, each thread count the run may use (see threads.py): with another process on one of the cores,
    # fewer threads can be several times faster
    most = torch.get_num_threads()
    counts = threads.candidates(most) if device.type == "cpu" else [most]
    fastest: dict[tuple[int, int], float] = {}
    try:
        # warm up on the fewest threads (on a busy machine the others can be ten times slower); a count's first
        # step after that is warm enough to time
        torch.set_num_threads(counts[-1])
        for model, optimizer in zip(models, optimizers, strict=True):
            for _ in range(WARMUP_STEPS):  # allocations, kernels, bf16 weight copies
                step(model, optimizer)
        timed_from = time.perf_counter()
        for round_ in range(max(3, rounds)):
            if round_ >= 3 and time.perf_counter() - timed_from > seconds:
                break
            for count in counts:
                torch.set_num_threads(count)
                for i, (model, optimizer) in enumerate(zip(models, optimizers, strict=True)):
                    fastest[count, i] = min(fastest.get((count, i), math.inf), step(model, optimizer))
            # a count twice as slow as the best on the wider model over two rounds will not win: stop spending
            # time on it (one round is not enough: a count's first step after another's can be cold)
            if round_ >= 1:
                quickest = min(fastest[count, 1] for count in counts)
                counts = [count for count in counts if fastest[count, 1] <= 2 * quickest]
    finally:
        torch.set_num_threads(most)
    best = min(counts, key=lambda count: fastest[count, 1])  # the count that steps the wider model fastest
    timings = [fastest[best, 0], fastest[best, 1]]
    (p0, t0), (p1, t1) = ((m.num_params, t) for m, t in zip(models, timings, strict=True))
    # a busy machine can time the wider model no slower than the narrow one: the cost of a step then still grows
    # at least half as fast as in proportion to the parameters (the matrix products are most of it)
    per_param = max((t1 - t0) / (p1 - p0), 0.5 * t1 / p1)
    fixed = max(1e-6, t0 - per_param * p0)
    cost = StepCost(fixed=fixed, per_param=per_param, batch=batch, seq_len=seq_len, threads=best)
    return cost, time.perf_counter() - started


@dataclass(frozen=True)
class Plan:
    """What `--size auto` chose from: enough to choose again from another speed (`replan`). Picklable, so that
    every rank of a distributed run can take rank 0's."""

    corpus_chars: int
    vocab: int
    embed: int
    cell: str
    fixed: dict[str, int | float]  # the values the user gave (CHOSEN_FIELDS)
    kept: tuple[str, ...]  # every config field the user chose (the recipe's schedule leaves them)
    cost: StepCost | None  # measured (None without a time budget)
    measured: str  # how the speed was measured, for the note


def apply_plan(
    plan: Plan, model_config: ModelConfig, train_config: TrainConfig, budget_seconds: float | None = None
) -> tuple[ModelConfig, TrainConfig, SizeChoice]:
    """The configs of the shape `plan` chooses (for `budget_seconds` of --max-time when given: what is left of
    it on a re-plan), with what was chosen and why in `size_choice` and the speed expected in
    `planned_chars_per_second`."""
    budget = train_config if budget_seconds is None else replace(train_config, max_time=budget_seconds)
    choice = choose_size(
        plan.corpus_chars, plan.vocab, budget, plan.cost, embed=plan.embed, cell=plan.cell, fixed=plan.fixed
    )
    model_config = replace(
        model_config, layers=choice.layers, hidden=choice.hidden, init=choice.init, dropout=choice.dropout
    )
    train_config = replace(
        train_config,
        batch_size=choice.batch_size,
        seq_len=choice.seq_len,
        lr=choice.lr,
        weight_decay=choice.weight_decay,
        **{name: value for name, value in choice.schedule.items() if name not in plan.kept},
        size_choice=f"--size auto: {choice.reason}{plan.measured}",
        planned_chars_per_second=round(choice.chars_per_second, 1) if choice.chars_per_second else None,
    )
    return model_config, train_config, choice


def off_plan(planned: float | None, measured: float) -> bool:
    """Whether a measured training speed is more than REPLAN_FACTOR times off the planned one."""
    return bool(planned) and measured > 0 and not (1 / REPLAN_FACTOR <= measured / planned <= REPLAN_FACTOR)


def replan(
    plan: Plan, model_config: ModelConfig, train_config: TrainConfig, measured: float, seconds_left: float
) -> tuple[ModelConfig, TrainConfig, Plan]:
    """Choose again from the speed the run measured (`measured` chars/s for the shape it trains) for the
    `seconds_left` of its budget: the configs and the plan, its cost rescaled to that speed."""
    planned = train_config.planned_chars_per_second or measured
    cost = plan.cost.scaled(measured / planned) if plan.cost else None
    new_plan = replace(plan, cost=cost, measured=" (speed measured in training)")
    new_model, new_train, _ = apply_plan(new_plan, model_config, train_config, budget_seconds=seconds_left)
    return new_model, new_train, new_plan


def speed_words(measured: float, planned: float | None) -> str:
    """'trains at 12.3k chars/s where the plan expected 41.2k'"""
    return f"trains at {format_count(measured)} chars/s where the plan expected {format_count(planned or 0)}"


def shape_words(model_config: ModelConfig, train_config: TrainConfig) -> str:
    """'1 x 256 LSTM (330k params, lr 0.005)'"""
    return (
        f"{model_config.layers} x {model_config.hidden} {model_config.cell.upper()} "
        f"({_params_words(count_params(model_config))} params, lr {train_config.lr:g})"
    )
