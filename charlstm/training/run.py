"""`train()`: one run from start to finish. It makes the run's decisions in one place (which corpus, which run
directory, whether an existing run may be replaced, the default budget), holds the run's lock, handles
Ctrl-C/SIGTERM from the first moment, and runs the Trainer. Under `torchrun` every process calls it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from charlstm.config import FUSED_CELLS, CorpusConfig, ModelConfig, TrainConfig
from charlstm.data.corpus import Corpus, default_corpus, load_corpus
from charlstm.errors import CharlstmError
from charlstm.runs import directory as rundir
from charlstm.runs.lock import RunLock
from charlstm.runtime import distributed
from charlstm.runtime.device import autocast_dtype, check_autocast, cpu_has_native_bf16, pick_device
from charlstm.runtime.signals import StopSignals
from charlstm.training import resume, sizing
from charlstm.training.budget import with_default_budget
from charlstm.training.events import EventSink
from charlstm.training.summary import TrainResult
from charlstm.training.trainer import Trainer


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
    run early. Progress, notes and signals go to `on_event(kind, data)` (see events.py); nothing is printed.
    `clock_start` (time.perf_counter()) is when --max-time starts counting (default: now)."""
    clock_start = time.perf_counter() if clock_start is None else clock_start
    main = distributed.is_main_process()
    emit = on_event if on_event is not None and main else _ignore
    pick_device(train_config.device)  # an unavailable device fails now, before any data is read
    trainer = None
    lock = None
    before = None  # what the run directory held before this command (rank 0)
    failed = True
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
            before = rundir.note_before(run_dir) if main else None
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
            failed = False
    except BaseException:
        # leave the group without waiting: the other ranks may never arrive (torchrun stops them); a process
        # that exits with its group alive can abort in gloo's threads ("terminate called without an active
        # exception") instead of printing its one-line error
        if trainer is not None:
            trainer.forward_model = None  # the DDP wrapper: not the last holder of the group (see _destroy_group)
        distributed.abandon()
        raise
    finally:
        if failed and before is not None:
            _leave_as_found(before, lock)  # releases the lock
        elif lock is not None:
            lock.release()
    trainer.forward_model = None
    distributed.teardown(trainer.dist)
    return result


def _leave_as_found(before: rundir.Before, lock: RunLock | None) -> None:
    """A run that failed (an error, a signal) before writing a checkpoint leaves its directory as it found it: what
    starting it wrote there (the lock file, an encoded corpus, empty records) is removed, and the directory too if
    this command created it (its missing parents with it). A directory with a checkpoint written, or with anything
    else added, is left as it is. Releases the lock: its file is deleted while still held (see runlock.py)."""
    leftovers = rundir.failed_start_leftovers(before) if lock is not None and lock.held else None
    try:
        if leftovers:
            rundir.remove_leftovers(leftovers)
    finally:
        if lock is not None:
            lock.release(remove_file=bool(leftovers) and any(p.name == rundir.LOCK_NAME for p in leftovers))
    rundir.remove_created_dirs(before)


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


def _auto_size(explicit: set[str], emit: EventSink) -> Callable[..., tuple[ModelConfig, TrainConfig, sizing.Plan]]:
    """`--size auto` for a new run: once the corpus is read, measure this device's speed (a few seconds, part of
    the budget) and choose the shape and learning rate for the corpus and budget (sizing.py); the flags the user
    gave win. Says what it chose and why in one note, which run.json records (`size_choice`)."""

    def size_for(
        train_chars: int, vocab_size: int, model_config: ModelConfig, train_config: TrainConfig
    ) -> tuple[ModelConfig, TrainConfig, sizing.Plan]:
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
        cost, measured = None, ""
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
            measured = f" (speed measured in {seconds:.1f}s)"
        if precision != train_config.precision:
            measured += ", bf16 on this CPU"
        plan = sizing.Plan(
            corpus_chars=train_chars,
            vocab=vocab_size,
            embed=model_config.embed,
            cell=model_config.cell,
            fixed=fixed,
            kept=tuple(sorted(kept)),
            cost=cost,
            measured=measured,
        )
        train_config = replace(train_config, precision=precision)
        model_config, train_config, _ = sizing.apply_plan(plan, model_config, train_config)
        emit("note", {"text": train_config.size_choice})
        return model_config, train_config, plan

    return size_for


def _ignore(kind: str, data: dict[str, Any]) -> None:
    """The event sink when nobody watches (and on every process but rank 0, which speaks for all)."""
