"""The zip layer of the checkpoint reader: the archive is checked to be laid out the way torch.save writes it,
within bounds, before anything in it is read.

`torch.load(weights_only=True)` inflates a deflate-compressed storage record as the file asks: a 950 KB archive
took 1.2 GB and 5.5 s (torch 2.13, measured). So `open_archive` requires every entry stored uncompressed and
unencrypted, in disjoint ranges of the file, inside one folder, with nothing before the first entry or after the
directory, whose size and entry count are bounded (MAX_DIRECTORY_BYTES, MAX_ENTRIES). What it returns is where
each record's bytes lie in the one open file (a checkpoint replaced while it is read cannot mix two files); the
bytes are read later, by the caller, and checked against their CRC here (`check_crc`, `read_into`).

This module knows nothing of pickles or tensors: safepickle.py and safescan.py read what the records hold.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from itertools import pairwise
from typing import BinaryIO

from charlstm.errors import CharlstmError

MAX_ENTRIES = 50_000  # zip entries (a real checkpoint: ~3 per weight, one per rank's RNG state, a few more)
MAX_DIRECTORY_BYTES = 8 << 20  # the zip's central directory (Python's zipfile holds ~0.4 KB per 46-byte entry)


class CorruptCheckpoint(CharlstmError):
    """The file is damaged or not laid out like a checkpoint (the caller names the file).

    Defined here, the lowest layer of the reader, so that safepickle.py and safescan.py raise it."""


@dataclass
class Record:
    name: str  # within the archive's folder, e.g. "data/0"
    start: int  # where its bytes begin in the file
    size: int
    crc: int


@dataclass
class Archive:
    handle: BinaryIO
    size: int
    records: dict[str, Record]
    little_endian: bool


def read_at(handle: BinaryIO, offset: int, size: int) -> bytes:
    handle.seek(offset)
    data = handle.read(size)
    if len(data) != size:
        raise CorruptCheckpoint("a record reaches past the end of the file")
    return data


def check_crc(data: bytes | memoryview, record: Record, what: str) -> None:
    """`data`, a record's bytes, match the CRC its directory entry holds; `what` names the record in the error."""
    if zlib.crc32(data) != record.crc:
        raise CorruptCheckpoint(f"its {what} is damaged (checksum)")


def read_into(handle: BinaryIO, record: Record, buffer: memoryview, what: str) -> None:
    """Fill `buffer` (record.size bytes) with the record's bytes, CRC-checked: one copy, straight into it."""
    handle.seek(record.start)
    if record.size and handle.readinto(buffer) != record.size:
        raise CorruptCheckpoint(f"its {what} is cut short")
    check_crc(buffer, record, what)


def _directory_bounds(handle: BinaryIO, size: int) -> tuple[int, int, int]:
    """(entries, directory offset, directory size) from the end-of-directory record, which must end the file
    with no comment, and the zip64 record and locator before it (torch writes them even for small files):
    then Python's zipfile and torch's reader find the same directory."""
    if size < 22:
        raise CorruptCheckpoint("too short for a zip archive")
    end = read_at(handle, size - 22, 22)
    sig, disk, disk_cd, n_disk, n_total, cd_size, cd_offset, comment = struct.unpack("<IHHHHIIH", end)
    if sig != 0x06054B50 or comment != 0 or disk != 0 or disk_cd != 0 or n_disk != n_total:
        raise CorruptCheckpoint("the zip directory does not end the file")
    directory_end = size - 22
    locator = read_at(handle, size - 42, 20) if size >= 22 + 20 + 56 else b""
    if locator[:4] == b"PK\x06\x07":
        _, _, record_offset, disks = struct.unpack("<IIQI", locator)
        if disks != 1 or record_offset != size - 42 - 56:
            raise CorruptCheckpoint("the zip64 locator does not point at the record before it")
        sig, record_size, _, _, disk, disk_cd, n_disk64, n_total64, cd_size64, cd_offset64 = struct.unpack(
            "<IQHHIIQQQQ", read_at(handle, record_offset, 56)
        )
        if sig != 0x06064B50 or record_size != 44 or disk != 0 or disk_cd != 0 or n_disk64 != n_total64:
            raise CorruptCheckpoint("the zip64 directory record is not one torch writes")
        for short, full, most in (
            (n_total, n_total64, 0xFFFF),
            (cd_size, cd_size64, 0xFFFFFFFF),
            (cd_offset, cd_offset64, 0xFFFFFFFF),
        ):
            if short != full and short != most:
                raise CorruptCheckpoint("the zip64 directory record and the end record disagree")
        n_total, cd_size, cd_offset, directory_end = n_total64, cd_size64, cd_offset64, record_offset
    elif n_total == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
        raise CorruptCheckpoint("the zip64 records are missing")
    if n_total > MAX_ENTRIES or cd_size > MAX_DIRECTORY_BYTES or cd_offset + cd_size != directory_end:
        raise CorruptCheckpoint("the zip directory is not where its end record says")
    return n_total, cd_offset, cd_size


STORED = "torch.save stores entries as they are"


def open_archive(handle: BinaryIO) -> Archive:
    """The archive's records (by name within its one folder) and byte order, checked as the module docstring
    says; reads the directory and the local headers, nothing of any record but the byte-order mark."""
    size = os.fstat(handle.fileno()).st_size
    entries, cd_offset, _ = _directory_bounds(handle, size)
    try:
        infos = zipfile.ZipFile(handle).infolist()
    except Exception:
        raise CorruptCheckpoint("its zip directory is damaged") from None
    if len(infos) != entries or not infos:
        raise CorruptCheckpoint("its zip directory does not hold the entries its end record counts")
    prefix = infos[0].filename.split("/", 1)[0] + "/"
    records: dict[str, Record] = {}
    spans = []
    for info in infos:
        if not info.filename.startswith(prefix) or info.filename == prefix:
            raise CorruptCheckpoint("its entries are not all in one folder")
        name = info.filename[len(prefix) :]
        if name in records:
            raise CorruptCheckpoint(f"it holds two entries named {name[:80]!r}")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise CorruptCheckpoint(f"its entry {name[:80]!r} is compressed ({STORED})")
        if info.flag_bits & 0x1:
            raise CorruptCheckpoint(f"its entry {name[:80]!r} is encrypted")
        local = read_at(handle, info.header_offset, 30) if info.header_offset + 30 <= size else b""
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise CorruptCheckpoint("an entry's local header is missing")
        (method,) = struct.unpack("<H", local[8:10])
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        if method != zipfile.ZIP_STORED:
            raise CorruptCheckpoint(f"its entry {name[:80]!r} is compressed ({STORED})")
        local_name = read_at(handle, info.header_offset + 30, name_len)
        if local_name != info.orig_filename.encode("utf-8", "surrogateescape"):
            raise CorruptCheckpoint("an entry's local header names another file")
        start = info.header_offset + 30 + name_len + extra_len
        if start + info.file_size > cd_offset:
            raise CorruptCheckpoint(f"its entry {name[:80]!r} reaches into the zip directory")
        records[name] = Record(name=name, start=start, size=info.file_size, crc=info.CRC)
        spans.append((info.header_offset, start + info.file_size))
    spans.sort()
    for (_, end), (next_start, _) in pairwise(spans):
        if end > next_start:  # overlapping entries would let one byte range be read (and held) many times
            raise CorruptCheckpoint("two of its entries overlap")
    byteorder = records.get("byteorder")
    little = True
    if byteorder is not None:
        mark = read_at(handle, byteorder.start, byteorder.size) if byteorder.size <= 16 else b""
        if mark not in (b"little", b"big"):
            raise CorruptCheckpoint("its byte-order record is neither little nor big")
        little = mark == b"little"
    return Archive(handle=handle, size=size, records=records, little_endian=little)
