"""One trainer per run directory: the run lock (charlstm/runlock.py), alone and through the CLI."""

import errno
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import charlstm.cli.app
import charlstm.training.run
from charlstm.errors import CharlstmError
from charlstm.runs import lock as runlock
from charlstm.runs.lock import LOCK_NAME, RunLock, read_holder

from .helpers import TINY_FLAGS, charlstm_command, one_thread_env, write_corpus

fcntl = pytest.importorskip("fcntl")  # Windows has no flock: there the lock is a no-op (tested below)
ENV = one_thread_env()
# a process that holds a run's lock until killed: prints "locked" once it holds it
HOLDER = textwrap.dedent(
    """
    import sys, time
    from charlstm.runs.lock import RunLock
    lock = RunLock.acquire(sys.argv[1])
    print("locked", flush=True)
    time.sleep(60)
    """
)


def start_holder(run: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def stop(proc: subprocess.Popen, signum: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        proc.send_signal(signum)
    proc.wait(timeout=30)


def test_a_second_descriptor_in_the_same_process_is_refused_naming_the_holder(tmp_path):
    run = tmp_path / "new" / "run"  # missing: created, as the trainer would
    lock = RunLock.acquire(run)
    assert lock.held and (run / LOCK_NAME).is_file()
    holder = read_holder(run)
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and holder["started"]
    with open(run / LOCK_NAME, "rb") as other:  # a separate open file: flock must refuse it
        with pytest.raises(BlockingIOError):
            fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(CharlstmError) as refused:
        RunLock.acquire(run, reentrant=False)
    message = str(refused.value)
    assert f"is being trained by process {os.getpid()} on {socket.gethostname()} since " in message
    assert message.startswith(str(run)) and message.endswith("wait for it to finish or stop it")
    assert "\n" not in message
    lock.release()
    assert not lock.held and read_holder(run) is None  # emptied before unlocking: no stale details
    with RunLock.acquire(run, reentrant=False) as again:  # free again
        assert again.held
    assert not again.held


def test_reentrant_in_one_process_released_on_the_last_release(tmp_path):
    outer = RunLock.acquire(tmp_path)
    inner = RunLock.acquire(tmp_path)  # the CLI locks before clearing a run; the trainer locks again inside
    assert inner is outer and inner.held
    inner.release()
    assert outer.held, "the inner release must not free the outer holder's lock"
    with open(tmp_path / LOCK_NAME, "rb") as other, pytest.raises(BlockingIOError):
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    outer.release()
    outer.release()  # extra releases are ignored
    with open(tmp_path / LOCK_NAME, "rb") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # free


@pytest.mark.subprocess
def test_another_process_holds_it_then_is_killed_and_leaves_no_stuck_lock(tmp_path):
    run = tmp_path / "run"
    holder = start_holder(run)
    try:
        started = time.monotonic()
        with pytest.raises(CharlstmError, match=rf"is being trained by process {holder.pid} on .+ since .+ \(.*-c.*\)"):
            RunLock.acquire(run)
        assert time.monotonic() - started < 0.4, "refused at once (the holder's details were already written)"
    finally:
        stop(holder, signal.SIGKILL)
    assert read_holder(run)["pid"] == holder.pid  # a killed holder's details stay in the file ...
    with RunLock.acquire(run) as lock:  # ... but its lock went with it
        assert lock.held and read_holder(run)["pid"] == os.getpid()


@pytest.mark.subprocess
def test_a_subprocess_is_refused_while_this_process_holds_it(tmp_path):
    with RunLock.acquire(tmp_path):
        code = "import sys\nfrom charlstm.runs.lock import RunLock\nRunLock.acquire(sys.argv[1])"
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=ENV)
        assert done.returncode == 1 and f"by process {os.getpid()} on " in done.stderr
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr


def test_holder_details_not_written_yet_or_garbage(tmp_path, monkeypatch):
    """A holder locks, then writes its details: a reader in between, or a tampered file, still gets one line."""
    monkeypatch.setattr(runlock, "HOLDER_WAIT_SECONDS", 0.1)
    path = tmp_path / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held, empty: as if the holder had not written yet
        with pytest.raises(CharlstmError, match=r"is being trained by another process \(see .*train.lock\); wait"):
            RunLock.acquire(tmp_path)
        os.pwrite(fd, b'{"pid": 42, "host": "a\\nb\\u001b[2J", "command": "' + b"x" * 5000 + b'"', 0)  # cut short
        with pytest.raises(CharlstmError, match="another process"):
            RunLock.acquire(tmp_path)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": 42, "host": "a\nb\x1b[2J", "command": "x" * 5000}).encode(), 0)
        with pytest.raises(CharlstmError) as refused:
            RunLock.acquire(tmp_path)
        message = str(refused.value)
        assert "process 42 on a b [2J since ?" in message and "\n" not in message and "\x1b" not in message
        assert len(message) < 400, "a long command line is cut short"
    finally:
        os.close(fd)


def test_the_lock_file_is_never_replaced(tmp_path):
    """A lock on a file that another process replaced or unlinked would lock nothing: the inode must stay."""
    inode = None
    for _ in range(3):
        with RunLock.acquire(tmp_path):
            now = (tmp_path / LOCK_NAME).stat().st_ino
            assert inode in (None, now)
            inode = now
    assert (tmp_path / LOCK_NAME).exists()


def test_a_lock_file_its_holder_deleted_is_not_locked_but_the_new_one(tmp_path, monkeypatch):
    """A holder that gives up a run it never started deletes the lock file while it holds it; a locker that had
    opened the old file before then, and gets its lock once the holder lets go, must lock the path's new file
    instead: else two processes would each hold a lock of the same directory."""
    run = tmp_path / "run"
    lock = RunLock.acquire(run)
    lock.release(remove_file=True)
    assert not lock.held and not (run / LOCK_NAME).exists() and run.is_dir()
    real_open = runlock._open_lock_file
    opened = []

    def open_then_deleted_by_its_holder(run_dir, path):
        fd = real_open(run_dir, path)
        if not opened:  # the first file opened is deleted before it is locked
            os.unlink(path)
        opened.append(os.fstat(fd).st_ino)
        return fd

    monkeypatch.setattr(runlock, "_open_lock_file", open_then_deleted_by_its_holder)
    with RunLock.acquire(run) as again:
        assert again.held and len(opened) == 2
        assert (run / LOCK_NAME).stat().st_ino == opened[1]  # the file the path names is the one locked
        with open(run / LOCK_NAME, "rb") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    inner = RunLock.acquire(run)
    nested = RunLock.acquire(run)
    nested.release(remove_file=True)  # not the last release: the file stays, locked
    assert inner.held and (run / LOCK_NAME).exists()
    inner.release()


def test_not_a_directory_read_only_link_and_no_fcntl(tmp_path, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(
        CharlstmError, match=r"output directory .*file is a file, not a directory; choose another --out"
    ):
        RunLock.acquire(a_file)
    link_run = tmp_path / "linked"
    link_run.mkdir()
    (link_run / LOCK_NAME).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CharlstmError, match="is a symbolic link; remove it"):
        RunLock.acquire(link_run)
    assert not (tmp_path / "elsewhere").exists()

    real_open = os.open

    def read_only_fs(path, flags, *args):
        if str(path).endswith(LOCK_NAME) and flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only_fs)  # root ignores file modes: simulate a read-only filesystem
    with pytest.raises(CharlstmError, match=r"output directory .* is not writable: Read-only file system; choose"):
        RunLock.acquire(tmp_path / "ro")
    monkeypatch.undo()

    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` fails, as on Windows
    lock = RunLock.acquire(tmp_path / "win")
    assert not lock.held and "no file locking" in lock.note
    lock.release()
    assert not RunLock.acquire(tmp_path / "rank1", enabled=False).held  # a torchrun rank other than 0


# ------------------------------------------------------------------------------------------ end to end


def _lock_wired() -> bool:
    return any("runlock" in inspect.getsource(module) for module in (charlstm.training.run, charlstm.cli.app))


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.skipif(not _lock_wired(), reason="run lock not wired into train yet")
def test_a_second_trainer_of_a_run_is_refused_at_once(tmp_path):
    corpus = write_corpus(tmp_path, 4000)
    run = tmp_path / "run"
    tiny = TINY_FLAGS[:-1]  # not quiet
    # a budget far beyond the test (it is stopped with SIGINT): on a loaded machine the first must still be
    # training when the second, slow to start, reaches the lock
    first = subprocess.Popen(
        charlstm_command("train", corpus, "--max-time", "10m", "--out", run, "-q", *tiny, "--save-every", "2"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 30
        # held (its details name it), and a checkpoint to resume exists (else --resume fails before locking)
        while not ((read_holder(run) or {}).get("pid") == first.pid and (run / "latest.pt").exists()):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first trainer never took the lock"
            time.sleep(0.05)
        # a resume and an --overwrite of the run (which would clear it), at the same time: both refused
        attempts = [
            ["train", "--resume", str(run), "--max-steps", "5", "-q"],
            ["train", str(corpus), "--out", str(run), "--overwrite", "--max-steps", "5", "-q", *tiny],
        ]
        seconds = [
            subprocess.Popen(
                charlstm_command(*args),
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=ENV,
            )
            for args in attempts
        ]
        for second in seconds:
            # refused, not blocked until the first finishes (that would time out, or train and exit 0); no tighter
            # time bound: the start-up (importing torch) takes 3 s idle but 17 s at load 8 on 2 cores
            _, stderr = second.communicate(timeout=60)
            assert second.returncode == 1, stderr
            errors = [line for line in stderr.splitlines() if "error:" in line]
            assert len(errors) == 1 and f"being trained by process {first.pid} on " in errors[0], stderr
            assert "Traceback" not in stderr
        assert first.poll() is None, "the first trainer goes on"
    finally:
        stop(first, signal.SIGINT)
    assert first.returncode == 130, first.stderr  # stopped by SIGINT (after saving)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 5, "the run was not cleared by the --overwrite"
    assert steps == sorted(set(steps)), "each evaluation written once, by one trainer"
