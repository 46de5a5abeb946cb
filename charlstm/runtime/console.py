"""Lines printed above a progress bar (tqdm), or plainly where there is none."""

from __future__ import annotations

from typing import TextIO

from tqdm import tqdm


def write_above(bar: tqdm | None, stream: TextIO, text: str) -> None:
    """A line printed above a progress bar (which tqdm redraws under it), or plainly where there is none."""
    if bar is not None:
        bar.write(text, file=stream)
    else:
        print(text, file=stream, flush=True)
