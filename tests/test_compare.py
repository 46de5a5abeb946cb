"""`charlstm compare`: the statistics, and the command on a tiny corpus."""

import json
import math
import signal
import subprocess
import time

import pytest

from charlstm.config import ModelConfig
from charlstm.experiments.compare import hidden_for_params, interval, welch_significant
from charlstm.model.charrnn import CharRNN

from .helpers import assert_ok, assert_one_error, charlstm_command, invoke, one_thread_env, write_corpus

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--hidden", "12", "--embed", "8", "--batch-size", "4", "--seq-len", "16", "--eval-every", "3"]


def test_interval_and_welch():
    assert interval([1.0, 2.0, 3.0]) == pytest.approx(4.303 * 1.0 / math.sqrt(3))  # t(2) * sd / sqrt(n)
    assert math.isnan(interval([1.0]))
    assert welch_significant([1.0, 1.1, 0.9], [2.0, 2.1, 1.9]) is True
    assert welch_significant([1.0, 1.5, 0.5], [1.1, 1.6, 0.6]) is False
    assert welch_significant([1.0], [2.0, 2.1]) is None


@pytest.mark.parametrize("cell", ["lstm", "gru", "pseudo2", "cifg"])
def test_params_sizes_hidden_to_the_parameter_count(cell):
    config = ModelConfig(vocab_size=40, cell=cell, embed=16)
    hidden = hidden_for_params(config, 50_000)
    count = lambda h: CharRNN(ModelConfig(vocab_size=40, cell=cell, embed=16, hidden=h)).num_params  # noqa: E731
    assert abs(count(hidden) - 50_000) <= min(abs(count(hidden - 1) - 50_000), abs(count(hidden + 1) - 50_000))


@pytest.mark.slow
def test_compare_command_trains_every_cell_over_seeds_and_keeps_the_runs(tmp_path):
    corpus = write_corpus(tmp_path, 3000)
    out = tmp_path / "cmp"
    flags = ["--cell", "lstm,pseudo2", "--seeds", "2", "--max-steps", "4", "--out", out, *TINY]
    result = invoke("compare", corpus, *flags, "--json", "-q")
    assert_ok(result)
    data = json.loads(result.stdout)
    assert [row["cell"] for row in data["cells"]] == ["lstm", "pseudo2"]
    assert all(row["runs"] == 2 and len(row["best_val_losses"]) == 2 for row in data["cells"])
    assert data["cells"][0]["significant"] is None and data["cells"][1]["significant"] in (True, False)
    assert sorted(p.name for p in out.iterdir()) == [
        "lstm-seed1337",
        "lstm-seed1338",
        "pseudo2-seed1337",
        "pseudo2-seed1338",
    ]
    sample = invoke("sample", out / "pseudo2-seed1338", "--length", "20", "--seed", "1")
    assert_ok(sample)
    table = invoke("compare", corpus, *flags, "-q", "--params", "3000", "--seeds", "1")
    assert_ok(table)
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["cell", "runs", "hidden", "params"]
    assert lines[1].split()[0] == "lstm" and "(reference)" in lines[1]
    params = [int(line.split()[3].replace(",", "")) for line in lines[1:3]]
    assert all(abs(p - 3000) < 600 for p in params)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--cell", "lstm,bogus", "--max-steps", "2"], ["--cell", "bogus"]),
        (["--cell", "lstm,lstm", "--max-steps", "2"], ["--cell", "twice"]),
        (["--cell", "lstm"], ["budget", "--max-time"]),
        (["--seeds", "0", "--max-steps", "2"], ["--seeds"]),
        (["--max-time", "soon"], ["--max-time"]),
        (["--init", "he", "--max-steps", "2"], ["--init"]),
    ],
)
def test_bad_compare_flags_are_one_line_errors(tmp_path, args, fragments):
    corpus = write_corpus(tmp_path, 2000)
    assert_one_error(invoke("compare", corpus, *args, "--out", tmp_path / "c", "-q", *TINY), *fragments)


@pytest.mark.parametrize("quiet", [["-q"], []])
def test_compare_of_a_missing_corpus_is_one_line(tmp_path, quiet):
    """One line, with or without the progress bar (drawn only once the first run starts)."""
    assert_one_error(invoke("compare", tmp_path / "nope.txt", "--max-steps", "2", *quiet), "nope.txt")


@pytest.mark.slow
@pytest.mark.subprocess
def test_ctrl_c_keeps_the_finished_runs(tmp_path):
    """SIGINT during the second run (setting up or training): the first run counts, the second is left out."""
    corpus = write_corpus(tmp_path, 3000)
    out = tmp_path / "cmp"
    command = charlstm_command(
        "compare", corpus, "--cell", "lstm,gru", "--seeds", "1", "--max-steps", "60", "--out", out, "-q", *TINY
    )
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=one_thread_env())
    deadline = time.monotonic() + 120
    while not (out / "gru-seed1337" / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # the second run has validated once (every 3 steps): it is training, 50-odd steps to go
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr  # the finished runs reported, and the exit status says Ctrl-C
    assert "Traceback" not in stderr
    rows = [line.split()[0] for line in stdout.splitlines()[1:] if line.split() and line.split()[0] in ("lstm", "gru")]
    assert rows == ["lstm"]
    assert "interrupted" in stdout
    assert (out / "lstm-seed1337" / "best.pt").exists()
    assert (out / "gru-seed1337" / "latest.pt").exists()  # saved where it stopped: it can be resumed
