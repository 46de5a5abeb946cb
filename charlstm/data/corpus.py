"""Corpus sources: text files, directories (every text file inside, or those matching --glob), CSV/TSV and JSON
Lines tables, the built-in corpus, and what one record is in each. A `Corpus` describes the text; its
`pieces()` read it, a chunk at a time."""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import json
import os
import re
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from charlstm.config import CorpusConfig, record_separator
from charlstm.data.tables import is_table, table_columns, table_texts
from charlstm.data.textio import READ_CHUNK, read_text_chunks, text_kind
from charlstm.errors import CharlstmError

FINGERPRINT_VERSION = 1  # bump when the encoding of a corpus into ids changes
DEFAULT_CORPUS_NAME = "python-stdlib"


@dataclass
class Corpus:
    """The text to train on, with a name (the default run directory) and where it came from.

    Either held in memory (`text`, or `records`), or read from `files` on demand, chunk by chunk, so that a
    corpus larger than memory is never held whole. In a record corpus (`is_records`) every record (a file,
    a CSV/JSONL row, a paragraph, the text between separator lines) is followed by the end-of-record marker.
    """

    text: str = ""
    name: str = "corpus"
    sources: list[str] = field(default_factory=list)
    records: list[str] | None = None  # in-memory records
    files: list[Path] = field(default_factory=list)  # read in this order
    record_mode: str = "none"  # file | paragraph | none | sep:STRING: what a record is in the plain text files
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

    def summary(self) -> dict[str, Any]:
        """Its name, where it came from and how to load it again (what checkpoints and run.json record)."""
        return {"name": self.name, "sources": self.sources, "config": asdict(self.config) if self.config else None}

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


def split_records(chunks: Iterable[str], separator: str) -> Iterator[tuple[str, bool]]:
    """Records of text given in chunks, each ended by a line that is `separator` alone (whitespace around it on
    that line aside), as (text, whether the record ends after it) pieces: the fortune format with `%`.

    The separator lines belong to no record; as in paragraphs, a record's leading and trailing newlines are
    dropped, and a record with nothing visible in it is left out. A record longer than READ_CHUNK characters comes
    in several pieces, so memory stays flat whatever the separator."""
    parts: list[str] = []  # the current record's text not given out yet
    held = 0  # its length
    started = False  # whether part of the current record was given out already
    line = ""  # the line being read (its newline not read yet)
    continued = False  # whether `line` continues a long line already in `parts` (so it is no separator)
    for chunk in itertools.chain(chunks, [None]):
        if chunk is None:  # the end: the last line, even without a newline
            lines, line = [line], ""
        else:
            lines = (line + chunk).split("\n")
            line = lines.pop()
            lines = [f"{text}\n" for text in lines]
        for i, text in enumerate(lines):
            if text.strip() == separator and not (i == 0 and continued):
                record = "".join(parts).rstrip("\n")
                record = record if started else record.lstrip("\n")
                if started or record.strip():
                    yield record, True
                parts, held, started = [], 0, False
            else:
                parts.append(text)
                held += len(text)
        if lines:
            continued = False
        if len(line) > READ_CHUNK and not separator.startswith(line.strip()):  # a long line that is no separator
            parts.append(line)
            held += len(line)
            line, continued = "", True
        if held >= READ_CHUNK:  # a long record: give out what it has but its trailing newlines
            whole = "".join(parts)
            body = whole.rstrip("\n")
            if body.strip():
                yield (body if started else body.lstrip("\n")), False
                started = True
                whole = whole[len(body) :]
            parts, held = [whole], len(whole)
    record = "".join(parts).rstrip("\n")
    record = record if started else record.lstrip("\n")
    if started or record.strip():
        yield record, True


def _file_pieces(path: Path, record_mode: str, encoding: str) -> Iterator[tuple[str, bool]]:
    """A plain text file as one stream, one record, one record per paragraph, or records between separators."""
    separator = record_separator(record_mode)
    if separator is not None:
        yield from split_records(read_text_chunks(path, encoding), separator)
    elif record_mode == "paragraph":
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
    in chunks, by `Corpus.pieces`. A list of paths is taken as files
    and directories with the default settings (a shorthand for scripts and tests)."""
    if not isinstance(config, CorpusConfig):
        config = CorpusConfig(paths=[str(p) for p in config], encoding=encoding)
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
        kind = text_kind(path, encoding)
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
    return (
        fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(relative, pattern) or PurePosixPath(relative).match(pattern)
    )


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
        if skip.intersection(path.relative_to(stdlib).parts) or text_kind(path, "utf-8") != "text":
            continue
        files.append(path)
        total += path.stat().st_size
    if not files:
        raise CharlstmError(f"no Python sources found under {stdlib} to build the default corpus")
    return Corpus(
        name=DEFAULT_CORPUS_NAME,
        sources=[f"{stdlib} (*.py, {sys.version.split()[0]})"],
        files=files,
        record_mode="file",
    )
