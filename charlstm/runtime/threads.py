"""How many CPU threads training uses, chosen by measuring, and chosen again when the machine's load changes.

PyTorch's CPU kernels split each operation over all the cores' threads and wait for the slowest. When another
process holds one of the cores, every operation waits for the descheduled thread: on a 2-core machine with one
other busy process, a 1 x 448 LSTM step at 2 threads ran at about 4k characters a second where 1 thread ran at 28k
(and 2 threads on the quiet machine at ~40k). So the thread count is measured, not assumed: `ThreadGovernor`
watches the training step's time, and when it degrades, or now and then in case the machine got quieter, it tries
another count for a few steps and keeps the faster one.

Changing the thread count does not change what a step computes beyond the order of some floating-point sums; a
run whose results must repeat exactly sets its threads (torch.set_num_threads, OMP_NUM_THREADS) to 1."""

from __future__ import annotations

import statistics
import time
from collections import deque

import torch

WINDOW = 8  # recent steps whose median is the current step time
PROBE_STEPS = 3  # timed steps of a tried count (after one untimed step)
GAIN = 1.15  # a tried count is kept when its steps are this much faster
DEGRADED = 1.5  # the median step this much slower than its best: try another count now
PROBE_EVERY, PROBE_EVERY_MAX = 5.0, 30.0  # seconds between tries on a steady machine (doubling while none wins)


def candidates(most: int) -> list[int]:
    """The thread counts worth trying: all of them, half, one."""
    return sorted({most, max(1, most // 2), 1}, reverse=True)


class ThreadGovernor:
    """Keeps training on the fastest thread count. Call `after_step(seconds)` after every training step."""

    def __init__(self, enabled: bool = True, start: int | None = None, clock=time.perf_counter):
        """`start`: the count to begin with (the calibration's fastest; default: all of them)."""
        self.most = torch.get_num_threads()
        self.choices = candidates(self.most)
        self.enabled = enabled and len(self.choices) > 1
        self.clock = clock
        self.current = self.most
        if self.enabled and start is not None and start in self.choices:
            self.current = start
            torch.set_num_threads(start)
        self.switches = 0  # how often the count changed
        self.reset()

    def close(self) -> None:
        """Give the process its threads back."""
        if self.enabled:
            torch.set_num_threads(self.most)

    def reset(self) -> None:
        """Forget the step times (the step changed: another model)."""
        self.recent: deque[float] = deque(maxlen=WINDOW)
        self.best: float | None = None  # the lowest median seen at the current count
        self.probe: tuple[int, list[float]] | None = None  # (count tried, its step times)
        self.period = PROBE_EVERY
        self.next_probe = self.clock() + self.period
        self.tried = 0

    def median(self) -> float | None:
        """The current step time: the median of the recent steps at the current count (None: too few yet)."""
        return statistics.median(self.recent) if len(self.recent) >= WINDOW // 2 else None

    def after_step(self, seconds: float) -> None:
        if self.probe is not None:
            self._probing(seconds)
            return
        self.recent.append(seconds)
        if not self.enabled or len(self.recent) < WINDOW:
            return
        median = statistics.median(self.recent)
        self.best = median if self.best is None else min(self.best, median)
        if median > DEGRADED * self.best or self.clock() >= self.next_probe:
            others = [n for n in self.choices if n != self.current]
            count = others[self.tried % len(others)]
            self.tried += 1
            self.probe = (count, [])
            torch.set_num_threads(count)

    def _probing(self, seconds: float) -> None:
        count, times = self.probe  # type: ignore[misc]
        times.append(seconds)
        if len(times) < PROBE_STEPS + 1:
            return
        tried = statistics.median(times[1:])
        now = statistics.median(self.recent)
        self.probe = None
        if tried * GAIN < now:
            self.current = count
            self.switches += 1
            self.recent = deque(times[1:], maxlen=WINDOW)
            self.best, self.period = tried, PROBE_EVERY
        else:
            torch.set_num_threads(self.current)
            self.best = now  # the count stays; its median now is the one to compare with
            self.period = min(PROBE_EVERY_MAX, 2 * self.period)
        self.next_probe = self.clock() + self.period
