"""Corpus loading, the character vocabulary, the train/validation split and truncated-BPTT streams."""

from __future__ import annotations

import codecs
import csv
import fnmatch
import hashlib
import itertools
import json
import math
import os
import re
import sys
import sysconfig
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from stat import S_ISREG
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from .checkpoint import atomic_write, write_json
from .config import CorpusConfig
from .errors import CharlstmError

IGNORE_INDEX = -1  # target value for padding positions: no loss
READ_CHUNK = 8 << 20  # bytes read, and characters encoded, at a time: memory stays flat for any corpus size
CACHE_OVER_BYTES = 32 << 20  # corpus files larger than this in all are encoded once into a cache file in the run
IN_MEMORY_TOKENS = 256 << 20  # an encoded corpus up to this many bytes is loaded (and moved to the GPU); larger: memory-mapped
TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t"}
JSONL_SUFFIXES = (".jsonl", ".ndjson")
FINGERPRINT_VERSION = 1  # bump when the encoding of a corpus into ids changes

# ---------------------------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    """The text to train on, with a name (the default run directory) and where it came from.

    Either held in memory (`text`, or `records`), or read from `files` on demand, chunk by chunk, so that a
    corpus larger than memory is never held whole. In a record corpus (`is_records`) every record (a file,
    a CSV/JSONL row, a paragraph) is followed by the end-of-record marker.
    """

    text: str = ""
    name: str = "corpus"
    sources: list[str] = field(default_factory=list)
    records: list[str] | None = None  # in-memory records
    files: list[Path] = field(default_factory=list)  # read in this order
    record_mode: str = "none"  # file | paragraph | none: what a record is in the plain text files
    text_field: str | None = None  # the CSV column / JSONL key of table files
    tables: list[Path] = field(default_factory=list)  # the files given as CSV/TSV/JSONL (one record per row)
    encoding: str = "utf-8"
    config: CorpusConfig | None = None  # how to load it again (recorded in checkpoints; None: built in)
    notes: list[str] = field(default_factory=list)  # what loading skipped, for the user

    @property
    def is_records(self) -> bool:
        return self.records is not None or (bool(self.files) and self.record_mode != "none")

    def pieces(self) -> Iterator[tuple[str, bool]]:
        """(text, whether a record ends after it), in corpus order, a chunk at a time."""
        if self.records is not None:
            for record in self.records:
                yield record, True
        elif not self.files:
            for start in range(0, len(self.text), READ_CHUNK):
                yield self.text[start : start + READ_CHUNK], False
        else:
            for path in self.files:
                if path in self.tables:
                    for text in table_texts(path, self.text_field or "", self.encoding):
                        yield text, True
                else:
                    yield from _file_pieces(path, self.record_mode, self.encoding)

    def num_bytes(self) -> int:
        """Size on disk of the corpus files (of the text, when in memory)."""
        if self.files:
            return sum(path.stat().st_size for path in self.files)
        return sum(len(r) for r in self.records) if self.records is not None else len(self.text)

    def fingerprint(self) -> str | None:
        """Changes when any file's path, size, modification time, head or tail changes (None: in memory)."""
        if not self.files:
            return None
        digest = hashlib.blake2b(digest_size=16)
        digest.update(json.dumps([FINGERPRINT_VERSION, self.record_mode, self.text_field, self.encoding]).encode())
        for path in self.files:
            stat = path.stat()
            digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
            with open(path, "rb") as handle:
                digest.update(handle.read(1 << 16))
                handle.seek(max(0, stat.st_size - (1 << 16)))
                digest.update(handle.read(1 << 16))
        return digest.hexdigest()


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


def read_text_chunks(path: Path, encoding: str = "utf-8", chunk_bytes: int | None = None) -> Iterator[str]:
    """The text of one file in pieces of about `chunk_bytes`, cleaned as `read_text_file` cleans it (BOM,
    CRLF), with memory that does not grow with the file. Small files are read whole by `read_text_file`."""
    chunk_bytes = chunk_bytes or READ_CHUNK
    try:
        size = path.stat().st_size
    except OSError:
        size = 0  # let read_text_file say what is wrong
    if size <= chunk_bytes:
        yield read_text_file(path, encoding)
        return
    try:
        decoder = codecs.getincrementaldecoder(encoding)("strict")
    except LookupError:
        raise CharlstmError(f"unknown --encoding {encoding!r}") from None
    utf8 = encoding.lower().replace("_", "-") in ("utf-8", "utf8")
    offset, held_cr, at_start = 0, False, True
    try:
        handle = open(path, "rb")
    except OSError:
        yield read_text_file(path, encoding)  # raises the one-line reason
        return
    with handle:
        while True:
            raw = handle.read(chunk_bytes)
            if offset == 0 and utf8 and looks_binary(raw):
                raise CharlstmError(f"{path} looks binary (NUL or control bytes), not text; give a text file")
            held = decoder.getstate()[0]  # bytes of an unfinished character from the previous chunk
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as exc:
                at = offset - len(held) + exc.start
                line = _line_at(path, at)
                raise CharlstmError(
                    f"{path} is not valid {encoding}: byte 0x{(held + raw)[exc.start]:02x} at offset {at} (line {line}); "
                    f"try --encoding latin-1 (or the file's real encoding)"
                ) from None
            if at_start and text:
                text, at_start = text.removeprefix("\ufeff"), False
            if held_cr:
                text = "\r" + text
            held_cr = bool(raw) and text.endswith("\r")  # its "\n" may open the next chunk
            if held_cr:
                text = text[:-1]
            offset += len(raw)
            if text:
                yield text.replace("\r\n", "\n") if "\r" in text else text
            if not raw:
                return


def _line_at(path: Path, offset: int) -> int:
    """The line number of byte `offset` of a file, read again in chunks (only to report an error)."""
    lines, done = 1, 0
    with open(path, "rb") as handle:
        while done < offset:
            raw = handle.read(min(READ_CHUNK, offset - done))
            if not raw:
                break
            lines += raw.count(b"\n")
            done += len(raw)
    return lines


_PARAGRAPH_BREAK = re.compile(r"\n(?:[ \t\f\v]*\n)+")  # a newline, then one or more blank lines


def split_paragraphs(chunks: Iterable[str]) -> Iterator[str]:
    """Blank-line-separated paragraphs of text given in chunks (a break may straddle two chunks)."""
    held = ""
    for chunk in chunks:
        held += chunk
        end = len(held.rstrip())  # a break ending before the last visible character is complete
        parts = _PARAGRAPH_BREAK.split(held[:end])
        held = parts.pop() + held[end:]
        yield from (p.strip("\n") for p in parts if p.strip())
    yield from (p.strip("\n") for p in _PARAGRAPH_BREAK.split(held) if p.strip())


def is_table(path: Path) -> bool:
    return path.suffix.lower() in TABLE_DELIMITERS or path.suffix.lower() in JSONL_SUFFIXES


def table_columns(path: Path, encoding: str) -> list[str]:
    """The column names of a CSV/TSV file (its header) or the keys of a JSON Lines file's first object."""
    for kind, row, _ in _table_rows(path, encoding):
        return list(row) if kind == "csv" else list(row.keys())
    return []


def table_texts(path: Path, text_field: str, encoding: str) -> Iterator[str]:
    """The `text_field` of every row of a CSV/TSV or JSON Lines file, newlines and commas inside quotes kept."""
    header: list[str] | None = None
    column = -1
    for kind, row, line in _table_rows(path, encoding):
        if kind == "csv":
            if header is None:
                header = row
                column = row.index(text_field)
                continue
            value = row[column] if column < len(row) else ""
        else:
            if text_field not in row:
                raise CharlstmError(
                    f"{path} line {line} has no field {text_field!r}; it has: {', '.join(map(repr, row)) or 'none'}"
                )
            value = row[text_field]
            value = "" if value is None else value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        yield value.replace("\r\n", "\n")


def _table_rows(path: Path, encoding: str) -> Iterator[tuple[str, Any, int]]:
    """("csv", list of cells, line) per CSV/TSV row including the header, or ("jsonl", dict, line) per object."""
    utf8 = encoding.lower().replace("_", "-") in ("utf-8", "utf8")
    line = 0
    try:
        with open(path, "rb") as raw:
            if utf8 and looks_binary(raw.read(8192)):
                raise CharlstmError(f"{path} looks binary (NUL or control bytes), not text; give a text file")
        with open(path, encoding="utf-8-sig" if utf8 else encoding, newline="") as handle:
            if path.suffix.lower() in TABLE_DELIMITERS:
                csv.field_size_limit(2**31 - 1)
                reader = csv.reader(handle, delimiter=TABLE_DELIMITERS[path.suffix.lower()], strict=False)
                for row in reader:
                    line = reader.line_num
                    if row:
                        yield "csv", row, line
                return
            for line, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise CharlstmError(f"{path} line {line} is not valid JSON: {exc.msg}") from None
                if not isinstance(row, dict):
                    raise CharlstmError(f"{path} line {line} is not a JSON object")
                yield "jsonl", row, line
    except UnicodeDecodeError:
        raise CharlstmError(
            f"{path} is not valid {encoding} (after line {line}); try --encoding latin-1 (or the file's real encoding)"
        ) from None
    except csv.Error as exc:
        raise CharlstmError(f"{path} line {line}: malformed CSV ({exc})") from None
    except LookupError:
        raise CharlstmError(f"unknown --encoding {encoding!r}") from None
    except OSError as exc:
        raise CharlstmError(f"cannot read {path}: {exc.strerror or exc}") from None


def _file_pieces(path: Path, record_mode: str, encoding: str) -> Iterator[tuple[str, bool]]:
    """A plain text file as one stream, one record, or one record per paragraph."""
    if record_mode == "paragraph":
        for paragraph in split_paragraphs(read_text_chunks(path, encoding)):
            yield paragraph, True
    else:
        for chunk in read_text_chunks(path, encoding):
            yield chunk, False
        if record_mode == "file":
            yield "", True


def corpus_name(paths: list[Path] | list[str]) -> str:
    """The default run directory name: the first source's name (`+N` for N more sources)."""
    first = Path(paths[0])
    stem = (first.resolve().name or "corpus") if first.is_dir() else first.stem
    return stem if len(paths) == 1 else f"{stem}+{len(paths) - 1}"


def load_corpus(config: CorpusConfig | list[Path], encoding: str = "utf-8") -> Corpus:
    """Check the sources (files, directories, CSV/JSONL) and describe the corpus; the text is read later,
    in chunks, by `Corpus.pieces`. A list of paths is taken as plain files (the old call)."""
    if not isinstance(config, CorpusConfig):
        config = CorpusConfig(paths=[str(p) for p in config], encoding=encoding)
    config.validate()
    if not config.paths:
        raise CharlstmError("no corpus given")
    files: list[Path] = []
    notes: list[str] = []
    has_dir = False
    for path in map(Path, config.paths):
        if path.is_dir():
            has_dir = True
            found, note = scan_directory(path, config.globs, config.encoding)
            files += found
            notes.append(note)
        else:
            if not is_table(path):
                next(read_text_chunks(path, config.encoding), None)  # missing, unreadable, binary: fail now
            files.append(path)
    tables = [Path(p) for p in config.paths if is_table(Path(p)) and not Path(p).is_dir()]  # a directory's are text
    text_field = _check_text_field(tables, config.text_field, config.encoding)
    if config.globs and not has_dir:
        raise CharlstmError("--glob selects files inside a directory; give a directory to train on")
    record_mode = config.records
    if record_mode == "auto":
        record_mode = "file" if has_dir or tables else "none"
    elif record_mode == "none" and tables:
        raise CharlstmError("rows of a CSV/JSON Lines file are always records; drop --records none")
    return Corpus(
        name=corpus_name(config.paths),
        sources=[str(p) for p in config.paths] + [f"--glob {g}" for g in config.globs],
        files=files,
        record_mode=record_mode,
        text_field=text_field,
        tables=tables,
        encoding=config.encoding,
        config=config,
        notes=notes,
    )


def _check_text_field(tables: list[Path], text_field: str | None, encoding: str) -> str | None:
    if not tables:
        if text_field is not None:
            raise CharlstmError("--field picks a column of a CSV/TSV or JSON Lines (.jsonl) file; none was given")
        return None
    for table in tables:
        if not table.exists():
            raise CharlstmError(f"corpus not found: {table}")
        columns = table_columns(table, encoding)
        if text_field is None and len(columns) == 1:
            text_field = columns[0]
        shown = ", ".join(repr(c) for c in columns) or "none"
        if text_field is None:
            raise CharlstmError(f"{table} has several columns; pick the text with --field (one of: {shown})")
        folded = [c for c in columns if c.casefold() == text_field.casefold()]
        if text_field not in columns and len(folded) == 1:
            text_field = folded[0]  # --field text finds a column named Text
        if text_field not in columns:
            raise CharlstmError(f"{table} has no column {text_field!r}; available: {shown}")
    return text_field


def scan_directory(root: Path, globs: list[str], encoding: str) -> tuple[list[Path], str]:
    """The text files under `root` (recursive, in sorted order) matching any of `globs` (none: all), skipping
    hidden folders (.git and the like) and binary, undecodable or empty files; and a line saying what it skipped."""
    candidates: list[tuple[str, Path]] = []
    hidden: list[str] = []
    for folder, subfolders, names in os.walk(root):
        hidden += sorted(os.path.join(os.path.relpath(folder, root), d) for d in subfolders if d.startswith("."))
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        for name in names:
            path = Path(folder, name)
            relative = path.relative_to(root).as_posix()
            if globs and not any(_glob_matches(relative, name, g) for g in globs):
                continue
            if path.is_file():
                candidates.append((relative, path))
    skipped: dict[str, int] = {"binary": 0, f"not {encoding} text": 0, "empty": 0, "unreadable": 0}
    files = []
    for _, path in sorted(candidates):
        kind = _text_kind(path, encoding)
        if kind == "text":
            files.append(path)
        else:
            skipped[kind] += 1
    what = f" matching {' or '.join(globs)}" if globs else ""
    if not files:
        raise CharlstmError(f"no text files{what} under {root}/")
    parts = [f"{n} {kind}" for kind, n in skipped.items() if n]
    if hidden:
        shown = ", ".join(os.path.normpath(h) for h in hidden[:5]) + (" …" if len(hidden) > 5 else "")
        parts.append(f"{len(hidden)} hidden folder(s) ({shown})")
    return files, f"{root}: {len(files)} file(s){what}" + (f"; skipped {', '.join(parts)}" if parts else "")


def _glob_matches(relative: str, name: str, pattern: str) -> bool:
    """'*.py' matches by name, 'sub/*.py' any path ending so, 'src/**' by the whole relative path."""
    pattern = pattern.removeprefix("**/")
    return fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(relative, pattern) or PurePosixPath(relative).match(pattern)


def _text_kind(path: Path, encoding: str) -> str:
    """text | binary | not <encoding> text | empty | unreadable, from the whole file (from its head if large)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(READ_CHUNK)
    except OSError:
        return "unreadable"
    if not raw:
        return "empty"
    if looks_binary(raw):
        return "binary"
    try:
        codecs.getincrementaldecoder(encoding)("strict").decode(raw, final=len(raw) < READ_CHUNK)
    except UnicodeDecodeError:
        return f"not {encoding} text"
    except LookupError:
        raise CharlstmError(f"unknown --encoding {encoding!r}") from None
    return "text"


def default_corpus(max_chars: int = 3_000_000) -> Corpus:
    """The built-in corpus: this interpreter's own standard library sources (Python code), no download.

    One record per file; files taken in sorted order, tests and third-party packages left out, until
    about `max_chars`.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "__pycache__", "turtledemo"}
    files: list[Path] = []
    total = 0
    for path in sorted(stdlib.rglob("*.py")):
        if total >= max_chars:
            break
        if skip.intersection(path.relative_to(stdlib).parts) or _text_kind(path, "utf-8") != "text":
            continue
        files.append(path)
        total += path.stat().st_size
    if not files:
        raise CharlstmError(f"no Python sources found under {stdlib} to build the default corpus")
    return Corpus(
        name="python-stdlib",
        sources=[f"{stdlib} (*.py, {sys.version.split()[0]})"],
        files=files,
        record_mode="file",
    )


# ----------------------------------------------------------------------------------------------- vocab


class Vocab:
    """The distinct characters of a corpus, sorted; id i <-> chars[i].

    An entry may be the empty string: the end-of-record marker, a token the model learns that decodes to nothing.
    """

    END_OF_RECORD = ""

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}
        codepoints = [ord(c) for c in self.chars if c]
        self._lookup = np.full(max(codepoints, default=-1) + 1, -1, dtype=np.int32)  # code point -> id, -1 unknown
        self._lookup[codepoints] = [i for i, c in enumerate(self.chars) if c]

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

    def encode(self, text: str, dtype: np.dtype | type = np.int64) -> np.ndarray:
        """Text -> ids, vectorised through a code-point lookup table. Unknown characters raise CharlstmError."""
        codepoints = _codepoints(text)
        if not len(codepoints):
            return np.zeros(0, dtype=dtype)
        if int(codepoints.max()) >= len(self._lookup):
            raise CharlstmError(f"characters not in the model's vocabulary: {_show(self.unknown(text))}")
        ids = self._lookup[codepoints]
        if int(ids.min()) < 0:
            raise CharlstmError(f"characters not in the model's vocabulary: {_show(self.unknown(text))}")
        return ids.astype(dtype, copy=False)

    def decode(self, ids) -> str:
        chars = self.chars
        return "".join(chars[i] for i in ids)


def _codepoints(text: str) -> np.ndarray:
    """The code points of `text`: uint8 when it is ASCII (the fast, common case), else uint32."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _show(chars: list[str], most: int = 20) -> str:
    shown = " ".join(repr(c) for c in chars[:most])
    return shown + (f" … and {len(chars) - most} more" if len(chars) > most else "")


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


# ---------------------------------------------------------------------------------------------- tokens


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every id."""
    return np.dtype(np.uint8 if vocab_size <= 1 << 8 else np.uint16 if vocab_size <= 1 << 16 else np.uint32)


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


def encode_corpus(corpus: Corpus, vocab: Vocab, write: Callable[[np.ndarray], object], chunk: int | None = None) -> None:
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
            "record_lengths": None if lengths is None or not len(lengths) else {
                "min": int(lengths.min()), "median": float(np.median(lengths)), "max": int(lengths.max()),
            },  # fmt: skip
        }


CACHE_STEM = "corpus"  # <run dir>/corpus.<dtype>.bin, corpus.json and (records) corpus.record-lengths.npy
CACHE_DTYPES = ("uint8", "uint16", "uint32")
CACHE_META_MAX_BYTES = 64 << 20  # corpus.json of the largest vocabulary (all of Unicode, escaped) is far smaller
MAX_ID_CHUNK = 16 << 20  # ids checked at a time when a reused cache is scanned for ids beyond the vocabulary


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
        meta, problem = _read_cache_meta(cache_dir, fingerprint, vocab, corpus.is_records)
        if meta is not None:
            data, problem = _load_cache(cache_dir, meta, val_frac, in_memory_limit, check_ids=True)
            if data is not None:
                data.notes = [f"reusing the encoded corpus {data.cache} (sources unchanged)"]
                return data
        if problem:
            notes.append(f"the encoded corpus in {cache_dir} is damaged ({problem}); encoding it again from the sources")
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
    path = cache_dir / f"{CACHE_STEM}.{dtype.name}.bin"
    _remove_cache(cache_dir)  # corpus.json first: a build cut short leaves no description of a partial cache
    atomic_write(path, lambda handle: encode_corpus(corpus, vocab, handle.write, chunk))
    if lengths is not None:
        atomic_write(cache_dir / f"{CACHE_STEM}.record-lengths.npy", lambda handle: np.save(handle, lengths, allow_pickle=False))
    meta = {
        "fingerprint": fingerprint, "vocab": vocab.chars, "dtype": dtype.name, "tokens": scan.tokens,
        "chars": scan.chars, "records": corpus.is_records, "file": path.name,
    }  # fmt: skip
    write_json(cache_dir / f"{CACHE_STEM}.json", meta)  # last: it makes the cache valid
    encode_seconds = time.perf_counter() - started
    megabytes = corpus.num_bytes() / 1e6
    notes.append(f"encoded the corpus ({megabytes:,.1f} MB, {megabytes / encode_seconds:,.0f} MB/s) into {path}")
    data, problem = _load_cache(cache_dir, meta, val_frac, in_memory_limit, check_ids=False, lengths=lengths)
    if data is None:  # only if something else changed the files in the meantime
        raise CharlstmError(f"the encoded corpus in {cache_dir} changed while it was being written ({problem})")
    data.notes, data.encode_seconds = notes, encode_seconds
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
            f"cannot resume: the corpus has {len(unknown)} character(s) not in the checkpoint's vocabulary: {_show(unknown)}"
        )
    if records and vocab.end_of_record is None:
        raise CharlstmError(
            "cannot resume: the corpus is split into records but the checkpoint was trained without records; "
            "give --records none"
        )
    return vocab


def _read_cache_meta(
    cache_dir: Path, fingerprint: str | None, vocab: Vocab | None, records: bool | None = None
) -> tuple[dict | None, str | None]:
    """(the cache's description, None) when it was built from these very sources (and this vocabulary);
    (None, None) when there is none or it is stale (the sources or the vocabulary changed: an ordinary
    rebuild); (None, what is wrong) when its files are damaged or tampered with. Reads no ids."""
    meta_path = cache_dir / f"{CACHE_STEM}.json"
    try:
        if not meta_path.exists() and not meta_path.is_symlink():
            return None, None
        if not _is_plain_file(meta_path):
            return None, f"{meta_path.name} is not a plain file"
        if meta_path.stat().st_size > CACHE_META_MAX_BYTES:
            return None, f"{meta_path.name} is too large"
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not valid JSON"
        return None, f"{meta_path.name}: {reason}"
    problem = _meta_problem(meta, records)
    if problem:
        return None, f"{meta_path.name}: {problem}"
    if meta["fingerprint"] != fingerprint or (vocab is not None and meta["vocab"] != vocab.chars):
        return None, None
    if vocab is None and meta["vocab"] != _built_order(meta["vocab"]):  # given a vocabulary, it must be equal
        return None, f"{meta_path.name}: 'vocab' is not in the order it is built in (ids would decode wrongly)"
    itemsize = np.dtype(meta["dtype"]).itemsize
    problem = _file_problem(cache_dir / meta["file"], meta["tokens"] * itemsize)
    if problem:
        return None, problem
    if meta["records"]:
        problem = _file_problem(cache_dir / f"{CACHE_STEM}.record-lengths.npy")
        if problem:
            return None, problem
    return meta, None


def _meta_problem(meta: Any, records: bool | None) -> str | None:
    """What is wrong with the shape of corpus.json (written by `prepare_tokens`, but anyone may have edited it)."""
    if not isinstance(meta, dict):
        return "not a JSON object"
    kinds = {"fingerprint": str, "vocab": list, "dtype": str, "tokens": int, "chars": int, "records": bool, "file": str}
    names = {str: "a string", list: "a list", int: "an integer", bool: "true or false"}
    for key, kind in kinds.items():
        value = meta.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"{key!r} is missing or not {names[kind]}"
    chars = meta["vocab"]
    if not chars or not all(isinstance(c, str) and len(c) <= 1 for c in chars):
        return "'vocab' is not a list of single characters"
    if len(set(chars)) != len(chars):
        return "'vocab' repeats characters"
    if meta["records"] and Vocab.END_OF_RECORD not in chars:
        return "'vocab' has no end-of-record marker for a corpus of records"
    if meta["dtype"] not in CACHE_DTYPES or meta["dtype"] != token_dtype(len(chars)).name:
        return f"'dtype' {_short(meta['dtype'])} is not the id type of a {len(chars)}-character vocabulary"
    if meta["file"] != f"{CACHE_STEM}.{meta['dtype']}.bin":  # never a path of its own: nothing outside the run
        return f"'file' {_short(meta['file'])} is not {CACHE_STEM}.{meta['dtype']}.bin"
    if meta["chars"] < 1 or meta["tokens"] < meta["chars"] or (not meta["records"] and meta["tokens"] != meta["chars"]):
        return f"'tokens' ({meta['tokens']}) and 'chars' ({meta['chars']}) do not agree"
    if records is not None and meta["records"] != records:
        return "'records' does not match the corpus"
    return None


def _built_order(chars: list[str]) -> list[str]:
    """A vocabulary as `prepare_tokens` builds it from a corpus: the end-of-record marker, then characters sorted."""
    marker = [Vocab.END_OF_RECORD] if Vocab.END_OF_RECORD in chars else []
    return marker + sorted(set(chars) - {Vocab.END_OF_RECORD})


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _is_plain_file(path: Path) -> bool:
    """A regular file, not a link (the cache never writes links: one could point anywhere)."""
    try:
        return S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _file_problem(path: Path, size: int | None = None) -> str | None:
    """Why a cache file cannot be used (missing, a link or not a file, not `size` bytes), or None."""
    if not path.exists() and not path.is_symlink():
        return f"{path.name} is missing"
    if not _is_plain_file(path):
        return f"{path.name} is not a plain file"
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"{path.name} holds {actual:,} bytes where corpus.json says {size:,}"
    return None


def _load_cache(
    cache_dir: Path,
    meta: dict,
    val_frac: float,
    in_memory_limit: int,
    check_ids: bool,
    lengths: np.ndarray | None = None,
) -> tuple[TokenData | None, str | None]:
    """The cached ids (loaded, or memory-mapped above `in_memory_limit` bytes) split into TokenData, or (None,
    what is wrong). `check_ids`: scan every id once for one beyond the vocabulary (a cache written by
    `prepare_tokens` has none; a tampered one would index out of range in the model's embedding)."""
    vocab = Vocab(meta["vocab"])
    path = cache_dir / meta["file"]
    try:
        if path.stat().st_size <= in_memory_limit:
            ids = np.fromfile(path, dtype=meta["dtype"])
        else:
            ids = np.memmap(path, dtype=meta["dtype"], mode="r")
    except (OSError, ValueError) as exc:
        return None, f"cannot read {path.name}: {getattr(exc, 'strerror', None) or exc}"
    if len(ids) != meta["tokens"]:
        return None, f"{path.name} holds {len(ids):,} ids where corpus.json says {meta['tokens']:,}"
    if check_ids and len(vocab) <= np.iinfo(ids.dtype).max:  # else every value of the type is an id
        top = _max_id(ids)
        if top >= len(vocab):
            return None, f"{path.name} holds id {top}, beyond the {len(vocab)}-character vocabulary"
    if meta["records"] and lengths is None:
        lengths, problem = _load_record_lengths(cache_dir / f"{CACHE_STEM}.record-lengths.npy", meta)
        if problem:
            return None, problem
    data = _token_data(vocab, ids, meta["chars"], lengths if meta["records"] else None, val_frac)
    data.cache = path
    return data, None


def _max_id(ids: np.ndarray) -> int:
    """The largest id, a slice at a time (a memory-mapped corpus is read through once, never copied whole)."""
    top = 0
    for start in range(0, len(ids), MAX_ID_CHUNK):
        top = max(top, int(ids[start : start + MAX_ID_CHUNK].max()))
    return top


def _load_record_lengths(path: Path, meta: dict) -> tuple[np.ndarray | None, str | None]:
    """The record lengths, or (None, what is wrong): a 1-D integer array (no pickles) with one positive length
    per end-of-record id (tokens - chars of them), summing to `chars`."""
    try:
        # memory-mapped first: a header claiming more than the file holds fails here instead of allocating it
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        return None, f"{path.name} is not a readable array ({getattr(exc, 'strerror', None) or exc})"
    records, chars = meta["tokens"] - meta["chars"], meta["chars"]
    if not isinstance(mapped, np.ndarray) or mapped.ndim != 1 or mapped.dtype.kind not in "iu":
        return None, f"{path.name} is not a 1-D array of integers"
    if len(mapped) != records:
        return None, f"{path.name} holds {len(mapped):,} lengths where corpus.json says {records:,} records"
    if records and (int(mapped.min()) < 1 or int(mapped.max()) > chars):
        return None, f"{path.name} holds a length outside 1..{chars:,}"
    lengths = np.array(mapped, dtype=np.int64)  # each <= chars, so the sum cannot overflow
    del mapped
    if int(lengths.sum()) != chars:
        return None, f"{path.name}: the lengths sum to {int(lengths.sum()):,} where corpus.json says {chars:,} characters"
    return lengths, None


def _remove_cache(cache_dir: Path) -> None:
    """Remove a cache before writing a new one, its description first (so no partial cache is ever described)."""
    names = [f"{CACHE_STEM}.json", f"{CACHE_STEM}.record-lengths.npy"]
    names += sorted(p.name for p in cache_dir.glob(f"{CACHE_STEM}.*.bin"))
    for name in names:
        try:
            (cache_dir / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CharlstmError(f"cannot rebuild the encoded corpus: cannot remove {cache_dir / name}: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------------------------- streams


class Streams:
    """Truncated-BPTT batches: the token sequence is cut into `batch` contiguous streams, and step k takes
    the k-th `seq_len` window of every stream, so row i of batch k+1 continues row i of batch k.

    Every character is an input exactly once per epoch and a target exactly once (the first is never a
    target). The last stream is padded at its end; padded targets are IGNORE_INDEX, so they carry no loss.
    The last window of an epoch may be shorter than `seq_len`.

    Each window is gathered when asked for: the ids stay in their compact dtype, on the device (a tensor, or
    an in-memory array) or on the host (a memory-mapped array, read a window at a time), never as a copy of
    the corpus in int64. With `rows` (a contiguous slice of range(batch)), only those stream rows are served
    by `batch_at` (distributed training gives each rank its own rows this way); the geometry and the counts
    (`batch`, `len`, `targets_in`, `num_targets`) stay those of all `batch` rows.
    """

    def __init__(
        self,
        ids: torch.Tensor | np.ndarray,
        batch: int,
        seq_len: int,
        device: torch.device | str = "cpu",
        rows: slice | None = None,
        gather_on_host: bool | None = None,
    ):
        """`gather_on_host`: None chooses (numpy on the CPU or for a memory-mapped corpus, torch ops on the
        device otherwise); the tests force the device-side gather on the CPU to check it against numpy's."""
        if len(ids) < 2:
            raise CharlstmError("need at least 2 characters to make training pairs")
        self.device = torch.device(device)
        self.seq_len = seq_len
        self.length = len(ids)  # N
        self.batch = batch  # B, of which this object serves `rows`
        self.stream_len = math.ceil((self.length - 1) / batch)  # L: inputs per stream
        first, last, step = (rows or slice(None)).indices(batch)
        if step != 1 or last <= first:
            raise ValueError(f"rows must be a non-empty contiguous slice of range({batch}), got {rows}")
        self.rows = slice(first, last)
        self.steps_per_epoch = math.ceil(self.stream_len / seq_len)
        all_starts = np.arange(batch, dtype=np.int64) * self.stream_len
        self._targets_per_row = np.clip(self.length - 1 - all_starts, 0, self.stream_len)  # (B,)
        self.num_targets = self.length - 1
        starts = all_starts[first:last]  # the rows served
        # on the CPU, or for a memory-mapped corpus, windows are gathered with numpy (no thread start-up per op)
        auto = self.device.type == "cpu" or isinstance(ids, np.memmap)
        self._on_host = auto if gather_on_host is None else gather_on_host
        if self._on_host:
            self._tokens = ids if isinstance(ids, np.memmap) else _compact_array(ids)
            self._starts = starts[:, None]  # (rows, 1)
        else:
            compact = _compact_array(ids)
            compact = compact.astype(np.int32) if compact.dtype == np.uint16 else compact  # GPU indexing: no uint16
            self._tokens = torch.from_numpy(compact).to(self.device)
            self._starts = torch.as_tensor(starts, device=self.device)[:, None]  # (rows, 1)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _window(self, k: int) -> tuple[int, int]:
        start = k * self.seq_len
        return start, min(start + self.seq_len, self.stream_len)

    def batch_at(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of window k of the epoch, each (rows, T) int64 with T <= seq_len."""
        start, end = self._window(k)
        if self._on_host:
            positions = self._starts + np.arange(start, end + 1)  # (rows, T + 1)
            tokens = self._tokens[np.minimum(positions, self.length - 1)].astype(np.int64)  # (rows, T + 1)
            beyond = positions >= self.length  # padding past the end of the sequence
            inputs, targets = tokens[:, :-1].copy(), tokens[:, 1:].copy()  # (rows, T) each
            inputs[beyond[:, :-1]] = 0
            targets[beyond[:, 1:]] = IGNORE_INDEX
            return torch.from_numpy(inputs).to(self.device), torch.from_numpy(targets).to(self.device)
        positions = self._starts + torch.arange(start, end + 1, device=self.device)  # (rows, T + 1)
        tokens = self._tokens[positions.clamp(max=self.length - 1)].long()  # (rows, T + 1)
        beyond = positions >= self.length  # padding past the end of the sequence
        inputs = tokens[:, :-1].masked_fill(beyond[:, :-1], 0)  # (rows, T)
        targets = tokens[:, 1:].masked_fill(beyond[:, 1:], IGNORE_INDEX)  # (rows, T)
        return inputs, targets

    def targets_in(self, k: int) -> int:
        """How many real (unpadded) targets window k holds, over all `batch` rows."""
        start, end = self._window(k)
        return int(np.clip(np.minimum(self._targets_per_row, end) - start, 0, None).sum())

    def __iter__(self):
        for k in range(self.steps_per_epoch):
            yield self.batch_at(k)


def _compact_array(ids: torch.Tensor | np.ndarray) -> np.ndarray:
    """The ids as a numpy array in a small integer type (uint8 when they fit): an eighth of int64."""
    ids = ids.cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    if ids.dtype in (np.uint8, np.uint16, np.int32):
        return ids
    top = int(ids.max()) if len(ids) else 0
    return ids.astype(np.uint8 if top < 1 << 8 else np.int32)


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

