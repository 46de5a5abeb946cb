"""The command line: the Typer app, one module per command (train.py, sample.py, info.py, eval.py, inspect.py,
export.py, probe.py, compare.py), the options they share (options.py) and where they print (output.py).

The commands parse flags, call the library and render what it returns; decisions live in the library. Nothing
here or in the command modules imports torch at module level: each command imports the library it calls when it
runs, so `charlstm --help` and `charlstm COMMAND --help` answer at once.
"""

from __future__ import annotations

from typing import Annotated

import typer
import typer.core

from charlstm import __version__
from charlstm.cli import compare, export, info, probe, sample, train
from charlstm.cli import eval as eval_module
from charlstm.cli import inspect as inspect_module
from charlstm.cli.output import out


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


app.command(cls=train.TrainCommand)(train.train)
app.command()(sample.sample)
app.command()(info.info)
app.command("eval")(eval_module.eval_command)
app.command()(inspect_module.inspect)
app.command()(export.export)
app.command()(probe.probe)
app.command()(compare.compare)


def run() -> None:
    """Console-script entry point."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C outside the training loop: exit at once, no traceback
    app()
