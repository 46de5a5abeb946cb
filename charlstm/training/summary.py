"""What a run has done, as plain figures: computed in one place for run.json, `charlstm info` and the result
`train()` returns."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charlstm.checkpoint.store import VERSION, load_model_checkpoint
from charlstm.config import finite_or_none, from_dict
from charlstm.errors import CharlstmError
from charlstm.runs import directory as rundir
from charlstm.training.budget import Progress


def chars_per_second(chars: int, seconds: float) -> float:
    """Training speed: characters trained on per second of training steps (validations and saves excluded)."""
    return chars / seconds if seconds > 0 else 0.0


def run_summary(
    *,
    corpus: dict[str, Any],
    model_config: dict[str, Any],
    train_config: dict[str, Any],
    vocab_size: int,
    params: int,
    progress: Progress,
    format_version: int = VERSION,
    validation: dict[str, Any] | None = None,
    device: str | None = None,
    precision: str | None = None,
    world_size: int | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """run.json's content. From a bare checkpoint (`charlstm info FILE.pt`) the figures only a live run knows
    (device, precision, processes, which slices the validations scored) are None."""
    p = progress
    return {
        "corpus": corpus,
        "records": corpus.get("records"),
        "record_lengths": corpus.get("record_lengths"),
        "model_config": model_config,
        "train_config": train_config,
        "size": train_config.get("size", "fixed"),  # --size: fixed, or auto (what it chose: size_choice)
        "size_choice": train_config.get("size_choice"),
        "vocab_size": vocab_size,
        "params": params,
        "device": device,
        "precision": precision,
        "world_size": world_size,
        "step": p.step,
        "epoch": p.epoch,
        "chars_seen": p.chars_seen,
        "best_val_loss": finite_or_none(p.best_val_loss),
        "best_val_bits_per_char": finite_or_none(p.best_val_loss / math.log(2)),
        "last_val_loss": finite_or_none(p.last_val_loss),
        "final_val_loss": finite_or_none(p.final_val_loss),
        "validation": validation,
        "train_seconds": round(p.train_seconds, 6),
        "elapsed_seconds": round(p.elapsed_seconds, 3),
        "chars_per_second": round(chars_per_second(p.chars_seen, p.train_seconds), 1),
        # the training speed --size auto planned for, measured early in the run, and over the whole run; what
        # the early check changed (see trainer.py's _check_speed)
        "speed": {
            "planned_chars_per_second": train_config.get("planned_chars_per_second"),
            "checked_chars_per_second": round(p.checked_chars_per_second, 1) or None,
            "realised_chars_per_second": round(chars_per_second(p.chars_seen, p.train_seconds), 1),
            "replanned": train_config.get("replanned"),
            "cpu_threads": threads,  # the thread count training ended on (threads.py)
        },
        "checkpoint_format_version": format_version,
    }


def checkpoint_summary(payload: dict[str, Any], path: Path) -> dict[str, Any]:
    """`run_summary` of a loaded (and checked) checkpoint, with the file it came from."""
    progress = from_dict(Progress, payload.get("progress", {}))
    if "elapsed_seconds" not in payload.get("progress", {}):  # written before the wall clock was kept
        progress.elapsed_seconds = progress.train_seconds
    return {
        "checkpoint": str(path),
        **run_summary(
            corpus=payload.get("corpus") or {},
            model_config=payload["model_config"],
            train_config=payload.get("train_config", {}),
            vocab_size=len(payload["vocab"]),
            params=sum(t.numel() for t in payload["model"].values()),
            progress=progress,
            format_version=payload["version"],
        ),
    }


@dataclass
class TrainResult:
    """What `train()` returns: how the run stopped, what to tell the user, and its summary (run.json's)."""

    run_dir: Path
    stopped_by: str  # max_steps | max_time | epochs | interrupt (SIGNAL) | stop_request | budget_spent
    summary: dict[str, Any]
    budget: str  # the budget that applies, e.g. "--max-time 4m"
    extend_with: str  # a larger budget of the same kind, for a run that has used its own
    resumed_from: str | None = None

    @property
    def step(self) -> int:
        return self.summary["step"]

    @property
    def chars_seen(self) -> int:
        return self.summary["chars_seen"]

    @property
    def train_seconds(self) -> float:
        return self.summary["train_seconds"]

    @property
    def elapsed_seconds(self) -> float:
        return self.summary["elapsed_seconds"]

    @property
    def chars_per_second(self) -> float:
        return self.summary["chars_per_second"]

    @property
    def best_val_loss(self) -> float | None:
        return self.summary["best_val_loss"]

    @property
    def final_val_loss(self) -> float | None:
        return self.summary["final_val_loss"]

    @property
    def params(self) -> int:
        return self.summary["params"]

    @property
    def vocab_size(self) -> int:
        return self.summary["vocab_size"]

    @property
    def device(self) -> str:
        return self.summary["device"]

    @property
    def precision(self) -> str:
        return self.summary["precision"]

    @property
    def world_size(self) -> int:
        return self.summary["world_size"] or 1


def summary_of(path: Path) -> dict[str, Any]:
    """What `charlstm info` shows: run.json for a run directory (the checkpoint's own summary when run.json is
    missing or damaged), else the summary of the checkpoint file given."""
    if path.is_dir() and (path / rundir.RUN_JSON).exists():
        try:
            data = rundir.read_run_json(path)
            if isinstance(data.get("model_config"), dict):
                return data
        except CharlstmError:
            pass  # a damaged run.json: the checkpoint says the same
    file = rundir.resolve_checkpoint(path, prefer=rundir.LATEST)
    return checkpoint_summary(load_model_checkpoint(file), file)
