"""`charlstm export`: a trained model as ONNX, TorchScript or a self-contained web page, to run without charlstm."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from charlstm.cli import options as o
from charlstm.cli.output import fail, out, run_or_newest
from charlstm.errors import CharlstmError


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
    run: o.Run = None,
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
    device: o.Device = None,
) -> None:
    """Export a trained model to run without charlstm: ONNX, TorchScript, or a web page.

    Exports are made and checked on the CPU, so that they load anywhere: --device auto and cpu both mean the CPU
    here."""
    from charlstm.export.formats import export as export_model

    try:
        exported = export_model(run_or_newest(run), fmt.lower(), out_file, precision, device or "auto")
    except CharlstmError as exc:
        fail(exc)
    for note in exported.notes:
        out.print(note, markup=False, soft_wrap=True)
