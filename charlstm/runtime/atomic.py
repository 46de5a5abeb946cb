"""Atomic file writes: a crash or a full disk part-way through a save leaves the previous file untouched."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from charlstm.errors import CharlstmError


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through a temporary file in the same directory, fsync, then rename over `path`."""
    path = Path(path)
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
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        os_error = _os_error_in(exc)
        if os_error is not None:
            raise CharlstmError(f"could not save {path}: {reason(os_error)}; the previous file is unchanged") from None
        raise


def write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(Path(path), lambda handle: handle.write(text.encode("utf-8")))


def reason(error: OSError) -> str:
    """Why a write failed, in words: the one place a full disk is named."""
    return "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))


def temporary_files(path: Path) -> list[Path]:
    """The temporary files that saves of `path` killed part-way left behind (they are never read)."""
    return sorted(Path(path).parent.glob(f".{Path(path).name}.*.tmp"))


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind `exc`: torch.save on a full disk raises a RuntimeError while handling one."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None
