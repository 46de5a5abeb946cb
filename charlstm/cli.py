"""The command line: parses flags into config dataclasses, calls one function per command, prints with Rich.

No ML logic lives here.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.core
from rich.console import Console
from rich.table import Table

from . import __version__
from . import checkpoint as ckpt
from .config import DEFAULT_MAX_TIME, CorpusConfig, ModelConfig, SampleConfig, TrainConfig, from_dict, parse_duration, parse_temperatures
from .errors import CharlstmError, PeerFailedError

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


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
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
    return arg.endswith(".pt") or (not arg.startswith("-") and Path(arg).is_dir() and not Path(arg, ".git").exists()
                                   and ckpt.is_run_dir(Path(arg)))  # fmt: skip


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
        typer.Option(help="Take only the files of a directory that match this pattern, e.g. '*.py'; repeatable. "
                     "(default: every text file; binary files and hidden folders such as .git/ are skipped)", show_default=False),
    ] = None,
    text_field: Annotated[
        Optional[str],
        typer.Option("--field", help="The CSV/TSV column or JSON Lines key that holds the text; each row is one record.", show_default=False),
    ] = None,
    records: Annotated[
        Optional[str],
        typer.Option(help="What one record is in plain text files: file, paragraph (blank-line separated) or none. "
                     "Each record ends with an end-of-record marker the model learns. (default: auto = file for a "
                     "directory, rows for CSV/JSONL, none for text files)", show_default=False),
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
    cell: Annotated[Optional[str], typer.Option(help="Recurrent cell: lstm, gru or rnn." + _default(_M.cell), show_default=False)] = None,
    layers: Annotated[Optional[int], typer.Option(help="Stacked recurrent layers." + _default(_M.layers), show_default=False)] = None,
    hidden: Annotated[Optional[int], typer.Option(help="Units per layer." + _default(_M.hidden), show_default=False)] = None,
    embed: Annotated[Optional[int], typer.Option(help="Character embedding width." + _default(_M.embed), show_default=False)] = None,
    dropout: Annotated[Optional[float], typer.Option(help="Dropout between layers and before the output, in [0, 1)." + _default(_M.dropout), show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Parallel streams per step." + _default(_T.batch_size), show_default=False)] = None,
    seq_len: Annotated[Optional[int], typer.Option(help="Characters per stream per step (the BPTT length)." + _default(_T.seq_len), show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (linear warm-up, then cosine decay over the budget)." + _default(_T.lr), show_default=False)] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="AdamW weight decay." + _default(_T.weight_decay), show_default=False)] = None,
    grad_clip: Annotated[Optional[float], typer.Option(help="Clip the global gradient norm to this (0 = off)." + _default(_T.grad_clip), show_default=False)] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps in all (counting steps before a resume).", show_default=False)] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Stop after this many passes over the training text.", show_default=False)] = None,
    max_time: Annotated[
        Optional[str],
        typer.Option(
            help=f"Stop after this much wall-clock time in all, e.g. 90s, 10m, 2h: reading the corpus, validations and "
            f"saves included (the final evaluation and save come after). With no --max-steps, --epochs or "
            f"--max-time: {DEFAULT_MAX_TIME / 60:g}m.",
            show_default=False,
        ),
    ] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="Validate (and save) every this many steps, and at the end." + _default(_T.eval_every), show_default=False)] = None,
    eval_chars: Annotated[Optional[int], typer.Option(help="Characters each periodic validation scores: a fixed, seeded slice of the validation split (all of it when smaller)." + _default(f"{_T.eval_chars:,}"), show_default=False)] = None,
    final_eval_chars: Annotated[Optional[int], typer.Option(help="The final evaluation scores the whole validation split, or a seeded slice of this many characters when it is larger." + _default(f"{_T.final_eval_chars:,}"), show_default=False)] = None,
    save_every: Annotated[
        Optional[str],
        typer.Option(help="Also save latest.pt every N steps, or every duration such as 5m. (default: at each validation)", show_default=False),
    ] = None,
    val_frac: Annotated[Optional[float], typer.Option(help="Share of the text, from its end, held out for validation, in (0, 0.5]." + _default(_T.val_frac), show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (weights, dropout)." + _default(_T.seed), show_default=False)] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or mps (auto picks a GPU when there is one)." + _default(_T.device), show_default=False)] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto, fp32 or bf16 (auto: bf16 autocast on CUDA, fp32 elsewhere)." + _default(_T.precision), show_default=False)] = None,
    encoding: Annotated[Optional[str], typer.Option(help="Text encoding of the corpus, e.g. latin-1." + _default(_T.encoding), show_default=False)] = None,
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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a model on CORPUS; checkpoints go to checkpoints/<corpus name>/ (see --out).

    Several GPUs (or CPU processes): torchrun --nproc-per-node N -m charlstm train CORPUS ...
    """
    clock_start = time.perf_counter()  # --max-time counts from here: reading the corpus is part of the run
    from .data import default_corpus, load_corpus
    from .distributed import is_main_process
    from .runlock import RunLock
    from .train import pick_device, run_dir_for, train as run_training

    given = {k: v for k, v in locals().items() if v is not None and k != "clock_start"}
    try:
        model_values = {f.name: given[f.name] for f in fields(ModelConfig) if f.name in given}
        train_values = {f.name: given[f.name] for f in fields(TrainConfig) if f.name in given and f.name != "max_time"}
        if max_time is not None:
            train_values["max_time"] = parse_duration(max_time, "--max-time")
        if save_every is not None:
            if save_every.strip().lstrip("+-").isdigit():
                train_values["save_every"] = int(save_every)
                if train_values["save_every"] <= 0:
                    raise CharlstmError(f"--save-every must be > 0 steps (or a duration such as 5m), got {save_every}")
            else:
                train_values["save_every_seconds"] = parse_duration(save_every, "--save-every")
        explicit = set(model_values) | set(train_values)
        model_config = ModelConfig(**model_values)
        train_config = TrainConfig(**train_values)
        model_config.validate()
        train_config.validate()
        if "device" in explicit:
            pick_device(train_config.device)  # an unavailable device fails now, before any data is read

        resume_path: Path | None = None
        if resume is not None:
            resume_path = _resume_target(resume, corpus, out_dir)
        if corpus:
            data = load_corpus(CorpusConfig(
                paths=[str(p) for p in corpus], globs=glob or [], text_field=text_field,
                records=records or CorpusConfig.records, encoding=train_config.encoding,
            ))  # fmt: skip
        elif glob or text_field or records:
            raise CharlstmError("--glob, --field and --records describe a corpus; give the corpus path too")
        elif resume_path is not None:
            data = _corpus_of_run(resume_path, train_config.encoding)
        else:
            data = default_corpus()
            if is_main_process():
                err.print(f"No corpus given: training on the built-in corpus ({data.sources[0]}).")
        if is_main_process():
            for note in data.notes:
                err.print(note, markup=False, soft_wrap=True)
        run_dir = out_dir or ckpt.DEFAULT_ROOT / data.name
        # the run's lock is taken before an old run is cleared (--overwrite): a run being trained is never touched
        lock = RunLock.acquire(run_dir_for(run_dir, resume_path), enabled=is_main_process())
        try:
            if resume_path is None and (run_dir / ckpt.LATEST).exists():
                if not overwrite:
                    raise CharlstmError(
                        f"{run_dir} already holds a run; continue it with --resume, or replace it with --overwrite "
                        f"(or choose another --out)"
                    )
                if is_main_process():
                    ckpt.clear_run(run_dir)
            if not (explicit & {"max_steps", "epochs", "max_time"}) and resume_path is None:
                train_config.max_time = DEFAULT_MAX_TIME
            result = run_training(
                data,
                model_config,
                train_config,
                run_dir,
                resume_from=resume_path,
                explicit=explicit,
                show_progress=not quiet,
                log=lambda line: err.print(line, markup=False, soft_wrap=True),
                clock_start=clock_start,
            )
        finally:
            lock.release()
    except PeerFailedError:  # under torchrun: the process that failed prints the reason
        raise typer.Exit(1) from None
    except CharlstmError as exc:
        _fail(str(exc))
        return
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started: nothing more is saved
        err.print("Interrupted; nothing more was saved (the run's latest.pt, if any, holds the last save).")
        raise typer.Exit(130) from None
    if not is_main_process():  # under torchrun, rank 0 reports for all
        return
    if result.stopped_by == "budget_spent":
        _print_budget_spent(result)
        return
    _print_train_summary(result)
    if result.stopped_by.startswith("interrupt"):
        launcher = f"torchrun --nproc-per-node {result.world_size} -m " if result.world_size > 1 else ""
        err.print(
            f"Stopped by {result.stopped_by.split('(')[-1].rstrip(')')} at step {result.step}; saved {result.run_dir / ckpt.LATEST}.\n"
            f"Resume with: {launcher}charlstm train --resume {result.run_dir}"
        )


def _resume_target(resume: str, corpus: Optional[list[Path]], out_dir: Optional[Path]) -> Path:
    from .data import corpus_name

    if resume != "auto":
        target = Path(resume)
        if not target.exists():
            raise CharlstmError(f"--resume: no such run or checkpoint: {target}")
        return target
    if out_dir is not None:
        target = out_dir
    elif corpus:
        target = ckpt.DEFAULT_ROOT / corpus_name(corpus)
    else:
        target = ckpt.DEFAULT_ROOT / "python-stdlib"
    if not (target / ckpt.LATEST).exists():
        raise CharlstmError(f"--resume: no checkpoint to resume in {target}/ (train first, or give --resume PATH)")
    return target


def _corpus_of_run(resume_path: Path, encoding: str):
    from .data import default_corpus, load_corpus

    file = ckpt.resolve_checkpoint(resume_path, prefer=ckpt.LATEST)
    payload = ckpt.load_model_checkpoint(file)
    info = payload.get("corpus") or {}
    if info.get("name") == "python-stdlib":
        return default_corpus()
    config = from_dict(CorpusConfig, info["config"]) if info.get("config") else None
    sources = [Path(s) for s in (config.paths if config else info.get("sources", []))]
    if not sources:
        raise CharlstmError("the checkpoint does not record its corpus; give the corpus path")
    missing = [str(s) for s in sources if not s.exists()]
    if missing:
        raise CharlstmError(
            f"the run's corpus {', '.join(missing)} is not there any more (paths are relative to where training "
            f"started); give it: charlstm train CORPUS --resume {resume_path}"
        )
    if config:
        return load_corpus(config)
    return load_corpus(sources, encoding=encoding)


def _print_budget_spent(result) -> None:
    final = result.final_val_loss if math.isfinite(result.final_val_loss) else result.best_val_loss
    loss = f"; val loss {final:.4f} nats/char" if math.isfinite(final) else ""
    err.print(
        f"{result.run_dir} has already used its budget ({result.budget}: step {result.step:,}, "
        f"{_duration(result.elapsed_seconds)} of wall-clock time{loss}); nothing to train.\n"
        f"To train more, give a larger budget (totals for the run), e.g.: "
        f"charlstm train --resume {result.run_dir} {result.extend_with}",
        markup=False, soft_wrap=True,
    )  # fmt: skip


def _duration(seconds: float) -> str:
    from .progress import duration

    return duration(seconds)


def _print_train_summary(result) -> None:
    table = Table(title="charlstm train", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    best = result.best_val_loss
    rows = [
        ("run", str(result.run_dir)),
        ("stopped by", result.stopped_by),
        ("steps", f"{result.step:,}"),
        ("characters seen", f"{result.chars_seen:,}"),
        ("time", f"{result.elapsed_seconds:,.1f} s wall clock ({result.train_seconds:,.1f} s of training steps)"),
        ("speed", f"{result.chars_per_second:,.0f} chars/s"),
        ("best val loss", f"{best:.4f} nats/char ({best / math.log(2):.4f} bits/char), periodic slice (best.pt)" if math.isfinite(best) else "not evaluated yet"),
        ("final val loss", f"{result.final_val_loss:.4f} nats/char ({result.final_val_loss / math.log(2):.4f} bits/char)" if math.isfinite(result.final_val_loss) else "not evaluated (stopped early)"),
        ("parameters", f"{result.params:,} (vocabulary {result.vocab_size})"),
        ("device", f"{result.device} ({result.precision})"
                   + (f" x {result.world_size} processes" if result.world_size > 1 else "")),
    ]
    if result.resumed_from:
        rows.insert(1, ("resumed from", result.resumed_from))
    for key, value in rows:
        table.add_row(key, value)
    err.print(table)
    err.print(f"Sample with: charlstm sample {result.run_dir}")


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
        typer.Option("--temp", "-t", help="Sampling temperature; 0 = always the most likely character. A list such as "
                     "0.5,0.8,1.0 prints samples for each temperature, labelled."),
    ] = str(_S.temperature),
    length: Annotated[
        int,
        typer.Option("--length", "--max-length", "-n", help="Characters to generate per sample at most (a model "
                     "trained on records ends each record itself, usually sooner)."),
    ] = _S.length,
    prime: Annotated[str, typer.Option(help="Text fed through the model first, then printed (with records: how each record starts).", show_default=False)] = _S.prime,
    top_k: Annotated[int, typer.Option(help="Sample only from the k most likely characters (0 = off).")] = _S.top_k,
    top_p: Annotated[float, typer.Option(help="Sample only from the most likely characters whose probabilities add up to p (1 = off).")] = _S.top_p,
    seed: Annotated[Optional[int], typer.Option(help="Random seed: the same seed gives the same text. (default: random)", show_default=False)] = None,
    num_samples: Annotated[int, typer.Option("--num-samples", "-N", help="Samples (e.g. records: tweets, files) to generate together as one batch.")] = _S.num_samples,
    stop: Annotated[Optional[list[str]], typer.Option(help="End a sample when this text appears (not printed); repeatable.", show_default=False)] = None,
    out_format: Annotated[
        str, typer.Option("--format", help="text (samples separated by labelled lines) or jsonl (one JSON object per sample).")
    ] = "text",
    out_file: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the samples to this file instead of the terminal.", show_default=False)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "cpu",
) -> None:
    """Generate text from a trained model; it streams to the terminal as it is written."""
    from .sample import check_prime, generate, load_model, sample_text
    from .train import pick_device

    try:
        temperatures = parse_temperatures(temp)
        config = SampleConfig(
            length=length, temperature=temperatures[0], top_k=top_k, top_p=top_p, prime=prime, seed=seed,
            num_samples=num_samples, stop=[s.replace("\\n", "\n").replace("\\t", "\t") for s in (stop or [])],
        )  # fmt: skip
        config.validate()
        if out_format not in ("text", "jsonl"):
            raise CharlstmError(f"--format must be text or jsonl, got {out_format!r}")
        if path is None:
            path = ckpt.find_latest_run()
        loaded = load_model(path, pick_device(device))
        check_prime(loaded.vocab, config.prime)
        progress = loaded.payload.get("progress") or {}
        loss = _finite(progress.get("final_val_loss")) or _finite(progress.get("best_val_loss"))
        err.print(
            f"Sampling from {loaded.path} (step {progress.get('step', 0):,}"
            + (f", val loss {loss:.3f} nats/char)" if loss is not None else ")"),
            markup=False, soft_wrap=True,
        )  # fmt: skip
        if config.seed is None:  # one seed for every temperature, so that they differ by temperature alone
            config.seed = int.from_bytes(os.urandom(4), "little")
        if out_file is None and out_format == "text" and len(temperatures) == 1 and num_samples == 1:
            for _, piece in generate(loaded, config):  # stream as it is written
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            return
        chunks = []
        for temperature in temperatures:
            texts = sample_text(loaded, replace(config, temperature=temperature))
            chunk = _format_samples(texts, temperature, len(temperatures) > 1, out_format)
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
        _fail(str(exc))
    except BrokenPipeError:  # `charlstm sample | head`
        sys.stderr.close()
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        raise typer.Exit(130) from None


def _format_samples(texts: list[str], temperature: float, label_temperature: bool, out_format: str) -> str:
    if out_format == "jsonl":
        return "".join(
            json.dumps({"temperature": temperature, "sample": i + 1, "text": t}, ensure_ascii=False) + "\n"
            for i, t in enumerate(texts)
        )
    heading = f"═══ temperature {temperature:g} ═══\n" if label_temperature else ""
    return heading + _join_samples(texts)


def _join_samples(texts: list[str]) -> str:
    if len(texts) == 1:
        return texts[0] + "\n"
    return "".join(f"─── sample {i + 1} ───\n{t}\n" for i, t in enumerate(texts))


# ------------------------------------------------------------------------------------------------- info


@app.command()
def info(
    path: Annotated[
        Optional[Path],
        typer.Argument(
            help="Run directory or .pt checkpoint. (default: the most recently trained run under checkpoints/)",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print everything as one JSON object.")] = False,
) -> None:
    """Show what a run or checkpoint holds: corpus, model, training progress and losses."""
    try:
        if path is None:
            path = ckpt.find_latest_run()
            if not as_json:
                err.print(f"Newest run: {path}", markup=False)
        data = _info(path)
    except CharlstmError as exc:
        _fail(str(exc))
        return
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
        return
    table = Table(title=f"charlstm info {path}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in _info_rows(data):
        table.add_row(key, value)
    out.print(table)


def _info(path: Path) -> dict:
    """run.json for a run directory (the checkpoint when run.json is missing or damaged), else the checkpoint's
    own summary."""
    if path.is_dir() and (path / ckpt.RUN_JSON).exists():
        try:
            data = ckpt.read_run_json(path)
            if isinstance(data, dict) and isinstance(data.get("model_config"), dict):
                return data
        except CharlstmError:
            pass  # a damaged run.json: the checkpoint says the same
    file = ckpt.resolve_checkpoint(path, prefer=ckpt.LATEST)
    payload = ckpt.load_model_checkpoint(file)
    progress = payload.get("progress", {})
    params = sum(t.numel() for t in payload["model"].values())
    seconds = progress.get("train_seconds", 0.0)
    corpus = payload.get("corpus") or {}
    return {
        "checkpoint": str(file),
        "corpus": corpus,
        "records": corpus.get("records"),
        "record_lengths": corpus.get("record_lengths"),
        "model_config": payload["model_config"],
        "train_config": payload.get("train_config", {}),
        "vocab_size": len(payload["vocab"]),
        "params": params,
        "step": progress.get("step", 0),
        "epoch": progress.get("epoch", 0),
        "chars_seen": progress.get("chars_seen", 0),
        "best_val_loss": _finite(progress.get("best_val_loss")),
        "last_val_loss": _finite(progress.get("last_val_loss")),
        "final_val_loss": _finite(progress.get("final_val_loss")),
        "train_seconds": seconds,
        "elapsed_seconds": progress.get("elapsed_seconds", seconds),
        "chars_per_second": progress.get("chars_seen", 0) / seconds if seconds else 0.0,
        "checkpoint_format_version": payload["version"],
    }


def _finite(value) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _info_rows(data: dict) -> list[tuple[str, str]]:
    """`charlstm info` as labelled, readable rows (the raw dict is what --json prints)."""
    rows: list[tuple[str, str]] = []
    if data.get("checkpoint"):
        rows.append(("checkpoint", str(data["checkpoint"])))
    corpus = data.get("corpus") or {}
    config = corpus.get("config") or {}
    sources = config.get("paths") or corpus.get("sources") or []
    rows.append(("corpus", str(corpus.get("name", "?"))))
    if sources:
        shown = ", ".join(str(s) for s in sources[:5]) + (f" and {len(sources) - 5} more" if len(sources) > 5 else "")
        rows.append(("  sources", shown))
    if config.get("globs"):
        rows.append(("  globs", " ".join(config["globs"])))
    if config.get("text_field"):
        rows.append(("  field", str(config["text_field"])))
    if config.get("encoding", "utf-8") != "utf-8":
        rows.append(("  encoding", str(config["encoding"])))
    records, lengths = data.get("records"), data.get("record_lengths")
    if records is not None:
        mode = config.get("records", "auto")
        text = f"{records:,}" + (f" ({mode})" if mode not in (None, "auto") else "")
        if isinstance(lengths, dict):
            text += (f", length min {lengths.get('min', 0):,} · median {lengths.get('median', 0):,.0f} · "
                     f"max {lengths.get('max', 0):,} characters")  # fmt: skip
        rows.append(("  records", text))
    else:
        rows.append(("  records", "none (one stream)"))
    if corpus.get("chars") is not None:
        rows.append(("  characters", f"{corpus['chars']:,}"))
    vocab = data.get("vocab_size")
    if vocab is not None:
        rows.append(("  vocabulary", f"{vocab:,} symbols" + (" (with the end-of-record marker)" if records is not None else "")))
    model = data.get("model_config") or {}
    rows.append(("model", f"{model.get('cell', '?')}, {model.get('layers', '?')} x {model.get('hidden', '?')}, "
                          f"embedding {model.get('embed', '?')}, dropout {model.get('dropout', 0):g}"))  # fmt: skip
    if data.get("params") is not None:
        rows.append(("  parameters", f"{data['params']:,}"))
    train = data.get("train_config") or {}
    budget = []
    for key, flag in (("max_steps", "--max-steps"), ("epochs", "--epochs"), ("max_time", "--max-time")):
        if train.get(key):
            budget.append(f"{flag} {_duration(train[key]) if key == 'max_time' else train[key]}")
    rows.append(("budget", " or ".join(budget) or "-"))
    rows.append(("training", f"batch {train.get('batch_size', '?')} x {train.get('seq_len', '?')}, lr {train.get('lr', 0):g}, "
                             f"eval every {train.get('eval_every', '?')} steps"))  # fmt: skip
    rows.append(("progress", f"step {data.get('step', 0):,}, epoch {data.get('epoch', 0)}, "
                             f"{data.get('chars_seen', 0):,} characters seen"))  # fmt: skip
    elapsed, seconds = data.get("elapsed_seconds"), data.get("train_seconds") or 0.0
    time_text = f"{_duration(elapsed)} wall clock, " if elapsed is not None else ""
    rows.append(("time", f"{time_text}{seconds:,.1f} s of training steps, {data.get('chars_per_second', 0):,.0f} chars/s"))
    if data.get("device"):
        rows.append(("device", f"{data['device']} ({data.get('precision', 'fp32')})"
                               + (f" x {data['world_size']} processes" if (data.get("world_size") or 1) > 1 else "")))  # fmt: skip
    validation = data.get("validation") or {}

    def loss_text(value, what: str) -> str:
        return f"{value:.4f} nats/char ({value / math.log(2):.4f} bits/char), {what}" if value is not None else "-"

    periodic = (f"periodic slice of {validation['periodic_chars']:,} of {validation['split_chars']:,} characters"
                if validation and not validation.get("periodic_whole_split") else "whole validation split")  # fmt: skip
    final = (f"{validation['final_chars']:,} of {validation['split_chars']:,} characters"
             if validation and not validation.get("final_whole_split") else "whole validation split")  # fmt: skip
    rows.append(("best val loss", loss_text(data.get("best_val_loss"), periodic + "; chose best.pt")))
    rows.append(("last val loss", loss_text(data.get("last_val_loss"), periodic)))
    rows.append(("final val loss", loss_text(data.get("final_val_loss"), "final evaluation, " + final)
                 if data.get("final_val_loss") is not None else "- (the run has not reached its end)"))  # fmt: skip
    rows.append(("format", f"checkpoint version {data.get('checkpoint_format_version', '?')}"))
    return rows


def run() -> None:
    """Console-script entry point."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C outside the training loop: exit at once, no traceback
    app()
