"""Loss curves: training and validation loss against characters seen, from runs' metrics.jsonl rows.

Drawn in the terminal with plotext (a dependency), or written as an SVG/PNG/PDF image with matplotlib (the
optional `plot` extra: most people read the terminal chart, and matplotlib is a large install).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charlstm.errors import CharlstmError
from charlstm.runtime.atomic import atomic_write

IMAGE_FORMATS = ("svg", "png", "pdf")
INSTALL_PLOT = "pip install 'charlstm[plot]'"  # or: pip install matplotlib
TERMINAL_MARKERS = ("braille", "hd", "fhd")  # without colour, each line of a chart in its own marker


@dataclass
class Curve:
    """One run's loss curve: a label (its name) and its validation rows (step, chars_seen, train_loss, val_loss)."""

    label: str
    rows: list[dict[str, Any]]

    def points(self, key: str) -> tuple[list[float], list[float]]:
        """(characters seen, loss) of the rows where `key` (train_loss or val_loss) is a finite number."""
        xs, ys = [], []
        for row in self.rows:
            x, y = row.get("chars_seen"), row.get(key)
            if _finite(x) and _finite(y):
                xs.append(float(x))
                ys.append(float(y))
        return xs, ys


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def chars_unit(largest: float) -> tuple[float, str]:
    """The divisor and name of the unit that characters seen are shown in: (1e6, "M") for millions."""
    for divisor, name in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if largest >= divisor:
            return divisor, name
    return 1.0, ""


def _series(curves: list[Curve], both: bool) -> list[tuple[str, str, list[float], list[float]]]:
    """(label, which, xs, ys) of every line to draw: train and val of one run, or val alone of several
    (2 lines per run would crowd a terminal chart; an image draws both)."""
    series = []
    for curve in curves:
        for key, which in (("train_loss", "train"), ("val_loss", "val")):
            if key == "train_loss" and not both:
                continue
            xs, ys = curve.points(key)
            if xs:
                label = which if len(curves) == 1 else f"{curve.label} {which}" if both else curve.label
                series.append((label, which, xs, ys))
    return series


def has_points(curves: list[Curve]) -> bool:
    return any(curve.points("val_loss")[0] or curve.points("train_loss")[0] for curve in curves)


def terminal_chart(curves: list[Curve], width: int = 100, height: int = 20, color: bool = True) -> str:
    """The loss curves as text: a plotext chart `width` x `height` characters (colourless: plain characters,
    each line in its own marker)."""
    import plotext

    series = _series(curves, both=len(curves) == 1)
    if not series:
        return ""
    divisor, unit = chars_unit(max(max(xs) for _, _, xs, _ in series))
    figure = plotext.figure
    figure.clear()
    plotext.terminal.limit(False, False)  # the size asked for, not the terminal's (a pipe has none)
    figure.plot_size(width, height)
    for index, (label, _, xs, ys) in enumerate(series):
        marker = "braille" if color else TERMINAL_MARKERS[index % len(TERMINAL_MARKERS)]
        figure.draw(figure.signal([x / divisor for x in xs], ys, marker=marker).lines().label(label))
    top = max(max(ys) for _, _, _, ys in series)
    right = max(max(xs) for _, _, xs, _ in series) / divisor
    figure.legend(x=right, y=top, ha="right", va="top", relative=True)  # losses fall: the top right is free
    figure.title("loss (nats/char)")
    figure.label(f"characters seen{f' ({unit})' if unit else ''}", axis="x")
    return figure.build().string(colorless=not color).rstrip("\n")


def save_chart(curves: list[Curve], path: Path, title: str = "") -> None:
    """The loss curves as an image; its format from the file's suffix (.svg, .png or .pdf)."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in IMAGE_FORMATS:
        raise CharlstmError(f"--plot {path}: the file must end in .svg, .png or .pdf")
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise CharlstmError(f"--plot needs matplotlib, an optional extra: {INSTALL_PLOT}") from None
    series = _series(curves, both=True)
    if not series:
        raise CharlstmError("nothing to plot: the run has no validations yet")
    divisor, unit = chars_unit(max(max(xs) for _, _, xs, _ in series))
    # no date and a fixed hash salt: the same run gives the same SVG (a file worth committing); text stays text
    with matplotlib.rc_context({"svg.hashsalt": "charlstm", "svg.fonttype": "none"}):
        figure = Figure(figsize=(8, 4.5), layout="constrained")
        axes = figure.subplots()
        colors = {}
        for label, which, xs, ys in series:
            run = label.rsplit(" ", 1)[0] if len(curves) > 1 else ""
            color = colors.setdefault(run, f"C{len(colors)}")
            if len(curves) == 1:
                color = "C0" if which == "train" else "C1"
            style = "--" if which == "train" and len(curves) > 1 else "-"
            axes.plot([x / divisor for x in xs], ys, style, color=color, label=label, linewidth=1.5)
        for index, curve in enumerate(curves):  # the final evaluation (the whole split, or a larger slice)
            finals = [(r["chars_seen"], r["final_val_loss"]) for r in curve.rows if _finite(r.get("final_val_loss"))]
            if finals and _finite(finals[-1][0]):
                x, y = finals[-1]
                label = "final evaluation" if len(curves) == 1 else f"{curve.label} final"
                color = "C1" if len(curves) == 1 else f"C{index}"
                axes.plot([x / divisor], [y], "o", color=color, markersize=5, label=label)
        axes.set_xlabel(f"characters seen{f' ({unit})' if unit else ''}")
        axes.set_ylabel("loss (nats/char)")
        if title:
            axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend()
        buffer = io.BytesIO()
        metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(suffix, {})
        figure.savefig(buffer, format=suffix, metadata=metadata)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # an image for anyone to open, as any new file (the temporary file was 0600)
