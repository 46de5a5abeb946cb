"""Samples while training: at each validation (or every --sample-every steps) a short seeded sample is emitted as an
event, shown under the bar, appended to samples.jsonl, and replayed by `charlstm info --samples`; the run itself,
and its resume, are exactly what they are without samples."""

import io
import json

import pytest
import torch

from charlstm.cli.progress import ConsoleProgress, sample_lines
from charlstm.runs import directory as rundir
from charlstm.training.run import train

from . import helpers
from .helpers import assert_ok, assert_one_error, curve, invoke, memory_corpus, tiny_train, write_corpus
from .helpers import saved_weights as weights

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (see conftest.one_thread)


def tiny_model(**kw):
    """With dropout: samples must not draw from the run's random stream (its dropout masks would change)."""
    return helpers.tiny_model(**{"dropout": 0.1, **kw})


def events_into(events: list):
    return lambda kind, data: events.append((kind, data))


@pytest.fixture
def corpus():
    return memory_corpus(3000)


def test_a_sample_at_each_validation_in_samples_jsonl_and_as_an_event(tmp_path, corpus):
    events = []
    config = tiny_train(max_steps=12, sample_length=30, sample_prime="The ", sample_temp=0.5)
    train(corpus, tiny_model(), config, tmp_path / "run", on_event=events_into(events))
    rows = rundir.read_samples(tmp_path / "run")
    assert [r["step"] for r in rows] == [5, 10, 12]  # every validation, and the final one
    metrics = {r["step"]: r for r in rundir.read_metrics(tmp_path / "run")}
    for row in rows:
        assert row["chars_seen"] == metrics[row["step"]]["chars_seen"]
        assert row["val_loss"] == pytest.approx(metrics[row["step"]]["val_loss"])
        assert row["temperature"] == 0.5
        assert row["text"].startswith("The ") and len(row["text"]) == 4 + 30
    shown = [data["row"] for kind, data in events if kind == "sample"]
    assert shown == rows
    # each sample comes right after its validation's line
    kinds = [kind for kind, _ in events if kind in ("validation", "sample")]
    assert kinds == ["validation", "sample", "validation", "sample", "validation", "validation", "sample"]


def test_sample_every_chooses_the_steps_and_zero_turns_samples_off(tmp_path, corpus):
    train(corpus, tiny_model(), tiny_train(max_steps=12, sample_every=4, sample_length=10), tmp_path / "a")
    assert [r["step"] for r in rundir.read_samples(tmp_path / "a")] == [4, 8, 12]
    events = []
    train(corpus, tiny_model(), tiny_train(max_steps=12, sample_every=0), tmp_path / "b", on_event=events_into(events))
    assert rundir.read_samples(tmp_path / "b") == []
    assert not [kind for kind, _ in events if kind == "sample"]


@pytest.mark.slow
def test_samples_change_nothing_of_the_run_and_resume_stays_exact(tmp_path, corpus):
    """Samples on or off: the same weights and loss curve. With samples on, N steps straight == N/2, stop,
    resume to N: the same weights, loss curve and samples."""
    steps = 24
    config = tiny_train(max_steps=steps, sample_length=40)
    straight = train(corpus, tiny_model(), config, tmp_path / "a")
    train(corpus, tiny_model(), tiny_train(max_steps=steps, sample_every=0), tmp_path / "off")
    first = train(corpus, tiny_model(), config, tmp_path / "b", should_stop=lambda step: step == 13)
    assert first.step == 13
    resumed = train(corpus, tiny_model(), config, tmp_path / "x", resume_from=tmp_path / "b")
    assert straight.step == resumed.step == steps
    a, off, b = weights(tmp_path / "a"), weights(tmp_path / "off"), weights(tmp_path / "b")
    for key in a:
        assert torch.equal(a[key], off[key]), key
        assert torch.equal(a[key], b[key]), key
    assert curve(tmp_path / "a") == curve(tmp_path / "off") == curve(tmp_path / "b")

    def texts(run):
        return [(r["step"], r["chars_seen"], r["text"]) for r in rundir.read_samples(run)]

    assert texts(tmp_path / "a") == texts(tmp_path / "b")
    assert [step for step, _, _ in texts(tmp_path / "a")] == [5, 10, 15, 20, 24]
    assert len({text for _, _, text in texts(tmp_path / "a")}) > 1  # the model changes, so do its samples


def test_resume_drops_samples_made_after_its_checkpoint(tmp_path, corpus):
    """A run killed after a sample but before its next save: the resumed run writes that sample again, once."""
    run = tmp_path / "run"
    train(corpus, tiny_model(), tiny_train(max_steps=10, sample_length=10), run)
    rows = rundir.read_samples(run)
    rundir.append_sample(run, {**rows[-1], "step": 11, "text": "after the checkpoint"})
    train(
        corpus, tiny_model(), tiny_train(max_steps=15, sample_length=10), run, resume_from=run, explicit={"max_steps"}
    )
    assert [r["step"] for r in rundir.read_samples(run)] == [5, 10, 15]


@pytest.mark.slow
def test_a_record_trained_run_samples_records_and_resumes_alike(tmp_path):
    """Each sample is one record, started from the record start states of the step's weights; with
    --sample-every between saves, a resumed run samples what the straight run sampled."""
    files = tmp_path / "notes"
    files.mkdir()
    for i in range(30):
        write_corpus(files, 120, seed=i, name=f"note{i}.txt")
    config = tiny_train(max_steps=12, sample_every=3, sample_length=300)
    train(helpers.load_sources(files), tiny_model(), config, tmp_path / "a")
    train(helpers.load_sources(files), tiny_model(), config, tmp_path / "b", should_stop=lambda step: step == 7)
    train(helpers.load_sources(files), tiny_model(), config, tmp_path / "x", resume_from=tmp_path / "b")
    rows = rundir.read_samples(tmp_path / "a")
    assert [r["step"] for r in rows] == [3, 6, 9, 12]
    assert all(0 < len(r["text"]) <= 300 for r in rows)
    assert [r["text"] for r in rundir.read_samples(tmp_path / "b")] == [r["text"] for r in rows]


def test_the_console_shows_a_sample_above_the_bar_and_quiet_hides_it():
    row = {"step": 250, "chars_seen": 256000, "val_loss": 1.8744, "temperature": 0.8, "text": "To be\x1b[2J or\tnot"}
    step = {"step": 250, "fraction": 0.5, "loss": 1.9, "chars_per_second": 1000.0, "lr": 1e-3, "elapsed": 5.0}
    stream = io.StringIO()
    console = ConsoleProgress(stream=stream, tty=True)
    console("step", {**step, "remaining": 5.0})
    console("sample", {"row": row})
    console.close()
    shown = stream.getvalue()
    assert "── sample · step 250 · 256,000 chars · val 1.874 · temp 0.8 ──\nTo be\\x1b[2J or\tnot" in shown
    assert "\x1b[2J" not in shown  # the sample's escape sequence is made visible, never sent to the terminal
    assert sample_lines(row) in shown
    quiet = io.StringIO()
    console = ConsoleProgress(stream=quiet, tty=False, quiet=True)
    console("sample", {"row": row})
    assert quiet.getvalue() == ""


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--sample-temp", "-1"], "--sample-temp must be >= 0"),
        (["--sample-every", "-5"], "--sample-every must be >= 0"),
        (["--sample-length", "0"], "--sample-length must be > 0"),
        (["--sample-prime", "Zebra☃"], "--sample-prime has characters the corpus does not have: 'Z' '☃'"),
    ],
)
def test_bad_sample_flags_are_one_line(tmp_path, corpus_file, flags, message):
    result = invoke("train", corpus_file, "--max-steps", "2", "--out", tmp_path / "run", *helpers.TINY_FLAGS, *flags)
    assert_one_error(result, message)


@pytest.mark.slow
def test_cli_train_shows_samples_and_info_replays_them(tmp_path, corpus_file):
    run = tmp_path / "run"
    trained = invoke(
        "train", corpus_file, "--max-steps", "10", "--out", run, "--sample-length", "25", *helpers.TINY_RUN_FLAGS[:-1]
    )
    assert_ok(trained)
    rows = rundir.read_samples(run)
    assert [r["step"] for r in rows] == [5, 10]
    for row in rows:
        assert sample_lines(row) in trained.output  # shown while training (not quiet)
    quiet = invoke("train", corpus_file, "--max-steps", "5", "--out", tmp_path / "q", *helpers.TINY_RUN_FLAGS)
    assert_ok(quiet)
    assert "── sample" not in quiet.output and len(rundir.read_samples(tmp_path / "q")) == 1  # written, not shown
    replay = invoke("info", run, "--samples", "--no-chart")
    assert_ok(replay)
    for row in rows:
        assert sample_lines(row) in replay.stdout
    data = json.loads(invoke("info", run, "--samples", "--json").stdout)
    assert [r["text"] for r in data["samples"]] == [r["text"] for r in rows]
    none = invoke("info", tmp_path / "q" / "latest.pt", "--samples", "--no-chart")  # a run's checkpoint: its run
    assert "── sample · step 5" in none.stdout


def test_the_new_flags_are_in_help_and_readme():
    readme = (helpers.ROOT / "README.md").read_text(encoding="utf-8")
    for command, flags in (
        ("train", ["--sample-every", "--sample-length", "--sample-temp", "--sample-prime"]),
        ("info", ["--samples", "--plot", "--no-chart", "--json"]),
        ("sample", ["--interactive"]),
    ):
        shown = invoke(command, "--help", env={"COLUMNS": "200"}).output
        for flag in flags:
            assert flag in shown and flag in readme, (command, flag)
