"""The checkpoint format: what a save writes (one torch.save archive of plain data and tensors) and the one
safe way to read it back: no code from the file ever runs (safezip.py, safepickle.py, safescan.py) and every
entry a model needs is checked before it is used (payload_checks.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from charlstm.checkpoint import payload_checks, safepickle, safescan, safezip
from charlstm.data.textio import looks_binary
from charlstm.errors import CharlstmError
from charlstm.runtime.atomic import atomic_write

FORMAT = "charlstm"
VERSION = 1
REQUIRED_KEYS = ("format", "version", "model_config", "vocab", "model")


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    payload = {"format": FORMAT, "version": VERSION, **_owning(payload, set())}
    atomic_write(Path(path), lambda handle: torch.save(payload, handle))


def _owning(value: Any, seen: set[int]) -> Any:
    """`value` with every tensor dense, contiguous and owning exactly its bytes, no storage used twice: what the
    loader accepts (torch.save writes a view with its whole storage, offset and strides). Real payloads hold
    such tensors already, and they are kept as they are; a view is copied."""
    if isinstance(value, torch.Tensor):
        if isinstance(value, torch.nn.Parameter):  # saved as a Parameter it would need a global the loader refuses
            value = value.detach()
        storage = value.untyped_storage()
        owns = (
            value.layout == torch.strided
            and value.storage_offset() == 0
            and value.is_contiguous()
            and storage.nbytes() == value.numel() * value.element_size()
            and storage.data_ptr() not in seen
        )
        if not owns:
            value = value.detach().clone(memory_format=torch.contiguous_format)
        if value.numel():
            seen.add(value.untyped_storage().data_ptr())
        return value
    if isinstance(value, dict):
        return type(value)((k, _owning(v, seen)) for k, v in value.items())
    if isinstance(value, list):
        return [_owning(v, seen) for v in value]
    if isinstance(value, tuple):
        return tuple(_owning(v, seen) for v in value)
    return value


def copy_checkpoint(source: Path, dest: Path) -> None:
    with open(source, "rb") as src:
        atomic_write(Path(dest), lambda handle: shutil.copyfileobj(src, handle, 1 << 20))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint that may come from anyone: no code runs, and memory and time are bounded by the file's
    size (see safescan.py). The archive and every tensor are checked (stored entries, dense tensors that own
    their bytes, bounded structure) and the format and version read, before any tensor's bytes are."""
    return _load(Path(path), map_location, model=False)


def load_model_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """`load_checkpoint`, and before any tensor's bytes are read, everything a model is rebuilt, sampled or
    resumed from: the configs (with bounds), the vocabulary, every weight's name, dtype and shape against the
    stored config, and the optimizer, progress, hidden, rng, corpus and start_states entries when present;
    after reading, that the weights and start states are finite. The one check every command goes through."""
    return _load(Path(path), map_location, model=True)


def _load(path: Path, map_location: str | torch.device, model: bool) -> dict[str, Any]:
    if not path.is_file():
        raise CharlstmError(f"checkpoint not found: {path}")
    corrupt = f"{path} is not a loadable checkpoint (corrupt, truncated, or another kind of file)"
    unusable = f"{path} is not a usable charlstm checkpoint"
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise CharlstmError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:  # one open file throughout: a checkpoint replaced meanwhile (atomic save) is not mixed in
        try:
            if handle.read(4) != b"PK\x03\x04":  # torch.save writes a zip archive
                if path.suffix != ".pt" and _looks_like_text(path):
                    raise CharlstmError(
                        f"{path} is a text file, not a checkpoint (to train on it: charlstm train {path})"
                    )
                raise CharlstmError(corrupt)
            scanned = safescan.scan(handle)
            payload = scanned.payload
            if not isinstance(payload, dict) or payload.get("format") != FORMAT:
                raise CharlstmError(f"{path} is not a charlstm checkpoint")
            version = payload.get("version")
            if type(version) is not int or not 1 <= version <= VERSION:
                shown = str(version)[:20] if type(version) is int else repr(str(version)[:20])
                raise CharlstmError(
                    f"{path} has checkpoint format version {shown}; this charlstm reads up to {VERSION} "
                    f"(upgrade charlstm)"
                )
            missing = [k for k in REQUIRED_KEYS if k not in payload]
            if missing:
                raise CharlstmError(f"{path} is an incomplete charlstm checkpoint (missing {', '.join(missing)})")
            if model:
                try:
                    payload_checks.check_model_payload(scanned)
                except CharlstmError as exc:
                    raise CharlstmError(f"{unusable}: {exc}") from None
            payload = scanned.materialize(map_location)
            if model:
                try:
                    payload_checks.check_finite(payload)
                except CharlstmError as exc:
                    raise CharlstmError(f"{unusable}: {exc}") from None
            return payload
        except safepickle.ForbiddenGlobal as exc:
            raise CharlstmError(
                f"refusing to load {path}: {exc} (a checkpoint may hold only tensors and plain data)"
            ) from None
        except safezip.CorruptCheckpoint as exc:
            raise CharlstmError(f"{corrupt}: {exc}") from None
        except OSError as exc:
            raise CharlstmError(f"cannot read {path}: {exc.strerror or exc}") from None
        except CharlstmError as exc:
            if str(exc).startswith(str(path)):
                raise
            raise CharlstmError(f"{unusable}: {exc}") from None  # a bound of the walk


def _looks_like_text(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return bool(head) and b"\x00" not in head and not looks_binary(head)
