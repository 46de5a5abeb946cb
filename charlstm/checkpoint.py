"""Run directories and checkpoints: atomic saves, safe loads (no code from the file ever runs).

A run directory holds:
    latest.pt      the newest checkpoint (resume from here)
    best.pt        the checkpoint with the lowest validation loss (sample from here)
    run.json       config, sizes and progress, human readable
    metrics.jsonl  one line per evaluation
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import payload_checks, safepickle, safescan, safezip
from .errors import CharlstmError

FORMAT = "charlstm"
VERSION = 1
DEFAULT_ROOT = Path("checkpoints")
LATEST, BEST, RUN_JSON, METRICS = "latest.pt", "best.pt", "run.json", "metrics.jsonl"
REQUIRED_KEYS = ("format", "version", "model_config", "vocab", "model")


# ------------------------------------------------------------------------------------------- writing


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same directory, fsync, then rename over `path`.

    A crash or a full disk part-way leaves the previous file untouched.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise CharlstmError(f"could not save {path}: {exc.strerror or exc}; the previous file is unchanged") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        os_error = _os_error_in(exc)
        if os_error is not None:
            reason = "the disk is full" if os_error.errno == 28 else (os_error.strerror or str(os_error))
            raise CharlstmError(f"could not save {path}: {reason}; the previous file is unchanged") from None
        raise


atomic_write = _atomic_write  # for other modules' files (the encoded corpus cache)


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind `exc`: torch.save on a full disk raises a RuntimeError while handling one."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def clear_run(run_dir: Path) -> None:
    """Remove a run's checkpoints and records (for a new run in the same directory)."""
    for name in (LATEST, BEST, RUN_JSON, METRICS):
        try:
            (Path(run_dir) / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CharlstmError(f"cannot replace the run in {run_dir}: {exc.strerror or exc}") from None


def prepare_run_dir(run_dir: Path) -> None:
    """Create the run directory and prove it is writable before any training time is spent; remove temporary
    files that a save killed part-way left behind (they are never read)."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except FileExistsError:
        raise CharlstmError(f"output directory {run_dir} is a file, not a directory; choose another --out") from None
    except OSError as exc:
        raise CharlstmError(
            f"output directory {run_dir} is not writable: {exc.strerror or exc}; choose another --out"
        ) from None
    for name in (LATEST, BEST, RUN_JSON, METRICS):
        for stale in run_dir.glob(f".{name}.*.tmp"):
            try:
                stale.unlink()
            except OSError:
                pass


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    payload = {"format": FORMAT, "version": VERSION, **_owning(payload, set())}
    _atomic_write(Path(path), lambda handle: torch.save(payload, handle))


def _owning(value: Any, seen: set[int]) -> Any:
    """`value` with every tensor dense, contiguous and owning exactly its bytes, no storage used twice: what the
    loader accepts (torch.save writes a view with its whole storage, offset and strides). Real payloads hold
    such tensors already, and they are kept as they are; a view is copied."""
    if isinstance(value, torch.Tensor):
        if isinstance(value, torch.nn.Parameter):  # saved as a Parameter it would need a global the loader refuses
            value = value.detach()
        storage = value.untyped_storage()
        owns = (
            value.layout == torch.strided and value.storage_offset() == 0 and value.is_contiguous()
            and storage.nbytes() == value.numel() * value.element_size() and storage.data_ptr() not in seen
        )  # fmt: skip
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
        _atomic_write(Path(dest), lambda handle: shutil.copyfileobj(src, handle, 1 << 20))


def write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    _atomic_write(Path(path), lambda handle: handle.write(text.encode()))


# ------------------------------------------------------------------------------------------- loading


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
    from .data import looks_binary  # here: data.py imports this module

    return bool(head) and b"\x00" not in head and not looks_binary(head)


# ------------------------------------------------------------------------------------------ locating


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and ((path / LATEST).exists() or (path / BEST).exists() or (path / RUN_JSON).exists())


def resolve_checkpoint(path: Path, prefer: str = BEST) -> Path:
    """A .pt file as given, or the `prefer`red checkpoint of a run directory (falling back to the other)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        other = LATEST if prefer == BEST else BEST
        for name in (prefer, other):
            if (path / name).is_file():
                return path / name
        raise CharlstmError(f"{path} is a directory without {BEST} or {LATEST}; not a charlstm run")
    raise CharlstmError(f"no such run or checkpoint: {path}")


def find_latest_run(root: Path = DEFAULT_ROOT) -> Path:
    """The run directory under `root` whose checkpoint was written most recently."""
    root = Path(root)
    candidates = [p.parent for p in root.glob(f"*/{LATEST}")] + [p.parent for p in root.glob(f"*/{BEST}")]
    if not candidates:
        raise CharlstmError(
            f"no trained model found under {root}/; train one first, e.g. `charlstm train corpus.txt`"
        )
    return max(set(candidates), key=lambda run: max(f.stat().st_mtime for f in run.glob("*.pt")))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl. A line that is not a JSON object (the last one cut short by a kill, or a
    damaged one), or whose step is not a number, is skipped: the rows are what the caller can rely on."""
    path = Path(run_dir) / METRICS
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CharlstmError(f"cannot read {path}: {exc.strerror or exc}") from None
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):  # a line cut short by a crash, or damaged
            continue
        step = row.get("step", 0) if isinstance(row, dict) else None
        if isinstance(step, (int, float)) and not isinstance(step, bool):
            rows.append(row)
    return rows


def rewrite_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    _atomic_write(Path(run_dir) / METRICS, lambda handle: handle.write(text.encode()))


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    path = Path(run_dir) / METRICS
    try:
        with open(path, "ab") as handle:
            # after a kill part-way through a line, start a new one: the row is not glued to the cut one
            cut = handle.tell() > 0 and _last_byte(path) != b"\n"
            handle.write((("\n" if cut else "") + json.dumps(row) + "\n").encode())
    except OSError as exc:  # a line cut short is skipped by read_metrics
        reason = "the disk is full" if exc.errno == 28 else (exc.strerror or str(exc))
        raise CharlstmError(f"could not write {path}: {reason}; the checkpoints are saved") from None


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1)


MAX_RUN_JSON_BYTES = 16 << 20  # run.json is a few KB; a larger one is not ours


def read_run_json(run_dir: Path) -> dict[str, Any]:
    """run.json as a dict; anything else (missing, unreadable, damaged, not an object) is a CharlstmError the
    caller can fall back from."""
    path = Path(run_dir) / RUN_JSON
    try:
        if path.stat().st_size > MAX_RUN_JSON_BYTES:
            raise CharlstmError(f"{path} is too large for a run.json ({path.stat().st_size} bytes)")
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise CharlstmError(f"{path} not found") from None
    except OSError as exc:
        raise CharlstmError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CharlstmError(f"{path} is not valid JSON") from None
    if not isinstance(data, dict):
        raise CharlstmError(f"{path} is not a JSON object")
    return data
