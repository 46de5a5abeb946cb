"""Fair comparisons of cells on one corpus: each cell trained `seeds` times with the same budget and shape, and
r2rt's kind of table (best validation loss: mean and 95% interval over seeds; parameters; chars/s; which
differences from the first cell are significant, by Welch's t-test at the 5% level).

The runs are kept as ordinary run directories, `OUT/<cell>-seed<seed>/`, so each can be sampled, inspected or
resumed. An interrupted comparison (Ctrl-C) keeps its finished runs and reports them.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from charlstm.config import CELLS, CorpusConfig, InvalidValue, ModelConfig, TrainConfig
from charlstm.data.corpus import load_corpus
from charlstm.data.tokens import scan_corpus
from charlstm.errors import CharlstmError
from charlstm.model.charrnn import count_params
from charlstm.runtime.console import write_above
from charlstm.runtime.signals import stopping_signal
from charlstm.training.run import train

# two-sided 5% critical values of Student's t by degrees of freedom (1..30); beyond 30, the normal's 1.96
T_CRITICAL = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_critical(dof: float) -> float:
    if dof < 1:
        return math.inf
    return T_CRITICAL[int(dof) - 1] if dof < 31 else 1.96


def interval(values: list[float]) -> float:
    """Half-width of the 95% confidence interval of the mean (Student's t); nan for a single value."""
    if len(values) < 2:
        return math.nan
    return t_critical(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def welch_significant(a: list[float], b: list[float]) -> bool | None:
    """Whether the means of a and b differ at the 5% level (Welch's t-test); None with fewer than 2 each."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return statistics.fmean(a) != statistics.fmean(b)
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return abs(t) > t_critical(dof)


def parse_cells(text: str) -> list[str]:
    cells = [c.strip() for c in text.split(",") if c.strip()]
    if not cells:
        raise InvalidValue("cell", "needs at least one cell, e.g. lstm,pseudo2")
    for cell in cells:
        if cell not in CELLS:
            raise InvalidValue("cell", f"{cell!r} is not one of {', '.join(CELLS)}")
    if len(set(cells)) != len(cells):
        raise InvalidValue("cell", f"names a cell twice: {text}")
    return cells


def hidden_for_params(config: ModelConfig, params: int) -> int:
    """The hidden size at which `config` has closest to `params` parameters (a bisection on the count)."""

    def count(hidden: int) -> int:
        return count_params(replace(config, hidden=hidden))

    low, high = 1, 1
    while count(high) < params and high < (1 << 16):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if count(middle) < params else (low, middle)
    return min((low, high), key=lambda h: abs(count(h) - params))


@dataclass
class CompareConfig:
    cells: list[str]
    seeds: int = 3
    params: int | None = None  # size each cell's hidden to about this many parameters
    out: Path = Path("checkpoints/compare")

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise InvalidValue("seeds", f"must be > 0, got {self.seeds}")
        if self.params is not None and self.params < 1000:
            raise InvalidValue("params", f"must be at least 1000, got {self.params}")


@dataclass
class CompareResult:
    config: CompareConfig
    runs: list[dict[str, Any]] = field(default_factory=list)  # cell, seed, run_dir, best_val_loss, params, ...
    interrupted: bool = False
    signal: str | None = None  # the signal that interrupted it (SIGINT, SIGTERM)

    def rows(self) -> list[dict[str, Any]]:
        """One row per cell with finished runs: n, mean and 95% interval of the best validation loss, params,
        chars/s, and whether it differs significantly from the first cell's."""
        by_cell: dict[str, list[dict]] = {}
        for run in self.runs:
            by_cell.setdefault(run["cell"], []).append(run)
        rows = []
        reference = None
        for cell in self.config.cells:
            runs = by_cell.get(cell, [])
            if not runs:
                continue
            losses = [r["best_val_loss"] for r in runs]
            if reference is None:
                reference = (cell, losses)
            rows.append(
                {
                    "cell": cell,
                    "runs": len(runs),
                    "hidden": runs[0]["hidden"],
                    "params": runs[0]["params"],
                    "best_val_loss_mean": statistics.fmean(losses),
                    "best_val_loss_ci95": interval(losses),
                    "best_val_losses": losses,
                    "chars_per_second": statistics.fmean(r["chars_per_second"] for r in runs),
                    "steps": statistics.fmean(r["step"] for r in runs),
                    "versus": reference[0],
                    "significant": None if cell == reference[0] else welch_significant(losses, reference[1]),
                }
            )
        return rows

    def to_json(self) -> str:
        return json.dumps(
            {"out": str(self.config.out), "interrupted": self.interrupted, "cells": self.rows(), "runs": self.runs},
            indent=2,
            default=str,
        )

    def render(self) -> str:
        rows = self.rows()
        if not rows:
            return "no run finished"
        lines = [
            f"{'cell':<9} {'runs':>4} {'hidden':>6} {'params':>9} {'best val (nats/char)':>22} {'chars/s':>9} "
            f"{'steps':>7}  vs {rows[0]['cell']}"
        ]
        for row in rows:
            ci = "" if math.isnan(row["best_val_loss_ci95"]) else f" ± {row['best_val_loss_ci95']:.4f}"
            verdict = {None: "-", True: "significant", False: "not significant"}[row["significant"]]
            if row["cell"] == rows[0]["cell"]:
                verdict = "(reference)"
            elif row["significant"]:
                better = row["best_val_loss_mean"] < rows[0]["best_val_loss_mean"]
                verdict = f"{'better' if better else 'worse'}, significant"
            lines.append(
                f"{row['cell']:<9} {row['runs']:>4} {row['hidden']:>6} {row['params']:>9,} "
                f"{row['best_val_loss_mean']:>13.4f}{ci:<9} {row['chars_per_second']:>9,.0f} {row['steps']:>7,.0f}  "
                f"{verdict}"
            )
        lines.append(
            "best val: the lowest periodic validation loss of each run, mean ± 95% interval over seeds (Student's t); "
            "significance: Welch's t-test at 5%."
        )
        if self.interrupted:
            lines.append("interrupted: only the runs that finished are counted")
        lines.append(f"runs kept in {self.config.out}/<cell>-seed<seed>/ (charlstm sample / info them)")
        return "\n".join(lines)


def run_compare(
    corpus_config: CorpusConfig,
    model_config: ModelConfig,
    train_config: TrainConfig,
    config: CompareConfig,
    on_event: Callable[[str, dict], None] | None = None,
    explicit: set[str] = frozenset(),
) -> CompareResult:
    """Train every cell `seeds` times (seeds train_config.seed, +1, ...), in the order seed-major so that an
    interrupted comparison has runs of every cell. Events: ("run", {index, total, cell, seed}) before each run,
    then the trainer's own events of that run (see training/events.py). `explicit`: the config fields the user gave,
    which --size auto keeps (as `train` does); with `params`, each cell's hidden size is kept too."""
    explicit = set(explicit) | ({"hidden"} if config.params is not None else set())
    if train_config.max_steps is None and train_config.max_time is None and train_config.epochs is None:
        raise CharlstmError("compare needs a budget per run: --max-time or --max-steps (or --epochs)")
    corpus = load_corpus(corpus_config)  # read once, shared by every run
    model_config = replace(model_config, cell=config.cells[0], forget_bias=None)
    if config.params is not None:
        scan = scan_corpus(corpus)
        model_config = replace(model_config, vocab_size=int(scan.present.sum()) + corpus.is_records)
    result = CompareResult(config)
    emit = on_event or (lambda kind, data: None)
    plan = [(seed, cell) for seed in range(config.seeds) for cell in config.cells]
    for index, (seed_index, cell) in enumerate(plan):
        cell_config = replace(model_config, cell=cell)
        if config.params is not None:
            cell_config = replace(cell_config, hidden=hidden_for_params(cell_config, config.params))
        seed = train_config.seed + seed_index
        run_dir = Path(config.out) / f"{cell}-seed{seed}"
        emit("run", {"index": index, "total": len(plan), "cell": cell, "seed": seed, "run_dir": str(run_dir)})
        try:
            outcome = train(
                corpus,
                replace(cell_config, vocab_size=0),
                replace(train_config, seed=seed),
                run_dir=run_dir,
                explicit=explicit,
                overwrite=True,
                on_event=on_event,
            )
        except KeyboardInterrupt as exc:  # a signal while the run was setting up (nothing to save), or a second one
            result.interrupted, result.signal = True, getattr(exc, "signal", None) or "SIGINT"
            break
        if outcome.stopped_by.startswith("interrupt"):  # stopped and saved where it was: left out of the table
            result.interrupted, result.signal = True, stopping_signal(outcome.stopped_by)
            break
        summary = outcome.summary
        result.runs.append(
            {
                "cell": cell,
                "seed": seed,
                "run_dir": str(run_dir),
                "hidden": cell_config.hidden,
                "params": summary["params"],
                "best_val_loss": summary["best_val_loss"],
                "final_val_loss": summary.get("final_val_loss"),
                "chars_per_second": summary["chars_per_second"],
                "step": summary["step"],
            }
        )
    return result


class CompareProgress:
    """One bar over the whole comparison (runs x each run's budget fraction) on stderr, the current run named in
    it; notes and each run's result printed above it. Silent when `quiet` (notes and signals aside)."""

    def __init__(self, quiet: bool = False):
        import sys

        from tqdm import tqdm

        self.quiet, self.index, self.total, self.label = quiet, 0, 1, ""
        self.bar = None  # drawn at the first run, so that an error before it (a missing corpus) is a clean line
        self.stream = sys.stderr
        self._make_bar = lambda: tqdm(total=1.0, file=sys.stderr, bar_format="{l_bar}{bar}| {elapsed}<{remaining}")

    def write(self, text: str) -> None:
        write_above(self.bar, self.stream, text)

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "run":
            if self.bar is None and not self.quiet:
                self.bar = self._make_bar()
            self.index, self.total = data["index"], data["total"]
            self.label = f"run {data['index'] + 1}/{data['total']}: {data['cell']} seed {data['seed']}"
            if self.bar is not None:
                self.bar.total = float(self.total)
                self.bar.set_description_str(self.label)
                self.bar.n = float(self.index)
                self.bar.refresh()
        elif kind == "step" and self.bar is not None:
            self.bar.n = round(self.index + min(1.0, data.get("fraction", 0.0)), 4)
            self.bar.set_postfix_str(f"loss {data.get('loss', float('nan')):.3f}", refresh=False)
            self.bar.refresh()
        elif kind == "validation" and data.get("final") and not self.quiet:
            row = data.get("row", data)
            if "final_val_loss" in row:
                self.write(f"{self.label}: final val {row['final_val_loss']:.4f} nats/char")
        elif kind in ("note", "signal"):
            self.write(data.get("text") or f"{data.get('signal')}: stopping after this run's save…")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
