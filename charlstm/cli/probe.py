"""`charlstm probe`: Edwin Chen's synthetic tasks (counting, memory, copying) and the units that carry them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from charlstm.cli import options as o
from charlstm.cli.output import err, fail, out
from charlstm.errors import CharlstmError


def probe(
    task: Annotated[str, typer.Argument(help="count, count-distract, memory or copy (Edwin Chen's tasks).")],
    cell: Annotated[str, typer.Option(help="Recurrent cell (any of train's --cell).")] = "lstm",
    layers: Annotated[
        Optional[int], typer.Option(help="Layers. (default: the task's: 2 for copy, else 1)", show_default=False)
    ] = None,
    hidden: Annotated[
        Optional[int],
        typer.Option(
            help="Units per layer. (default: the task's: 10 for count and memory, 32 else)", show_default=False
        ),
    ] = None,
    train_max: Annotated[
        Optional[int],
        typer.Option(
            help="Train on lengths 1..this (N, the x's, the string). (default: 10; copy 4)", show_default=False
        ),
    ] = None,
    eval_max: Annotated[
        Optional[int],
        typer.Option(
            help="Evaluate lengths 1..this. (default: 30 for count and memory, 20 count-distract, 8 copy)",
            show_default=False,
        ),
    ] = None,
    steps: Annotated[int, typer.Option(help="Training steps per seed.")] = 1500,
    batch_size: Annotated[int, typer.Option(help="Sequences per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Adam's peak learning rate (cosine decay).")] = 1e-2,
    seeds: Annotated[int, typer.Option(help="Independent runs (seeds --seed, --seed + 1, ...).")] = 1,
    seed: Annotated[int, typer.Option(help="The first seed.")] = 1,
    page: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            help="Also write the inspector's page of the first seed's model, opening on the unit that carries "
            "the task (not for copy).",
            show_default=False,
        ),
    ] = None,
    as_json: o.Json = False,
) -> None:
    """Edwin Chen's synthetic tasks: exact-match accuracy per length, in and beyond training, and their units.

    Trains small models on the task and reports exact-match accuracy per length, inside the training range and
    beyond it, the first length that fails, and the units that carry the task."""
    from charlstm.experiments.probes import ProbeConfig, run_probe

    try:
        config = ProbeConfig(
            task=task,
            cell=cell,
            layers=layers,
            hidden=hidden,
            train_max=train_max,
            eval_max=eval_max,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seeds=seeds,
            seed=seed,
        )
        result = run_probe(config, on_seed=lambda i: err.print(f"seed {i + 1}/{config.seeds} done"), page=page)
    except CharlstmError as exc:
        fail(exc)
    out.print(result.to_json() if as_json else result.render(), markup=False, soft_wrap=True)
    if result.page is not None and not as_json:
        out.print(f"page: {result.page}", markup=False, soft_wrap=True)
