import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charlstm.runs import directory as rundir

from .helpers import assert_one_error, charlstm_command, child_env, cli_flags, invoke

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (see conftest.one_thread)
TINY = cli_flags(hidden=32, embed=8, batch_size=4, seq_len=16, eval_every=10)


def run_cli(*args):
    return invoke(*args, catch_exceptions=False)


def test_train_sample_info_end_to_end(tmp_path, corpus_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("train", corpus_file, "--max-steps", "20", *TINY)
    assert result.exit_code == 0, result.output
    run = tmp_path / "checkpoints" / "corpus"
    assert {p.name for p in run.iterdir()} >= {"latest.pt", "best.pt", "run.json", "metrics.jsonl"}
    assert "best val loss" in result.output

    sample = run_cli("sample", "--length", "60", "--seed", "3")  # the most recent run, no path
    assert sample.exit_code == 0, sample.output
    assert len(sample.stdout.rstrip("\n")) == 60
    assert "Sampling from checkpoints/corpus/best.pt (step 20" in sample.stderr  # it names the run it chose
    again = run_cli("sample", run, "--length", "60", "--seed", "3")
    assert again.stdout == sample.stdout

    info = run_cli("info", run, "--json")
    data = json.loads(info.output)
    assert data["step"] == 20 and data["vocab_size"] > 10 and data["chars_per_second"] > 0

    resumed = run_cli("train", corpus_file, "--resume", "--max-steps", "30", *TINY)
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(run_cli("info", run, "--json").output)["step"] == 30

    out_file = tmp_path / "samples.txt"
    multi = run_cli("sample", run / "latest.pt", "-N", "3", "--length", "40", "--seed", "1", "--out", out_file)
    assert multi.exit_code == 0
    assert out_file.read_text().count("sample ") == 3


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "missing.txt"], "corpus not found"),
        (["train", "CORPUS", "--max-time", "soon"], "cannot read 'soon' as a duration"),
        (["train", "CORPUS", "--dropout", "1.5"], "--dropout must be in [0, 1)"),
        (["train", "CORPUS", "--val-frac", "0.9"], "--val-frac must be in (0, 0.5]"),
        (["train", "CORPUS", "--hidden", "0"], "--hidden must be > 0"),
        (["train", "CORPUS", "--cell", "lstmx"], "--cell must be one of"),
        (["sample"], "train one first"),
        (["sample", "nowhere"], "no such run or checkpoint"),
        (["sample", "CORPUS"], "is a text file, not a checkpoint"),
        (["sample", "--temp", "-1"], "--temp must be >= 0"),
        (["sample", "--top-p", "0"], "--top-p must be in (0, 1]"),
        (["info", "nowhere"], "no such run or checkpoint"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, corpus_file, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    args = [str(corpus_file) if a == "CORPUS" else a for a in args]
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output


@pytest.mark.subprocess
@pytest.mark.slow
def test_python_m_and_help():
    done = subprocess.run(charlstm_command("--help"), capture_output=True, text=True)
    assert done.returncode == 0 and "train" in done.stdout and "sample" in done.stdout
    for command in ("train", "sample", "info"):
        help_text = invoke(command, "--help", env={"COLUMNS": "200"}).output
        assert "--help" in help_text
    train_help = invoke("train", "--help", env={"COLUMNS": "200"}).output
    for flag in (
        "--cell",
        "--layers",
        "--hidden",
        "--dropout",
        "--batch-size",
        "--seq-len",
        "--lr",
        "--grad-clip",
        "--max-steps",
        "--epochs",
        "--max-time",
        "--eval-every",
        "--val-frac",
        "--seed",
        "--device",
        "--precision",
        "--resume",
        "--out",
    ):
        assert flag in train_help, flag
    assert "(default: 0.1)" in train_help


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_and_prints_how_to_resume(tmp_path, corpus_file, signum):
    command = charlstm_command(
        "train",
        corpus_file,
        "--max-steps",
        "100000",
        *TINY,
        "--eval-every",
        "100000",
        "--hidden",
        "64",
        "--save-every",
        "5",
    )
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "checkpoints" / "corpus"
    deadline = time.time() + 60
    # wait until the training loop is running (its first save is there), then interrupt
    while not (run / "latest.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum], stderr  # saved, but signalled
    assert "Traceback" not in stderr
    assert "--resume" in stderr and signal.Signals(signum).name in stderr
    step = int(re.search(r"at step (\d+)", stderr).group(1))
    assert step > 0
    info = invoke("info", run / "latest.pt", "--json")
    assert json.loads(info.output)["step"] == step


def test_a_run_that_fails_to_start_leaves_its_directory_as_it_found_it(tmp_path, corpus_file, monkeypatch):
    """An empty corpus, or a flag found wrong once the corpus is read (after the run directory is locked): one
    error line, and no directory left behind (nor its parents) where there was none; a directory that was there
    keeps what it had, and only that."""
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_one_error(invoke("train", empty, "--out", tmp_path / "new" / "run", "--max-steps", "2", *TINY), "empty")
    assert not (tmp_path / "new").exists()
    assert_one_error(invoke("train", empty, "--max-steps", "2", *TINY), "corpus is empty")
    assert not (tmp_path / "checkpoints").exists()  # the default run directory, checkpoints/empty, and its parent
    prime = ["--sample-prime", "€", "--out", tmp_path / "new"]
    assert_one_error(invoke("train", corpus_file, *prime, "--max-steps", "2", *TINY), "--sample-prime")
    assert not (tmp_path / "new").exists()

    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert_one_error(invoke("train", empty, "--out", kept, "--max-steps", "2", *TINY), "corpus is empty")
    assert [p.name for p in kept.iterdir()] == ["notes.txt"] and (kept / "notes.txt").read_text() == "mine"

    run = tmp_path / "run"  # a run: its checkpoints and records are never touched
    assert run_cli("train", corpus_file, "--out", run, "--max-steps", "2", *TINY).exit_code == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert_one_error(invoke("train", empty, "--out", run, "--max-steps", "2", *TINY), "already holds a run")
    assert_one_error(invoke("train", "--resume", run, "--sample-prime", "€", "--max-steps", "4"), "--sample-prime")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_existing_run_is_not_overwritten_without_asking(tmp_path, corpus_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli("train", corpus_file, "--max-steps", "10", *TINY).exit_code == 0
    run = tmp_path / "checkpoints" / "corpus"
    before = (run / "latest.pt").read_bytes()
    again = invoke("train", corpus_file, "--max-steps", "20", *TINY)
    assert again.exit_code == 1 and "already holds a run" in again.output and "--resume" in again.output
    assert (run / "latest.pt").read_bytes() == before  # untouched
    fresh = run_cli("train", corpus_file, "--max-steps", "20", "--overwrite", *TINY)
    assert fresh.exit_code == 0, fresh.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20]  # the new run's evaluations only, not the old run's step 10 too
    assert json.loads(run_cli("info", run, "--json").output)["step"] == 20


def test_help_lists_the_commands_in_the_order_a_person_meets_them():
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    order = ["train", "sample", "info", "eval", "inspect", "export", "probe", "compare"]
    positions = [result.output.find(f"│ {name} ") for name in order]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), result.output


# ------------------------------------------------------------------------ options shared by the commands


def test_compare_takes_the_training_flags_of_train(tmp_path, corpus_file):
    """compare accepts train's --device (and its other training flags), and its runs are trained with them."""
    out = tmp_path / "cmp"
    flags = ["--cell", "lstm", "--seeds", "1", "--max-steps", "3", "--out", out, "--device", "cpu", "--size", "fixed"]
    result = invoke("compare", corpus_file, *flags, "--sample-every", "0", "--json", *TINY)
    assert result.exit_code == 0, result.output
    assert [row["cell"] for row in json.loads(result.stdout)["cells"]] == ["lstm"]
    data = json.loads(run_cli("info", out / "lstm-seed1337", "--json").output)
    assert data["device"] == "cpu" and data["model_config"]["hidden"] == 32 and data["step"] == 3


def test_eval_inspect_and_export_read_the_newest_run_when_none_is_given(tmp_path, corpus_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli("train", corpus_file, "--max-steps", "10", *TINY).exit_code == 0
    run = Path("checkpoints") / "corpus"

    scored = invoke("eval", "--json")
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["checkpoint"] == str(run / "best.pt")
    shown = invoke("eval")
    assert shown.exit_code == 0 and f"Newest run: {run}" in shown.stderr and "best.pt" in shown.stdout

    page = invoke("inspect", "--prime", "The ", "--length", "20", "--seed", "1", "--json")
    assert page.exit_code == 0, page.output
    assert (run / "inspect.html").is_file()

    exported = invoke("export", "--format", "torchscript", "--device", "cpu")
    assert exported.exit_code == 0, exported.output
    assert (run / "corpus.torchscript").is_file() and f"Newest run: {run}" in exported.stderr


@pytest.mark.parametrize("command", [["sample"], ["eval"], ["inspect", "--prime", "T"], ["export", "-f", "html"]])
def test_every_command_that_runs_a_model_takes_device(tmp_path, monkeypatch, command):
    """The same --device flag everywhere; a bad value is one error line, before the run is read."""
    monkeypatch.chdir(tmp_path)
    command = [command[0], "nowhere", *command[1:]]
    assert_one_error(invoke(*command, "--device", "tpu"), "--device must be one of auto, cpu, cuda, mps")


def test_save_every_takes_a_duration(tmp_path, corpus_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("train", corpus_file, "--max-steps", "6", "--save-every", "1h", *TINY)
    assert result.exit_code == 0, result.output
    saved = rundir.read_run_json(tmp_path / "checkpoints" / "corpus")["train_config"]
    assert saved["save_every"] is None and saved["save_every_seconds"] == 3600


@pytest.mark.subprocess
def test_help_imports_no_torch():
    """`charlstm --help` and every `charlstm COMMAND --help` answer without importing torch (seconds of it)."""
    command = [sys.executable, "-X", "importtime", "-m", "charlstm", "--help"]
    timed = subprocess.run(command, capture_output=True, text=True, env=child_env())
    assert timed.returncode == 0 and "train" in timed.stdout, timed.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in timed.stderr.splitlines() if "|" in line]
    assert "charlstm.cli.app" in imported and not [m for m in imported if m.split(".")[0] == "torch"]
    commands = ["train", "sample", "info", "eval", "inspect", "export", "probe", "compare"]
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from charlstm.cli.app import app\n"
        f"for command in {commands!r}:\n"
        "    result = CliRunner().invoke(app, [command, '--help'])\n"
        "    assert result.exit_code == 0 and '--help' in result.output, (command, result.output)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=child_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
