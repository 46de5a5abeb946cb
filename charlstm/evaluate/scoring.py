"""Scoring text with a trained model: `charlstm eval`.

* A file (or a CSV/JSON Lines table, or a directory) is read the way training read the run's corpus (its
  `--field`, `--glob`, `--records` and encoding unless given) and scored as one stream: the hidden state carried
  from the first character to the last, through chunks of `CHUNK` characters of the fused recurrent module. The
  first character is only read (nothing precedes it), except in a record-trained run, where the text starts
  after an end-of-record marker as a record does in training, so its first character is scored too.
* Characters outside the model's vocabulary are counted per file and left out: the text is scored as if they
  were not there (neither read nor predicted), for the LSTM and the n-gram baseline alike.
* With no file, the run's validation split is scored whole exactly as training's final evaluation scores it
  (validation.py: segments of 1,024 characters, each read after the 128 before it, from a zero state), so the
  figure can be compared with what run.json and metrics.jsonl record for the checkpoint.
* `--baseline`: interpolated Kneser–Ney n-gram models (ngram.py) fitted on the run's training split score the
  same targets.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from charlstm.config import CorpusConfig, from_dict
from charlstm.data.corpus import DEFAULT_CORPUS_NAME, Corpus, default_corpus, load_corpus
from charlstm.data.tables import is_table
from charlstm.data.tokens import TokenData, prepare_tokens
from charlstm.data.vocab import Vocab, show_chars
from charlstm.errors import CharlstmError
from charlstm.evaluate.ngram import KneserNey
from charlstm.evaluate.novelty import Novelty, TrainingText
from charlstm.model.charrnn import CharRNN
from charlstm.runs import directory as rundir
from charlstm.runs.model_file import LoadedModel, load_model
from charlstm.training import validation

CHUNK = 2048  # characters per call of the fused module (the state carried from one call to the next)
RECORD_TOLERANCE = 1e-4  # nats/char: what "agrees with the recorded figure" allows (float summation order)


@dataclass
class Scored:
    """One row of the report: a file (or the validation split) and its figures."""

    name: str
    targets: int  # characters scored
    nats: float  # summed -log p (natural log) of the LSTM over those targets
    oov: int = 0  # characters outside the vocabulary, left out
    oov_chars: list[str] = field(default_factory=list)
    baseline: dict[int, float] = field(default_factory=dict)  # order -> summed -log p of the n-gram model
    seconds: float = 0.0  # the LSTM's scoring time

    @property
    def nats_per_char(self) -> float:
        return self.nats / self.targets

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "chars_scored": self.targets,
            "nats_per_char": self.nats_per_char,
            "bits_per_char": self.nats_per_char / math.log(2),
            "out_of_vocabulary": self.oov,
            "out_of_vocabulary_chars": self.oov_chars,
            "baseline_bits_per_char": {str(k): v / self.targets / math.log(2) for k, v in self.baseline.items()},
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Report:
    checkpoint: Path
    step: int
    model: dict[str, Any]
    rows: list[Scored]
    split: bool  # the rows are the validation split (no files given)
    recorded: float | None = None  # the full-split loss recorded for this checkpoint
    recorded_what: str = ""  # where it comes from, or why there is none
    baseline_orders: list[int] = field(default_factory=list)
    baseline_fit_seconds: float = 0.0
    baseline_eval_seconds: float = 0.0
    baseline_train_chars: int = 0

    @property
    def total(self) -> Scored:
        rows = self.rows
        total = Scored("total", sum(r.targets for r in rows), sum(r.nats for r in rows), sum(r.oov for r in rows))
        total.baseline = {k: sum(r.baseline[k] for r in rows) for k in self.baseline_orders}
        total.seconds = sum(r.seconds for r in rows)
        return total

    def as_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.checkpoint),
            "step": self.step,
            "model": self.model,
            "scored": "validation split" if self.split else "files",
            "rows": [r.as_dict() for r in self.rows],
            "total": self.total.as_dict(),
            "recorded_val_loss": self.recorded,
            "recorded_what": self.recorded_what,
            "agrees": None
            if self.recorded is None
            else abs(self.total.nats_per_char - self.recorded) <= RECORD_TOLERANCE,
            "baseline": None
            if not self.baseline_orders
            else {
                "orders": self.baseline_orders,
                "kind": "interpolated Kneser-Ney character n-grams, fitted on the run's training split",
                "train_chars": self.baseline_train_chars,
                "fit_seconds": round(self.baseline_fit_seconds, 3),
                "eval_seconds": round(self.baseline_eval_seconds, 3),
            },
            "out_of_vocabulary_note": "characters outside the vocabulary are left out: not read, not scored, "
            "not in the averages",
        }


# ------------------------------------------------------------------------------------------ the run's text


def run_corpus_config(payload: dict[str, Any]) -> CorpusConfig | None:
    """How the run's corpus was read (None: the built-in corpus, or a checkpoint that does not say)."""
    info = payload.get("corpus") or {}
    if info.get("name") == DEFAULT_CORPUS_NAME or not info.get("config"):
        return None
    return from_dict(CorpusConfig, info["config"])


def is_record_run(vocab: Vocab) -> bool:
    return vocab.end_of_record is not None


GIVE_CORPUS = "give it with --corpus PATH"


def training_data(
    loaded: LoadedModel, corpus_paths: list[Path] | None = None, give_corpus: str = GIVE_CORPUS
) -> TokenData:
    """The run's corpus as ids in its vocabulary, split as training split it (its --val-frac, on a record
    boundary): from the sources the checkpoint records, or `corpus_paths` (with the run's other corpus options)
    where those have moved. Nothing is written to the run directory."""
    payload = loaded.payload
    info = payload.get("corpus") or {}
    config = run_corpus_config(payload)
    if corpus_paths:
        base = config or CorpusConfig()
        corpus = load_corpus(
            CorpusConfig(
                paths=[str(p) for p in corpus_paths],
                globs=base.globs,
                text_field=base.text_field,
                records=base.records,
                encoding=base.encoding,
            )
        )
    elif info.get("name") == DEFAULT_CORPUS_NAME:
        corpus = default_corpus()
    elif config is None:
        raise CharlstmError(f"{loaded.path} does not record its corpus; {give_corpus}")
    else:
        missing = [p for p in config.paths if not Path(p).exists()]
        if missing:
            raise CharlstmError(
                f"the run's corpus {', '.join(missing)} is not there from here (paths are relative to where "
                f"training started); {give_corpus}"
            )
        corpus = load_corpus(config)
    val_frac = (payload.get("train_config") or {}).get("val_frac", 0.1)
    try:
        return prepare_tokens(corpus, val_frac, vocab=loaded.vocab)
    except CharlstmError as exc:  # the corpus changed since training: its text is not the run's any more
        problem = str(exc).removeprefix("cannot resume: ")
        raise CharlstmError(f"the run's corpus does not match the model: {problem}") from None


def file_corpus(
    path: Path,
    run_config: CorpusConfig | None,
    record_run: bool,
    globs: list[str] | None = None,
    text_field: str | None = None,
    records: str | None = None,
    encoding: str | None = None,
) -> Corpus:
    """A file, table or directory to score, read with the options given, else the run's own: a record-trained
    run reads a plain text file as one record (each file of a directory, each row of a table, is one)."""
    base = run_config or CorpusConfig(records="file" if record_run else "auto")
    mode = records or base.records
    if mode == "auto" and record_run and not path.is_dir():
        mode = "file"
    if not path.exists():
        raise CharlstmError(f"file not found: {path}")
    table_field = text_field if text_field is not None else base.text_field
    config = CorpusConfig(
        paths=[str(path)],
        globs=(globs if globs is not None else base.globs) if path.is_dir() else [],
        text_field=table_field if _is_table(path) else None,
        records=mode,
        encoding=encoding or base.encoding,
    )
    corpus = load_corpus(config)
    if corpus.is_records and not record_run:
        raise CharlstmError(
            f"{path} is read as records (rows of a table, files of a directory), but the model was trained without "
            f"records (it has no end-of-record marker); give --records none for a directory, or a text file"
        )
    return corpus


def _is_table(path: Path) -> bool:
    return not path.is_dir() and is_table(path)


def encode_known(corpus: Corpus, vocab: Vocab) -> tuple[np.ndarray, Counter]:
    """The corpus as ids (an end-of-record id after each record, and before the first in a record-trained
    model: a text starts as a record does), leaving out the characters outside the vocabulary; and those."""
    eor = vocab.end_of_record
    parts: list[np.ndarray] = [np.array([eor], dtype=np.int64)] if eor is not None else []
    unknown: Counter = Counter()
    record_length = 0
    for text, record_ends in corpus.pieces():
        if text:
            try:
                ids = vocab.encode(text)
            except CharlstmError:
                missing = vocab.unknown(text)
                for c in missing:
                    unknown[c] += text.count(c)
                ids = vocab.encode(text.translate({ord(c): None for c in missing}))
            parts.append(ids)
            record_length += len(ids)  # a record of unknown characters only is empty, as training drops those
        if record_ends and record_length and eor is not None:
            parts.append(np.array([eor], dtype=np.int64))
            record_length = 0
    ids = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
    return ids, unknown


# -------------------------------------------------------------------------------------------- scoring


@torch.no_grad()
def score_stream(model: CharRNN, ids: np.ndarray, device: torch.device | str, chunk: int = CHUNK) -> tuple[float, int]:
    """Summed -log p (nats) of ids[1:] given everything before, one stream with the state carried through
    chunks of the fused module; and how many targets that is."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    state = None
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        # one stream is a row-vector matmul per character: a second OpenMP thread gains nothing on it and,
        # on a busy machine, spin-waits it many times slower (measured: 30x on 2 loaded cores)
        torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            x_all = torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(device)  # (N,)
            for start in range(0, len(ids) - 1, chunk):
                x = x_all[start : start + chunk].unsqueeze(0)  # (1, T)
                y = x_all[start + 1 : start + chunk + 1].unsqueeze(0)  # (1, T') T' = T except at the end
                logits, state = model(x[:, : y.size(1)], state)  # (1, T', V)
                total += torch.nn.functional.cross_entropy(
                    logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum"
                )
    finally:
        model.train(was_training)
        torch.set_num_threads(threads)
    return total.item(), max(0, len(ids) - 1)


def score_split(model: CharRNN, val_ids: np.ndarray, device: torch.device | str) -> tuple[float, int]:
    """Summed -log p over the whole validation split, scored as the final evaluation scores it."""
    whole = validation.choose_slice(len(val_ids), len(val_ids), seed=0)  # every segment (the seed is unused)
    mean = validation.evaluate_slice(model, val_ids, whole, torch.device(device), amp=None)
    return mean * whole.chars, whole.chars


def recorded_loss(checkpoint: Path, payload: dict[str, Any]) -> tuple[float | None, str]:
    """The whole-split validation loss the run recorded for this checkpoint's weights, and where it comes from
    (or None and why there is none): metrics.jsonl's row of the checkpoint's step, its final evaluation when
    that scored the whole split, else its periodic validation when that did."""
    step = (payload.get("progress") or {}).get("step")
    run_dir = checkpoint.parent
    try:
        rows = [r for r in rundir.read_metrics(run_dir) if r.get("step") == step]
    except CharlstmError:
        rows = []
    if not rows:
        return None, f"no validation of step {step} recorded in {run_dir / rundir.METRICS}"
    row = rows[-1]
    split_chars = _split_chars(run_dir)
    final = row.get("final_val_loss")
    chars = row.get("final_val_chars")
    chars_text = f"{chars:,}" if isinstance(chars, int) else "?"  # metrics.jsonl is read, not trusted
    if isinstance(final, (int, float)) and row.get("final_whole", split_chars == chars) is True:
        return float(final), f"the final evaluation of step {step}, whole split, {chars_text} characters"
    if isinstance(final, (int, float)) and row.get("final_whole") is False:
        return None, (
            f"the final evaluation of step {step} scored a seeded slice of the split "
            f"({chars_text} characters, --final-eval-chars), not the whole split scored here"
        )
    periodic = row.get("val_loss")
    if isinstance(periodic, (int, float)) and split_chars is not None and row.get("val_chars") == split_chars:
        return float(periodic), f"the validation of step {step}, whole split, {split_chars:,} characters"
    final_rows = [r for r in rundir.read_metrics(run_dir) if isinstance(r.get("final_val_loss"), (int, float))]
    hint = ""
    if final_rows and checkpoint.name != rundir.LATEST:
        hint = f"; the final evaluation scored step {final_rows[-1]['step']}: charlstm eval {run_dir / rundir.LATEST}"
    return None, f"no whole-split validation recorded for step {step} (the periodic validation scores a slice){hint}"


def _split_chars(run_dir: Path) -> int | None:
    try:
        validation_info = rundir.read_run_json(run_dir).get("validation")
    except CharlstmError:
        return None
    chars = validation_info.get("split_chars") if isinstance(validation_info, dict) else None
    return chars if isinstance(chars, int) else None


# ------------------------------------------------------------------------------------------- the command


def evaluate(
    run: Path,
    files: list[Path],
    device: torch.device | str = "cpu",
    baseline_orders: list[int] | None = None,
    corpus_paths: list[Path] | None = None,
    globs: list[str] | None = None,
    text_field: str | None = None,
    records: str | None = None,
    encoding: str | None = None,
) -> Report:
    """Score `files` (none: the validation split) with the run's best checkpoint (or the .pt given), and with
    n-gram baselines of the orders given fitted on the run's training split."""
    loaded = load_model(run, device)
    vocab, model, payload = loaded.vocab, loaded.model, loaded.payload
    record_run = is_record_run(vocab)
    run_config = run_corpus_config(payload)
    inputs: list[tuple[str, np.ndarray, Counter]] = []
    for path in files:
        corpus = file_corpus(path, run_config, record_run, globs, text_field, records, encoding)
        ids, unknown = encode_known(corpus, vocab)
        oov = sum(unknown.values())
        known = int(np.sum(ids != vocab.end_of_record)) if record_run else len(ids)
        if known == 0 and oov:
            raise CharlstmError(
                f"{path}: every character is outside the model's vocabulary ({oov:,} characters: "
                f"{show_chars(sorted(unknown))}); nothing to score"
            )
        if known == 0:
            raise CharlstmError(f"{path} is empty: nothing to score")
        if len(ids) < 2:
            raise CharlstmError(f"{path}: too short to score (a character is scored after at least one other)")
        inputs.append((str(path), ids, unknown))
    data = training_data(loaded, corpus_paths) if (not files or baseline_orders) else None
    report = Report(
        checkpoint=loaded.path,
        step=int((payload.get("progress") or {}).get("step", 0)),
        model=payload["model_config"],
        rows=[],
        split=not files,
    )
    if not files:
        assert data is not None
        if len(data.val) < 2:
            raise CharlstmError("the run's validation split is too short to score")
        started = time.perf_counter()
        nats, targets = score_split(model, np.asarray(data.val), device)
        report.rows.append(Scored("validation split", targets, nats, seconds=time.perf_counter() - started))
        report.recorded, report.recorded_what = recorded_loss(loaded.path, payload)
        inputs = [("validation split", np.asarray(data.val, dtype=np.int64), Counter())]
    else:
        for name, ids, unknown in inputs:
            started = time.perf_counter()
            nats, targets = score_stream(model, ids, device)
            row = Scored(
                name, targets, nats, sum(unknown.values()), sorted(unknown), seconds=time.perf_counter() - started
            )
            report.rows.append(row)
    if baseline_orders:
        assert data is not None
        started = time.perf_counter()
        ngrams = KneserNey(np.asarray(data.train), len(vocab), max(baseline_orders))
        report.baseline_fit_seconds = time.perf_counter() - started
        report.baseline_orders = list(baseline_orders)
        report.baseline_train_chars = len(data.train)
        started = time.perf_counter()
        for row, (_, ids, _) in zip(report.rows, inputs):
            for order in baseline_orders:
                nats, targets = ngrams.nats_sum(ids, order)
                assert targets == row.targets
                row.baseline[order] = nats
        report.baseline_eval_seconds = time.perf_counter() - started
    return report


def novelty(
    loaded: LoadedModel, samples: list[str], corpus_paths: list[Path] | None = None, give_corpus: str = GIVE_CORPUS
) -> Novelty:
    """How much of `samples` is copied from the run's training split (novelty.py)."""
    data = training_data(loaded, corpus_paths, give_corpus)
    vocab = loaded.vocab
    code_of = {c: i + 1 for i, c in enumerate(vocab.chars) if c}  # the end-of-record marker matches no character
    text = TrainingText(np.asarray(data.train).astype(np.int64) + 1, code_of)
    return text.novelty(samples)
