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
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

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
    payload = {"format": FORMAT, "version": VERSION, **payload}
    _atomic_write(Path(path), lambda handle: torch.save(payload, handle))


def copy_checkpoint(source: Path, dest: Path) -> None:
    with open(source, "rb") as src:
        _atomic_write(Path(dest), lambda handle: shutil.copyfileobj(src, handle, 1 << 20))


def write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    _atomic_write(Path(path), lambda handle: handle.write(text.encode()))


# ------------------------------------------------------------------------------------------- loading


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`: tensors and plain containers only, never code."""
    path = Path(path)
    if not path.is_file():
        raise CharlstmError(f"checkpoint not found: {path}")
    corrupt = f"{path} is not a loadable checkpoint (corrupt, truncated, or another kind of file)"
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise CharlstmError(f"cannot read {path}: {exc.strerror or exc}") from None
    if magic != b"PK\x03\x04":  # torch.save writes a zip archive
        if path.suffix != ".pt" and _looks_like_text(path):
            raise CharlstmError(f"{path} is a text file, not a checkpoint (to train on it: charlstm train {path})")
        raise CharlstmError(corrupt)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" in str(exc).lower():
            raise CharlstmError(
                f"refusing to load {path}: it asks to import or call code "
                f"(a checkpoint may hold only tensors and plain data)"
            ) from None
        raise CharlstmError(corrupt) from None
    except Exception:  # whatever a damaged archive makes torch raise
        raise CharlstmError(corrupt) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CharlstmError(f"{path} is not a charlstm checkpoint")
    version = payload.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CharlstmError(
            f"{path} has checkpoint format version {version!r}; this charlstm reads up to {VERSION} (upgrade charlstm)"
        )
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CharlstmError(f"{path} is an incomplete charlstm checkpoint (missing {', '.join(missing)})")
    return payload


def _looks_like_text(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    from .data import looks_binary  # here: data.py imports this module

    return bool(head) and b"\x00" not in head and not looks_binary(head)


def load_model_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """`load_checkpoint`, then check that everything a model is rebuilt from is well formed and consistent:
    the configs, the vocabulary, and every weight's name, shape and finiteness against the stored config
    (checked on the meta device, so a config that claims a huge model allocates nothing)."""
    payload = load_checkpoint(path, map_location)
    try:
        _check_model_payload(payload)
    except CharlstmError as exc:
        raise CharlstmError(f"{path} is not a usable charlstm checkpoint: {exc}") from None
    return payload


def _check_model_payload(payload: dict[str, Any]) -> None:
    from .config import ModelConfig, TrainConfig, from_dict
    from .model import CharRNN

    vocab = payload["vocab"]
    if not isinstance(vocab, list) or not all(isinstance(c, str) and len(c) <= 1 for c in vocab):
        raise CharlstmError("its vocabulary is not a list of single characters")
    if len(set(vocab)) != len(vocab):
        raise CharlstmError("its vocabulary repeats characters")
    config = from_dict(ModelConfig, payload["model_config"])
    config.validate()
    if config.vocab_size != len(vocab):
        raise CharlstmError(f"its config says vocab_size {config.vocab_size} but it stores {len(vocab)} characters")
    from_dict(TrainConfig, payload.get("train_config", {})).validate()
    weights = payload["model"]
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise CharlstmError("its weights are not a mapping of tensors")
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in CharRNN(config).state_dict().items()}
    if set(weights) != set(expected):
        odd = sorted(set(weights) ^ set(expected))
        raise CharlstmError(f"its weights do not match its config ({config.cell}, {config.layers} layer(s)): {', '.join(odd[:5])}")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise CharlstmError(
                f"weight {name} has shape {tuple(weights[name].shape)} but its config (hidden {config.hidden}, "
                f"embed {config.embed}, vocabulary {config.vocab_size}) needs {shape}"
            )
        if not weights[name].is_floating_point() or not torch.isfinite(weights[name]).all():
            raise CharlstmError(f"weight {name} is not finite floating-point numbers")


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
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    return rows


def rewrite_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    _atomic_write(Path(run_dir) / METRICS, lambda handle: handle.write(text.encode()))


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    path = Path(run_dir) / METRICS
    try:
        with open(path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
    except OSError as exc:  # a line cut short is skipped by read_metrics
        reason = "the disk is full" if exc.errno == 28 else (exc.strerror or str(exc))
        raise CharlstmError(f"could not write {path}: {reason}; the checkpoints are saved") from None


def read_run_json(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_JSON
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CharlstmError(f"{path} not found") from None
    except json.JSONDecodeError:
        raise CharlstmError(f"{path} is not valid JSON") from None
