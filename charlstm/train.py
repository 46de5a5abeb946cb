"""`train()`: one run from start to finish. It makes the run's decisions in one place (which corpus, which run
directory, whether an existing run may be replaced, the default budget), holds the run's lock, handles
Ctrl-C/SIGTERM from the first moment, and runs the Trainer. Under `torchrun` every process calls it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import distributed, resume, rundir, sizing
from .config import FUSED_CELLS, CorpusConfig, ModelConfig, TrainConfig
from .corpus import Corpus, default_corpus, load_corpus
from .device import autocast_dtype, check_autocast, cpu_has_native_bf16, pick_device
from .errors import CharlstmError
from .progress import EventSink
from .runlock import RunLock
from .schedule import with_default_budget
from .signals import StopSignals
from .summary import TrainResult
from .trainer import Trainer


def train(
    corpus: Corpus | CorpusConfig | None,
    model_config: ModelConfig,
    train_config: TrainConfig,
    run_dir: Path | str | None = None,
    resume_from: Path | str | None = None,
    explicit: set[str] = frozenset(),
    overwrite: bool = False,
    should_stop: Callable[[int], bool] | None = None,
    on_event: EventSink | None = None,
    clock_start: float | None = None,
) -> TrainResult:
    """Train a new run, or continue one.

    `corpus`: a Corpus, a CorpusConfig to load, or None for the resumed run's own corpus (or, for a new run, the
    built-in one). `run_dir`: where a new run writes (default: checkpoints/<corpus name>); a run there already
    is refused unless `overwrite`. `resume_from`: a run directory or checkpoint, or "auto" (the run in `run_dir`,
    else in the corpus's default directory); a resumed run writes to its own directory. `explicit`: the config
    fields the user gave (on resume they replace the saved ones; for `size="auto"`, the default, these and every
    value that differs from its default are kept, and auto chooses the rest). `should_stop(step)` may end the
    run early. Progress, notes and signals go to `on_event(kind, data)` (see progress.py); nothing is printed.
    `clock_start` (time.perf_counter()) is when --max-time starts counting (default: now)."""
    clock_start = time.perf_counter() if clock_start is None else clock_start
    main = distributed.is_main_process()
    emit = on_event if on_event is not None and main else _ignore
    pick_device(train_config.device)  # an unavailable device fails now, before any data is read
    trainer = None
    lock = None
    try:
        with StopSignals(lambda name, phase: emit("signal", {"signal": name, "phase": phase})) as signals:
            resumed = None
            if resume_from is not None:
                resumed = resume.load(resume.find(resume_from, _paths_of(corpus), run_dir))
            corpus = _the_corpus(corpus, resumed, train_config.encoding, emit)
            run_dir = Path(run_dir or rundir.DEFAULT_ROOT / corpus.name)
            if resumed:
                run_dir = resumed.run_dir(run_dir)
            # one trainer per run directory: a second one (another terminal, a script run twice) is refused at
            # once; the lock is taken before an old run is cleared (overwrite): a run being trained is never touched
            lock = RunLock.acquire(run_dir, enabled=main)
            if lock.note:
                emit("note", {"text": lock.note})
            if resumed is None:
                _make_room(run_dir, overwrite, main)
                train_config = with_default_budget(train_config)
            trainer = Trainer(
                corpus,
                model_config,
                train_config,
                run_dir,
                resumed,
                explicit,
                on_event=on_event,
                clock_start=clock_start,
                signals=signals,
                size_for=_auto_size(explicit, emit) if train_config.size == "auto" else None,
            )
            result = trainer.train(should_stop=should_stop)
    except BaseException:
        # leave the group without waiting: the other ranks may never arrive (torchrun stops them); a process
        # that exits with its group alive can abort in gloo's threads ("terminate called without an active
        # exception") instead of printing its one-line error
        if trainer is not None:
            trainer.forward_model = None  # the DDP wrapper: not the last holder of the group (see _destroy_group)
        distributed.abandon()
        raise
    finally:
        if lock is not None:
            lock.release()
    trainer.forward_model = None
    distributed.teardown(trainer.dist)
    return result


def _paths_of(corpus: Corpus | CorpusConfig | None) -> list[Path] | None:
    config = corpus.config if isinstance(corpus, Corpus) else corpus
    return [Path(p) for p in config.paths] if config is not None and config.paths else None


def _the_corpus(
    corpus: Corpus | CorpusConfig | None, resumed: resume.Resume | None, encoding: str, emit: EventSink
) -> Corpus:
    """The corpus given; else the resumed run's own; else the built-in one (said in a note)."""
    if isinstance(corpus, CorpusConfig):
        corpus = load_corpus(corpus)
    elif corpus is None and resumed is not None:
        corpus = resume.corpus_of(resumed, encoding)
    elif corpus is None:
        corpus = default_corpus()
        emit("note", {"text": f"No corpus given: training on the built-in corpus ({corpus.sources[0]})."})
    for note in corpus.notes:
        emit("note", {"text": note})
    return corpus


def _make_room(run_dir: Path, overwrite: bool, main: bool) -> None:
    """A new run in a directory that holds one replaces it only when asked to."""
    if not (run_dir / rundir.LATEST).exists():
        return
    if not overwrite:
        raise CharlstmError(
            f"{run_dir} already holds a run; continue it with --resume, or replace it with --overwrite "
            f"(or choose another --out)"
        )
    if main:
        rundir.clear_run(run_dir)


def _auto_size(explicit: set[str], emit: EventSink) -> Callable[..., tuple[ModelConfig, TrainConfig]]:
    """`--size auto` for a new run: once the corpus is read, measure this device's speed (a few seconds, part of
    the budget) and choose the shape and learning rate for the corpus and budget (sizing.py); the flags the user
    gave win. Says what it chose and why in one note, which run.json records (`size_choice`)."""

    def size_for(
        train_chars: int, vocab_size: int, model_config: ModelConfig, train_config: TrainConfig
    ) -> tuple[ModelConfig, TrainConfig]:
        device = pick_device(train_config.device)
        given = {name: value for name, value in (*vars(model_config).items(), *vars(train_config).items())}
        # what the caller chose: the flags given, and (from Python, where nothing names them) every value that is
        # not the default; auto chooses the rest
        defaults = {**vars(ModelConfig()), **vars(TrainConfig())}
        kept = set(explicit) | {name for name, value in given.items() if name in defaults and value != defaults[name]}
        fixed = {name: given[name] for name in sizing.CHOSEN_FIELDS if name in kept}
        # on a CPU that multiplies bf16 in hardware, bf16 autocast: ~35% more characters a second here, which on
        # Tiny Shakespeare at 100 s bought about 0.01 nats/char (README, "The best model for the budget");
        # --precision given wins
        precision = train_config.precision
        # (the fused cells only: the speed-up is oneDNN's fused kernels; the custom cells' eager loops stay fp32)
        if precision == "auto" and device.type == "cpu" and model_config.cell in FUSED_CELLS and cpu_has_native_bf16():
            precision = "bf16"
        amp = autocast_dtype(precision, device)
        check_autocast(device, amp)
        cost, calibrated = None, ""
        if train_config.max_time:  # only a time budget needs the device's speed
            batch, seq_len = sizing.recipe_batch(fixed)
            cost, seconds = sizing.calibrate(
                vocab_size,
                device,
                batch=batch,
                seq_len=seq_len,
                embed=model_config.embed,
                cell=model_config.cell,
                amp=amp,
            )
            calibrated = f" (speed measured in {seconds:.1f}s)"
        choice = sizing.choose_size(
            train_chars, vocab_size, train_config, cost, embed=model_config.embed, cell=model_config.cell, fixed=fixed
        )
        in_bf16 = ", bf16 on this CPU" if precision != train_config.precision else ""
        text = f"--size auto: {choice.reason}{calibrated}{in_bf16}"
        emit("note", {"text": text})
        model_config = replace(
            model_config, layers=choice.layers, hidden=choice.hidden, init=choice.init, dropout=choice.dropout
        )
        train_config = replace(
            train_config,
            batch_size=choice.batch_size,
            seq_len=choice.seq_len,
            lr=choice.lr,
            weight_decay=choice.weight_decay,
            precision=precision,
            **{name: value for name, value in choice.schedule.items() if name not in kept},
            size_choice=text,
        )
        return model_config, train_config

    return size_for


def _ignore(kind: str, data: dict[str, Any]) -> None:
    """The event sink when nobody watches (and on every process but rank 0, which speaks for all)."""
