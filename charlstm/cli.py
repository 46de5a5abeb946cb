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

from . import __version__, render, rundir
from .config import (
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
from .errors import CharlstmError, PeerFailedError
from .summary import summary_of

app = typer.Typer(
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
            help="What one record is in plain text files: file, paragraph (blank-line separated) or none. "
            "Each record ends with an end-of-record marker the model learns. (default: auto = file for a "
            "directory, rows for CSV/JSONL, none for text files)",
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
        Optional[str], typer.Option(help="Recurrent cell: lstm, gru or rnn." + _default(_M.cell), show_default=False)
    ] = None,
    layers: Annotated[
        Optional[int], typer.Option(help="Stacked recurrent layers." + _default(_M.layers), show_default=False)
    ] = None,
    hidden: Annotated[
        Optional[int], typer.Option(help="Units per layer." + _default(_M.hidden), show_default=False)
    ] = None,
    embed: Annotated[
        Optional[int], typer.Option(help="Character embedding width." + _default(_M.embed), show_default=False)
    ] = None,
    dropout: Annotated[
        Optional[float],
        typer.Option(
            help="Dropout between layers and before the output, in [0, 1)." + _default(_M.dropout), show_default=False
        ),
    ] = None,
    batch_size: Annotated[
        Optional[int], typer.Option(help="Parallel streams per step." + _default(_T.batch_size), show_default=False)
    ] = None,
    seq_len: Annotated[
        Optional[int],
        typer.Option(
            help="Characters per stream per step (the BPTT length)." + _default(_T.seq_len), show_default=False
        ),
    ] = None,
    lr: Annotated[
        Optional[float],
        typer.Option(
            help="Peak learning rate (linear warm-up, then cosine decay over the budget)." + _default(_T.lr),
            show_default=False,
        ),
    ] = None,
    weight_decay: Annotated[
        Optional[float], typer.Option(help="AdamW weight decay." + _default(_T.weight_decay), show_default=False)
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
            help="Validate (and save) every this many steps, and at the end." + _default(_T.eval_every),
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
            help="auto, fp32 or bf16 (auto: bf16 autocast on CUDA, fp32 elsewhere)." + _default(_T.precision),
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
    from .distributed import is_main_process
    from .progress import ConsoleProgress
    from .train import train as run_training

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
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started: nothing more is saved
        err.print("Interrupted; nothing more was saved (the run's latest.pt, if any, holds the last save).")
        raise typer.Exit(130) from None
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
    if result.stopped_by.startswith("interrupt"):
        err.print(render.interrupted(result), markup=False, soft_wrap=True)


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
    from .device import pick_device
    from .sample import check_prime, generate, load_model, pick_seed, sample_text

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
        err.print(
            render.sampling_header(loaded.path, loaded.payload.get("progress") or {}), markup=False, soft_wrap=True
        )
        if interactive:
            from .interactive import run_session

            if len(temperatures) > 1 or num_samples > 1 or out_file is not None or out_format != "text":
                raise CharlstmError("--interactive takes one --temp, one sample, no --out and no --format")
            run_session(loaded, config)
            return
        config.seed = pick_seed(config.seed)  # one seed for every temperature: they differ by temperature alone
        if out_file is None and out_format == "text" and len(temperatures) == 1 and num_samples == 1:
            for _, piece in generate(loaded, config):  # stream as it is written
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            return
        chunks = []
        for temperature in temperatures:
            texts = sample_text(loaded, replace(config, temperature=temperature))
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
    except CharlstmError as exc:
        _fail(exc)
    except BrokenPipeError:  # `charlstm sample | head`
        sys.stderr.close()
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        raise typer.Exit(130) from None


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
    from .plots import Curve, has_points, save_chart, terminal_chart
    from .progress import sample_lines

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


def run() -> None:
    """Console-script entry point."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C outside the training loop: exit at once, no traceback
    app()
