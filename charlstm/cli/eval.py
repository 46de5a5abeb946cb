"""`charlstm eval`: score text with a run's model, beside n-gram baselines, and how much of its samples is copied."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from charlstm.cli import options as o
from charlstm.cli import render
from charlstm.cli.output import fail, out, run_or_newest
from charlstm.errors import CharlstmError


def eval_command(
    run: o.Run = None,
    files: Annotated[
        Optional[list[Path]],
        typer.Argument(
            help="Text files, CSV/TSV/JSON Lines files or directories to score, each read as training read the "
            "run's corpus. Omit to score the run's validation split, whole. (To score files with the newest run, "
            "name the run too.)",
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
    device: o.Device = None,
    as_json: o.Json = False,
) -> None:
    """Score text with a run's model in nats/char and bits/char, optionally beside n-gram baselines.

    Scores FILEs, or the validation split; optionally beside n-gram baselines, and how much of a samples file
    is copied from the training text."""
    from charlstm.evaluate.report import evaluate_run

    try:
        result = evaluate_run(
            run_or_newest(run, note=not as_json),
            files,
            device=device or "auto",
            baseline=baseline,
            order=order,
            samples=samples,
            corpus_paths=corpus,
            globs=glob,
            text_field=text_field,
            records=records,
            encoding=encoding,
        )
    except CharlstmError as exc:
        fail(exc)
    if as_json:
        sys.stdout.write(json.dumps(result.as_dict()) + "\n")
        return
    if result.scores is not None:
        out.print(render.eval_table(result.scores))
        for line in render.eval_notes(result.scores):
            out.print(line, markup=False, soft_wrap=True)
    if result.novelty is not None:
        out.print(render.novelty_table(result.novelty, f"copied from the training text: {result.samples}"))
