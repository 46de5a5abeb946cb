"""The checkpoint reader's pickle machine: `data.pkl` run with nothing imported or called (safescan.py runs it).

`unpickle` accepts only the opcodes torch's weights-only unpickler accepts and only three globals
(`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` and the `torch.<dtype>Storage` types of DTYPES),
all as inert stand-ins; any other global is refused as ForbiddenGlobal. Its stack, mark and memo semantics are
torch's, so what it reads is what torch would read, within MAX_OPS opcodes, MAX_CONTAINERS containers and names
of at most MAX_NAME characters; a mapping key must be a string or a small whole number. A tensor becomes a
`TensorSpec` (its storage record, dtype, shape, strides, offset; `problem` says why it is not what a real save
writes); a storage must be a record of exactly numel * itemsize bytes (`StorageRef`). Walking the structure it
builds and reading the tensors' bytes is safescan.py's job.
"""

from __future__ import annotations

import math
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from charlstm.checkpoint.safezip import Archive, CorruptCheckpoint, Record
from charlstm.errors import CharlstmError

MAX_OPS = 1_500_000  # a real pickle of 4 MB (a 290k-character vocabulary) has ~1.2M; ~1 s of parsing
MAX_CONTAINERS = 500_000  # lists, dicts, tuples and marks the pickle may create (each costs ~64 bytes)
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


def unpickle(data: bytes, archive: Archive, tensors: list[torch.Tensor | None] | None = None) -> Any:
    """Run the pickle `data` whose storages are `archive`'s records: with `tensors` None, each tensor is a
    TensorSpec; else each is `tensors[spec.index]`. Raises CorruptCheckpoint or ForbiddenGlobal."""
    return _Machine(data, archive, tensors).run()
