"""Corpus loading, the character vocabulary, the train/validation split and truncated-BPTT streams."""

from __future__ import annotations

import itertools
import math
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import CharlstmError

IGNORE_INDEX = -1  # target value for padding positions: no loss

# ---------------------------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    """The text to train on, with a name (the default run directory) and where it came from."""

    text: str
    name: str
    sources: list[str]


def read_text_file(path: Path, encoding: str = "utf-8") -> str:
    """Read one text file, refusing what is missing, unreadable or binary, with a one-line reason."""
    if not path.exists():
        raise CharlstmError(f"corpus not found: {path}")
    if path.is_dir():
        raise CharlstmError(f"{path} is a directory; give a text file")
    try:
        raw = path.read_bytes()
    except PermissionError:
        raise CharlstmError(f"cannot read {path}: permission denied") from None
    except OSError as exc:
        raise CharlstmError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_bytes(raw, str(path), encoding)


def looks_binary(raw: bytes) -> bool:
    """NUL bytes, or many control characters, in the first 8 KiB: an image, archive or executable."""
    head = raw[:8192]
    if b"\x00" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    if not head:
        return False
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13, 27))
    return controls / len(head) > 0.1


def decode_bytes(raw: bytes, where: str, encoding: str = "utf-8") -> str:
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8") and looks_binary(raw):
        raise CharlstmError(f"{where} looks binary (NUL or control bytes), not text; give a text file")
    try:
        text = raw.decode(encoding)
    except LookupError:
        raise CharlstmError(f"unknown --encoding {encoding!r}") from None
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CharlstmError(
            f"{where} is not valid {encoding}: byte 0x{raw[exc.start]:02x} at offset {exc.start} (line {line}); "
            f"try --encoding latin-1 (or the file's real encoding)"
        ) from None
    if text.startswith("\ufeff"):  # byte-order mark
        text = text[1:]
    return text.replace("\r\n", "\n")


def load_corpus(paths: list[Path], encoding: str = "utf-8") -> Corpus:
    texts = [read_text_file(p, encoding) for p in paths]
    text = "".join(texts)
    if not text:
        raise CharlstmError(f"corpus is empty: {', '.join(str(p) for p in paths)}")
    name = Path(paths[0]).stem if len(paths) == 1 else f"{Path(paths[0]).stem}+{len(paths) - 1}"
    return Corpus(text=text, name=name, sources=[str(p) for p in paths])


def default_corpus(max_chars: int = 3_000_000) -> Corpus:
    """The built-in corpus: this interpreter's own standard library sources (Python code), no download.

    Files are taken in sorted order, tests and third-party packages left out, until `max_chars`.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "__pycache__", "turtledemo"}
    parts: list[str] = []
    total = 0
    for path in sorted(stdlib.rglob("*.py")):
        if skip.intersection(path.relative_to(stdlib).parts):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    if not parts:
        raise CharlstmError(f"no Python sources found under {stdlib} to build the default corpus")
    return Corpus(text="".join(parts)[:max_chars], name="python-stdlib", sources=[f"{stdlib} (*.py, {sys.version.split()[0]})"])


# ----------------------------------------------------------------------------------------------- vocab


class Vocab:
    """The distinct characters of a corpus, sorted; id i <-> chars[i].

    An entry may be the empty string: the end-of-record marker, a token the model learns that decodes to nothing.
    """

    END_OF_RECORD = ""

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}
        codepoints = np.array([ord(c) for c in self.chars if c], dtype=np.int64)
        ids = np.array([i for i, c in enumerate(self.chars) if c], dtype=np.int64)
        order = np.argsort(codepoints)
        self._codepoints = codepoints[order]
        self._ids = ids[order]

    @classmethod
    def from_text(cls, text: str, records: bool = False) -> Vocab:
        chars = sorted(set(text))
        return cls(([cls.END_OF_RECORD] if records else []) + chars)

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def end_of_record(self) -> int | None:
        return self.index.get(self.END_OF_RECORD)

    def unknown(self, text: str) -> list[str]:
        """The characters of `text` that are not in the vocabulary, sorted."""
        return sorted(set(text) - set(self.index))

    def encode(self, text: str) -> np.ndarray:
        """Text -> int64 ids, vectorised (a few hundred MB/s). Unknown characters raise CharlstmError."""
        if not text:
            return np.zeros(0, dtype=np.int64)
        codepoints = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
        if len(self._codepoints) == 0:
            raise CharlstmError(f"characters not in the model's vocabulary: {_show(self.unknown(text))}")
        pos = np.searchsorted(self._codepoints, codepoints).clip(0, len(self._codepoints) - 1)
        if not np.array_equal(self._codepoints[pos], codepoints):
            raise CharlstmError(f"characters not in the model's vocabulary: {_show(self.unknown(text))}")
        return self._ids[pos]

    def decode(self, ids) -> str:
        chars = self.chars
        return "".join(chars[i] for i in ids)


def _show(chars: list[str], most: int = 20) -> str:
    shown = " ".join(repr(c) for c in chars[:most])
    return shown + (f" … and {len(chars) - most} more" if len(chars) > most else "")


def split_train_val(ids: np.ndarray, val_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """The last `val_frac` of the corpus is validation (the same cut as nanoGPT's shakespeare_char)."""
    cut = split_point(len(ids), val_frac)
    return ids[:cut], ids[cut:]


def split_point(num_chars: int, val_frac: float) -> int:
    return int(num_chars * (1.0 - val_frac))


# --------------------------------------------------------------------------------------------- streams


class Streams:
    """Truncated-BPTT batches: the token sequence is cut into `batch` contiguous streams, and step k takes
    the k-th `seq_len` window of every stream, so row i of batch k+1 continues row i of batch k.

    Every character is an input exactly once per epoch and a target exactly once (the first is never a
    target). The last stream is padded at its end; padded targets are IGNORE_INDEX, so they carry no loss.
    The last window of an epoch may be shorter than `seq_len`.
    """

    def __init__(self, ids: torch.Tensor | np.ndarray, batch: int, seq_len: int, device: torch.device | str = "cpu"):
        ids = torch.as_tensor(np.asarray(ids, dtype=np.int64)) if isinstance(ids, np.ndarray) else ids.long()
        if len(ids) < 2:
            raise CharlstmError("need at least 2 characters to make training pairs")
        self.batch = batch
        self.seq_len = seq_len
        self.stream_len = math.ceil((len(ids) - 1) / batch)  # L: inputs per stream
        padded = torch.full((batch * self.stream_len + 1,), IGNORE_INDEX, dtype=torch.long)
        padded[: len(ids)] = ids
        padded = padded.to(device)
        self.targets = padded[1:].view(batch, self.stream_len)  # (B, L)
        self.inputs = padded[:-1].clamp(min=0).view(batch, self.stream_len)  # (B, L)
        self.steps_per_epoch = math.ceil(self.stream_len / seq_len)
        self.num_targets = len(ids) - 1
        # real targets fill the streams in order: this many whole streams, then the start of the next one
        # (with more streams than characters to spare, several trailing streams are all padding)
        self._full_streams, self._partial_len = divmod(self.num_targets, self.stream_len)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def batch_at(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of window k of the epoch, each (B, T) with T <= seq_len."""
        start = k * self.seq_len
        end = min(start + self.seq_len, self.stream_len)
        return self.inputs[:, start:end], self.targets[:, start:end]

    def targets_in(self, k: int) -> int:
        """How many real (unpadded) targets window k holds."""
        start = k * self.seq_len
        end = min(start + self.seq_len, self.stream_len)
        return self._full_streams * (end - start) + min(max(self._partial_len - start, 0), end - start)

    def __iter__(self):
        for k in range(self.steps_per_epoch):
            yield self.batch_at(k)


MIN_TRAIN_CHARS = 16  # below this there is nothing worth learning
MIN_VAL_CHARS = 2  # one input and one target


def check_trainable(text: str, val_frac: float) -> None:
    """Refuse a corpus too small to split and train on, or with a single distinct character, saying why."""
    if len(set(text[:100_000])) < 2 and len(set(text)) < 2:
        raise CharlstmError(
            f"the corpus has only one distinct character ({text[:1]!r}); there is nothing to learn, "
            f"give text with at least 2 different characters"
        )
    n = len(text)
    if not _big_enough(n, val_frac):
        # val = n - floor(n (1 - f)) < n f + 1, so no n <= 1/f has 2 validation characters
        needed = next(m for m in itertools.count(max(n + 1, int(1 / val_frac))) if _big_enough(m, val_frac))
        raise CharlstmError(
            f"corpus too short: {n} characters; need at least {needed} at --val-frac {val_frac:g} "
            f"({MIN_TRAIN_CHARS} to train on, {MIN_VAL_CHARS} to validate)"
        )


def _big_enough(num_chars: int, val_frac: float) -> bool:
    cut = split_point(num_chars, val_frac)
    return cut >= MIN_TRAIN_CHARS and num_chars - cut >= MIN_VAL_CHARS


def fit_batch_shape(num_chars: int, batch: int, seq_len: int) -> tuple[int, int, str | None]:
    """Shrink batch (then seq_len) so one epoch holds at least one full window per stream.

    Returns (batch, seq_len, notice or None). Raises CharlstmError below a sensible minimum.
    """
    minimum = MIN_TRAIN_CHARS
    if num_chars < minimum:
        raise CharlstmError(
            f"training text too short: {num_chars} characters; need at least {minimum} (add text or lower --val-frac)"
        )
    usable = num_chars - 1
    if batch * seq_len <= usable:
        return batch, seq_len, None
    new_batch, new_seq = batch, seq_len
    if new_seq > usable:
        new_seq = usable
    new_batch = max(1, min(batch, usable // new_seq))
    notice = (
        f"training text ({num_chars} characters) is shorter than one batch ({batch} x {seq_len}); "
        f"using --batch-size {new_batch} --seq-len {new_seq}"
    )
    return new_batch, new_seq, notice

