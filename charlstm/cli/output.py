"""Where the commands print (stdout for results, stderr for notes and errors), how a refused command ends (one
error line naming the flag, exit 1), and the run a command reads when none is given. No torch here."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from charlstm.config import InvalidValue
from charlstm.errors import CharlstmError
from charlstm.runs import directory as rundir

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

FLAGS = {"text_field": "--field", "temperature": "--temp"}  # config fields whose flag is not --field-name


def fail(error: CharlstmError) -> NoReturn:
    """One line on stderr, and exit 1. A config value out of range is named by its flag."""
    message = str(error)
    if isinstance(error, InvalidValue):
        message = f"{FLAGS.get(error.name, '--' + error.name.replace('_', '-'))} {error.problem}"
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)  # e.g. 'charlstm[plot]' is no tag
    raise typer.Exit(1)


def run_or_newest(run: Path | None, note: bool = True) -> Path:
    """The run a command reads: the one given, else the most recently trained one (named on stderr when `note`)."""
    if run is not None:
        return run
    newest = rundir.find_latest_run()
    if note:
        err.print(f"Newest run: {newest}", markup=False, soft_wrap=True)
    return newest
