"""What `charlstm eval` reports, as one result: the run's scores (of files, or of its validation split, beside
n-gram baselines when asked) and how much of a samples file is copied from the training text."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charlstm.errors import CharlstmError
from charlstm.evaluate.ngram import parse_orders
from charlstm.evaluate.novelty import Novelty, read_samples
from charlstm.evaluate.scoring import Report, evaluate, novelty
from charlstm.runs.model_file import load_model
from charlstm.runtime.device import pick_device

DEFAULT_ORDER = "5"  # --baseline's n-gram order when no --order is given


@dataclass
class EvalResult:
    """The scores (None when only a samples file was asked about) and the samples' novelty (None without one)."""

    scores: Report | None = None
    novelty: Novelty | None = None
    samples: Path | None = None  # the samples file the novelty is of

    def as_dict(self) -> dict[str, Any]:
        """One JSON object: the scores' fields, and the novelty under "novelty"."""
        data = self.scores.as_dict() if self.scores is not None else {}
        return data | ({"novelty": self.novelty.as_dict()} if self.novelty is not None else {})


def read_samples_file(path: Path) -> list[str]:
    """The samples in a file `charlstm sample` wrote (text or jsonl), or a one-line reason."""
    if not path.is_file():
        raise CharlstmError(f"samples file not found: {path}")
    try:
        texts = read_samples(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CharlstmError(f"cannot read {path}: {exc}") from None
    if not texts:
        raise CharlstmError(f"{path} holds no samples")
    return texts


def evaluate_run(
    run: Path,
    files: list[Path] | None = None,
    device: str = "auto",
    baseline: bool = False,
    order: str | None = None,
    samples: Path | None = None,
    corpus_paths: list[Path] | None = None,
    globs: list[str] | None = None,
    text_field: str | None = None,
    records: str | None = None,
    encoding: str | None = None,
) -> EvalResult:
    """Score `files` (none: the validation split) unless only `samples` is asked about, with n-gram baselines of
    the orders in `order` (implies `baseline`; default DEFAULT_ORDER), and the novelty of `samples`."""
    orders = parse_orders(order or DEFAULT_ORDER) if baseline or order is not None else []
    result = EvalResult(samples=samples)
    if files or samples is None:
        result.scores = evaluate(
            run, files or [], pick_device(device), orders, corpus_paths, globs, text_field, records, encoding
        )
    if samples is not None:
        texts = read_samples_file(samples)
        result.novelty = novelty(load_model(run), texts, corpus_paths)
    return result
