"""`charlstm inspect`: an HTML page of what every unit of a model does while it reads a text."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from charlstm.cli import options as o
from charlstm.cli.output import err, fail, out, run_or_newest
from charlstm.config import INSPECT_MAX_CHARS, SampleConfig
from charlstm.errors import CharlstmError

_S = SampleConfig()


def inspect(
    run: o.Run = None,
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
    seed: o.SampleSeed = None,
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
        typer.Option("--max-chars", help="Cut the text at this many characters (the page's size grows with it)."),
    ] = INSPECT_MAX_CHARS,
    device: o.Device = None,
    as_json: o.Json = False,
) -> None:
    """Write an HTML page that shows what every unit of a model does while it reads a text.

    The text is a file (--text) or what the model writes after a prime (--prime, with --length, --temp and
    --seed)."""
    from charlstm.insight.inspector import inspect_run, read_inspect_text, summary

    try:
        if (text_file is None) == (prime is None):
            raise CharlstmError("give exactly one of --text FILE or --prime TEXT")
        SampleConfig(length=length, temperature=temp)  # range checks, named by flag
        text, continues = read_inspect_text(text_file, max_chars) if text_file is not None else (None, False)
        inspection = inspect_run(
            run_or_newest(run, note=not as_json),
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
            device=device or "auto",
        )
    except CharlstmError as exc:
        fail(exc)
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
