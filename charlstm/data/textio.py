"""Reading text: decoding, the binary check and chunked reads. The one place where a file that is not text,
or not in the encoding asked for, becomes an error (and the one place that suggests --encoding)."""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path

from charlstm.errors import CharlstmError

READ_CHUNK = 8 << 20  # bytes read, and characters encoded, at a time: memory stays flat for any corpus size
BINARY_HEAD = 8192  # bytes looked at to tell a binary file


def looks_binary(raw: bytes) -> bool:
    """NUL bytes, or many control characters, in the first 8 KiB: an image, archive or executable."""
    head = raw[:BINARY_HEAD]
    if b"\x00" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    if not head:
        return False
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13, 27))
    return controls / len(head) > 0.1


def is_utf8(encoding: str) -> bool:
    return encoding.lower().replace("_", "-") in ("utf-8", "utf8")


def binary_error(where: Path | str) -> CharlstmError:
    return CharlstmError(f"{where} looks binary (NUL or control bytes), not text; give a text file")


def encoding_error(where: Path | str, encoding: str, detail: str) -> CharlstmError:
    """`where` is not valid `encoding` (`detail` says where in it)."""
    return CharlstmError(
        f"{where} is not valid {encoding}: {detail}; try --encoding latin-1 (or the file's real encoding)"
    )


def unknown_encoding(encoding: str) -> CharlstmError:
    return CharlstmError(f"unknown --encoding {encoding!r}")


def check_binary(raw: bytes, where: Path | str, encoding: str) -> None:
    """Refuse a binary file (the check applies to UTF-8, where NUL and control bytes are never text)."""
    if is_utf8(encoding) and looks_binary(raw):
        raise binary_error(where)


def incremental_decoder(encoding: str) -> codecs.IncrementalDecoder:
    try:
        return codecs.getincrementaldecoder(encoding)("strict")
    except LookupError:
        raise unknown_encoding(encoding) from None


def decode_bytes(raw: bytes, where: str, encoding: str = "utf-8") -> str:
    """Bytes -> text without a byte-order mark and with \\n line ends, or a one-line reason."""
    check_binary(raw, where, encoding)
    try:
        text = raw.decode(encoding)
    except LookupError:
        raise unknown_encoding(encoding) from None
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise encoding_error(
            where, encoding, f"byte 0x{raw[exc.start]:02x} at offset {exc.start} (line {line})"
        ) from None
    if text.startswith("\ufeff"):  # byte-order mark
        text = text[1:]
    return text.replace("\r\n", "\n")


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
    decoder = incremental_decoder(encoding)
    offset, held_cr, at_start = 0, False, True
    try:
        handle = open(path, "rb")
    except OSError:
        yield read_text_file(path, encoding)  # raises the one-line reason
        return
    with handle:
        while True:
            raw = handle.read(chunk_bytes)
            if offset == 0:
                check_binary(raw, path, encoding)
            held = decoder.getstate()[0]  # bytes of an unfinished character from the previous chunk
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as exc:
                at = offset - len(held) + exc.start
                byte = (held + raw)[exc.start]
                raise encoding_error(
                    path, encoding, f"byte 0x{byte:02x} at offset {at} (line {_line_at(path, at)})"
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


def text_kind(path: Path, encoding: str) -> str:
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
        incremental_decoder(encoding).decode(raw, final=len(raw) < READ_CHUNK)
    except UnicodeDecodeError:
        return f"not {encoding} text"
    return "text"


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
