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
two files), in two steps; this module is both, on top of safezip.py (the archive):

1. `scan`: the zip is checked to be laid out the way torch.save writes it (safezip.open_archive), and
   `data.pkl` (at most MAX_PICKLE_BYTES) is run through a small pickle machine that accepts only the opcodes
   torch's weights-only unpickler accepts and only three globals (`collections.OrderedDict`,
   `torch._utils._rebuild_tensor_v2` and the `torch.<dtype>Storage` types of DTYPES), all as inert stand-ins:
   nothing is imported or called. A tensor becomes a `TensorSpec` (its storage record, dtype, shape, strides,
   offset); a storage must be a record of exactly numel * itemsize bytes. Then the whole structure is walked
   once with a budget (MAX_ITEMS visits, MAX_DEPTH levels: a few bytes of pickle with memo references make a
   structure whose naive walk is exponential, or a cycle), and every tensor must be what a real save writes:
   dense and contiguous, offset 0, owning exactly its storage, no storage shared with another tensor.
2. `Scanned.materialize`: only after the caller's own checks (checkpoint.py: the format; for a model,
   payload_checks.py: every key against its config) on that structure, each tensor's bytes are read from its
   record (CRC-checked) into a tensor of its own, which takes the place of its TensorSpec. Memory is then the
   records' bytes (at most the file's size, the records being disjoint) plus the structure (bounded by the
   pickle's size and budgets).
"""

from __future__ import annotations

import math
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, BinaryIO

import torch

from .errors import CharlstmError
from .safezip import Archive, CorruptCheckpoint, Record, check_crc, open_archive, read_at, read_into

MAX_PICKLE_BYTES = 4 << 20  # data.pkl: a vocabulary of ~290k characters fits
MAX_OPS = 1_500_000  # a real pickle of 4 MB (a 290k-character vocabulary) has ~1.2M; ~1 s of parsing
MAX_CONTAINERS = 500_000  # lists, dicts, tuples and marks the pickle may create (each costs ~64 bytes)
MAX_ITEMS = 2_000_000  # items visited walking the payload (each reference counts, shared or not)
MAX_DEPTH = 32  # nesting of containers
MAX_NAME = 256  # a global's module or name, a storage key or location
MAX_INT = 2**63 - 1  # a tensor's sizes and strides (and, in payload_checks.py, config and progress numbers)

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


class ForbiddenGlobal(CharlstmError):
    """The pickle asks to import or call something other than a tensor rebuild (the caller names the file)."""


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
    record: Record


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

    def __init__(self, data: bytes, archive: Archive, tensors: list[torch.Tensor | None] | None = None):
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

    def _run(self) -> Any:  # noqa: C901, RUF100  (one loop over the opcodes, as in pickle.py; C901 is opt-in)
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
            type(key) is not str
            or not 0 < len(key) <= MAX_NAME
            or not set(key) <= _NAME_CHARS
            or type(location) is not str
            or len(location) > MAX_NAME
            or type(numel) is not int
            or numel < 0
        ):
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
            type(storage) is not StorageRef
            or type(offset) is not int
            or type(requires_grad) is not bool
            or not _int_tuple(shape)
            or not _int_tuple(stride)
            or type(hooks) is not OrderedDict
            or hooks
            or (len(args) == 7 and not _empty_mapping(args[6]))
        ):
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


SCALARS = (str, int, float, bool, type(None))  # plain values (payload_checks.py allows the same in configs)
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
                if visits > MAX_ITEMS or not all(type(v) in SCALARS for v in flat):
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
        if kind in SCALARS:
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
        if type(child) in SCALARS:
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
    _archive: Archive
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
        read_into(self._archive.handle, record, memoryview(raw.numpy()), f"storage data/{spec.storage.key}")
        tensor = raw.view(spec.dtype).view(spec.shape)
        if not self._archive.little_endian and tensor.element_size() > 1:
            tensor.untyped_storage().byteswap(spec.dtype)
        return tensor if str(map_location) == "cpu" else tensor.to(map_location)


def scan(handle: BinaryIO) -> Scanned:
    """Check the archive and its pickle, build the structure with TensorSpec leaves, and walk it (see module
    docstring). Raises CorruptCheckpoint, ForbiddenGlobal, or CharlstmError for a payload beyond the bounds;
    reads nothing of any tensor."""
    archive = open_archive(handle)
    record = archive.records.get("data.pkl")
    if record is None:
        raise CorruptCheckpoint("it has no data.pkl")
    if record.size > MAX_PICKLE_BYTES:
        raise CharlstmError(f"its pickle is {record.size} bytes; a checkpoint's is at most {MAX_PICKLE_BYTES}")
    data = read_at(handle, record.start, record.size)
    check_crc(data, record, "pickle")
    payload = _Machine(data, archive).run()
    places = _walk(payload)
    return Scanned(payload=payload, places=places, _archive=archive, _pickle=data)
