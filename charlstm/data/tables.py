"""Tables as corpora: CSV/TSV files (a header row, then one record per row) and JSON Lines files (one object per
line), of which one column or key holds the text."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from charlstm.data.textio import BINARY_HEAD, check_binary, encoding_error, is_utf8, unknown_encoding
from charlstm.errors import CharlstmError

TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t"}
JSONL_SUFFIXES = (".jsonl", ".ndjson")


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
    line = 0
    try:
        with open(path, "rb") as raw:
            check_binary(raw.read(BINARY_HEAD), path, encoding)
        with open(path, encoding="utf-8-sig" if is_utf8(encoding) else encoding, newline="") as handle:
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
        raise encoding_error(path, encoding, f"a byte after line {line}") from None
    except csv.Error as exc:
        raise CharlstmError(f"{path} line {line}: malformed CSV ({exc})") from None
    except LookupError:
        raise unknown_encoding(encoding) from None
    except OSError as exc:
        raise CharlstmError(f"cannot read {path}: {exc.strerror or exc}") from None
