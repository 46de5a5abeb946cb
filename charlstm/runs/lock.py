"""One trainer per run directory: an advisory lock on `<run dir>/train.lock`, held while a run trains.

Two `charlstm train --resume RUN` started a moment apart would otherwise both train and both write the run
(every metrics line twice, the checkpoint whichever saved last). The lock is `fcntl.flock` on an open file:
the kernel drops it when its holder exits however it exits (SIGKILL, power cut), so a dead trainer never
leaves a run locked, and a lock file left behind means nothing by itself. While held, the file names its
holder (pid, host, start time, command line), so a second trainer can say who is in the way.

Only trainers lock (under torchrun only rank 0); `sample` and `info` read a run that is training without it.
The file is never replaced, and deleted only by its holder, while it holds it (a run that failed before its
first checkpoint leaves no directory behind, see training/run.py): a locker that then gets the lock of the deleted file
sees that the path no longer names it, and locks the path's file instead, so no two processes ever hold the lock
of one directory. Its content is rewritten in place after locking and emptied before unlocking.
Where there is no `fcntl` (Windows) or the filesystem refuses locks, training goes on unlocked, with a note.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import socket
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from charlstm.errors import CharlstmError
from charlstm.runs.directory import LOCK_NAME, make_run_dir

HOLDER_WAIT_SECONDS = 0.5  # a holder writes its details just after locking: how long to wait for them
LOCK_ATTEMPTS = 5  # tries to lock a lock file that a holder deletes in between (it gave up a run it never started)
_MAX_SHOWN = 160  # characters of a holder's command line shown

_held: dict[str, RunLock] = {}  # real path of a lock file -> the lock this process holds on it
_held_guard = threading.Lock()


class RunLock:
    """The lock of one run directory, held by this process (`held`), or a stand-in that holds nothing."""

    def __init__(self, path: Path, fd: int | None = None, note: str | None = None):
        self.path = path
        self.note = note  # why nothing is locked, for the user (None: locked, or not asked to lock)
        self._fd = fd
        self._depth = 1 if fd is not None else 0
        self._owner = os.getpid()

    @property
    def held(self) -> bool:
        return self._fd is not None and self._owner == os.getpid()

    @classmethod
    def acquire(cls, run_dir: Path | str, *, enabled: bool = True, reentrant: bool = True) -> RunLock:
        """Lock `run_dir` (created if missing) for training, at once or not at all.

        Raises CharlstmError naming the holder when another process trains it, or when the directory cannot
        be written. `enabled=False` (a torchrun rank other than 0) returns a lock that holds nothing. With
        `reentrant`, a directory this process already holds is granted again (released on the last release),
        so the CLI can lock before clearing an old run and the trainer lock again inside it.
        """
        run_dir = Path(run_dir)
        path = run_dir / LOCK_NAME
        if not enabled:
            return cls(path)
        try:
            import fcntl  # imported here: there is none on Windows
        except ImportError:
            return cls(path, note="no file locking on this platform: nothing stops a second trainer of this run")
        for attempt in range(LOCK_ATTEMPTS):
            last = attempt == LOCK_ATTEMPTS - 1
            make_run_dir(run_dir)
            key = os.path.realpath(path)
            with _held_guard:
                mine = _held.get(key)
                if mine is not None and mine.held:
                    if not reentrant:
                        raise CharlstmError(_busy_message(run_dir, path))
                    mine._depth += 1
                    return mine
            try:
                fd = _open_lock_file(run_dir, path)
            except CharlstmError:
                if last or run_dir.is_dir():
                    raise
                continue  # the directory was removed in between, by a trainer that created it and gave up
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise CharlstmError(_busy_message(run_dir, path)) from None
            except OSError as exc:  # ENOLCK, EOPNOTSUPP: a filesystem without locks (some network or FUSE mounts)
                os.close(fd)
                return cls(
                    path,
                    note=f"cannot lock {path} ({exc.strerror or exc}): nothing stops a second trainer of this run",
                )
            if _names(fd, path):
                break
            os.close(fd)  # its holder deleted the file before letting go: lock the file the path names now
        else:
            raise CharlstmError(_busy_message(run_dir, path))
        _write_holder(fd)
        lock = cls(path, fd)
        with _held_guard:
            _held[key] = lock
        return lock

    def release(self, remove_file: bool = False) -> None:
        """Give the lock up (once per acquire); a lock that holds nothing, or was released, ignores it.
        `remove_file`: on the last release, also delete the lock file (while still holding it), for a caller
        that created it and leaves the directory as it found it."""
        if not self.held:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        import fcntl

        fd, self._fd = self._fd, None
        with _held_guard:
            key = os.path.realpath(self.path)
            if _held.get(key) is self:
                del _held[key]
        if remove_file and _names(fd, self.path):
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        # emptied before unlocking: the next holder's readers never see these details (an OSError: a read-only
        # descriptor, a lock file owned by someone else, whose details were never ours)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunLock({str(self.path)!r}, held={self.held})"


def read_holder(run_dir: Path | str) -> dict[str, Any] | None:
    """The details a holder wrote into the lock file (pid, host, started, command), or None: no file, empty
    (nobody holds it, or its holder is just starting), unreadable or malformed. Takes no lock, so it never
    gets in a trainer's way; the details of a holder that was killed stay until the next trainer locks."""
    try:
        with open(Path(run_dir) / LOCK_NAME, "rb") as handle:
            raw = handle.read(1 << 16)
        info = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return info if isinstance(info, dict) else None


# ------------------------------------------------------------------------------------------- helpers


def _open_lock_file(run_dir: Path, path: Path) -> int:
    """The lock file, opened for writing (created if missing); read-only only where the directory is writable
    but the file is someone else's (a shared run directory: flock needs no write access)."""
    flags = os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)  # never follow a planted link out of the run directory
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o644)
    except IsADirectoryError:
        raise CharlstmError(f"{path} is a directory; remove it (charlstm keeps its run lock there)") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CharlstmError(f"{path} is a symbolic link; remove it (charlstm keeps its run lock there)") from None
        not_writable = CharlstmError(
            f"output directory {run_dir} is not writable: {exc.strerror or exc}; choose another --out"
        )
        foreign = exc.errno in (errno.EACCES, errno.EPERM) and path.is_file() and os.access(run_dir, os.W_OK)
        if not foreign:
            raise not_writable from None
        try:
            return os.open(path, os.O_RDONLY | flags)
        except OSError:
            raise not_writable from None


def _names(fd: int, path: Path) -> bool:
    """Whether `path` is still the file open as `fd` (not deleted, nor deleted and created again)."""
    try:
        opened, named = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)


def _write_holder(fd: int) -> None:
    """Write who holds the lock, in place (after locking, so no two holders ever write it at once)."""
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": _command_line(),
    }
    data = (json.dumps(info) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError:
        pass  # a read-only descriptor, or a full disk: the lock holds all the same, unnamed


def _command_line() -> str:
    argv = list(sys.argv) or ["?"]
    program = Path(argv[0])
    if program.name == "__main__.py" and program.parent.name == "charlstm":
        head = "python -m charlstm"
    else:
        head = program.name or "python"
    return " ".join([head, *(shlex.quote(a) for a in argv[1:])])


def _busy_message(run_dir: Path, path: Path) -> str:
    """One line naming the holder, from the lock file (waiting a moment if it is just being written)."""
    deadline = time.monotonic() + HOLDER_WAIT_SECONDS
    info = read_holder(run_dir)
    while not (info and "pid" in info) and time.monotonic() < deadline:
        time.sleep(0.05)
        info = read_holder(run_dir)
    advice = "wait for it to finish or stop it"
    if not info or "pid" not in info:
        return f"{run_dir} is being trained by another process (see {path}); {advice}"
    pid, host = _shown(info.get("pid"), 20), _shown(info.get("host", "?"), 80)
    started = _shown(str(info.get("started", "?")).replace("T", " "), 40)
    command = _shown(info.get("command"), _MAX_SHOWN)
    return (
        f"{run_dir} is being trained by process {pid} on {host} since {started}"
        + (f" ({command}); " if command else "; ")
        + advice
    )


def _shown(value: Any, most: int) -> str:
    """A value from the lock file (anyone could have written it) as a short, single-line string."""
    text = "" if value is None else str(value)
    text = "".join(c if c.isprintable() else " " for c in text)
    return text if len(text) <= most else text[: most - 1] + "…"
