"""The command line: parses flags into config dataclasses, calls one function per command, prints with Rich.

No ML logic lives here.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from charlstm import __version__
from charlstm.cli import render
from charlstm.config import (
    DEFAULT_MAX_TIME,
    INTERACTIVE_LENGTH,
    CorpusConfig,
    InvalidValue,
    ModelConfig,
    SampleConfig,
    TrainConfig,
    parse_duration,
    parse_save_every,
    parse_temperatures,
)
from charlstm.errors import CharlstmError, PeerFailedError
from charlstm.runs import directory as rundir
from charlstm.runtime.signals import exit_status, stopping_signal
from charlstm.training.summary import summary_of


class _Commands(typer.core.TyperGroup):
    """The commands in --help in the order a person meets them, not the order they are defined."""

    ORDER = ("train", "sample", "info", "eval", "inspect", "export", "probe", "compare")

    def list_commands(self, ctx):
        names = super().list_commands(ctx)
        return sorted(names, key=lambda name: self.ORDER.index(name) if name in self.ORDER else len(self.ORDER))


app = typer.Typer(
    cls=_Commands,
    name="charlstm",
    help="Train character-level LSTM/GRU/RNN language models on any text, and sample from them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

_M, _T, _S = ModelConfig(), TrainConfig(), SampleConfig()


def _default(value) -> str:
    return f" (default: {value})"


def _sized(value) -> str:
    """The default of a value that --size auto chooses."""
    return f" (default: chosen by --size auto; {value} with --size fixed)"


FLAGS = {"text_field": "--field", "temperature": "--temp"}  # config fields whose flag is not --field-name


def _fail(error: CharlstmError) -> None:
    """One line on stderr, and exit 1. A config value out of range is named by its flag."""
    message = str(error)
    if isinstance(error, InvalidValue):
        message = f"{FLAGS.get(error.name, '--' + error.name.replace('_', '-'))} {error.problem}"
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)  # e.g. 'charlstm[plot]' is no tag
    raise typer.Exit(1)


def _version(value: bool) -> None:
    if value:
        out.print(f"charlstm {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Train character-level language models on any text, and sample from them."""


# ------------------------------------------------------------------------------------------------ train


class _TrainCommand(typer.core.TyperCommand):
    """Lets `--resume` stand alone: a bare `--resume` means "the run in the default or --out directory"."""

    def parse_args(self, ctx, args):
        args = list(args)
        for i, arg in enumerate(args):
            if arg == "--":
                break
            if arg == "--resume":
                following = args[i + 1] if i + 1 < len(args) else None
                if following is None or not _looks_like_run(following):
                    args.insert(i + 1, "auto")
                break
        return super().parse_args(ctx, args)


def _looks_like_run(arg: str) -> bool:
    """Whether the word after --resume names a run (else it is the corpus, and --resume stands alone)."""
    if arg.endswith(".pt"):
        return True
    path = Path(arg)
    return not arg.startswith("-") and path.is_dir() and not (path / ".git").exists() and rundir.is_run_dir(path)


# ----------------------------------------------------------------------------------------------- export


@app.command()
def export(
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="onnx (a single-step graph, for onnxruntime; needs pip install 'charlstm\\[export]'), torchscript "
            "(the step and a generate method, for torch.jit.load without charlstm) or html (one self-contained "
            "page that writes in the browser; lstm, gru and rnn).",
            show_default=False,
        ),
    ],
    path: Annotated[
        Optional[Path],
        typer.Argument(
            help="Run directory (its best.pt) or .pt file. (default: the most recently trained run under checkpoints/)",
            show_default=False,
        ),
    ] = None,
    out_file: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            "-o",
            help="Where to write it. (default: beside the checkpoint, named after the run: RUN/RUN.onnx, "
            ".torchscript or .html; ONNX's vocabulary and config also go to the same name with .json)",
            show_default=False,
        ),
    ] = None,
    precision: Annotated[
        Optional[str],
        typer.Option(
            help="html: the page's weights. auto (float16 where its measured error in next-character probability "
            "is within 1e-3 of float32, else float32), float16 (half the size) or float32 (exact). (default: auto)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Export a trained model to run without charlstm: ONNX, TorchScript, or a web page."""
    from charlstm.export.formats import export as export_model

    try:
        if path is None:
            path = rundir.find_latest_run()
        exported = export_model(path, fmt.lower(), out_file, precision)
    except CharlstmError as exc:
        _fail(exc)
        return
    for note in exported.notes:
        out.print(note, markup=False, soft_wrap=True)


@app.command(cls=_TrainCommand)
def train(
    corpus: Annotated[
        Optional[list[Path]],
        typer.Argument(
            help="Text file(s), directories (every text file inside, recursively; see --glob) or CSV/TSV/JSON Lines "
            "files (see --field) to train on. Omit for the built-in corpus (this Python's standard library "
            "sources), or with --resume to reuse the run's own corpus.",
            show_default=False,
        ),
    ] = None,
    glob: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Take only the files of a directory that match this pattern, e.g. '*.py'; repeatable. "
            "(default: every text file; binary files and hidden folders such as .git/ are skipped)",
            show_default=False,
        ),
    ] = None,
    text_field: Annotated[
        Optional[str],
        typer.Option(
            "--field",
            help="The CSV/TSV column or JSON Lines key that holds the text; each row is one record.",
            show_default=False,
        ),
    ] = None,
    records: Annotated[
        Optional[str],
        typer.Option(
            help="What one record is in plain text files: file, paragraph (blank-line separated), none, or "
            "sep:STRING (records separated by lines holding only STRING, e.g. sep:% for a fortune file). Each "
            "record ends with an end-of-record marker the model learns. (default: auto = file for a directory, "
            "rows for CSV/JSONL, none for text files: auto never splits a text file, give sep:% for fortunes)",
            show_default=False,
        ),
    ] = None,
    out_dir: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Run directory. (default: checkpoints/<corpus name>)", show_default=False),
    ] = None,
    resume: Annotated[
        Optional[str],
        typer.Option(
            "--resume",
            help="Continue a run: alone, the run in the default (or --out) directory; with a PATH, that run "
            "directory or .pt file. Architecture and data-layout flags that disagree with the checkpoint are "
            "overruled by it (with a warning).",
            show_default=False,
        ),
    ] = None,
    cell: Annotated[
        Optional[str],
        typer.Option(
            help="Recurrent cell: lstm, gru, rnn (fused kernels), peephole (LSTM with peepholes), pseudo (r2rt's "
            "pseudo LSTM), pseudo2 (pseudo LSTM + Diff 2), cifg (coupled input/forget gates) or lnlstm "
            "(layer-normalised LSTM); equations in charlstm/cells.py." + _default(_M.cell),
            show_default=False,
        ),
    ] = None,
    init: Annotated[
        Optional[str],
        typer.Option(
            help="Weight initialisation: default (PyTorch's uniform +-1/sqrt(hidden)) or xavier (Xavier-Glorot per "
            "gate matrix, zero biases)." + _sized(_M.init),
            show_default=False,
        ),
    ] = None,
    forget_bias: Annotated[
        Optional[float],
        typer.Option(
            help="Forget-gate bias of LSTM-like cells (all but gru and rnn). (default: 1 for the cells of "
            "charlstm/cells.py; for lstm, PyTorch's initialisation untouched)",
            show_default=False,
        ),
    ] = None,
    layers: Annotated[
        Optional[int], typer.Option(help="Stacked recurrent layers." + _sized(_M.layers), show_default=False)
    ] = None,
    size: Annotated[
        Optional[str],
        typer.Option(
            help="auto: measure this device's speed (a second or two), then choose the layers, width, learning "
            "rate and validation cadence for the corpus size and the budget (one line says what and why), Xavier "
            "init, weight decay 0.1, dropout when the budget covers the corpus 8 times or more, and bf16 on a CPU "
            "with bf16 instructions; --layers, --hidden, --batch-size, --seq-len, --lr, --init, --dropout, "
            "--weight-decay, --eval-every and --precision given win. fixed: the defaults shown below, fp32 on a CPU."
            + _default(_T.size),
            show_default=False,
        ),
    ] = None,
    hidden: Annotated[
        Optional[int], typer.Option(help="Units per layer." + _sized(_M.hidden), show_default=False)
    ] = None,
    embed: Annotated[
        Optional[int], typer.Option(help="Character embedding width." + _default(_M.embed), show_default=False)
    ] = None,
    dropout: Annotated[
        Optional[float],
        typer.Option(
            help="Dropout between layers and before the output, in [0, 1)." + _sized(_M.dropout), show_default=False
        ),
    ] = None,
    batch_size: Annotated[
        Optional[int], typer.Option(help="Parallel streams per step." + _sized(_T.batch_size), show_default=False)
    ] = None,
    seq_len: Annotated[
        Optional[int],
        typer.Option(help="Characters per stream per step (the BPTT length)." + _sized(_T.seq_len), show_default=False),
    ] = None,
    lr: Annotated[
        Optional[float],
        typer.Option(
            help="Peak learning rate (linear warm-up, then cosine decay over the budget)." + _sized(_T.lr),
            show_default=False,
        ),
    ] = None,
    weight_decay: Annotated[
        Optional[float],
        typer.Option(
            help="AdamW decoupled weight decay on the weight matrices (not the embedding or biases)."
            + _sized(_T.weight_decay),
            show_default=False,
        ),
    ] = None,
    grad_clip: Annotated[
        Optional[float],
        typer.Option(
            help="Clip the global gradient norm to this (0 = off)." + _default(_T.grad_clip), show_default=False
        ),
    ] = None,
    max_steps: Annotated[
        Optional[int],
        typer.Option(help="Stop after this many steps in all (counting steps before a resume).", show_default=False),
    ] = None,
    epochs: Annotated[
        Optional[float], typer.Option(help="Stop after this many passes over the training text.", show_default=False)
    ] = None,
    max_time: Annotated[
        Optional[str],
        typer.Option(
            help=f"Stop after this much wall-clock time in all, e.g. 90s, 10m, 2h: reading the corpus, validations and "
            f"saves included (the final evaluation and save come after). With no --max-steps, --epochs or "
            f"--max-time: {DEFAULT_MAX_TIME / 60:g}m.",
            show_default=False,
        ),
    ] = None,
    eval_every: Annotated[
        Optional[int],
        typer.Option(
            help="Validate (and save) every this many steps, and at the end. (default: each time another "
            "eighth of the budget is spent, so about 8 validations a run on any machine)",
            show_default=False,
        ),
    ] = None,
    eval_chars: Annotated[
        Optional[int],
        typer.Option(
            help="Characters each periodic validation scores: a fixed, seeded slice of the validation split "
            "(all of it when smaller)." + _default(f"{_T.eval_chars:,}"),
            show_default=False,
        ),
    ] = None,
    final_eval_chars: Annotated[
        Optional[int],
        typer.Option(
            help="The final evaluation scores the whole validation split, or a seeded slice of this many "
            "characters when it is larger." + _default(f"{_T.final_eval_chars:,}"),
            show_default=False,
        ),
    ] = None,
    sample_every: Annotated[
        Optional[int],
        typer.Option(
            help="Show a short sample (and append it to samples.jsonl) every N steps; 0 = never. "
            "(default: after each validation)",
            show_default=False,
        ),
    ] = None,
    sample_length: Annotated[
        Optional[int],
        typer.Option(
            help="Characters of each sample shown while training (a record-trained run's sample is one record, "
            "at most this long)." + _default(_T.sample_length),
            show_default=False,
        ),
    ] = None,
    sample_temp: Annotated[
        Optional[float],
        typer.Option(
            help="Temperature of the samples shown while training." + _default(_T.sample_temp), show_default=False
        ),
    ] = None,
    sample_prime: Annotated[
        Optional[str],
        typer.Option(help="Text each sample shown while training starts with. (default: none)", show_default=False),
    ] = None,
    save_every: Annotated[
        Optional[str],
        typer.Option(
            help="Also save latest.pt every N steps, or every duration such as 5m. (default: at each validation)",
            show_default=False,
        ),
    ] = None,
    val_frac: Annotated[
        Optional[float],
        typer.Option(
            help="Share of the text, from its end, held out for validation, in (0, 0.5]." + _default(_T.val_frac),
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        Optional[int], typer.Option(help="Random seed (weights, dropout)." + _default(_T.seed), show_default=False)
    ] = None,
    device: Annotated[
        Optional[str],
        typer.Option(
            help="auto, cpu, cuda or mps (auto picks a GPU when there is one)." + _default(_T.device),
            show_default=False,
        ),
    ] = None,
    precision: Annotated[
        Optional[str],
        typer.Option(
            help="auto, fp32 or bf16 (auto: bf16 autocast on CUDA, and with --size auto on a CPU with bf16 "
            "instructions; fp32 elsewhere)." + _default(_T.precision),
            show_default=False,
        ),
    ] = None,
    encoding: Annotated[
        Optional[str],
        typer.Option(help="Text encoding of the corpus, e.g. latin-1." + _default(_T.encoding), show_default=False),
    ] = None,
    compile: Annotated[
        Optional[bool],
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the loss (fp32 cast, log-softmax, NLL; the recurrent stack is already one fused "
            "kernel): faster steps on a GPU after a slow start; on CPU it needs a C++ compiler." + _default("off"),
            show_default=False,
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start a new run in a directory that already holds one, replacing it.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar, validation lines or samples (notes only).")
    ] = False,
) -> None:
    """Train a model on CORPUS; checkpoints go to checkpoints/<corpus name>/ (see --out).

    Several GPUs (or CPU processes): torchrun --nproc-per-node N -m charlstm train CORPUS ...
    """
    clock_start = time.perf_counter()  # --max-time counts from here: reading the corpus is part of the run
    from charlstm.cli.progress import ConsoleProgress
    from charlstm.runtime.distributed import is_main_process
    from charlstm.training.run import train as run_training

    given = {k: v for k, v in locals().items() if v is not None and k != "clock_start"}
    console = ConsoleProgress(quiet=quiet) if is_main_process() else None
    try:
        model_values = {f.name: given[f.name] for f in fields(ModelConfig) if f.name in given}
        train_values = {f.name: given[f.name] for f in fields(TrainConfig) if f.name in given and f.name != "max_time"}
        if max_time is not None:
            train_values["max_time"] = parse_duration(max_time, "--max-time")
        if save_every is not None:
            train_values.update(parse_save_every(save_every))
        explicit = set(model_values) | set(train_values)
        model_config = ModelConfig(**model_values)
        train_config = TrainConfig(**train_values)
        corpus_config = None
        if corpus:
            corpus_config = CorpusConfig(
                paths=[str(p) for p in corpus],
                globs=glob or [],
                text_field=text_field,
                records=records or CorpusConfig.records,
                encoding=train_config.encoding,
            )
        elif glob or text_field or records:
            raise CharlstmError("--glob, --field and --records describe a corpus; give the corpus path too")
        result = run_training(
            corpus_config,
            model_config,
            train_config,
            run_dir=out_dir,
            resume_from=resume,
            explicit=explicit,
            overwrite=overwrite,
            on_event=console,
            clock_start=clock_start,
        )
    except PeerFailedError:  # under torchrun: the process that failed prints the reason
        raise typer.Exit(1) from None
    except CharlstmError as exc:
        _fail(exc)
        return
    except KeyboardInterrupt as exc:  # a second Ctrl-C, or a signal before training started: nothing more is saved
        err.print("Interrupted; nothing more was saved (the run's latest.pt, if any, holds the last save).")
        raise typer.Exit(exit_status(getattr(exc, "signal", None))) from None
    finally:
        if console is not None:
            console.close()
    if not is_main_process():  # under torchrun, rank 0 reports for all
        return
    if result.stopped_by == "budget_spent":
        err.print(render.budget_spent(result), markup=False, soft_wrap=True)
        return
    err.print(render.train_summary(result))
    err.print(f"Sample with: charlstm sample {result.run_dir}")
    stopped_by_signal = stopping_signal(result.stopped_by)
    if stopped_by_signal is not None:  # saved; the exit status still says a signal stopped it (130, 143)
        err.print(render.interrupted(result), markup=False, soft_wrap=True)
        raise typer.Exit(exit_status(stopped_by_signal))


# ------------------------------------------------------------------------------------------ probe, compare


@app.command()
def probe(
    task: Annotated[str, typer.Argument(help="count, count-distract, memory or copy (Edwin Chen's tasks).")],
    cell: Annotated[str, typer.Option(help="Recurrent cell (any of train's --cell).")] = "lstm",
    layers: Annotated[
        Optional[int], typer.Option(help="Layers. (default: the task's: 2 for copy, else 1)", show_default=False)
    ] = None,
    hidden: Annotated[
        Optional[int],
        typer.Option(
            help="Units per layer. (default: the task's: 10 for count and memory, 32 else)", show_default=False
        ),
    ] = None,
    train_max: Annotated[
        Optional[int],
        typer.Option(
            help="Train on lengths 1..this (N, the x's, the string). (default: 10; copy 4)", show_default=False
        ),
    ] = None,
    eval_max: Annotated[
        Optional[int],
        typer.Option(
            help="Evaluate lengths 1..this. (default: 30 for count and memory, 20 count-distract, 8 copy)",
            show_default=False,
        ),
    ] = None,
    steps: Annotated[int, typer.Option(help="Training steps per seed.")] = 1500,
    batch_size: Annotated[int, typer.Option(help="Sequences per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Adam's peak learning rate (cosine decay).")] = 1e-2,
    seeds: Annotated[int, typer.Option(help="Independent runs (seeds --seed, --seed + 1, ...).")] = 1,
    seed: Annotated[int, typer.Option(help="The first seed.")] = 1,
    page: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            help="Also write the inspector's page of the first seed's model, opening on the unit that carries "
            "the task (not for copy).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Edwin Chen's synthetic tasks: exact-match accuracy per length, in and beyond training, and their units.

    Trains small models on the task and reports exact-match accuracy per length, inside the training range and
    beyond it, the first length that fails, and the units that carry the task."""
    from charlstm.experiments.probes import ProbeConfig, run_probe

    try:
        config = ProbeConfig(
            task=task,
            cell=cell,
            layers=layers,
            hidden=hidden,
            train_max=train_max,
            eval_max=eval_max,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seeds=seeds,
            seed=seed,
        )
        result = run_probe(config, on_seed=lambda i: err.print(f"seed {i + 1}/{config.seeds} done"), page=page)
    except CharlstmError as exc:
        _fail(exc)
        return
    out.print(result.to_json() if as_json else result.render(), markup=False, soft_wrap=True)
    if result.page is not None and not as_json:
        out.print(f"page: {result.page}", markup=False, soft_wrap=True)


@app.command()
def compare(
    corpus: Annotated[list[Path], typer.Argument(help="Text file(s) or directories to train every run on.")],
    cells: Annotated[
        str, typer.Option("--cell", help="Comma-separated cells, the first being the reference, e.g. lstm,gru,pseudo2.")
    ] = "lstm,gru,pseudo,pseudo2,peephole",
    seeds: Annotated[int, typer.Option(help="Runs per cell (seeds --seed, --seed + 1, ...).")] = 3,
    max_time: Annotated[
        Optional[str], typer.Option(help="Budget per run: wall-clock time, e.g. 90s, 5m.", show_default=False)
    ] = None,
    max_steps: Annotated[
        Optional[int], typer.Option(help="Budget per run: training steps.", show_default=False)
    ] = None,
    params: Annotated[
        Optional[int],
        typer.Option(
            help="Size each cell's --hidden to about this many parameters. (default: same --hidden)", show_default=False
        ),
    ] = None,
    layers: Annotated[int, typer.Option(help="Stacked recurrent layers.")] = _M.layers,
    hidden: Annotated[int, typer.Option(help="Units per layer (unless --params).")] = _M.hidden,
    embed: Annotated[int, typer.Option(help="Character embedding width.")] = _M.embed,
    init: Annotated[str, typer.Option(help="Weight initialisation: default or xavier.")] = _M.init,
    batch_size: Annotated[int, typer.Option(help="Parallel streams per step.")] = _T.batch_size,
    seq_len: Annotated[int, typer.Option(help="Characters per stream per step.")] = _T.seq_len,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = _T.lr,
    eval_every: Annotated[
        Optional[int],
        typer.Option(help="Validate every this many steps. (default: each eighth of the budget)", show_default=False),
    ] = _T.eval_every,
    seed: Annotated[int, typer.Option(help="The first seed.")] = _T.seed,
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Where the runs are kept: OUT/<cell>-seed<seed>/.")
    ] = Path("checkpoints/compare"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train several cells over seeds at one budget and compare them, with significance.

    Trains each cell --seeds times with the same budget and shape; prints best validation loss (mean and 95%
    interval), parameters, chars/s, and which differences from the first cell are significant."""
    from charlstm.experiments.compare import CompareConfig, CompareProgress, parse_cells, run_compare

    progress = None
    try:
        compare_config = CompareConfig(cells=parse_cells(cells), seeds=seeds, params=params, out=out_dir)
        model_config = ModelConfig(layers=layers, hidden=hidden, embed=embed, init=init)
        budget = {"max_time": parse_duration(max_time, "--max-time")} if max_time else {}
        train_config = TrainConfig(
            batch_size=batch_size,
            seq_len=seq_len,
            lr=lr,
            eval_every=eval_every,
            seed=seed,
            max_steps=max_steps,
            **budget,
        )
        corpus_config = CorpusConfig(paths=[str(p) for p in corpus])
        progress = CompareProgress(quiet=quiet)
        result = run_compare(corpus_config, model_config, train_config, compare_config, on_event=progress)
    except CharlstmError as exc:
        _fail(exc)
        return
    finally:
        if progress is not None:
            progress.close()
    out.print(result.to_json() if as_json else result.render(), markup=False, soft_wrap=True)
    if result.interrupted:  # the finished runs are reported; the exit status says a signal stopped it (130, 143)
        raise typer.Exit(exit_status(result.signal))


# ----------------------------------------------------------------------------------------------- sample


@app.command()
def sample(
    path: Annotated[
        Optional[Path],
        typer.Argument(
            help="Run directory (its best.pt) or .pt file. (default: the most recently trained run under checkpoints/)",
            show_default=False,
        ),
    ] = None,
    temp: Annotated[
        str,
        typer.Option(
            "--temp",
            "-t",
            help="Sampling temperature; 0 = always the most likely character. A list such as "
            "0.5,0.8,1.0 prints samples for each temperature, labelled.",
        ),
    ] = str(_S.temperature),
    length: Annotated[
        Optional[int],
        typer.Option(
            "--length",
            "--max-length",
            "-n",
            help="Characters to generate per sample at most (a model trained on records ends each record itself, "
            f"usually sooner). (default: {_S.length}; with --interactive, {INTERACTIVE_LENGTH} per continuation)",
            show_default=False,
        ),
    ] = None,
    prime: Annotated[
        str,
        typer.Option(
            help="Text fed through the model first, then printed (with records: how each record starts).",
            show_default=False,
        ),
    ] = _S.prime,
    top_k: Annotated[int, typer.Option(help="Sample only from the k most likely characters (0 = off).")] = _S.top_k,
    top_p: Annotated[
        float,
        typer.Option(help="Sample only from the most likely characters whose probabilities add up to p (1 = off)."),
    ] = _S.top_p,
    seed: Annotated[
        Optional[int],
        typer.Option(help="Random seed: the same seed gives the same text. (default: random)", show_default=False),
    ] = None,
    num_samples: Annotated[
        int,
        typer.Option(
            "--num-samples", "-N", help="Samples (e.g. records: tweets, files) to generate together as one batch."
        ),
    ] = _S.num_samples,
    stop: Annotated[
        Optional[list[str]],
        typer.Option(help="End a sample when this text appears (not printed); repeatable.", show_default=False),
    ] = None,
    out_format: Annotated[
        str,
        typer.Option(
            "--format", help="text (samples separated by labelled lines) or jsonl (one JSON object per sample)."
        ),
    ] = "text",
    out_file: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Write the samples to this file instead of the terminal.", show_default=False),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "cpu",
    novelty: Annotated[
        bool,
        typer.Option(
            "--novelty",
            help="After the samples, report how much of them is copied: the share of their 10-, 20- and "
            "40-character n-grams found verbatim in the run's training split, and the longest copied span.",
        ),
    ] = False,
    interactive: Annotated[
        bool,
        typer.Option(
            "--interactive",
            "-i",
            help="Talk to the model: what you type is fed to it and it continues it, keeping the state across "
            "turns; /top N shows the likeliest next characters to pick from, /temp, /length, /seed, /reset, "
            "/help; Ctrl-D leaves.",
        ),
    ] = False,
) -> None:
    """Generate text from a trained model; it streams to the terminal as it is written."""
    from charlstm.generate.sample import check_prime, generate, load_model, pick_seed, sample_text
    from charlstm.runtime.device import pick_device

    try:
        temperatures = parse_temperatures(temp)
        if length is None:
            length = INTERACTIVE_LENGTH if interactive else _S.length
        config = SampleConfig(
            length=length,
            temperature=temperatures[0],
            top_k=top_k,
            top_p=top_p,
            prime=prime,
            seed=seed,
            num_samples=num_samples,
            stop=[s.replace("\\n", "\n").replace("\\t", "\t") for s in (stop or [])],
        )
        if out_format not in ("text", "jsonl"):
            raise CharlstmError(f"--format must be text or jsonl, got {out_format!r}")
        if path is None:
            path = rundir.find_latest_run()
        loaded = load_model(path, pick_device(device))
        check_prime(loaded.vocab, config.prime)
        if out_file is not None:
            rundir.refuse_run_file(out_file, reading=loaded.path)  # before anything is generated
        err.print(
            render.sampling_header(loaded.path, loaded.payload.get("progress") or {}), markup=False, soft_wrap=True
        )
        if interactive:
            from charlstm.generate.interactive import run_session

            if len(temperatures) > 1 or num_samples > 1 or out_file is not None or out_format != "text" or novelty:
                raise CharlstmError("--interactive takes one --temp, one sample, no --out, --format or --novelty")
            run_session(loaded, config)
            return
        config.seed = pick_seed(config.seed)  # one seed for every temperature: they differ by temperature alone
        if out_file is None and out_format == "text" and len(temperatures) == 1 and num_samples == 1:
            streamed = []
            for _, piece in generate(loaded, config):  # stream as it is written
                sys.stdout.write(piece)
                sys.stdout.flush()
                streamed.append(piece)
            sys.stdout.write("\n")
            if novelty:
                _report_novelty(loaded, ["".join(streamed)])
            return
        chunks, generated = [], []
        for temperature in temperatures:
            texts = sample_text(loaded, replace(config, temperature=temperature))
            generated += texts
            chunk = render.samples(texts, temperature, len(temperatures) > 1, out_format)
            chunks.append(chunk)
            if out_file is None:
                sys.stdout.write(chunk)
                sys.stdout.flush()
        if out_file is not None:
            try:
                out_file.write_text("".join(chunks), encoding="utf-8")
            except OSError as exc:
                raise CharlstmError(f"cannot write {out_file}: {exc.strerror or exc}") from None
            err.print(f"Wrote {num_samples * len(temperatures)} sample(s) to {out_file}")
        if novelty:
            _report_novelty(loaded, generated)
    except CharlstmError as exc:
        _fail(exc)
    except BrokenPipeError:  # `charlstm sample | head`
        sys.stderr.close()
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        raise typer.Exit(130) from None


# ------------------------------------------------------------------------------------------------- eval


@app.command("eval")
def eval_command(
    run: Annotated[Path, typer.Argument(help="Run directory (its best.pt) or .pt file.", show_default=False)],
    files: Annotated[
        Optional[list[Path]],
        typer.Argument(
            help="Text files, CSV/TSV/JSON Lines files or directories to score, each read as training read the "
            "run's corpus. Omit to score the run's validation split, whole.",
            show_default=False,
        ),
    ] = None,
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline",
            help="Also score with interpolated Kneser-Ney character n-gram models fitted on the run's training "
            "split (see --order), side by side.",
        ),
    ] = False,
    order: Annotated[
        Optional[str],
        typer.Option(
            help="The n-gram order(s) of --baseline, 1-7; a list such as 3,5,7 gives a column each (implies "
            "--baseline). (default: 5)",
            show_default=False,
        ),
    ] = None,
    samples: Annotated[
        Optional[Path],
        typer.Option(
            help="A file of generated samples (as `charlstm sample` writes them, text or jsonl): the share of its "
            "10-, 20- and 40-character n-grams found verbatim in the training split, and the longest copied "
            "span. Alone, only that; with FILEs, also their scores.",
            show_default=False,
        ),
    ] = None,
    glob: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Files of a directory to score, e.g. '*.py'; repeatable. (default: the run's)", show_default=False
        ),
    ] = None,
    text_field: Annotated[
        Optional[str],
        typer.Option(
            "--field",
            help="The CSV/TSV column or JSON Lines key holding the text. (default: the run's)",
            show_default=False,
        ),
    ] = None,
    records: Annotated[
        Optional[str],
        typer.Option(
            help="What one record is in plain text files: file, paragraph, none or sep:STRING. (default: the "
            "run's; a record-trained run reads a text file as one record)",
            show_default=False,
        ),
    ] = None,
    encoding: Annotated[
        Optional[str], typer.Option(help="Text encoding of the files. (default: the run's)", show_default=False)
    ] = None,
    corpus: Annotated[
        Optional[list[Path]],
        typer.Option(
            help="The run's training corpus, where the path its checkpoint records does not resolve from here "
            "(for the validation split, --baseline and --samples); repeatable.",
            show_default=False,
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print everything as one JSON object.")] = False,
) -> None:
    """Score text with a run's model in nats/char and bits/char, optionally beside n-gram baselines.

    Scores FILEs, or the validation split; optionally beside n-gram baselines, and how much of a samples file
    is copied from the training text."""
    from charlstm.evaluate.ngram import parse_orders
    from charlstm.evaluate.novelty import read_samples
    from charlstm.evaluate.scoring import evaluate, novelty
    from charlstm.generate.sample import load_model
    from charlstm.runtime.device import pick_device

    try:
        orders = parse_orders(order or "5") if baseline or order is not None else []
        result: dict = {}
        if files or samples is None:
            report = evaluate(
                run, files or [], pick_device(device), orders, corpus, glob, text_field, records, encoding
            )
            result["eval"] = report
        if samples is not None:
            if not samples.is_file():
                raise CharlstmError(f"samples file not found: {samples}")
            try:
                texts = read_samples(samples.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as exc:
                raise CharlstmError(f"cannot read {samples}: {exc}") from None
            if not texts:
                raise CharlstmError(f"{samples} holds no samples")
            result["novelty"] = novelty(load_model(run), texts, corpus)
    except CharlstmError as exc:
        _fail(exc)
        return
    if as_json:
        data = {k: v.as_dict() for k, v in result.items()}
        sys.stdout.write(
            json.dumps(data.get("eval", {}) | ({"novelty": data["novelty"]} if "novelty" in data else {})) + "\n"
        )
        return
    if "eval" in result:
        out.print(render.eval_table(result["eval"]))
        for line in render.eval_notes(result["eval"]):
            out.print(line, markup=False, soft_wrap=True)
    if "novelty" in result:
        out.print(render.novelty_table(result["novelty"], f"copied from the training text: {samples}"))


def _report_novelty(loaded, texts: list[str]) -> None:
    """`sample --novelty`: the share of the samples copied from the training text, on stderr after them."""
    from charlstm.evaluate.scoring import novelty

    sys.stdout.flush()
    give = "save the samples (--out FILE) and run: charlstm eval RUN --samples FILE --corpus PATH"
    err.print(render.novelty_table(novelty(loaded, texts, give_corpus=give), "copied from the training text"))


# ------------------------------------------------------------------------------------------------- info


@app.command()
def info(
    paths: Annotated[
        Optional[list[Path]],
        typer.Argument(
            help="Run directories or .pt checkpoints; several are shown side by side, their loss curves overlaid. "
            "(default: the most recently trained run under checkpoints/)",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print everything as one JSON object (a list of them for several runs).")
    ] = False,
    samples: Annotated[
        bool, typer.Option("--samples", help="Replay the samples written while training (samples.jsonl).")
    ] = False,
    plot: Annotated[
        Optional[Path],
        typer.Option(
            "--plot",
            help="Also write the loss curves as an image: FILE.svg, .png or .pdf (needs matplotlib: "
            "pip install 'charlstm\\[plot]').",
            show_default=False,
        ),
    ] = None,
    chart: Annotated[bool, typer.Option("--chart/--no-chart", help="Draw the loss curves in the terminal.")] = True,
) -> None:
    """Show what runs or checkpoints hold: corpus, model, training progress, losses and the loss curves."""
    from charlstm.cli.plots import Curve, has_points, save_chart, terminal_chart
    from charlstm.cli.progress import sample_lines

    try:
        if not paths:
            paths = [rundir.find_latest_run()]
            if not as_json:
                err.print(f"Newest run: {paths[0]}", markup=False)
        datas = [summary_of(path) for path in paths]
        folders = [rundir.run_dir_of(path) for path in paths]
        names = [path.name if path.is_dir() else path.parent.name for path in paths]
        labels = names if len(set(names)) == len(names) else [str(path) for path in paths]
        curves = [Curve(label, rundir.read_metrics(f) if f else []) for label, f in zip(labels, folders)]
        replayed = [rundir.read_samples(f) if f and samples else [] for f in folders]
        if plot is not None:
            save_chart(curves, plot, title=" vs ".join(labels))
            err.print(f"Wrote the loss curves to {plot}", markup=False)
    except CharlstmError as exc:
        _fail(exc)
        return
    if as_json:
        objects = [
            {"run": str(path), **data, **({"samples": rows} if samples else {})}
            for path, data, rows in zip(paths, datas, replayed)
        ]
        sys.stdout.write(json.dumps(objects[0] if len(objects) == 1 else objects) + "\n")
        return
    if len(paths) == 1:
        out.print(render.table(f"charlstm info {paths[0]}", render.info_rows(datas[0])))
    else:
        out.print(render.compare_table("charlstm info", labels, datas))
    if chart and has_points(curves):
        width = max(40, min(out.width, 100))
        out.print(terminal_chart(curves, width=width, height=20, color=out.is_terminal), markup=False)
        out.print(markup=False)
    elif chart and any(folders):
        out.print("(no validations yet: no loss curve to draw)", markup=False)
    elif chart:
        out.print("(a checkpoint file without its run directory: no metrics.jsonl, no loss curve)", markup=False)
    for label, rows, folder in zip(labels, replayed, folders) if samples else ():
        if len(paths) > 1:
            out.print(f"═══ {label} ═══", markup=False)
        if not rows and folder is None:
            out.print("No samples: a checkpoint file without its run directory has no samples.jsonl.", markup=False)
        elif not rows:
            out.print(
                f"No samples in {folder} (trained before samples were kept, or with --sample-every 0).", markup=False
            )
        for row in rows:
            out.print(sample_lines(row) + "\n", markup=False, highlight=False)


# ---------------------------------------------------------------------------------------------- inspect

from charlstm.insight.inspector import MAX_CHARS as MAX_INSPECT_CHARS  # noqa: E402 (kept with its command, for the merge)


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="Run directory or .pt checkpoint (a run's best.pt is used).")],
    text_file: Annotated[
        Optional[Path],
        typer.Option("--text", metavar="FILE", help="Read this text file through the model.", show_default=False),
    ] = None,
    prime: Annotated[
        Optional[str],
        typer.Option(
            "--prime",
            metavar="TEXT",
            help="Instead of --text: read what the model writes after this prime.",
            show_default=False,
        ),
    ] = None,
    length: Annotated[int, typer.Option("--length", help="With --prime: characters to generate.")] = _S.length,
    temp: Annotated[float, typer.Option("--temp", help="With --prime: sampling temperature.")] = _S.temperature,
    seed: Annotated[
        Optional[int], typer.Option("--seed", help="With --prime: same seed, same text.", show_default=False)
    ] = None,
    page: Annotated[
        Optional[Path],
        typer.Option(
            "--out", help="The HTML file to write. (default: inspect.html in the run directory)", show_default=False
        ),
    ] = None,
    find: Annotated[
        Optional[list[str]],
        typer.Option(
            "--find",
            metavar="FEATURE",
            help="Rank units by |Pearson r| with a feature of the text: line-position, indent, bracket-depth, "
            "in-quotes, in-word, in-tag (#hashtag, @mention, URL), or any regex (1 inside a match). Repeatable; "
            "the page opens on the best unit of the first.",
            show_default=False,
        ),
    ] = None,
    max_chars: Annotated[
        int,
        typer.Option(
            "--max-chars",
            help="Cut the text at this many characters (the page's size grows with it).",
        ),
    ] = MAX_INSPECT_CHARS,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the page, units found and gate saturation as JSON.")
    ] = False,
) -> None:
    """Write an HTML page that shows what every unit of a model does while it reads a text."""
    from charlstm.insight.inspector import inspect_run, read_inspect_text, summary

    try:
        if (text_file is None) == (prime is None):
            raise CharlstmError("give exactly one of --text FILE or --prime TEXT")
        SampleConfig(length=length, temperature=temp)  # range checks, named by flag
        text, continues = read_inspect_text(text_file, max_chars) if text_file is not None else (None, False)
        inspection = inspect_run(
            path,
            text=text,
            prime=prime,
            length=length,
            temperature=temp,
            seed=seed,
            finds=find or [],
            out=page,
            max_chars=max_chars,
            text_name=str(text_file) if text_file is not None else "the sample",
            text_continues=continues,
        )
    except CharlstmError as exc:
        _fail(exc)
        return
    if as_json:
        sys.stdout.write(json.dumps(summary(inspection)) + "\n")
        return
    if inspection.cut:
        err.print(
            f"note: read the first {len(inspection.text):,} "
            + (f"of {inspection.total_chars:,} " if inspection.total_chars is not None else "")
            + "characters "
            f"(--max-chars {max_chars:,}, the page's limit)",
            markup=False,
            soft_wrap=True,
        )
    for note in inspection.notes:
        err.print(f"note: {note}", markup=False, soft_wrap=True)
    for feature, matches in inspection.findings.items():
        out.print(
            f"--find {feature}: the units whose value follows it best (Pearson r over {len(inspection.text):,} chars)",
            markup=False,
            soft_wrap=True,
        )
        for m in matches:
            out.print(f"  layer {m.layer}  {m.quantity:<12} unit {m.unit:>4}   r = {m.r:+.3f}", markup=False)
    out.print(str(inspection.page), markup=False, soft_wrap=True)


def run() -> None:
    """Console-script entry point."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C outside the training loop: exit at once, no traceback
    app()
