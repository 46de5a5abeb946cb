"""Training that keeps its word: bounded validation, the wall-clock budget, signals at any moment, resume that
says what it does, and the progress a person sees."""

import io
import json
import math
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

import charlstm.training.setup as run_setup
from charlstm.checkpoint import store as ckpt
from charlstm.cli.progress import ConsoleProgress
from charlstm.config import ModelConfig
from charlstm.data.streams import Streams
from charlstm.model.charrnn import CharRNN
from charlstm.runs import directory as rundir
from charlstm.training import validation
from charlstm.training.budget import lr_at
from charlstm.training.run import train
from charlstm.training.trainer import Trainer
from charlstm.training.validation import evaluate_carried

from . import helpers
from .helpers import charlstm_command, cli_flags, curve, invoke, make_text, memory_corpus, notes_into, tiny_train

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = cli_flags(hidden=16, embed=8, batch_size=4, seq_len=8, eval_every=5)


def tiny_model(**kw):
    return helpers.tiny_model(**{"layers": 1, **kw})


# ------------------------------------------------------------------------------------------ the slice


def test_periodic_slice_is_fixed_seeded_and_bounded():
    big = 10_000_000
    a, b = validation.choose_slice(big, 65_536, seed=7), validation.choose_slice(big, 65_536, seed=7)
    assert np.array_equal(a.segments, b.segments) and not a.whole  # the same slice every time
    assert 65_536 <= a.chars < 65_536 + validation.SEGMENT
    assert np.all(np.diff(a.segments) > 0)  # sorted, no repeats
    spread = a.segments.max() - a.segments.min()
    assert spread > 0.8 * validation.num_segments(big)  # drawn from the whole split, not its start
    other = validation.choose_slice(big, 65_536, seed=8)
    assert not np.array_equal(a.segments, other.segments)
    small = validation.choose_slice(50_000, 65_536, seed=7)
    assert small.whole and small.chars == 50_000 - 1  # every target of a split smaller than the slice


def test_periodic_slice_takes_one_segment_from_each_stretch_of_the_split():
    """Spread over the split in proportion to its characters, so that its figure stands for the whole split."""
    big = 1_000_000
    chosen = validation.choose_slice(big, 65_536, seed=3)
    total = validation.num_segments(big)
    edges = np.linspace(0, total, len(chosen.segments) + 1).round()
    stretch = np.searchsorted(edges, chosen.segments, side="right") - 1
    assert stretch.tolist() == list(range(len(chosen.segments)))  # one segment in each of the equal stretches
    assert np.diff(edges).max() <= total / len(chosen.segments) + 1


def test_final_slice_scores_the_periodic_segments_first_then_covers_the_split():
    val_len = 400_000
    periodic = validation.choose_slice(val_len, 16_384, seed=1)
    final = validation.final_slice(val_len, 10**9, periodic, seed=2)
    n = len(periodic.segments)
    assert final.periodic == n and sorted(final.segments[:n]) == sorted(periodic.segments)
    assert final.whole and sorted(final.segments) == list(range(validation.num_segments(val_len)))
    # any first part of it is a sample of the whole split: its first 2n segments reach every quarter of the split
    quarters = set((final.segments[: 2 * n] * 4 // validation.num_segments(val_len)).tolist())
    assert quarters == {0, 1, 2, 3}
    bounded = validation.final_slice(val_len, 65_536, periodic, seed=2)
    assert not bounded.whole and len(bounded.segments) == 65_536 // validation.SEGMENT
    assert len(set(bounded.segments.tolist())) == len(bounded.segments)


def test_a_deadline_ends_the_scoring_after_a_first_batch():
    torch.manual_seed(0)
    ids = np.random.default_rng(0).integers(0, 12, 200_000).astype(np.uint8)
    model = CharRNN(ModelConfig(vocab_size=12, hidden=16, embed=8))
    periodic = validation.choose_slice(len(ids), 8192, seed=0)
    final = validation.final_slice(len(ids), 10**9, periodic, seed=1)
    scores = validation.score_slice(
        model, ids, final, torch.device("cpu"), None, deadline=time.perf_counter() - 1, at_least=1
    )
    assert scores.done == validation.ROWS < len(final.segments)  # one batch of segments, then the deadline
    whole = validation.score_slice(model, ids, final, torch.device("cpu"), None)
    assert whole.done == len(final.segments) and whole.chars == len(ids) - 1
    assert scores.mean() == pytest.approx(whole.mean(0, validation.ROWS))
    assert whole.mean() == pytest.approx(validation.evaluate_slice(model, ids, final, torch.device("cpu"), None))


def test_validations_follow_the_budget(tmp_path):
    """Without --eval-every, a validation each time another eighth of the budget is spent, at least 10 steps
    apart: eight rows for 80 steps (the last one the final evaluation), three for 24."""
    corpus = memory_corpus(20_000, seed=2)
    train(corpus, tiny_model(), tiny_train(max_steps=80, eval_every=None), tmp_path / "a")
    assert [r["step"] for r in rundir.read_metrics(tmp_path / "a")] == [10, 20, 30, 40, 50, 60, 70, 80]
    train(corpus, tiny_model(), tiny_train(max_steps=24, eval_every=None), tmp_path / "b")
    assert [r["step"] for r in rundir.read_metrics(tmp_path / "b")] == [10, 20, 24]


@pytest.mark.slow
def test_a_time_budget_validates_by_the_clock_and_ends_on_time(tmp_path):
    """A slow machine and a fast one draw the same curve: validations at eighths of the wall clock, and the run
    (final evaluation and save included) ends within --max-time."""
    corpus = memory_corpus(60_000, seed=4)
    events = []
    started = time.perf_counter()
    result = train(
        corpus,
        tiny_model(),
        tiny_train(max_time=4.0, eval_every=None),
        tmp_path / "r",
        on_event=lambda kind, data: events.append((kind, data)),
    )
    wall = time.perf_counter() - started
    rows = rundir.read_metrics(tmp_path / "r")
    assert 4 <= len(rows) <= 8 and "final_val_loss" in rows[-1]
    elapsed = [r["elapsed"] for r in rows[:-1]]
    assert elapsed[-1] - elapsed[0] >= 1.5  # spread over the clock, not bunched at the start or the end
    # the run's own clock ends by the budget (a loaded machine may slow the last save); the process soon after
    assert result.elapsed_seconds <= 4.0 + 1.0 and wall <= 4.0 + 3.0
    fractions = [d["fraction"] for kind, d in events if kind == "progress"]
    assert fractions and fractions == sorted(fractions)  # the bar moves during validations too
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["speed"]["realised_chars_per_second"] > 0 and run["speed"]["checked_chars_per_second"] > 0


@pytest.mark.slow
def test_a_plan_far_off_the_real_speed_is_made_again(tmp_path):
    """--size auto planned for a device 50 times slower than this one: the early check measures the real speed,
    chooses a larger model and starts again with it, and says so in one line; run.json keeps both speeds."""
    from charlstm.training import sizing

    corpus = memory_corpus(400_000, seed=6)
    notes = []

    def size_for(train_chars, vocab_size, model_config, train_config):
        slow = sizing.StepCost(fixed=0.05, per_param=2e-7, batch=8, seq_len=16)  # ~50x slower than a tiny step
        plan = sizing.Plan(train_chars, vocab_size, 8, "lstm", {"batch_size": 8, "seq_len": 16}, (), slow, "")
        return sizing.apply_plan(plan, model_config, train_config)[:2] + (plan,)

    trainer = Trainer(
        corpus,
        tiny_model(layers=1, embed=8),
        tiny_train(max_time=8.0, eval_every=None),
        tmp_path / "r",
        on_event=notes_into(notes),
        size_for=size_for,
    )
    planned_hidden = trainer.model_config.hidden
    result = trainer.train()
    replanned = [n for n in notes if "where the plan expected" in n]
    assert len(replanned) == 1 and "re-planned to" in replanned[0], notes
    assert trainer.model_config.hidden > planned_hidden and result.stopped_by == "max_time"
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    speed = run["speed"]
    assert speed["checked_chars_per_second"] > 2 * speed["planned_chars_per_second"]
    assert speed["replanned"] == replanned[0].removeprefix("note: ")
    assert run["model_config"]["hidden"] == trainer.model_config.hidden
    assert rundir.read_metrics(tmp_path / "r")[0]["step"] >= 10  # the curve is the new model's


def test_whole_split_slice_matches_the_carried_state_evaluation():
    """Segments with a burn-in score (almost) what one stream with its state carried over the whole split does."""
    torch.manual_seed(0)
    ids = np.random.default_rng(0).integers(0, 12, 20_000).astype(np.uint8)
    ids[::7] = 3  # some structure for the state to carry
    model = CharRNN(ModelConfig(vocab_size=12, hidden=32, embed=8))
    whole = validation.choose_slice(len(ids), 10**9, seed=0)
    sliced = validation.evaluate_slice(model, ids, whole, torch.device("cpu"), None)
    carried = evaluate_carried(model, Streams(ids, 1, 256), None)
    assert sliced == pytest.approx(carried, abs=2e-3)


def test_periodic_validation_scores_only_its_slice(tmp_path):
    """On a big validation split, each periodic check reads about --eval-chars characters, not the whole split."""
    corpus = memory_corpus(120_000, seed=3, name="big")
    config = tiny_train(max_steps=10, val_frac=0.5, eval_chars=2048, final_eval_chars=8192)
    trainer = Trainer(corpus, tiny_model(), config, tmp_path / "run")
    evaluated = []
    trainer.model.register_forward_hook(
        lambda m, args, out: evaluated.append(args[0].numel()) if not m.training else None
    )
    trainer.train()
    per_check = len(trainer.periodic_slice.segments) * (validation.SEGMENT + validation.BURN_IN)
    final = len(trainer.final_slice.segments) * (validation.SEGMENT + validation.BURN_IN)
    assert trainer.periodic_slice.chars < 4096 and not trainer.final_slice.whole
    # two periodic checks (steps 5 and 10) and one final evaluation; the split holds ~60,000 characters
    assert sum(evaluated) <= 2 * per_check + final < 60_000 / 2
    rows = rundir.read_metrics(tmp_path / "run")
    assert [r["val_chars"] for r in rows] == [trainer.periodic_slice.chars] * 2
    assert rows[-1]["final_val_chars"] == trainer.final_slice.chars and math.isfinite(rows[-1]["final_val_loss"])
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["validation"]["periodic_chars"] == trainer.periodic_slice.chars
    assert run["validation"]["final_whole_split"] is False and run["final_val_loss"] == rows[-1]["final_val_loss"]


# -------------------------------------------------------------------------------------- the clock


@pytest.mark.slow
def test_max_time_counts_validations(tmp_path, monkeypatch):
    """--max-time is the run's wall clock: slow validations use the budget instead of stretching the run."""
    real = validation.score_slice

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(validation, "score_slice", slow)
    corpus = memory_corpus(3000)
    started = time.perf_counter()
    result = train(corpus, tiny_model(), tiny_train(max_time=2.0, eval_every=1), tmp_path / "r")
    wall = time.perf_counter() - started
    assert result.stopped_by == "max_time"
    # training time alone would have run to 2 s (and taken ~100 validations of 0.3 s): most of it went to them,
    # and the end's reserve kept the final validation and save within the budget
    assert result.train_seconds < 1.0 < result.elapsed_seconds <= 2.0 + 0.2
    assert wall < 2.0 + 1.0


# ------------------------------------------------------------------------------------------- signals


def interrupt_during(phase: str, delay: float = 0.05):
    """An on_event sink that sends this process SIGINT `delay` s after the run enters `phase` (once)."""
    fired = {}

    def on_event(kind, data):
        if kind == "phase" and data["phase"] == phase and not fired:
            fired["at"] = time.perf_counter() + delay
            threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT)).start()

    return on_event, fired


def test_sigint_during_validation_stops_it_and_resume_is_exact(tmp_path, monkeypatch):
    corpus = memory_corpus(40_000, seed=5)
    # a validation that would take seconds: the whole split (20,000 characters) chunk by chunk, slowed down
    config = tiny_train(max_steps=12, eval_every=6, val_frac=0.5, eval_chars=10**6)
    real = validation.score_slice

    def slow_chunks(*args, should_abort=None, **kwargs):
        def abort():
            time.sleep(0.05)  # ~160 chunks: 8 s in all unless cut short
            return should_abort()

        return real(*args, should_abort=abort, **kwargs)

    straight = train(corpus, tiny_model(), config, tmp_path / "a")
    assert straight.step == 12

    monkeypatch.setattr(validation, "score_slice", slow_chunks)
    on_event, fired = interrupt_during("validating")
    result = train(corpus, tiny_model(), config, tmp_path / "b", on_event=on_event)
    stopped = time.perf_counter() - fired["at"]
    assert result.stopped_by == "interrupt (SIGINT)" and result.step == 6
    assert stopped < 5.0, "the validation was not cut short"  # it takes 8 s when it is not
    saved = ckpt.load_checkpoint(tmp_path / "b" / "latest.pt")
    assert saved["progress"]["step"] == 6 and saved["progress"]["eval_pending"] is True
    assert rundir.read_metrics(tmp_path / "b") == []  # the cut validation wrote no row
    monkeypatch.setattr(validation, "score_slice", real)

    resumed = train(corpus, tiny_model(), config, tmp_path / "x", resume_from=tmp_path / "b")
    assert resumed.step == 12
    assert curve(tmp_path / "a") == curve(tmp_path / "b")  # the pending validation ran first on resume
    a, b = ckpt.load_checkpoint(tmp_path / "a" / "latest.pt"), ckpt.load_checkpoint(tmp_path / "b" / "latest.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_sigint_during_setup_stops_before_training(tmp_path, monkeypatch):
    """Reading the corpus is interruptible: nothing trained, nothing saved, KeyboardInterrupt (the CLI exits 130)."""

    def slow_prepare(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # interrupted long before this ends
        raise AssertionError("not interrupted")

    monkeypatch.setattr(run_setup, "prepare_tokens", slow_prepare)  # the trainer's set-up reads the corpus
    corpus = memory_corpus(3000)
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        train(corpus, tiny_model(), tiny_train(max_steps=5), tmp_path / "r")
    assert time.perf_counter() - started < 4
    assert not (tmp_path / "r" / "latest.pt").exists()


# --------------------------------------------------------------------------------------------- resume


def test_resume_of_a_spent_budget_says_so(tmp_path, corpus_file):
    run = tmp_path / "run"
    assert invoke("train", corpus_file, "--max-steps", "10", "--out", run, *TINY).exit_code == 0
    before = (run / "latest.pt").read_bytes()
    again = invoke("train", "--resume", run)
    assert again.exit_code == 0, again.output
    assert "already used its budget (--max-steps 10" in again.stderr
    assert f"charlstm train --resume {run} --max-steps 20" in again.stderr  # how to extend it
    assert (run / "latest.pt").read_bytes() == before


def test_extended_budget_ramps_from_the_rate_it_stopped_at(tmp_path):
    corpus = memory_corpus(3000)
    config = tiny_train(max_steps=20, warmup_frac=0.1)
    lrs: dict[int, float] = {}
    notes = []

    def record(kind, data):
        if kind == "step":
            lrs[data["step"]] = data["lr"]
        notes_into(notes)(kind, data)

    train(corpus, tiny_model(), config, tmp_path / "r", on_event=record)
    assert lrs[20] == pytest.approx(lr_at(config, 19 / 20))
    stopped_at = lr_at(config, 20 / 20)  # where the schedule stood when the run ended: its floor
    longer = tiny_train(max_steps=40, warmup_frac=0.1)
    train(
        corpus,
        tiny_model(),
        longer,
        tmp_path / "x",
        resume_from=tmp_path / "r",
        explicit={"max_steps"},
        on_event=record,
    )
    message = next(n for n in notes if "re-planned" in n)
    assert "--max-steps 20 -> --max-steps 40" in message and f"{stopped_at:.2e}" in message
    # step 21 trains at the rate the run ended on (no jump); the ramp ends 10% of the budget (4 steps) later on
    # the curve of a 40-step run, which the rest follows
    assert lrs[21] == pytest.approx(stopped_at)
    assert lrs[22] > lrs[21] and lrs[25] == pytest.approx(lr_at(longer, 24 / 40))
    for step in range(26, 41):
        assert lrs[step] == pytest.approx(lr_at(longer, (step - 1) / 40)), step


# ------------------------------------------------------------------------------------ what a person sees


def test_piped_progress_is_plain_lines():
    stream = io.StringIO()
    view = ConsoleProgress(stream=stream, tty=False, line_every=0.0)
    for step in range(1, 4):
        view(
            "step",
            {
                "step": step,
                "fraction": step / 10,
                "loss": 2.0,
                "chars_per_second": 1000.0,
                "lr": 1e-3,
                "elapsed": float(step),
                "remaining": 10.0 - step,
            },
        )
    view("phase", {"phase": "validating"})
    view(
        "validation",
        {"row": {"step": 3, "chars_seen": 300, "train_loss": 2.1, "val_loss": 2.0, "elapsed": 3.0}, "improved": True},
    )
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 3 and lines[0].startswith(" 20% · step 2 · loss 2.000")
    assert lines[-1] == "step 3 · 300 chars · train 2.100 · val 2.000 ★ · 3s"


def test_cli_piped_output_shows_validation_lines(tmp_path, corpus_file):
    run = tmp_path / "run"
    result = invoke("train", corpus_file, "--max-steps", "10", "--out", run, *TINY[:-1])  # not quiet
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stderr
    assert "step 5 · 160 chars · train" in result.stderr and "step 10 · 320 chars" in result.stderr
    assert "final evaluation (whole split): val" in result.stderr


def test_info_with_no_path_shows_the_newest_run_readably(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tree = tmp_path / "src"
    tree.mkdir()
    for i in range(6):
        (tree / f"m{i}.py").write_text(make_text(800, seed=i))
    assert invoke("train", tree, "--glob", "*.py", "--max-steps", "5", *TINY).exit_code == 0
    shown = invoke("info", env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "Newest run: checkpoints/src" in shown.stderr
    out = shown.stdout
    assert "{" not in out and "'" not in out  # no dict dump
    for expected in (
        "sources",
        str(tree),
        "globs",
        "*.py",
        "records",
        "6 ",
        "characters",
        "vocabulary",
        "best val loss",
        "final val loss",
    ):
        assert expected in out, expected


def test_info_falls_back_to_the_checkpoint_when_run_json_is_damaged(tmp_path, corpus_file):
    run = tmp_path / "run"
    assert invoke("train", corpus_file, "--max-steps", "5", "--out", run, *TINY).exit_code == 0
    text = (run / "run.json").read_text()
    (run / "run.json").write_text(text[: len(text) // 2])  # cut short
    shown = invoke("info", run, "--json")
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert data["step"] == 5 and data["checkpoint"].endswith("latest.pt")


def test_resume_from_weights_without_optimizer_state(tmp_path):
    """A checkpoint shared without its optimizer state still resumes: AdamW starts afresh, and it says so."""
    corpus = memory_corpus(3000)
    train(corpus, tiny_model(), tiny_train(max_steps=5), tmp_path / "r")
    payload = torch.load(tmp_path / "r" / "latest.pt", weights_only=True)
    del payload["optimizer"]
    torch.save(payload, tmp_path / "r" / "latest.pt")
    notes = []
    result = train(
        corpus,
        tiny_model(),
        tiny_train(max_steps=8),
        tmp_path / "x",
        resume_from=tmp_path / "r",
        explicit={"max_steps"},
        on_event=notes_into(notes),
    )
    assert result.step == 8 and any("no optimizer state" in n for n in notes)


@pytest.mark.subprocess
@pytest.mark.slow
def test_terminal_shows_a_bar_with_validation_lines_above_it(tmp_path, corpus_file):
    """On a terminal (a pseudo-terminal here), the bar redraws in place and each validation prints a line."""
    import fcntl
    import pty
    import struct
    import subprocess
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 160, 0, 0))  # a 160 x 30 terminal
    command = charlstm_command(
        "train",
        corpus_file,
        "--max-steps",
        "40",
        "--out",
        tmp_path / "run",
        *cli_flags(hidden=16, embed=8, batch_size=4, seq_len=8, eval_every=20, quiet=False),
    )
    proc = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(leader)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, screen
    assert "\r" in screen and "train " in screen and "%|" in screen  # a bar, redrawn in place
    assert "step 20 · " in screen and "step 40 · " in screen and " ★ · " in screen  # validation lines
    assert "final evaluation (whole split)" in screen
