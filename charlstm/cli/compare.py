"""`charlstm compare`: several cells trained over seeds at one budget, compared with significance. It takes
`train`'s corpus, model and training flags (options.py), each run getting them as `train` would."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from charlstm.cli import options as o
from charlstm.cli.output import fail, out
from charlstm.config import training_configs
from charlstm.errors import CharlstmError
from charlstm.runtime.signals import exit_status


def compare(
    corpus: Annotated[
        list[Path],
        typer.Argument(
            help="Text file(s), directories (see --glob) or CSV/TSV/JSON Lines files (see --field) to train every "
            "run on.",
            show_default=False,
        ),
    ],
    cells: Annotated[
        str, typer.Option("--cell", help="Comma-separated cells, the first being the reference, e.g. lstm,gru,pseudo2.")
    ] = "lstm,gru,pseudo,pseudo2,peephole",
    seeds: Annotated[int, typer.Option(help="Runs per cell, seeded --seed, --seed + 1, ...")] = 3,
    params: Annotated[
        Optional[int],
        typer.Option(
            help="Size each cell's --hidden to about this many parameters. (default: same --hidden)", show_default=False
        ),
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Where the runs are kept: OUT/<cell>-seed<seed>/.")
    ] = Path("checkpoints/compare"),
    glob: o.Glob = None,
    text_field: o.TextField = None,
    records: o.Records = None,
    encoding: o.Encoding = None,
    init: o.Init = None,
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
    compile: o.Compile = None,
    as_json: o.Json = False,
    quiet: o.Quiet = False,
) -> None:
    """Train several cells over seeds at one budget and compare them, with significance.

    Trains each cell --seeds times with the same budget and shape; prints best validation loss (mean and 95%
    interval), parameters, chars/s, and which differences from the first cell are significant. The runs take
    train's flags (a budget per run is needed: --max-time, --max-steps or --epochs)."""
    flags = dict(locals())  # the flags given, by the config field each sets (training_configs sorts them)
    from charlstm.experiments.compare import CompareConfig, CompareProgress, parse_cells, run_compare

    progress = None
    try:
        compare_config = CompareConfig(cells=parse_cells(cells), seeds=seeds, params=params, out=out_dir)
        configs = training_configs(corpus, flags)
        progress = CompareProgress(quiet=quiet)
        result = run_compare(
            configs.corpus, configs.model, configs.train, compare_config, on_event=progress, explicit=configs.explicit
        )
    except CharlstmError as exc:
        fail(exc)
    finally:
        if progress is not None:
            progress.close()
    out.print(result.to_json() if as_json else result.render(), markup=False, soft_wrap=True)
    if result.interrupted:  # the finished runs are reported; the exit status says a signal stopped it (130, 143)
        raise typer.Exit(exit_status(result.signal))
