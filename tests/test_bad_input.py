"""Bad input gets one clear `error:` line and exit code 1, never a traceback, and damages nothing on disk."""

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from charlstm.checkpoint import store as ckpt
from charlstm.data.textio import read_text_file
from charlstm.errors import CharlstmError
from charlstm.runs import directory as rundir
from charlstm.runtime import atomic

from .helpers import (
    TINY_FLAGS,
    CreatesFile,
    assert_ok,
    assert_one_error,
    charlstm_command,
    checkpoint_bytes,
    invoke,
    make_text,
    saved_step,
    torch_threads,
    write_bytes,
    write_corpus,
)

TINY = TINY_FLAGS
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run, trained once for the module: (run directory, corpus file). Tests only read it; a
    test that trains in the run (a resume, even a refused one) works on a copy (`copy_run`)."""
    base = tmp_path_factory.mktemp("trained")
    corpus_file = write_corpus(base)
    run = base / "run"
    with torch_threads(1):
        assert_ok(invoke("train", corpus_file, "--out", run, "--max-steps", "10", *TINY))
    return run, corpus_file


def copy_run(run: Path, tmp_path: Path) -> Path:
    """A copy of the module's run that a test may change."""
    return Path(shutil.copytree(run, tmp_path / "run-copy"))


def checkpoints_unchanged(run: Path, before: dict[str, bytes]) -> bool:
    return checkpoint_bytes(run, before) == before


# ------------------------------------------------------------------------------------------- corpus


def png_bytes() -> bytes:
    return b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8


def zip_bytes(tmp_path: Path) -> bytes:
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as archive:
        archive.writestr("story.txt", "once upon a time " * 200)
    return (tmp_path / "a.zip").read_bytes()


@pytest.mark.parametrize(
    "kind,fragments",
    [
        ("missing", ["corpus not found"]),
        ("empty", ["corpus is empty"]),
        ("one-char", ["only one distinct character ('a')", "at least 2 different characters"]),
        ("too-short", ["corpus too short: 10 characters", "need at least 18", "16 to train on"]),
        ("nul", ["looks binary"]),
        ("png", ["looks binary"]),
        ("zip", ["looks binary"]),
        ("latin-1", ["is not valid utf-8", "byte 0xe9 at offset 3 (line 1)", "--encoding latin-1"]),
        ("bad-encoding-name", ["unknown --encoding 'klingon'"]),
    ],
)
def test_bad_corpus(tmp_path, monkeypatch, kind, fragments):
    monkeypatch.chdir(tmp_path)
    extra = []
    path = {
        "missing": lambda: tmp_path / "nope.txt",
        "empty": lambda: write_bytes(tmp_path, "empty.txt", b""),
        "one-char": lambda: write_bytes(tmp_path, "a.txt", b"a" * 500),
        "too-short": lambda: write_bytes(tmp_path, "short.txt", b"abcdefghij"),
        "nul": lambda: write_bytes(tmp_path, "nul.txt", b"hello\x00world" * 50),
        "png": lambda: write_bytes(tmp_path, "img.png", png_bytes()),
        "zip": lambda: write_bytes(tmp_path, "a.zip", zip_bytes(tmp_path)),
        "latin-1": lambda: write_bytes(tmp_path, "latin.txt", "café naïve ".encode("latin-1") * 100),
        "bad-encoding-name": lambda: write_bytes(tmp_path, "ok.txt", b"hello world " * 100),
    }[kind]()
    if kind == "bad-encoding-name":
        extra = ["--encoding", "klingon"]
    result = invoke("train", path, "--max-steps", "3", *TINY, *extra)
    assert_one_error(result, *fragments)
    assert not list(tmp_path.rglob("*.pt"))  # no checkpoint anywhere (none under ./checkpoints, the default --out)


def test_directory_where_a_text_file_is_expected(tmp_path):
    with pytest.raises(CharlstmError, match="is a directory"):
        read_text_file(tmp_path)


def test_unreadable_corpus(tmp_path, monkeypatch, corpus_file):
    monkeypatch.chdir(tmp_path)
    if IS_ROOT:  # root reads a chmod 000 file anyway: make the read itself fail as it would for a user
        real_read_bytes = Path.read_bytes

        def denied(self):
            if self.name == corpus_file.name:
                raise PermissionError(13, "Permission denied", str(self))
            return real_read_bytes(self)

        monkeypatch.setattr(Path, "read_bytes", denied)
    else:
        corpus_file.chmod(0)
    try:
        assert_one_error(invoke("train", corpus_file, "--max-steps", "3", *TINY), "permission denied")
    finally:
        corpus_file.chmod(0o644)


@pytest.mark.slow
def test_corpus_shorter_than_one_batch_shrinks_with_notice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_bytes(tmp_path, "small.txt", make_text(300).encode())
    result = invoke("train", path, "--max-steps", "3", *TINY[:-5], "--batch-size", "64", "--seq-len", "128")
    assert_ok(result)
    assert "shorter than one batch (64 x 128)" in result.output and "using --batch-size" in result.output


@pytest.mark.parametrize(
    "name,data,encoding",
    [
        ("whitespace.txt", b" \t\n" * 300, None),
        ("bom-crlf.txt", b"\xef\xbb\xbf" + b"The quick brown fox.\r\nJumps over the dog.\r\n" * 40, None),
        ("latin.txt", "café naïve señor ".encode("latin-1") * 60, "latin-1"),
    ],
)
def test_odd_but_valid_text_trains_and_samples(tmp_path, monkeypatch, name, data, encoding):
    monkeypatch.chdir(tmp_path)
    path = write_bytes(tmp_path, name, data)
    run = tmp_path / "run"
    args = ["train", path, "--out", run, "--max-steps", "5", *TINY] + (["--encoding", encoding] if encoding else [])
    assert_ok(invoke(*args))
    vocab = ckpt.load_model_checkpoint(run / rundir.LATEST)["vocab"]
    assert "\ufeff" not in vocab and "\r" not in vocab  # BOM dropped, CRLF read as LF
    if encoding:
        assert "é" in vocab and "ñ" in vocab
    sample = invoke("sample", run, "--length", "50", "--seed", "1")
    assert_ok(sample)
    assert set(sample.stdout) <= set(vocab) | {"\n"}


# -------------------------------------------------------------------------------------------- flags

TRAIN_FLAGS = [
    (["--batch-size", "0"], "--batch-size must be > 0, got 0"),
    (["--batch-size", "-3"], "--batch-size must be > 0, got -3"),
    (["--seq-len", "0"], "--seq-len must be > 0"),
    (["--layers", "0"], "--layers must be > 0"),
    (["--hidden", "-1"], "--hidden must be > 0"),
    (["--embed", "0"], "--embed must be > 0"),
    (["--dropout", "-0.1"], "--dropout must be in [0, 1)"),
    (["--dropout", "1"], "--dropout must be in [0, 1), got 1.0"),
    (["--val-frac", "0"], "--val-frac must be in (0, 0.5]"),
    (["--val-frac", "0.6"], "--val-frac must be in (0, 0.5], got 0.6"),
    (["--max-steps", "0"], "--max-steps must be > 0"),
    (["--epochs", "-1"], "--epochs must be > 0"),
    (["--max-time", "soon"], "--max-time: cannot read 'soon' as a duration"),
    (["--max-time", "-5m"], "--max-time: cannot read '-5m' as a duration"),
    (["--max-time", "0s"], "--max-time must be longer than zero"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--lr", "nan"], "--lr must be a positive number, got nan"),
    (["--eval-every", "0"], "--eval-every must be > 0"),
    (["--save-every", "0"], "--save-every must be > 0 steps (or a duration such as 5m), got 0"),
    (["--save-every", "-2"], "--save-every must be > 0 steps"),
    (["--save-every", "often"], "--save-every: cannot read 'often' as a duration"),
    (["--grad-clip", "-1"], "--grad-clip must be >= 0"),
    (["--weight-decay", "-1"], "--weight-decay must be >= 0"),
    (["--cell", "transformer"], "--cell must be one of lstm, gru, rnn, peephole, pseudo, pseudo2, cifg, lnlstm"),
    (["--device", "tpu"], "--device must be one of auto, cpu, cuda, mps, got 'tpu'"),
    (["--precision", "fp8"], "--precision must be one of auto, fp32, bf16"),
]


@pytest.mark.parametrize("flags,message", TRAIN_FLAGS)
def test_train_flag_out_of_range(tmp_path, monkeypatch, corpus_file, flags, message):
    monkeypatch.chdir(tmp_path)
    assert_one_error(invoke("train", corpus_file, "--max-steps", "3", *TINY, *flags), message)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_fails_before_reading_data(tmp_path, monkeypatch, corpus_file):
    monkeypatch.chdir(tmp_path)
    result = invoke("train", corpus_file, "--device", "cuda", "--max-steps", "3", "-q")  # default batch: a notice
    line = assert_one_error(result, "--device cuda: no CUDA GPU is available here")
    assert result.output.strip() == line  # no notice about the batch shape before it


SAMPLE_FLAGS = [
    (["--temp", "-1"], "--temp must be >= 0"),
    (["--temp", "nan"], "--temp must be >= 0, got nan"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
    (["--top-k", "-1"], "--top-k must be >= 0"),
    (["--length", "-1"], "--length must be >= 0"),
    (["--num-samples", "0"], "--num-samples must be > 0"),
    (["--device", "tpu"], "--device must be one of"),
    (["--prime", "XYZ€"], "--prime has characters the model never saw: 'X' 'Y' 'Z' '€'"),
]


@pytest.mark.parametrize("flags,message", SAMPLE_FLAGS)
def test_sample_flag_out_of_range(trained, flags, message):
    run, _ = trained
    assert_one_error(invoke("sample", run, "--length", "5", *flags), message)


@pytest.mark.parametrize(
    "flags,length",
    [(["--top-k", "1000"], 20), (["--length", "0"], 0), (["--temp", "0"], 20), (["--top-p", "1e-9"], 20)],
)
def test_sample_edge_values_work(trained, flags, length):
    run, _ = trained
    result = invoke("sample", run, "--length", "20", "--seed", "2", *flags)
    assert_ok(result)
    assert len(result.stdout) == length + 1  # the text and a newline


# ---------------------------------------------------------------------------------- runs and paths


def test_sample_without_any_run_says_how_to_train(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_error(invoke("sample"), "no trained model found", "charlstm train")


@pytest.mark.parametrize(
    "what,fragment",
    [
        ("nowhere", "no such run or checkpoint"),
        ("emptydir", "not a charlstm run"),
        ("text", "is a text file, not a checkpoint"),
    ],
)
def test_sample_path_that_is_neither_run_nor_checkpoint(tmp_path, monkeypatch, corpus_file, what, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "emptydir").mkdir()
    target = {"nowhere": "nowhere", "emptydir": "emptydir", "text": corpus_file}[what]
    assert_one_error(invoke("sample", target), fragment)
    assert_one_error(invoke("info", target), fragment)


def test_resume_without_a_run(tmp_path, monkeypatch, corpus_file):
    monkeypatch.chdir(tmp_path)
    assert_one_error(invoke("train", corpus_file, "--resume", "--max-steps", "3", *TINY), "no checkpoint to resume")
    assert_one_error(
        invoke("train", corpus_file, "--resume", "gone.pt", "--max-steps", "3"), "no such run or checkpoint"
    )


def test_resume_with_new_characters_names_them(trained, tmp_path):
    run, corpus_file = copy_run(trained[0], tmp_path), trained[1]
    before = checkpoint_bytes(run)
    other = write_bytes(tmp_path, "other.txt", (corpus_file.read_text() + "Zebra ½ 🙂\n").encode())
    line = assert_one_error(invoke("train", other, "--resume", run, "--max-steps", "20", *TINY), "cannot resume")
    assert all(repr(c) in line for c in ["Z", "½", "🙂"])
    assert checkpoints_unchanged(run, before)


# ------------------------------------------------------------------------------------- checkpoints


def bad_checkpoint(kind: str, good: Path, path: Path, tmp_path: Path) -> None:
    payload = torch.load(good, weights_only=True)
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "corrupt":
        data = bytearray(good.read_bytes())
        for i in range(200, len(data) - 200, 61):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    elif kind == "newer":
        torch.save({**payload, "version": ckpt.VERSION + 1}, path)
    elif kind == "foreign":
        torch.save({"state_dict": payload["model"]}, path)
    elif kind == "wrong-shape":
        torch.save({**payload, "model": {**payload["model"], "head.weight": torch.zeros(3, 3)}}, path)
    elif kind == "config-lies":
        torch.save({**payload, "model_config": {**payload["model_config"], "hidden": 10**6}}, path)
    elif kind == "wrong-types":
        torch.save({**payload, "model_config": {**payload["model_config"], "layers": "two"}}, path)
    elif kind == "nan-weights":
        weights = {k: torch.full_like(v, float("nan")) for k, v in payload["model"].items()}
        torch.save({**payload, "model": weights}, path)
    elif kind == "vocab":
        torch.save({**payload, "vocab": payload["vocab"][:-1]}, path)
    elif kind == "malicious":
        torch.save({**payload, "model": CreatesFile(str(tmp_path / "pwned"))}, path)
    else:
        raise AssertionError(kind)


CHECKPOINT_CASES = [
    ("truncated", "not a loadable checkpoint (corrupt, truncated"),
    ("corrupt", "not a loadable checkpoint (corrupt, truncated"),
    ("newer", f"has checkpoint format version {ckpt.VERSION + 1}; this charlstm reads up to {ckpt.VERSION}"),
    ("foreign", "is not a charlstm checkpoint"),
    ("wrong-shape", "weight head.weight has shape (3, 3) but its config"),
    ("config-lies", "weight rnn.weight_ih_l0 has shape (64, 8) but its config (hidden 1000000"),
    ("wrong-types", "ModelConfig.layers = 'two' is not of type int"),
    ("nan-weights", "is not finite"),
    ("vocab", "vocab_size"),
    ("malicious", "refusing to load"),
]


@pytest.mark.parametrize("kind,fragment", CHECKPOINT_CASES)
def test_bad_checkpoint_in_sample_resume_and_info(trained, tmp_path, monkeypatch, kind, fragment):
    run, corpus_file = trained
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.pt"
    bad_checkpoint(kind, run / rundir.LATEST, bad, tmp_path)
    before = checkpoint_bytes(run)
    assert_one_error(invoke("sample", bad, "--length", "5"), fragment)
    assert_one_error(invoke("train", corpus_file, "--resume", bad, "--max-steps", "20", *TINY), fragment)
    assert_one_error(invoke("info", bad), fragment)
    # the same file as a run directory's latest.pt, resumed by directory
    bad_run = tmp_path / "bad_run"
    bad_run.mkdir()
    bad.replace(bad_run / rundir.LATEST)
    assert_one_error(invoke("train", corpus_file, "--resume", bad_run, "--max-steps", "20", *TINY), fragment)
    assert not (tmp_path / "pwned").exists()  # no code from a checkpoint ever ran
    assert checkpoints_unchanged(run, before)


@pytest.mark.subprocess
@pytest.mark.slow
def test_bad_checkpoint_in_a_real_process_prints_no_traceback(trained, tmp_path):
    run, _ = trained
    bad = tmp_path / "bad.pt"
    bad_checkpoint("malicious", run / rundir.LATEST, bad, tmp_path)
    done = subprocess.run(charlstm_command("sample", bad), capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "refusing to load" in done.stderr and not (tmp_path / "pwned").exists()


def test_resume_refuses_hidden_state_and_progress_that_do_not_fit(trained, tmp_path):
    run, corpus_file = trained
    payload = torch.load(run / rundir.LATEST, weights_only=True)
    cases = {
        "hidden": ({**payload, "hidden": [torch.zeros(1, 4, 99), torch.zeros(1, 4, 99)]}, "hidden state has shapes"),
        "progress": ({**payload, "progress": {**payload["progress"], "step": "ten"}}, "Progress.step"),
        "rng": ({**payload, "rng": {"torch": torch.zeros(3, dtype=torch.uint8)}}, "cannot be resumed"),
    }
    for name, (bad_payload, fragment) in cases.items():
        bad = tmp_path / f"{name}.pt"
        torch.save(bad_payload, bad)
        assert_one_error(invoke("train", corpus_file, "--resume", bad, "--max-steps", "20", *TINY), fragment)


# ---------------------------------------------------------------------------------------- saving


def test_output_directory_not_writable(tmp_path, monkeypatch, corpus_file):
    monkeypatch.chdir(tmp_path)
    # a path under a regular file can never be created, even by root (for whom chmod does not stop writes)
    assert_one_error(
        invoke("train", corpus_file, "--out", corpus_file / "run", "--max-steps", "3", *TINY),
        f"output directory {corpus_file / 'run'} is not writable",
        "choose another --out",
    )
    assert_one_error(invoke("train", corpus_file, "--out", corpus_file, "--max-steps", "3", *TINY), "is a file")
    if not IS_ROOT:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert_one_error(invoke("train", corpus_file, "--out", locked, "--max-steps", "3", *TINY), "is not writable")


@pytest.mark.parametrize("how", ["oserror", "torch-zip-writer"])
def test_disk_full_during_a_save_keeps_latest_and_best(tmp_path, monkeypatch, corpus_file, how):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    real_save, calls = torch.save, []

    def fills_up(obj, handle, *args, **kwargs):
        calls.append(1)
        if len(calls) >= 4:  # saves 1-3 (steps 2, 4 with best, 6) succeed; the one at step 8 hits a full disk
            handle.write(b"PK\x03\x04" + b"\0" * 100)
            if how == "oserror":
                raise OSError(28, "No space left on device")
            try:  # what torch.save really does on a full disk (seen on a 700 KiB tmpfs)
                raise OSError(28, "No space left on device")
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 109248 vs 109140")  # noqa: B904 (as torch.save does: the OSError is only its __context__)
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fills_up)
    result = invoke(
        "train",
        corpus_file,
        "--out",
        run,
        "--max-steps",
        "20",
        "--save-every",
        "2",
        *TINY[:-3],
        "--eval-every",
        "4",
        "-q",
    )
    monkeypatch.undo()
    assert_one_error(result, f"could not save {run / rundir.LATEST}: the disk is full; the previous file is unchanged")
    assert saved_step(run) == 6
    assert saved_step(run, rundir.BEST) == 4
    assert not list(run.glob(".*.tmp"))


def test_nan_loss_names_the_step_keeps_the_last_good_checkpoint(trained, tmp_path):
    run, corpus_file = copy_run(trained[0], tmp_path), trained[1]
    before = checkpoint_bytes(run)
    # on the CPU the loss is read after every step (on a GPU every 16 steps), so the first non-finite loss is
    # caught at its own step, before the weights it poisons could be saved
    result = invoke(
        "train", corpus_file, "--resume", run, "--max-steps", "30", "--lr", "1e39", *TINY, "--device", "cpu"
    )
    line = assert_one_error(
        result, "stopped without saving", "last good checkpoint is kept", "try a lower --lr (now 1e+39)"
    )
    # step 11 trains at the rate the run ended on (a changed --lr ramps in, README: Training), step 12 at 1e39
    # and leaves non-finite weights: the loss of step 13 is nan (the next save, at step 15, is never reached)
    assert "loss became nan at step 13;" in line, line
    assert checkpoints_unchanged(run, before)
    assert saved_step(run) == 10


def test_resume_when_the_runs_corpus_is_gone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus = write_bytes(tmp_path, "gone.txt", make_text(2000).encode())
    assert_ok(invoke("train", corpus.name, "--out", "run", "--max-steps", "3", *TINY))
    corpus.unlink()
    assert_one_error(
        invoke("train", "--resume", "run", "--max-steps", "6", *TINY),
        "the run's corpus gone.txt is not there any more",
        "charlstm train CORPUS --resume run",
    )


def test_run_directory_that_became_read_only_keeps_its_checkpoints(trained, tmp_path, monkeypatch):
    run, corpus_file = copy_run(trained[0], tmp_path), trained[1]
    before = checkpoint_bytes(run)
    if IS_ROOT:  # root writes through chmod 0o500: make every new file in the run directory fail as it would

        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(atomic.tempfile, "mkstemp", denied)
        monkeypatch.setattr(atomic.tempfile, "TemporaryFile", denied)
    else:
        run.chmod(0o500)
    try:
        result = invoke("train", corpus_file, "--resume", run, "--max-steps", "30", *TINY)
    finally:
        run.chmod(0o755)
        monkeypatch.undo()
    line = assert_one_error(result, "Permission denied")
    assert str(run) in line
    assert checkpoints_unchanged(run, before)
    assert saved_step(run) == 10
