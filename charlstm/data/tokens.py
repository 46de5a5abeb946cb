"""Tokens: a corpus as ids. Two streaming passes (which characters occur; then the ids), the cache of a large
corpus (tokencache.py), and the train/validation split on a record boundary."""

from __future__ import annotations

import itertools
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from charlstm.data import tokencache
from charlstm.data.corpus import Corpus
from charlstm.data.textio import READ_CHUNK
from charlstm.data.vocab import Vocab, show_chars, token_dtype
from charlstm.errors import CharlstmError

CACHE_OVER_BYTES = 32 << 20  # corpus files larger than this in all are encoded once into a cache file in the run
IN_MEMORY_TOKENS = (
    256 << 20
)  # an encoded corpus up to this many bytes is loaded (and moved to the GPU); larger: memory-mapped


def split_train_val(
    ids: np.ndarray, val_frac: float, end_of_record: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The last `val_frac` of the corpus is validation (the same cut as nanoGPT's shakespeare_char).

    With `end_of_record`, the cut moves to the nearest record boundary, so that validation starts a record.
    """
    cut = split_point(len(ids), val_frac)
    if end_of_record is not None:
        cut = _nearest_record_start(ids, cut, end_of_record)
    return ids[:cut], ids[cut:]


def split_point(num_chars: int, val_frac: float) -> int:
    return int(num_chars * (1.0 - val_frac))


def _nearest_record_start(ids: np.ndarray, cut: int, end_of_record: int) -> int:
    """The position after an end-of-record id nearest to `cut` (and before the last id); `cut` if there is none.

    Looks outwards in growing windows, so a memory-mapped corpus is read only near the cut.
    """
    window = 1 << 12
    while True:
        lo, hi = max(0, cut - window), min(len(ids) - 1, cut + window)
        ends = np.flatnonzero(np.asarray(ids[lo:hi]) == end_of_record) + lo + 1  # record starts
        ends = ends[(ends > 0) & (ends < len(ids))]
        if len(ends):
            return int(ends[np.argmin(np.abs(ends - cut))])
        if lo == 0 and hi == len(ids) - 1:
            return cut
        window *= 4


def _batches(pieces: Iterable[tuple[str, bool]], size: int) -> Iterator[tuple[str, list[int]]]:
    """Pieces joined into texts of about `size` characters, each with the offsets where records end in it
    (an end-of-record id goes there). Empty records are dropped."""
    parts: list[str] = []
    ends: list[int] = []
    length = record_length = 0
    for text, record_ends in pieces:
        if text:
            parts.append(text)
            length += len(text)
            record_length += len(text)
        if record_ends and record_length:
            ends.append(length)
            record_length = 0
        if length >= size // 2:  # a file chunk of `size` bytes holds fewer characters: take it alone
            yield parts[0] if len(parts) == 1 else "".join(parts), ends
            parts, ends, length = [], [], 0
    if parts or ends:
        yield "".join(parts), ends


@dataclass
class CorpusScan:
    """The first pass over a corpus: which characters occur, how many, and how long the records are."""

    present: np.ndarray  # (0x110000,) bool: which code points occur
    chars: int  # characters in all (end-of-record markers not counted)
    record_lengths: np.ndarray  # characters per record, in order (empty when not a record corpus)

    @property
    def tokens(self) -> int:
        return self.chars + len(self.record_lengths)


def scan_corpus(corpus: Corpus, chunk: int | None = None) -> CorpusScan:
    present = np.zeros(0x110000, dtype=bool)
    lengths = array("q")
    chars = last_end = 0
    for text, ends in _batches(corpus.pieces(), chunk or READ_CHUNK):
        present[_distinct_codepoints(text)] = True
        for end in ends:
            lengths.append(chars + end - last_end)
            last_end = chars + end
        chars += len(text)
    return CorpusScan(present=present, chars=chars, record_lengths=np.frombuffer(lengths, dtype=np.int64))


def _distinct_codepoints(text: str) -> np.ndarray:
    """The code points that occur in `text`: ASCII counted over its UTF-8 bytes, the rest (usually few) by set."""
    raw = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    found = np.flatnonzero(np.bincount(raw, minlength=256)[:128])
    high = raw[raw >= 0x80]  # the bytes of the non-ASCII characters, whole, in order
    if len(high):
        others = [ord(c) for c in set(high.tobytes().decode("utf-8", "surrogatepass"))]
        found = np.concatenate([found, np.array(others, dtype=found.dtype)])
    return found


def encode_corpus(
    corpus: Corpus, vocab: Vocab, write: Callable[[np.ndarray], object], chunk: int | None = None
) -> None:
    """The second pass: ids in the smallest dtype, an end-of-record id after each record, written chunk by chunk."""
    dtype, eor = token_dtype(len(vocab)), vocab.end_of_record
    for text, ends in _batches(corpus.pieces(), chunk or READ_CHUNK):
        ids = vocab.encode(text, dtype)
        if ends:
            ids = np.insert(ids, ends, eor)
        write(ids)


@dataclass
class TokenData:
    """A corpus as ids, split for training and validation; `ids` may be a memory-mapped cache file."""

    vocab: Vocab
    ids: np.ndarray
    train: np.ndarray
    val: np.ndarray
    chars: int
    record_lengths: np.ndarray | None  # None: not a record corpus
    cache: Path | None = None
    notes: list[str] = field(default_factory=list)
    encode_seconds: float | None = None  # the two passes, when this call encoded the corpus

    def summary(self) -> dict[str, Any]:
        """Plain figures for run.json, checkpoints and `charlstm info`."""
        lengths = self.record_lengths
        return {
            "chars": self.chars,
            "records": None if lengths is None else len(lengths),
            "record_lengths": None
            if lengths is None or not len(lengths)
            else {
                "min": int(lengths.min()),
                "median": float(np.median(lengths)),
                "max": int(lengths.max()),
            },
        }


def prepare_tokens(
    corpus: Corpus,
    val_frac: float,
    vocab: Vocab | None = None,
    cache_dir: Path | None = None,
    cache_over: int | None = None,
    in_memory_limit: int | None = None,
    chunk: int | None = None,
) -> TokenData:
    """The corpus as ids (vocabulary from the corpus, or the given one on resume), split on a record boundary.

    Two streaming passes (which characters occur; then ids), so memory does not grow with the corpus. Corpus
    files larger than `cache_over` bytes in all are encoded once into `<cache_dir>/corpus.<dtype>.bin`, reused
    while the files and the vocabulary are unchanged, and memory-mapped when larger than `in_memory_limit`
    bytes (else loaded). A smaller corpus is encoded in memory each time (a few seconds at most).

    A cache is checked before it is reused (its description, sizes, record lengths, and that no id lies
    beyond the vocabulary, which would index out of range in the model); a damaged one is encoded again from
    the sources, with a note.
    """
    in_memory_limit = IN_MEMORY_TOKENS if in_memory_limit is None else in_memory_limit
    cache_over = CACHE_OVER_BYTES if cache_over is None else cache_over
    use_cache = cache_dir is not None and bool(corpus.files) and corpus.num_bytes() > cache_over
    notes: list[str] = []
    if use_cache:
        cache_dir = Path(cache_dir)
        fingerprint = corpus.fingerprint()
        meta, problem = tokencache.read_meta(cache_dir, fingerprint, vocab, corpus.is_records)
        if meta is not None:
            ids, lengths, problem = tokencache.load_ids(cache_dir, meta, in_memory_limit, check_ids=True)
            if ids is not None:
                data = _token_data(Vocab(meta["vocab"]), ids, meta["chars"], lengths, val_frac)
                data.cache = cache_dir / meta["file"]
                data.notes = [f"reusing the encoded corpus {data.cache} (sources unchanged)"]
                return data
        if problem:
            notes.append(
                f"the encoded corpus in {cache_dir} is damaged ({problem}); encoding it again from the sources"
            )
    started = time.perf_counter()
    scan = scan_corpus(corpus, chunk)
    if scan.chars == 0:
        raise CharlstmError(f"corpus is empty: {', '.join(corpus.sources) or corpus.name}")
    vocab = _vocab_for(scan, corpus.is_records, vocab)
    dtype = token_dtype(len(vocab))
    lengths = scan.record_lengths if corpus.is_records else None
    if not use_cache:
        ids = np.empty(scan.tokens, dtype=dtype)
        filled = 0

        def fill(part: np.ndarray) -> None:
            nonlocal filled
            ids[filled : filled + len(part)] = part
            filled += len(part)

        encode_corpus(corpus, vocab, fill, chunk)
        data = _token_data(vocab, ids, scan.chars, lengths, val_frac)
        data.encode_seconds = time.perf_counter() - started
        return data
    meta = tokencache.write(
        cache_dir,
        lambda write: encode_corpus(corpus, vocab, write, chunk),
        vocab,
        lengths,
        fingerprint,
        scan.tokens,
        scan.chars,
    )
    encode_seconds = time.perf_counter() - started
    megabytes = corpus.num_bytes() / 1e6
    path = cache_dir / meta["file"]
    notes.append(f"encoded the corpus ({megabytes:,.1f} MB, {megabytes / encode_seconds:,.0f} MB/s) into {path}")
    ids, lengths, problem = tokencache.load_ids(cache_dir, meta, in_memory_limit, check_ids=False, lengths=lengths)
    if ids is None:  # only if something else changed the files in the meantime
        raise CharlstmError(f"the encoded corpus in {cache_dir} changed while it was being written ({problem})")
    data = _token_data(vocab, ids, scan.chars, lengths, val_frac)
    data.cache, data.notes, data.encode_seconds = path, notes, encode_seconds
    return data


def _token_data(vocab: Vocab, ids: np.ndarray, chars: int, lengths: np.ndarray | None, val_frac: float) -> TokenData:
    eor = vocab.end_of_record if lengths is not None else None
    train, val = split_train_val(ids, val_frac, eor)
    return TokenData(vocab=vocab, ids=ids, train=train, val=val, chars=chars, record_lengths=lengths)


def _vocab_for(scan: CorpusScan, records: bool, vocab: Vocab | None) -> Vocab:
    chars = [chr(c) for c in np.flatnonzero(scan.present)]
    if vocab is None:
        return Vocab(([Vocab.END_OF_RECORD] if records else []) + chars)
    unknown = vocab.unknown("".join(chars))
    if unknown:
        raise CharlstmError(
            f"cannot resume: the corpus has {len(unknown)} character(s) not in the checkpoint's vocabulary: "
            f"{show_chars(unknown)}"
        )
    if records and vocab.end_of_record is None:
        raise CharlstmError(
            "cannot resume: the corpus is split into records but the checkpoint was trained without records; "
            "give --records none"
        )
    return vocab


MIN_TRAIN_CHARS = 16  # below this there is nothing worth learning
MIN_VAL_CHARS = 2  # one input and one target


def check_trainable(num_chars: int, distinct: list[str] | None, val_frac: float) -> None:
    """Refuse a corpus too small to split and train on, or with a single distinct character, saying why."""
    if distinct is not None and len(distinct) < 2:
        raise CharlstmError(
            f"the corpus has only one distinct character ({''.join(distinct)!r}); there is nothing to learn, "
            f"give text with at least 2 different characters"
        )
    n = num_chars
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
