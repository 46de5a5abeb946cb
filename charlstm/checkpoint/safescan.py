"""Scan a checkpoint: open the archive, run the restricted pickle, walk the payload, read tensors on demand.

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
two files), in two steps; this module is both, on top of safezip.py (the archive) and safepickle.py (the pickle):

1. `scan`: the zip is checked to be laid out the way torch.save writes it (safezip.open_archive), and
   `data.pkl` (at most MAX_PICKLE_BYTES) is run through a small pickle machine (safepickle.unpickle) that
   accepts only the opcodes torch's weights-only unpickler accepts and only three globals
   (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` and the `torch.<dtype>Storage` types of
   safepickle.DTYPES), all as inert stand-ins: nothing is imported or called. A tensor becomes a `TensorSpec`
   (its storage record, dtype, shape, strides, offset); a storage must be a record of exactly numel * itemsize
   bytes. Then the whole structure is walked once with a budget (MAX_ITEMS visits, MAX_DEPTH levels: a few
   bytes of pickle with memo references make a structure whose naive walk is exponential, or a cycle), and
   every tensor must be what a real save writes: dense and contiguous, offset 0, owning exactly its storage,
   no storage shared with another tensor.
2. `Scanned.materialize`: only after the caller's own checks (store.py: the format; for a model,
   payload_checks.py: every key against its config) on that structure, each tensor's bytes are read from its
   record (CRC-checked) into a tensor of its own, which takes the place of its TensorSpec. Memory is then the
   records' bytes (at most the file's size, the records being disjoint) plus the structure (bounded by the
   pickle's size and budgets).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, BinaryIO

import torch

from charlstm.checkpoint.safepickle import TensorSpec, unpickle
from charlstm.checkpoint.safezip import Archive, CorruptCheckpoint, check_crc, open_archive, read_at, read_into
from charlstm.errors import CharlstmError

MAX_PICKLE_BYTES = 4 << 20  # data.pkl: a vocabulary of ~290k characters fits
MAX_ITEMS = 2_000_000  # items visited walking the payload (each reference counts, shared or not)
MAX_DEPTH = 32  # nesting of containers


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
        child_path = (*path, key)
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
            self.payload = unpickle(self._pickle, self._archive, tensors)
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
    payload = unpickle(data, archive)
    places = _walk(payload)
    return Scanned(payload=payload, places=places, _archive=archive, _pickle=data)
