"""The events a training run reports through (it prints nothing itself).

The trainer reports through one callback, `on_event(kind, data)`, and prints nothing itself. The kinds:

    step        after every training step: step, fraction (0..1 of the budget), loss, chars_per_second, lr,
                elapsed and remaining (seconds, from the budget that will stop the run)
    phase       the run starts something slow: data["phase"] is "training", "validating", "final evaluation",
                "saving" or "sampling"
    progress    within a validation: done and total segments, fraction (of the whole budget), elapsed, remaining
    validation  a validation finished: its metrics row (step, chars_seen, train_loss, val_loss, seconds) and
                whether it is a new best; final=True for the final evaluation
    sample      a sample of the model as it is now (after each validation, or every --sample-every steps):
                data["row"] is samples.jsonl's row (step, chars_seen, val_loss, temperature, text)
    signal      Ctrl-C or SIGTERM arrived: data["signal"], data["phase"]
    note        a line worth showing (data["text"])

`charlstm.cli.progress.ConsoleProgress` draws them for a person."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

EventSink = Callable[[str, dict[str, Any]], None]
