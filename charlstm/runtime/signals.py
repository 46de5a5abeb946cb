"""Ctrl-C and SIGTERM during a run: acknowledged at once, acted on where it is safe."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any


class SignalInterrupt(KeyboardInterrupt):
    """The KeyboardInterrupt that a first signal during set-up raises (SIGTERM as well as SIGINT), naming it."""

    def __init__(self, name: str):
        super().__init__(name)
        self.signal = name


def exit_status(name: str | None) -> int:
    """The exit status a shell expects of a command a signal stopped: 128 + the signal's number (130 for
    SIGINT, 143 for SIGTERM); 130 when the signal is unknown (a plain KeyboardInterrupt, another rank's)."""
    try:
        return 128 + signal.Signals[name or "SIGINT"].value
    except KeyError:
        return 128 + signal.SIGINT.value


def stopping_signal(stopped_by: str) -> str | None:
    """The signal an interrupted run names in its `stopped_by` ("interrupt (SIGTERM)" -> "SIGTERM")."""
    if not stopped_by.startswith("interrupt"):
        return None
    name = stopped_by.removeprefix("interrupt").strip().removeprefix("(").removesuffix(")")
    return name if name.startswith("SIG") else "SIGINT"


class StopSignals:
    """Ctrl-C and SIGTERM for the whole of a run: acknowledged the moment they arrive, acted on where it is safe.

    The first signal is recorded and reported (`on_signal`); what happens next depends on the phase:
    during set-up (reading and encoding the corpus) nothing is worth saving, so it stops at once
    (KeyboardInterrupt); during training and validation the loop sees the flag at the end of the step or of the
    validation chunk, saves and exits; during a save, the save finishes first. A second Ctrl-C aborts at once
    (the last checkpoint is intact: saves are atomic).
    """

    def __init__(self, on_signal: Callable[[str, str], None] | None = None):
        self.received: str | None = None
        self.phase = "setup"
        self.on_signal = on_signal
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.received = name
        if self.on_signal is not None:
            self.on_signal(name, self.phase)
        if self.phase == "setup":
            raise SignalInterrupt(name)

    @contextmanager
    def phase_of(self, phase: str):
        """Run a block in `phase`; a signal that arrived during set-up stops before the block starts."""
        previous, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = previous
