"""`charlstm info`: what runs or checkpoints hold, side by side, with their loss curves."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from charlstm.cli import options as o
from charlstm.cli import render
from charlstm.cli.output import err, fail, out, run_or_newest
from charlstm.errors import CharlstmError
from charlstm.runs import directory as rundir


def info(
    runs: o.Runs = None,
    as_json: o.Json = False,
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
    from charlstm.training.summary import summary_of

    try:
        paths = runs or [run_or_newest(None, note=not as_json)]
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
        fail(exc)
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
