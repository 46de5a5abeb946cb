"""The run directory: what a run writes where, and finding runs and their checkpoints again.

latest.pt      the newest checkpoint (resume from here)
best.pt        the checkpoint with the lowest periodic validation loss (sample from here)
run.json       config, sizes, progress and losses, human readable
metrics.jsonl  one line per validation
samples.jsonl  one line per sample written while training (step, chars_seen, val_loss, temperature, text)
train.lock     held by the process training the run (runlock.py)
corpus.*       the encoded corpus of a large corpus (tokencache.py)
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charlstm.errors import CharlstmError
from charlstm.runtime.atomic import atomic_write, reason, temporary_files, write_json

DEFAULT_ROOT = Path("checkpoints")
LATEST, BEST, RUN_JSON, METRICS = "latest.pt", "best.pt", "run.json", "metrics.jsonl"
SAMPLES = "samples.jsonl"
LOCK_NAME = "train.lock"  # the run lock's file (charlstm/runlock.py)
RUN_FILES = (LATEST, BEST, RUN_JSON, METRICS, SAMPLES)  # what a run directory holds (and nothing may overwrite)
MAX_RUN_JSON_BYTES = 16 << 20  # run.json is a few KB; a larger one is not ours


def clear_run(run_dir: Path) -> None:
    """Remove a run's checkpoints and records (for a new run in the same directory)."""
    for name in RUN_FILES:
        try:
            (Path(run_dir) / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CharlstmError(f"cannot replace the run in {run_dir}: {exc.strerror or exc}") from None


def make_run_dir(run_dir: Path, prove_writable: bool = False) -> None:
    """Create the run directory (and, `prove_writable`, write a temporary file in it), or say why it cannot be."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if prove_writable:
            with tempfile.TemporaryFile(dir=run_dir):
                pass
    except FileExistsError:
        raise CharlstmError(f"output directory {run_dir} is a file, not a directory; choose another --out") from None
    except OSError as exc:
        raise CharlstmError(
            f"output directory {run_dir} is not writable: {exc.strerror or exc}; choose another --out"
        ) from None


@dataclass(frozen=True)
class Before:
    """What a run directory was before a command started a run in it (see `note_before`)."""

    run_dir: Path
    created: tuple[Path, ...]  # the directories that did not exist: the run directory, then its missing parents
    names: frozenset[str] | None  # what it held (None: unknown, not a readable directory)
    checkpoints: tuple[tuple[int, ...] | None, ...]  # the identity of its LATEST and BEST (None: absent)


def note_before(run_dir: Path) -> Before:
    """What `run_dir` holds before a run starts in it, and which of it and its parents do not exist yet."""
    run_dir = Path(run_dir)
    created = []
    for path in (run_dir, *run_dir.parents):
        if os.path.lexists(path):
            break
        created.append(path)
    names: frozenset[str] | None = frozenset()
    if not created:
        try:
            names = frozenset(os.listdir(run_dir))
        except OSError:
            names = None
    return Before(run_dir, tuple(created), names, _checkpoint_identities(run_dir))


def failed_start_leftovers(before: Before) -> list[Path] | None:
    """What a run that failed before its first checkpoint added to its directory, when all of it is what starting
    a run writes (the lock file, an encoded corpus, empty metrics and samples files): to be removed. None when a
    checkpoint was written, or anything else was added: then nothing is to be removed."""
    if before.names is None:
        return None
    try:
        names = set(os.listdir(before.run_dir))
    except FileNotFoundError:
        return []
    except OSError:
        return None
    if _checkpoint_identities(before.run_dir) != before.checkpoints:
        return None
    added = [before.run_dir / name for name in sorted(names - before.names)]
    return added if all(_written_at_start(path) for path in added) else None


def remove_leftovers(leftovers: list[Path]) -> None:
    """Remove the leftovers of a failed start but the lock file (its holder deletes it: RunLock.release). Never
    raises: what cannot be removed stays."""
    for path in leftovers:
        if path.name != LOCK_NAME:
            with contextlib.suppress(OSError):
                path.unlink()


def remove_created_dirs(before: Before) -> None:
    """The run directory and its parents that did not exist before, each if it is empty (else it stays, and its
    parents too)."""
    for path in before.created:
        try:
            os.rmdir(path)
        except OSError:
            return


def _checkpoint_identities(run_dir: Path) -> tuple[tuple[int, ...] | None, ...]:
    identities = []
    for name in (LATEST, BEST):
        try:
            found = os.stat(Path(run_dir) / name, follow_symlinks=False)
            identities.append((found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns))
        except OSError:
            identities.append(None)
    return tuple(identities)


def _written_at_start(path: Path) -> bool:
    """A plain file that starting a run writes: the lock, the encoded corpus (tokencache.py), or a metrics or
    samples file still empty."""
    from charlstm.data.tokencache import CACHE_DTYPES, CACHE_STEM

    cache = {f"{CACHE_STEM}.json", f"{CACHE_STEM}.record-lengths.npy", *(f"{CACHE_STEM}.{d}.bin" for d in CACHE_DTYPES)}
    try:
        found = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    if not stat.S_ISREG(found.st_mode):
        return False
    return path.name in (LOCK_NAME, *cache) or (path.name in (METRICS, SAMPLES) and found.st_size == 0)


def prepare_run_dir(run_dir: Path) -> None:
    """Create the run directory and prove it is writable before any training time is spent; remove temporary
    files that a save killed part-way left behind (they are never read)."""
    run_dir = Path(run_dir)
    make_run_dir(run_dir, prove_writable=True)
    for name in (LATEST, BEST, RUN_JSON, METRICS, SAMPLES):
        for stale in temporary_files(run_dir / name):
            with contextlib.suppress(OSError):
                stale.unlink()


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
        raise CharlstmError(f"no trained model found under {root}/; train one first, e.g. `charlstm train corpus.txt`")
    return max(set(candidates), key=lambda run: max(f.stat().st_mtime for f in run.glob("*.pt")))


def names_run(word: str) -> bool:
    """Whether a command-line word names a run: a .pt file, or a run directory (not a git checkout, which a corpus
    directory may be). After a bare `--resume`, a word that does not is the corpus."""
    if word.endswith(".pt"):
        return True
    path = Path(word)
    return not word.startswith("-") and path.is_dir() and not (path / ".git").exists() and is_run_dir(path)


AUTO_RESUME = "auto"  # --resume alone: the run in the default (or --out) directory (training/resume.py)


def complete_resume(args: list[str]) -> list[str]:
    """`train`'s arguments with a bare `--resume` given its value, AUTO_RESUME: `--resume` takes the next word only
    when that word names a run (else the word is the corpus, or another flag, and --resume stands alone)."""
    args = list(args)
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--resume":
            following = args[i + 1] if i + 1 < len(args) else None
            if following is None or not names_run(following):
                args.insert(i + 1, AUTO_RESUME)
            break
    return args


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl. A line that is not a JSON object (the last one cut short by a kill, or a
    damaged one), or whose step is not a number, is skipped: the rows are what the caller can rely on."""
    return _read_rows(Path(run_dir) / METRICS)


def read_samples(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of samples.jsonl (the samples written while training), read as read_metrics reads its file;
    a row without a text is skipped too."""
    return [row for row in _read_rows(Path(run_dir) / SAMPLES) if isinstance(row.get("text"), str)]


def _read_rows(path: Path) -> list[dict[str, Any]]:
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
    _rewrite_rows(Path(run_dir) / METRICS, rows)


def rewrite_samples(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    _rewrite_rows(Path(run_dir) / SAMPLES, rows)


def _rewrite_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write(path, lambda handle: handle.write(text.encode()))


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    _append_row(Path(run_dir) / METRICS, row)


def append_sample(run_dir: Path, row: dict[str, Any]) -> None:
    _append_row(Path(run_dir) / SAMPLES, row)


def _append_row(path: Path, row: dict[str, Any]) -> None:
    try:
        with open(path, "ab") as handle:
            # after a kill part-way through a line, start a new one: the row is not glued to the cut one
            cut = handle.tell() > 0 and _last_byte(path) != b"\n"
            handle.write((("\n" if cut else "") + json.dumps(row) + "\n").encode())
    except OSError as exc:  # a line cut short is skipped by _read_rows
        raise CharlstmError(f"could not write {path}: {reason(exc)}; the checkpoints are saved") from None


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1)


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


def run_dir_for(run_dir: Path, resume_from: Path | None) -> Path:
    """The directory a run writes to: a resumed run's own directory (or its checkpoint's), else `run_dir`."""
    if resume_from is not None:
        resume_from = Path(resume_from)
        if resume_from.is_dir():
            return resume_from
        if resume_from.name in (LATEST, BEST):
            return resume_from.parent
    return Path(run_dir)


def run_dir_of(path: Path) -> Path | None:
    """The run directory a path names: itself, or the directory of its latest.pt or best.pt; None for a
    checkpoint file kept elsewhere (it has no run files beside it)."""
    path = Path(path)
    if path.is_dir():
        return path
    return path.parent if path.name in (LATEST, BEST) else None


def write_run_json(run_dir: Path, summary: dict[str, Any]) -> None:
    write_json(Path(run_dir) / RUN_JSON, summary)


def refuse_run_file(path: Path, reading: Path | None = None, flag: str = "--out") -> None:
    """An output a command is about to write (export, samples, a page) must not be a file of a run (a
    checkpoint, run.json, metrics, samples, the lock) nor the checkpoint it reads: one clear error instead."""
    path = Path(path)
    own = path.name in (*RUN_FILES, LOCK_NAME) and is_run_dir(path.parent)
    if own or (reading is not None and path.exists() and path.resolve() == Path(reading).resolve()):
        raise CharlstmError(f"{path} is a file of the run itself; give {flag} another name")
