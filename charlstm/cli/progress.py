"""What a person sees while a run trains, drawn from the trainer's events.

The trainer reports through one callback, `on_event(kind, data)` (the kinds: `charlstm.training.events`), and
prints nothing itself. `ConsoleProgress` draws them: on a terminal, a bar (tqdm) with the log lines printed above
it; elsewhere (a pipe, a file, CI), plain log lines at a steady interval instead of a carriage-return line that
never ends.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

from charlstm.config import format_duration
from charlstm.runtime.console import write_above


def validation_line(row: dict[str, Any], improved: bool, final: bool = False) -> str:
    """step 250 · 256,000 chars · train 1.912 · val 1.874 ★ · 0m11s"""
    if final:
        what = "whole split" if row.get("final_whole") else f"{row.get('final_val_chars', 0):,} chars"
        return (
            f"final evaluation ({what}): val {row['final_val_loss']:.4f} nats/char "
            f"({row['final_val_loss'] / math.log(2):.3f} bits/char)"
        )
    train = row.get("train_loss")
    train_text = f"train {train:.3f}" if train is not None else "train  -   "
    star = " ★" if improved else ""
    return (
        f"step {row['step']:,} · {row['chars_seen']:,} chars · {train_text} · val {row['val_loss']:.3f}{star} · "
        f"{format_duration(row.get('elapsed', row.get('seconds')))}"
    )


def sample_lines(row: dict[str, Any]) -> str:
    """A sample written while training, as shown under the bar and by `charlstm info --samples`:

    ── sample · step 250 · 256,000 chars · val 1.874 · temp 0.8 ──
    the text, its control characters made visible (they would move the cursor or clear the line)
    """
    val = row.get("val_loss")
    val_text = f" · val {val:.3f}" if isinstance(val, (int, float)) else ""
    temperature = row.get("temperature")
    temp_text = f" · temp {temperature:g}" if isinstance(temperature, (int, float)) else ""
    heading = f"── sample · step {row.get('step', 0):,} · {row.get('chars_seen', 0):,} chars{val_text}{temp_text} ──"
    return heading + "\n" + visible_text(str(row.get("text", "")))


def visible_text(text: str) -> str:
    """Text safe to print to a terminal: newlines and tabs kept, other control characters as escapes."""
    return "".join(c if c in "\n\t" or c.isprintable() else repr(c)[1:-1] for c in text)


class _Bar(tqdm):
    """A tqdm bar with our own status text after it (tqdm's postfix would start with a comma)."""

    status = ""

    @property
    def format_dict(self):
        return {**super().format_dict, "status": self.status}


class ConsoleProgress:
    """Renders trainer events on `stream` (stderr): a bar on a terminal, plain lines otherwise."""

    def __init__(
        self,
        stream: TextIO | None = None,
        tty: bool | None = None,
        line_every: float | None = None,
        quiet: bool = False,
    ):
        """`quiet`: notes and signals only (no bar, no progress or validation lines)."""
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty() if tty is None else tty
        self.line_every = line_every  # seconds between plain progress lines (None: from the budget)
        self.bar: _Bar | None = None
        self.last_line = 0.0
        self.last_postfix = 0.0
        self.phase = "training"

    # the trainer's log lines (notes) go through here too, so that they print above the bar
    def write(self, text: str) -> None:
        write_above(self.bar, self.stream, text)

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if self.quiet and kind in ("step", "progress", "phase", "validation", "sample"):
            return
        if kind == "step":
            self._step(data)
        elif kind == "progress":
            self._progress(data)
        elif kind == "phase":
            self.phase = data["phase"]
            if self.bar is not None:
                self.bar.set_description_str(self._desc(), refresh=True)
        elif kind == "validation":
            self.write(validation_line(data["row"], data.get("improved", False), data.get("final", False)))
        elif kind == "sample":
            self.write(sample_lines(data["row"]))
        elif kind == "signal":
            doing = {"saving": "finishing the save", "setup": "nothing trained yet"}.get(data["phase"], "saving")
            again = " (Ctrl-C again to abort at once)" if data["signal"] == "SIGINT" else ""
            self.write(f"{data['signal']}: stopping, {doing}…{again}")
        elif kind == "note":
            self.write(data["text"])

    def _desc(self) -> str:
        return {
            "training": "train",
            "validating": "validating…",
            "saving": "saving…",
            "final evaluation": "final evaluation…",
            "sampling": "sampling…",
        }.get(self.phase, self.phase)

    def _postfix(self, data: dict[str, Any]) -> str:
        loss = data.get("loss")
        return (
            f"step {data['step']:,} · loss {loss if loss is not None else math.nan:.3f} · "
            f"{data['chars_per_second']:,.0f} chars/s · lr {data['lr']:.2e} · "
            f"{format_duration(data['elapsed'])}<{format_duration(data.get('remaining'))}"
        )

    def _step(self, data: dict[str, Any]) -> None:
        now = time.monotonic()
        if not self.tty:
            every = self.line_every
            if every is None:  # about ten lines over the run, between 10 s and 5 min apart
                remaining = data.get("remaining")
                total = (data["elapsed"] + remaining) if remaining is not None else 600.0
                every = min(300.0, max(10.0, total / 10))
            if self.last_line == 0.0:
                self.last_line = now
            elif now - self.last_line >= every:
                self.last_line = now
                print(f"{100 * data['fraction']:3.0f}% · {self._postfix(data)}", file=self.stream, flush=True)
            return
        if self.bar is None:
            self.bar = _Bar(
                total=1000,
                file=self.stream,
                bar_format="{desc} {percentage:3.0f}%|{bar}| {status}",
                desc=self._desc(),
                dynamic_ncols=True,
                leave=False,
            )
        if now - self.last_postfix > 0.5 or data.get("last"):
            self.last_postfix = now
            self.bar.status = self._postfix(data)
            self.bar.update(int(data["fraction"] * 1000) - self.bar.n)
            self.bar.refresh()

    def _progress(self, data: dict[str, Any]) -> None:
        """A validation moves the bar too: to its share of the budget's wall clock, with the segments done."""
        if self.bar is None:
            return
        now = time.monotonic()
        if now - self.last_postfix > 0.5 or data["done"] == data["total"]:
            self.last_postfix = now
            self.bar.status = (
                f"{data['done']:,}/{data['total']:,} segments · "
                f"{format_duration(data['elapsed'])}<{format_duration(data.get('remaining'))}"
            )
            self.bar.update(max(0, int(data["fraction"] * 1000) - self.bar.n))
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
