"""`charlstm train`: train a model on a corpus (or continue a run with --resume)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.core

from charlstm.cli import options as o
from charlstm.cli import render
from charlstm.cli.output import err, fail
from charlstm.config import ModelConfig, training_configs
from charlstm.errors import CharlstmError, PeerFailedError
from charlstm.runs import directory as rundir
from charlstm.runtime.signals import exit_status, stopping_signal

_M = ModelConfig()


class TrainCommand(typer.core.TyperCommand):
    """Lets `--resume` stand alone: a bare `--resume` means "the run in the default or --out directory"."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, rundir.complete_resume(args))


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
    glob: o.Glob = None,
    text_field: o.TextField = None,
    records: o.Records = None,
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
            "(layer-normalised LSTM); equations in charlstm/model/cells.py." + o.default(_M.cell),
            show_default=False,
        ),
    ] = None,
    init: o.Init = None,
    forget_bias: Annotated[
        Optional[float],
        typer.Option(
            help="Forget-gate bias of LSTM-like cells (all but gru and rnn). (default: 1 for the cells of "
            "charlstm/model/cells.py; for lstm, PyTorch's initialisation untouched)",
            show_default=False,
        ),
    ] = None,
    layers: o.Layers = None,
    size: o.Size = None,
    hidden: o.Hidden = None,
    embed: o.Embed = None,
    dropout: o.Dropout = None,
    batch_size: o.BatchSize = None,
    seq_len: o.SeqLen = None,
    lr: o.Lr = None,
    weight_decay: o.WeightDecay = None,
    grad_clip: o.GradClip = None,
    max_steps: o.MaxSteps = None,
    epochs: o.Epochs = None,
    max_time: o.MaxTime = None,
    eval_every: o.EvalEvery = None,
    eval_chars: o.EvalChars = None,
    final_eval_chars: o.FinalEvalChars = None,
    sample_every: o.SampleEvery = None,
    sample_length: o.SampleLength = None,
    sample_temp: o.SampleTemp = None,
    sample_prime: o.SamplePrime = None,
    save_every: o.SaveEvery = None,
    val_frac: o.ValFrac = None,
    seed: o.Seed = None,
    device: o.Device = None,
    precision: o.Precision = None,
    encoding: o.Encoding = None,
    compile: o.Compile = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start a new run in a directory that already holds one, replacing it.")
    ] = False,
    quiet: o.Quiet = False,
) -> None:
    """Train a model on CORPUS; checkpoints go to checkpoints/<corpus name>/ (see --out).

    Several GPUs (or CPU processes): torchrun --nproc-per-node N -m charlstm train CORPUS ...
    """
    flags = dict(locals())  # the flags given, by the config field each sets (training_configs sorts them)
    clock_start = time.perf_counter()  # --max-time counts from here: reading the corpus is part of the run
    from charlstm.cli.progress import ConsoleProgress
    from charlstm.runtime.distributed import is_main_process
    from charlstm.training.run import train as run_training

    console = ConsoleProgress(quiet=quiet) if is_main_process() else None
    try:
        configs = training_configs(corpus, flags)
        result = run_training(
            configs.corpus,
            configs.model,
            configs.train,
            run_dir=out_dir,
            resume_from=resume,
            explicit=configs.explicit,
            overwrite=overwrite,
            on_event=console,
            clock_start=clock_start,
        )
    except PeerFailedError:  # under torchrun: the process that failed prints the reason
        raise typer.Exit(1) from None
    except CharlstmError as exc:
        fail(exc)
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
