"""Reading a checkpoint that may come from anyone: no code runs, and time and memory stay bounded by its size.

`torch.load(weights_only=True)` never runs code from a file, but on torch 2.13 it still does what a few bytes
ask (measured, one process each, under a 6 GB address-space limit):
  - a 60-byte pickle calling the allowed `builtins.bytearray(2**31 - 1)` took 2.2 GB and 10 s;
  - a deflate-compressed storage record is inflated: a 950 KB archive took 1.2 GB and 5.5 s;
  - a 100 MB pickle of memo references took 95 s and 1.2 GB (its unpickler is pure Python);
  - a dict key of a million nested tuples (1 MB of pickle) crashes the process (SIGSEGV hashing it);
  - views come back as saved: a 15 KB file whose weights are `torch.zeros(1).expand(240000, 60000)` loads,
    and the first operation that reads them (a finiteness check) asks for 57.6 GB.
It does refuse, by itself, a storage record shorter than its pickle declares.

So charlstm reads the archive itself, from one open file (a checkpoint replaced while it is read cannot mix
two files), in two steps:

1. `scan`: the zip is checked to be laid out the way torch.save writes it (every entry stored uncompressed,
   unencrypted, in disjoint ranges of the file, nothing before the first entry or after the directory), and
   `data.pkl` (at most MAX_PICKLE_BYTES) is run through a small pickle machine that accepts only the opcodes
   torch's weights-only unpickler accepts and only three globals (`collections.OrderedDict`,
   `torch._utils._rebuild_tensor_v2` and the `torch.<dtype>Storage` types of DTYPES), all as inert stand-ins:
   nothing is imported or called. A tensor becomes a `TensorSpec` (its storage record, dtype, shape, strides,
   offset); a storage must be a record of exactly numel * itemsize bytes. Then the whole structure is walked
   once with a budget (MAX_ITEMS visits, MAX_DEPTH levels: a few bytes of pickle with memo references make a
   structure whose naive walk is exponential, or a cycle), and every tensor must be what a real save writes:
   dense and contiguous, offset 0, owning exactly its storage, no storage shared with another tensor.
2. `Scanned.materialize`: only after the caller's own checks (checkpoint.py: the format; for a model, every
   key against its config) on that structure, each tensor's bytes are read from its record (CRC-checked) into
   a tensor of its own, which takes the place of its TensorSpec. Memory is then the records' bytes (at most
   the file's size, the records being disjoint) plus the structure (bounded by the pickle's size and budgets).
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, BinaryIO

import torch

from .config import CELLS, CorpusConfig, ModelConfig, TrainConfig, from_dict
from .errors import CharlstmError

MAX_PICKLE_BYTES = 4 << 20  # data.pkl: a vocabulary of ~290k characters fits
MAX_ENTRIES = 50_000  # zip entries (a real checkpoint: ~3 per weight, one per rank's RNG state, a few more)
MAX_DIRECTORY_BYTES = 8 << 20  # the zip's central directory (Python's zipfile holds ~0.4 KB per 46-byte entry)
MAX_OPS = 1_500_000  # a real pickle of 4 MB (a 290k-character vocabulary) has ~1.2M; ~1 s of parsing
MAX_CONTAINERS = 500_000  # lists, dicts, tuples and marks the pickle may create (each costs ~64 bytes)
MAX_ITEMS = 2_000_000  # items visited walking the payload (each reference counts, shared or not)
MAX_DEPTH = 32  # nesting of containers
MAX_NAME = 256  # a global's module or name, a storage key or location

# what a charlstm model may be: far beyond any real one, small enough that every size is a plain int64
MAX_LAYERS = 256
MAX_WIDTH = 1 << 20  # hidden, embed
MAX_VOCAB = 0x110000 + 1  # every Unicode code point, and the end-of-record marker
MAX_INT = 2**63 - 1  # config and progress numbers
MAX_START_STATES = 1024
MAX_RNG_BYTES = 1 << 20  # a CPU generator state is 5056 bytes, a CUDA one 16
MAX_RANKS = 4096  # per-process RNG states
MAX_CORPUS_DEPTH = 16
MAX_CORPUS_ITEMS = 200_000
MAX_CORPUS_CHARS = 1 << 24

# the storage types a checkpoint may hold, by the name its pickle gives them
DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "ByteStorage": torch.uint8,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "BoolStorage": torch.bool,
}
STEP_DTYPES = (torch.float32, torch.float64, torch.int64)  # an optimizer's step count, as torch versions kept it
FLOATS = (torch.float32, torch.float16, torch.bfloat16)  # what a carried hidden state may be (bf16 autocast)


class CorruptCheckpoint(CharlstmError):
    """The file is damaged or not laid out like a checkpoint (the caller names the file)."""


class ForbiddenGlobal(CharlstmError):
    """The pickle asks to import or call something other than a tensor rebuild (the caller names the file)."""


# --------------------------------------------------------------------------------------- the archive


@dataclass
class _Record:
    name: str  # within the archive's folder, e.g. "data/0"
    start: int  # where its bytes begin in the file
    size: int
    crc: int


@dataclass
class _Archive:
    handle: BinaryIO
    size: int
    records: dict[str, _Record]
    little_endian: bool


def _read_at(handle: BinaryIO, offset: int, size: int) -> bytes:
    handle.seek(offset)
    data = handle.read(size)
    if len(data) != size:
        raise CorruptCheckpoint("a record reaches past the end of the file")
    return data


def _directory_bounds(handle: BinaryIO, size: int) -> tuple[int, int, int]:
    """(entries, directory offset, directory size) from the end-of-directory record, which must end the file
    with no comment, and the zip64 record and locator before it (torch writes them even for small files):
    then Python's zipfile and torch's reader find the same directory."""
    if size < 22:
        raise CorruptCheckpoint("too short for a zip archive")
    end = _read_at(handle, size - 22, 22)
    sig, disk, disk_cd, n_disk, n_total, cd_size, cd_offset, comment = struct.unpack("<IHHHHIIH", end)
    if sig != 0x06054B50 or comment != 0 or disk != 0 or disk_cd != 0 or n_disk != n_total:
        raise CorruptCheckpoint("the zip directory does not end the file")
    directory_end = size - 22
    locator = _read_at(handle, size - 42, 20) if size >= 22 + 20 + 56 else b""
    if locator[:4] == b"PK\x06\x07":
        _, _, record_offset, disks = struct.unpack("<IIQI", locator)
        if disks != 1 or record_offset != size - 42 - 56:
            raise CorruptCheckpoint("the zip64 locator does not point at the record before it")
        sig, record_size, _, _, disk, disk_cd, n_disk64, n_total64, cd_size64, cd_offset64 = struct.unpack(
            "<IQHHIIQQQQ", _read_at(handle, record_offset, 56)
        )
        if sig != 0x06064B50 or record_size != 44 or disk != 0 or disk_cd != 0 or n_disk64 != n_total64:
            raise CorruptCheckpoint("the zip64 directory record is not one torch writes")
        for short, full, most in ((n_total, n_total64, 0xFFFF), (cd_size, cd_size64, 0xFFFFFFFF),
                                  (cd_offset, cd_offset64, 0xFFFFFFFF)):  # fmt: skip
            if short != full and short != most:
                raise CorruptCheckpoint("the zip64 directory record and the end record disagree")
        n_total, cd_size, cd_offset, directory_end = n_total64, cd_size64, cd_offset64, record_offset
    elif n_total == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
        raise CorruptCheckpoint("the zip64 records are missing")
    if n_total > MAX_ENTRIES or cd_size > MAX_DIRECTORY_BYTES or cd_offset + cd_size != directory_end:
        raise CorruptCheckpoint("the zip directory is not where its end record says")
    return n_total, cd_offset, cd_size


STORED = "torch.save stores entries as they are"


def _open_archive(handle: BinaryIO) -> _Archive:
    size = os.fstat(handle.fileno()).st_size
    entries, cd_offset, _ = _directory_bounds(handle, size)
    try:
        infos = zipfile.ZipFile(handle).infolist()
    except Exception:  # BadZipFile, struct.error, ValueError, UnicodeDecodeError, ...: a damaged directory
        raise CorruptCheckpoint("its zip directory is damaged") from None
    if len(infos) != entries or not infos:
        raise CorruptCheckpoint("its zip directory does not hold the entries its end record counts")
    prefix = infos[0].filename.split("/", 1)[0] + "/"
    records: dict[str, _Record] = {}
    spans = []
    for info in infos:
        if not info.filename.startswith(prefix) or info.filename == prefix:
            raise CorruptCheckpoint("its entries are not all in one folder")
        name = info.filename[len(prefix):]
        if name in records:
            raise CorruptCheckpoint(f"it holds two entries named {name[:80]!r}")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise CorruptCheckpoint(f"its entry {name[:80]!r} is compressed ({STORED})")
        if info.flag_bits & 0x1:
            raise CorruptCheckpoint(f"its entry {name[:80]!r} is encrypted")
        local = _read_at(handle, info.header_offset, 30) if info.header_offset + 30 <= size else b""
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise CorruptCheckpoint("an entry's local header is missing")
        method, = struct.unpack("<H", local[8:10])
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        if method != zipfile.ZIP_STORED:
            raise CorruptCheckpoint(f"its entry {name[:80]!r} is compressed ({STORED})")
        local_name = _read_at(handle, info.header_offset + 30, name_len)
        if local_name != info.orig_filename.encode("utf-8", "surrogateescape"):
            raise CorruptCheckpoint("an entry's local header names another file")
        start = info.header_offset + 30 + name_len + extra_len
        if start + info.file_size > cd_offset:
            raise CorruptCheckpoint(f"its entry {name[:80]!r} reaches into the zip directory")
        records[name] = _Record(name=name, start=start, size=info.file_size, crc=info.CRC)
        spans.append((info.header_offset, start + info.file_size))
    spans.sort()
    for (_, end), (next_start, _) in zip(spans, spans[1:]):
        if end > next_start:  # overlapping entries would let one byte range be read (and held) many times
            raise CorruptCheckpoint("two of its entries overlap")
    byteorder = records.get("byteorder")
    little = True
    if byteorder is not None:
        mark = _read_at(handle, byteorder.start, byteorder.size) if byteorder.size <= 16 else b""
        if mark not in (b"little", b"big"):
            raise CorruptCheckpoint("its byte-order record is neither little nor big")
        little = mark == b"little"
    return _Archive(handle=handle, size=size, records=records, little_endian=little)


# --------------------------------------------------------------------------------------- the pickle


class _StorageType:
    """Stands in for `torch.FloatStorage` and the like: only its dtype is kept."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


_ORDERED_DICT = object()  # stands in for collections.OrderedDict
_REBUILD_TENSOR = object()  # stands in for torch._utils._rebuild_tensor_v2


@dataclass(eq=False)
class StorageRef:
    key: str
    dtype: torch.dtype
    numel: int
    record: _Record


@dataclass(eq=False)
class TensorSpec:
    """A tensor as the pickle describes it, before any of its bytes are read."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    requires_grad: bool
    index: int  # its place among the tensors the pickle builds (the second run of the pickle uses it)

    @property
    def dtype(self) -> torch.dtype:
        return self.storage.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def problem(self) -> str | None:
        """Why this is not a tensor a real save writes: dense, contiguous, owning exactly its bytes."""
        if self.requires_grad:
            return "requires grad (a checkpoint holds plain tensors)"
        if len(self.stride) != len(self.shape) or len(self.shape) > 8:
            return f"has {len(self.shape)} sizes and {len(self.stride)} strides"
        if any(s < 0 for s in self.shape):
            return f"has a negative size {self.shape}"
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride)):
            # as is_contiguous: strides of length-1 dims are never used, nor any of an empty tensor
            if size != 1 and stride != expected and self.numel:
                return (
                    f"is not dense and contiguous (shape {self.shape}, strides {self.stride}): a stride-0, "
                    f"overlapping or transposed view"
                )
            expected *= max(size, 1)
        if self.offset != 0 or self.numel != self.storage.numel:
            return (
                f"is a view of {self.numel} of its storage's {self.storage.numel} elements at offset {self.offset} "
                f"(a checkpoint holds tensors that own their bytes)"
            )
        return None


# the opcodes torch's weights-only unpickler accepts (protocol 2); every other one is refused
_PROTO, _STOP, _GLOBAL, _REDUCE, _BINPERSID = 0x80, ord("."), ord("c"), ord("R"), ord("Q")
_EMPTY_DICT, _EMPTY_LIST, _EMPTY_TUPLE, _MARK = ord("}"), ord("]"), ord(")"), ord("(")
_TUPLE, _TUPLE1, _TUPLE2, _TUPLE3 = ord("t"), 0x85, 0x86, 0x87
_NONE, _NEWTRUE, _NEWFALSE = ord("N"), 0x88, 0x89
_BININT, _BININT1, _BININT2, _LONG1, _BINFLOAT, _BINUNICODE = ord("J"), ord("K"), ord("M"), 0x8A, ord("G"), ord("X")
_BINPUT, _LONG_BINPUT, _BINGET, _LONG_BINGET = ord("q"), ord("r"), ord("h"), ord("j")
_APPEND, _APPENDS, _SETITEM, _SETITEMS = ord("a"), ord("e"), ord("s"), ord("u")



def _plain_key(key: Any) -> bool:
    """A mapping key a checkpoint may have: a string, or a small whole number (an optimizer's parameter index).
    Not a tuple (hashing one nested a million deep overflows the C stack: torch.load dies of SIGSEGV), nor a
    float or a big int (their hashes can be made to collide, and a dict of colliding keys fills in quadratic
    time; str hashes are salted)."""
    kind = type(key)
    return kind is str or kind is bool or key is None or (kind is int and -(2**31) <= key < 2**31)

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-:")


class _Machine:
    """The opcodes of torch's weights-only unpickler (torch/_weights_only_unpickler.py), with the same stack,
    mark and memo semantics, so that what this reads is what torch would read; but every global is an inert
    stand-in and a tensor is a TensorSpec (first run) or the tensor materialized for it (second run)."""

    def __init__(self, data: bytes, archive: _Archive, tensors: list[torch.Tensor | None] | None = None):
        self.data = data
        self.archive = archive
        self.tensors = tensors  # None: the first run (specs); else the tensor for each spec index
        self.storages: dict[str, StorageRef] = {}
        self.specs: list[TensorSpec] = []

    def run(self) -> Any:
        try:
            return self._run()
        except CharlstmError:
            raise
        except (IndexError, KeyError, struct.error, UnicodeDecodeError, ValueError, TypeError, OverflowError):
            raise CorruptCheckpoint("its pickle is damaged") from None

    def _run(self) -> Any:  # noqa: C901 (one loop over the opcodes, as in pickle.py)
        data, pos, end = self.data, 0, len(self.data)
        stack: list[Any] = []
        metastack: list[list[Any]] = []
        memo: dict[int, Any] = {}
        containers = 0
        unpack_from = struct.unpack_from
        if end < 3 or data[0] != _PROTO or data[1] != 2:  # torch.save writes protocol 2 (torch warns on others)
            raise CorruptCheckpoint("its pickle is not protocol 2")
        pos = 2
        for _ in range(MAX_OPS):  # (a bound that costs nothing per opcode)
            if pos >= end:
                raise CorruptCheckpoint("its pickle is truncated")
            op = data[pos]
            pos += 1
            if op == _BINPUT:
                memo[data[pos]] = stack[-1]
                pos += 1
            elif op == _BINGET:
                stack.append(memo[data[pos]])
                pos += 1
            elif op == _BINUNICODE:
                (n,) = unpack_from("<I", data, pos)
                if pos + 4 + n > end:
                    raise CorruptCheckpoint("its pickle is truncated")
                stack.append(str(data[pos + 4 : pos + 4 + n], "utf-8", "surrogatepass"))
                pos += 4 + n
            elif op == _BININT1:
                stack.append(data[pos])
                pos += 1
            elif op == _MARK:
                containers += 1
                metastack.append(stack)
                stack = []
            elif op == _LONG_BINPUT:
                (i,) = unpack_from("<I", data, pos)
                memo[i] = stack[-1]
                pos += 4
            elif op == _LONG_BINGET:
                (i,) = unpack_from("<I", data, pos)
                stack.append(memo[i])
                pos += 4
            elif op == _EMPTY_DICT:
                containers += 1
                stack.append({})
            elif op == _EMPTY_LIST:
                containers += 1
                stack.append([])
            elif op == _EMPTY_TUPLE:
                stack.append(())
            elif op == _TUPLE:
                containers += 1
                items = stack
                stack = metastack.pop()
                stack.append(tuple(items))
            elif op == _TUPLE1:
                containers += 1
                stack[-1] = (stack[-1],)
            elif op == _TUPLE2:
                containers += 1
                if len(stack) < 2:
                    raise IndexError
                stack[-2:] = [(stack[-2], stack[-1])]
            elif op == _TUPLE3:
                containers += 1
                if len(stack) < 3:
                    raise IndexError
                stack[-3:] = [(stack[-3], stack[-2], stack[-1])]
            elif op == _SETITEMS:
                items = stack
                stack = metastack.pop()
                target = stack[-1]
                if type(target) not in (dict, OrderedDict) or len(items) % 2:
                    raise CorruptCheckpoint("its pickle sets items of something that is not a mapping")
                for i in range(0, len(items), 2):
                    if not _plain_key(items[i]):
                        raise CorruptCheckpoint("its pickle has a mapping key that is not a string or a small number")
                    target[items[i]] = items[i + 1]
            elif op == _SETITEM:
                value, key = stack.pop(), stack.pop()
                target = stack[-1]
                if type(target) not in (dict, OrderedDict):
                    raise CorruptCheckpoint("its pickle sets items of something that is not a mapping")
                if not _plain_key(key):
                    raise CorruptCheckpoint("its pickle has a mapping key that is not a string or a small number")
                target[key] = value
            elif op == _APPENDS:
                items = stack
                stack = metastack.pop()
                if type(stack[-1]) is not list:
                    raise CorruptCheckpoint("its pickle appends to something that is not a list")
                stack[-1].extend(items)
            elif op == _APPEND:
                item = stack.pop()
                if type(stack[-1]) is not list:
                    raise CorruptCheckpoint("its pickle appends to something that is not a list")
                stack[-1].append(item)
            elif op == _NONE:
                stack.append(None)
            elif op == _NEWTRUE:
                stack.append(True)
            elif op == _NEWFALSE:
                stack.append(False)
            elif op == _BININT:
                stack.append(unpack_from("<i", data, pos)[0])
                pos += 4
            elif op == _BININT2:
                stack.append(unpack_from("<H", data, pos)[0])
                pos += 2
            elif op == _LONG1:
                n = data[pos]
                if pos + 1 + n > end:
                    raise CorruptCheckpoint("its pickle is truncated")
                stack.append(int.from_bytes(data[pos + 1 : pos + 1 + n], "little", signed=True))
                pos += 1 + n
            elif op == _BINFLOAT:
                stack.append(unpack_from(">d", data, pos)[0])
                pos += 8
            elif op == _GLOBAL:
                module, pos = self._line(pos)
                name, pos = self._line(pos)
                stack.append(self._global(module, name))
            elif op == _REDUCE:
                args = stack.pop()
                stack[-1] = self._reduce(stack[-1], args)
            elif op == _BINPERSID:
                stack.append(self._storage(stack.pop()))
            elif op == _STOP:
                return stack.pop()
            else:
                raise CorruptCheckpoint(f"its pickle uses opcode {op:#04x}, which no checkpoint holds")
            if containers > MAX_CONTAINERS:
                raise CorruptCheckpoint(f"its pickle builds more than {MAX_CONTAINERS} containers")
        raise CorruptCheckpoint(f"its pickle has more than {MAX_OPS} opcodes")

    def _line(self, pos: int) -> tuple[str, int]:
        stop = self.data.find(b"\n", pos, pos + MAX_NAME + 1)
        if stop < 0:
            raise CorruptCheckpoint("its pickle names a global that is too long or unterminated")
        return self.data[pos:stop].decode("utf-8"), stop + 1

    def _global(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return _ORDERED_DICT
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _REBUILD_TENSOR
        if module == "torch" and name in DTYPES:
            return _StorageType(DTYPES[name])
        shown = "".join(c if c in _NAME_CHARS else "?" for c in f"{module}.{name}"[:80])
        raise ForbiddenGlobal(f"it asks to import or call {shown}")

    def _storage(self, pid: Any) -> StorageRef:
        if type(pid) is not tuple or len(pid) != 5 or pid[0] != "storage" or type(pid[1]) is not _StorageType:
            raise CorruptCheckpoint("its pickle refers to something that is not a tensor storage")
        _, storage_type, key, location, numel = pid
        if (
            type(key) is not str or not 0 < len(key) <= MAX_NAME or not set(key) <= _NAME_CHARS
            or type(location) is not str or len(location) > MAX_NAME or type(numel) is not int or numel < 0
        ):  # fmt: skip
            raise CorruptCheckpoint("its pickle describes a tensor storage it cannot have")
        known = self.storages.get(key)
        if known is not None:  # torch would hand back the same storage: two tensors would share it
            if known.dtype != storage_type.dtype or known.numel != numel:
                raise CorruptCheckpoint(f"its storage data/{key} is declared twice, differently")
            return known
        record = self.archive.records.get(f"data/{key}")
        if record is None:
            raise CorruptCheckpoint(f"its storage data/{key} is missing from the archive")
        itemsize = storage_type.dtype.itemsize
        if record.size != numel * itemsize:
            raise CorruptCheckpoint(
                f"its storage data/{key} declares {numel} x {itemsize} bytes but the archive holds {record.size}"
            )
        self.storages[key] = ref = StorageRef(key=key, dtype=storage_type.dtype, numel=numel, record=record)
        return ref

    def _reduce(self, func: Any, args: Any) -> Any:
        if type(args) is not tuple:
            raise CorruptCheckpoint("its pickle calls something with arguments that are not a tuple")
        if func is _ORDERED_DICT:
            if args:
                raise CorruptCheckpoint("its pickle builds an OrderedDict from arguments")
            return OrderedDict()
        if func is not _REBUILD_TENSOR:
            raise CorruptCheckpoint("its pickle calls something that does not build a tensor")
        if len(args) not in (6, 7):
            raise CorruptCheckpoint("its pickle rebuilds a tensor from the wrong number of arguments")
        storage, offset, shape, stride, requires_grad, hooks = args[:6]
        if (
            type(storage) is not StorageRef or type(offset) is not int or type(requires_grad) is not bool
            or not _int_tuple(shape) or not _int_tuple(stride)
            or type(hooks) is not OrderedDict or hooks or (len(args) == 7 and not _empty_mapping(args[6]))
        ):  # fmt: skip
            raise CorruptCheckpoint("its pickle rebuilds a tensor from arguments a save never writes")
        index = len(self.specs)
        spec = TensorSpec(storage, offset, tuple(shape), tuple(stride), requires_grad, index)
        self.specs.append(spec)
        if self.tensors is None:
            return spec
        return self.tensors[index]


def _int_tuple(value: Any) -> bool:
    return type(value) is tuple and len(value) <= 64 and all(type(v) is int and -MAX_INT <= v <= MAX_INT for v in value)


def _empty_mapping(value: Any) -> bool:
    return type(value) in (dict, OrderedDict) and not value


# ------------------------------------------------------------------------------------------ the walk


def _describe(path: tuple) -> str:
    """payload['model']['head.weight'] style, short."""
    text = "payload" + "".join(f"[{p!r}]" if not isinstance(p, str) else f"[{p[:60]!r}]" for p in path)
    return text if len(text) <= 160 else text[:157] + "..."


_SCALARS = (str, int, float, bool, type(None))
_END = object()


def _walk(payload: Any) -> list[tuple[TensorSpec, Any, Any]]:
    """Visit every item once per reference (the way any naive consumer would), within MAX_ITEMS visits and
    MAX_DEPTH levels, checking every tensor; the tensors found, each with the container and key holding it.

    A container reached a second time (the pickle's memo makes that cost two bytes) is refused unless it holds
    only plain values (an optimizer's param groups share their `betas` tuple): a structure whose naive walk is
    exponential, or a cycle, ends at its first shared inner container. Depth-first with one iterator per open
    container: memory stays O(depth) however wide the structure is."""
    found: list[tuple[TensorSpec, Any, Any]] = []
    owner: dict[str, tuple] = {}  # storage key -> the path of the tensor that holds it
    entered: set[int] = set()  # ids of the containers entered (all alive: the payload holds them)
    visits = 0

    def enter(value: Any, path: tuple, parent: Any, key: Any) -> Any:
        nonlocal visits
        kind = type(value)
        if kind in (dict, OrderedDict, list, tuple):
            if id(value) in entered:
                flat = value.values() if kind in (dict, OrderedDict) else value
                visits += len(value)
                if visits > MAX_ITEMS or not all(type(v) in _SCALARS for v in flat):
                    raise CharlstmError(f"{_describe(path)} is reached twice (a checkpoint's data is a tree)")
                return None
            entered.add(id(value))
            return iter(value.items()) if kind in (dict, OrderedDict) else enumerate(value)
        if kind is TensorSpec:
            problem = value.problem()
            if problem:
                raise CharlstmError(f"tensor {_describe(path)} {problem}")
            first = owner.setdefault(value.storage.key, path)
            if first is not path:
                raise CharlstmError(f"tensors {_describe(first)} and {_describe(path)} share one storage")
            found.append((value, parent, key))
            return None
        if kind in _SCALARS:
            return None
        # a bare OrderedDict or storage stand-in, a storage type: nothing a payload holds
        raise CharlstmError(f"{_describe(path)} is a {kind.__name__.lstrip('_')}, not data or a tensor")

    root = enter(payload, (), None, None)
    stack = [(root, (), payload)] if root is not None else []
    while stack:
        items, path, container = stack[-1]
        item = next(items, _END)
        if item is _END:
            stack.pop()
            continue
        visits += 1
        if visits > MAX_ITEMS:
            raise CharlstmError(f"it holds more than {MAX_ITEMS} items")
        key, child = item
        if type(child) in _SCALARS:
            continue
        child_path = path + (key,)
        inner = enter(child, child_path, container, key)
        if inner is not None:
            if len(child_path) > MAX_DEPTH:
                raise CharlstmError(f"{_describe(child_path[:4])}... nests deeper than {MAX_DEPTH} levels")
            stack.append((inner, child_path, child))
    found.sort(key=lambda entry: entry[0].index)
    return found


# ---------------------------------------------------------------------------------------- the result


@dataclass
class Scanned:
    """A checkpoint whose archive and structure are checked; `payload` has TensorSpec where tensors will be."""

    payload: Any
    places: list[tuple[TensorSpec, Any, Any]]  # every tensor, with the container and key that hold it
    _archive: _Archive
    _pickle: bytes

    def materialize(self, map_location: str | torch.device = "cpu") -> Any:
        """Read every tensor's bytes (from the file `scan` read the rest from) and put the tensors in their
        places; `payload` is the payload then. Tensors inside tuples (no charlstm payload has them) are placed by
        running the pickle again with them."""
        built = {spec.index: self._read_tensor(spec, map_location) for spec, _, _ in self.places}
        if any(type(parent) is tuple for _, parent, _ in self.places):
            tensors = [built.get(i) for i in range(max(built) + 1)]
            self.payload = _Machine(self._pickle, self._archive, tensors).run()
            return self.payload
        for spec, parent, key in self.places:
            if parent is None:
                self.payload = built[spec.index]
            else:
                parent[key] = built[spec.index]
        return self.payload

    def _read_tensor(self, spec: TensorSpec, map_location: str | torch.device) -> torch.Tensor:
        record = spec.storage.record
        raw = torch.empty(record.size, dtype=torch.uint8)
        handle = self._archive.handle
        handle.seek(record.start)
        if record.size and handle.readinto(memoryview(raw.numpy())) != record.size:
            raise CorruptCheckpoint(f"its storage data/{spec.storage.key} is cut short")
        if zlib.crc32(memoryview(raw.numpy())) != record.crc:
            raise CorruptCheckpoint(f"its storage data/{spec.storage.key} is damaged (checksum)")
        tensor = raw.view(spec.dtype).view(spec.shape)
        if not self._archive.little_endian and tensor.element_size() > 1:
            tensor.untyped_storage().byteswap(spec.dtype)
        return tensor if str(map_location) == "cpu" else tensor.to(map_location)


def scan(handle: BinaryIO) -> Scanned:
    """Check the archive and its pickle, build the structure with TensorSpec leaves, and walk it (see module
    docstring). Raises CorruptCheckpoint, ForbiddenGlobal, or CharlstmError for a payload beyond the bounds;
    reads nothing of any tensor."""
    archive = _open_archive(handle)
    record = archive.records.get("data.pkl")
    if record is None:
        raise CorruptCheckpoint("it has no data.pkl")
    if record.size > MAX_PICKLE_BYTES:
        raise CharlstmError(f"its pickle is {record.size} bytes; a checkpoint's is at most {MAX_PICKLE_BYTES}")
    data = _read_at(handle, record.start, record.size)
    if zlib.crc32(data) != record.crc:
        raise CorruptCheckpoint("its pickle is damaged (checksum)")
    payload = _Machine(data, archive).run()
    places = _walk(payload)
    return Scanned(payload=payload, places=places, _archive=archive, _pickle=data)


# ----------------------------------------------------------------------------- a charlstm model's payload


def expected_weights(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The state dict of CharRNN(config), name -> shape, in its order, without building it (a model on the meta
    device costs seconds of imports the first time). tests/test_checkpoint_safety.py checks it against CharRNN."""
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[config.cell]
    vocab, hidden, embed = config.vocab_size, config.hidden, config.embed
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (vocab, embed)}
    for layer in range(config.layers):
        shapes[f"rnn.weight_ih_l{layer}"] = (gates * hidden, embed if layer == 0 else hidden)
        shapes[f"rnn.weight_hh_l{layer}"] = (gates * hidden, hidden)
        shapes[f"rnn.bias_ih_l{layer}"] = (gates * hidden,)
        shapes[f"rnn.bias_hh_l{layer}"] = (gates * hidden,)
    shapes["head.weight"] = (vocab, hidden)
    shapes["head.bias"] = (vocab,)
    return shapes


def _optimizer_orders(config: ModelConfig, shapes: dict[str, tuple[int, ...]]) -> list[list[tuple[int, ...]]]:
    """The parameter shapes in the order an optimizer's state indexes them: train.py's two AdamW groups
    (weights that decay: matrices but the embedding; then the rest), or one group in model order."""
    decay = [s for n, s in shapes.items() if len(s) >= 2 and not n.startswith("embed")]
    rest = [s for n, s in shapes.items() if not (len(s) >= 2 and not n.startswith("embed"))]
    return [decay + rest, list(shapes.values())]


def _bounded_config(cls: type, data: Any) -> Any:
    """The config dataclass from a checkpoint's dict, whose every value (unknown keys included: the CLI prints
    and writes them as JSON) is a plain value or a short list of them, numbers within int64."""
    if type(data) is dict:
        for key, value in data.items():
            values = value if type(value) is list and len(value) <= 4096 else [value]
            if type(key) is not str or not all(type(v) in _SCALARS for v in values):
                raise CharlstmError(f"{cls.__name__}.{str(key)[:40]} is not a plain value")
            for v in values:
                if type(v) is int and not -MAX_INT <= v <= MAX_INT:
                    raise CharlstmError(f"{cls.__name__}.{key[:40]} = {str(v)[:20]}... is out of range")
    return from_dict(cls, data)  # types (a CharlstmError naming the field)


def check_model_payload(scanned: Scanned) -> None:
    """Everything a model is rebuilt, sampled or resumed from, checked on the scanned structure before any
    tensor's bytes are read: configs (with bounds), vocabulary, every weight's name, dtype and shape against the
    config, and the optional optimizer, progress, hidden, rng, corpus and start_states. Other keys are ignored
    (they were bounded by the walk). Raises CharlstmError (the reason; the caller names the file)."""
    payload = scanned.payload
    config = _bounded_config(ModelConfig, payload["model_config"])
    if config.cell not in CELLS:
        raise CharlstmError(f"its config's cell {config.cell[:20]!r} is not one of {', '.join(CELLS)}")
    bounds = {"layers": MAX_LAYERS, "hidden": MAX_WIDTH, "embed": MAX_WIDTH, "vocab_size": MAX_VOCAB}
    for name, most in bounds.items():
        value = getattr(config, name)
        if value > most:
            raise CharlstmError(f"its config's {name} {value} is beyond any charlstm model (at most {most})")
    config.validate()
    if not math.isfinite(config.dropout):
        raise CharlstmError("its config's dropout is not a number")
    vocab = payload["vocab"]
    if type(vocab) is not list or not all(type(c) is str and len(c) <= 1 for c in vocab):
        raise CharlstmError("its vocabulary is not a list of single characters")
    if len(set(vocab)) != len(vocab):
        raise CharlstmError("its vocabulary repeats characters")
    if config.vocab_size != len(vocab):
        raise CharlstmError(f"its config says vocab_size {config.vocab_size} but it stores {len(vocab)} characters")
    if payload.get("train_config") is not None:
        train_config = _bounded_config(TrainConfig, payload["train_config"])
        train_config.validate()
        if not 0 <= train_config.seed <= MAX_INT:
            raise CharlstmError(f"its train config's seed {train_config.seed} is out of range")
    shapes = expected_weights(config)
    _check_weights(payload["model"], config, shapes)
    if payload.get("optimizer") is not None:
        _check_optimizer(payload["optimizer"], config, shapes)
    if payload.get("progress") is not None:
        _check_progress(payload["progress"])
    states = 2 if config.cell == "lstm" else 1
    if payload.get("hidden") is not None:
        _check_hidden(payload["hidden"], config, states)
    if payload.get("rng") is not None:
        _check_rng(payload["rng"], nested=True)
    if payload.get("corpus") is not None:
        _check_corpus(payload["corpus"])
    if payload.get("start_states") is not None:
        _check_start_states(payload["start_states"], config, states)


def _check_weights(weights: Any, config: ModelConfig, shapes: dict[str, tuple[int, ...]]) -> None:
    if type(weights) not in (dict, OrderedDict) or not all(type(t) is TensorSpec for t in weights.values()):
        raise CharlstmError("its weights are not a mapping of tensors")
    if set(weights) != set(shapes):
        odd = sorted(str(name)[:60] for name in set(weights) ^ set(shapes))
        raise CharlstmError(
            f"its weights do not match its config ({config.cell}, {config.layers} layer(s)): {', '.join(odd[:5])}"
        )
    for name, shape in shapes.items():
        tensor = weights[name]
        if tensor.shape != shape:
            raise CharlstmError(
                f"weight {name} has shape {tensor.shape} but its config (hidden {config.hidden}, "
                f"embed {config.embed}, vocabulary {config.vocab_size}) needs {shape}"
            )
        if tensor.dtype != torch.float32:
            raise CharlstmError(f"weight {name} is {str(tensor.dtype).replace('torch.', '')}, not float32")


def _check_optimizer(optimizer: Any, config: ModelConfig, shapes: dict[str, tuple[int, ...]]) -> None:
    """An AdamW state_dict whose moments have the shapes of the weights they belong to, in the optimizer's order
    (its load_state_dict checks only the counts: a mismatched moment would crash at the first step)."""
    if type(optimizer) is not dict or set(optimizer) != {"state", "param_groups"}:
        raise CharlstmError("its optimizer state is not an optimizer's state_dict (state, param_groups)")
    state, groups = optimizer["state"], optimizer["param_groups"]
    if type(groups) is not list or not 1 <= len(groups) <= 16 or not all(type(g) is dict for g in groups):
        raise CharlstmError("its optimizer's param_groups are not a list of a few mappings")
    order: list[Any] = []
    for group in groups:
        params = group.get("params")
        if type(params) is not list or not all(type(i) is int and not isinstance(i, bool) for i in params):
            raise CharlstmError("its optimizer's param_groups do not list parameter numbers")
        order.extend(params)
        for key, value in group.items():
            if type(key) is not str or not (_is_scalar(value) or key == "params" or _is_number_tuple(value)):
                raise CharlstmError(f"its optimizer's setting {str(key)[:40]!r} is not a number, flag or pair")
    if sorted(order) != list(range(len(shapes))):
        raise CharlstmError(f"its optimizer covers {len(order)} parameters, not the model's {len(shapes)} in order")
    if type(state) is not dict or not set(state) <= set(order):
        raise CharlstmError("its optimizer state is not a mapping of the model's parameter numbers")
    candidates = _optimizer_orders(config, shapes)
    problems = []
    for shapes_in_order in candidates:
        problem = _moments_problem(state, order, shapes_in_order)
        if problem is None:
            return
        problems.append(problem)
    raise CharlstmError(problems[0])


def _moments_problem(state: dict, order: list[int], shapes_in_order: list[tuple[int, ...]]) -> str | None:
    for position, index in enumerate(order):
        moments = state.get(index)
        if moments is None:
            continue  # a parameter the optimizer has not stepped yet
        if type(moments) is not dict:
            return f"its optimizer state for parameter {index} is not a mapping"
        for key, value in moments.items():
            if type(key) is not str:
                return f"its optimizer state for parameter {index} has a key that is not a name"
            if type(value) is not TensorSpec:
                if _is_scalar(value):
                    continue
                return f"its optimizer state {index}[{key[:30]!r}] is not a tensor or a number"
            if key == "step":
                if value.numel != 1 or len(value.shape) > 1 or value.dtype not in STEP_DTYPES:
                    return f"its optimizer step for parameter {index} is not one number (shape {value.shape})"
            elif value.shape != shapes_in_order[position] or value.dtype != torch.float32:
                return (
                    f"its optimizer {key[:30]} for parameter {index} is {str(value.dtype).replace('torch.', '')} of "
                    f"shape {value.shape}, its weight is float32 of {shapes_in_order[position]}"
                )
    return None


def _is_scalar(value: Any) -> bool:
    """A number, flag or None (an optimizer's settings and state hold no strings)."""
    return type(value) in (bool, float, type(None)) or (type(value) is int and -MAX_INT <= value <= MAX_INT)


def _is_number_tuple(value: Any) -> bool:
    return type(value) in (tuple, list) and len(value) <= 8 and all(type(v) in (int, float) for v in value)


def _check_progress(progress: Any) -> None:
    if type(progress) is not dict or len(progress) > 64:
        raise CharlstmError("its progress is not a small mapping of numbers")
    for key, value in progress.items():
        if type(key) is not str:
            raise CharlstmError("its progress has a key that is not a name")
        if type(value) not in (int, float, bool):
            raise CharlstmError(f"Progress.{key[:40]} = {str(value)[:40]!r} is not a number")
        if type(value) is int and not -MAX_INT <= value <= MAX_INT:
            raise CharlstmError(f"Progress.{key[:40]} = {str(value)[:20]}... is out of range")


def _state_shapes(tensors: list) -> list[tuple[int, ...]]:
    return [t.shape if type(t) is TensorSpec else type(t).__name__ for t in tensors][:4]


def _check_hidden(hidden: Any, config: ModelConfig, states: int) -> None:
    """The carried state of every training stream: [] or `states` tensors (layers, B, hidden)."""
    if type(hidden) is not list or not all(type(t) is TensorSpec for t in hidden):
        raise CharlstmError("its hidden state is not a list of tensors")
    if not hidden:
        return
    batch = hidden[0].shape[1] if len(hidden[0].shape) == 3 else 0
    if (
        len(hidden) != states or batch < 1
        or any(t.shape != (config.layers, batch, config.hidden) or t.dtype not in FLOATS for t in hidden)
    ):  # fmt: skip
        raise CharlstmError(
            f"its hidden state has shapes {_state_shapes(hidden)}, the model needs {states} of "
            f"(layers {config.layers}, batch, hidden {config.hidden}) in floating point"
        )


def _check_start_states(start_states: Any, config: ModelConfig, states: int) -> None:
    """The record start states sampling draws from: `states` float32 tensors (layers, K, hidden), 1 <= K <= 1024."""
    if type(start_states) is not list or not all(type(t) is TensorSpec for t in start_states):
        raise CharlstmError("its start states are not a list of tensors")
    count = start_states[0].shape[1] if start_states and len(start_states[0].shape) == 3 else 0
    if (
        len(start_states) != states or not 1 <= count <= MAX_START_STATES
        or any(t.shape != (config.layers, count, config.hidden) or t.dtype != torch.float32 for t in start_states)
    ):  # fmt: skip
        raise CharlstmError(
            f"its start states have shapes {_state_shapes(start_states)}, the model needs {states} float32 of "
            f"(layers {config.layers}, K, hidden {config.hidden}) with 1 <= K <= {MAX_START_STATES}"
        )


def _check_rng(rng: Any, nested: bool) -> None:
    """Generator states: uint8 vectors ('torch', 'cuda' or a list of CUDA ones), and per-rank ones in 'ranks'."""
    if type(rng) is not dict:
        raise CharlstmError("its random state is not a mapping")
    for key, value in rng.items():
        if key == "ranks" and nested:
            if type(value) is not list or len(value) > MAX_RANKS:
                raise CharlstmError("its per-process random states are not a list")
            for one in value:
                _check_rng(one, nested=False)
            continue
        for tensor in value if key == "cuda" and type(value) is list and len(value) <= 1024 else [value]:
            if tensor is None and key == "cuda":
                continue
            if type(tensor) is not TensorSpec or tensor.dtype != torch.uint8 or len(tensor.shape) != 1:
                if key in ("torch", "cuda"):
                    raise CharlstmError(f"its random state {str(key)[:20]!r} is not a byte vector")
                break  # a key this version does not know: ignored (bounded by the walk)
            if tensor.numel > MAX_RNG_BYTES:
                raise CharlstmError(
                    f"its random state {str(key)[:20]!r} is {tensor.numel} bytes; at most {MAX_RNG_BYTES}"
                )


def _check_corpus(corpus: Any) -> None:
    """Where the corpus came from: plain JSON-like data (dicts with string keys, lists, strings, numbers, None),
    small and shallow (the CLI prints it and writes it as JSON)."""
    if type(corpus) is not dict:
        raise CharlstmError("its corpus description is not a mapping")
    items = chars = 0
    todo = [(corpus, 0)]
    while todo:
        value, depth = todo.pop()
        if type(value) is dict:
            children = list(value.values())
            if not all(type(k) is str for k in value):
                raise CharlstmError("its corpus description has a key that is not a string")
            chars += sum(len(k) for k in value)
        elif type(value) is list:
            children = value
        elif type(value) is str:
            chars += len(value)
            continue
        elif type(value) in (int, float, bool, type(None)):
            if type(value) is int and not -MAX_INT <= value <= MAX_INT:
                raise CharlstmError("its corpus description holds a number out of range")
            continue
        else:
            raise CharlstmError(f"its corpus description holds a {type(value).__name__}, not plain data")
        items += len(children)
        if depth >= MAX_CORPUS_DEPTH or items > MAX_CORPUS_ITEMS or chars > MAX_CORPUS_CHARS:
            raise CharlstmError("its corpus description is too large or too deeply nested")
        todo.extend((child, depth + 1) for child in children)
    # the fields a save writes (train.py corpus_summary, data.py summary), typed as the CLI prints them
    sources, config, lengths = corpus.get("sources"), corpus.get("config"), corpus.get("record_lengths")
    if sources is not None and (type(sources) is not list or not all(type(s) is str for s in sources)):
        raise CharlstmError("its corpus sources are not a list of paths")
    for key in ("name",):
        if type(corpus.get(key)) not in (str, type(None)):
            raise CharlstmError(f"its corpus {key} is not a string")
    for key in ("chars", "records"):
        if type(corpus.get(key)) not in (int, type(None)):
            raise CharlstmError(f"its corpus {key} is not a whole number")
    numbers = type(lengths) is dict and all(type(v) in (int, float) for v in lengths.values())
    if lengths is not None and not numbers:
        raise CharlstmError("its corpus record lengths are not numbers")
    if config is not None:
        from_dict(CorpusConfig, config).validate()


def check_finite(payload: dict[str, Any]) -> None:
    """After materializing: every weight and start state is finite (read in slices: no copy of a big weight)."""
    for name, tensor in payload["model"].items():
        if not _all_finite(tensor):
            raise CharlstmError(f"weight {name} is not finite floating-point numbers")
    for tensor in payload.get("start_states") or []:
        if not _all_finite(tensor):
            raise CharlstmError("its start states are not finite numbers")


def _all_finite(tensor: torch.Tensor, chunk: int = 1 << 20) -> bool:
    flat = tensor.reshape(-1)
    return all(bool(torch.isfinite(flat[i : i + chunk]).all()) for i in range(0, flat.numel(), chunk))
