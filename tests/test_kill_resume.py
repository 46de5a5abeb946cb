"""Interruptions lose at most the work since the last save.

Training runs as a real `python -m charlstm train` subprocess that is SIGKILLed at random moments (seeded),
often in the middle of a save, and resumed each time; at the end the run must reach its step target with
the same weights as a run that was never interrupted.
"""

import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import charlstm.training.trainer as train_module
from charlstm.checkpoint import store as ckpt
from charlstm.config import ModelConfig, TrainConfig
from charlstm.data.corpus import Corpus
from charlstm.runs import directory as rundir
from charlstm.training.trainer import Trainer

from .helpers import charlstm_command, cli_flags, invoke, memory_corpus, one_thread_env, saved_step, write_corpus

TARGET_STEPS = 400  # far more than three short rounds can reach, even on a fast machine
SAVE_EVERY = 2  # frequent saves, so that many kills land inside one
TINY = cli_flags(
    hidden=16, embed=8, batch_size=4, seq_len=16, eval_every=25, max_steps=TARGET_STEPS, save_every=SAVE_EVERY
)
ENV = one_thread_env()
pytestmark = pytest.mark.usefixtures("one_thread")


def train_command(corpus: Path, run: Path, resume: bool) -> list[str]:
    return charlstm_command("train", corpus, "--out", run, *TINY, *(["--resume", run] if resume else []))


def wait_until(condition, proc: subprocess.Popen, timeout: float = 60) -> bool:
    """Until `condition()` holds (True) or the process ends or the time is up (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.005)
    return False


def wait_for_new_save(run: Path, proc: subprocess.Popen, timeout: float = 60) -> bool:
    """Until latest.pt is (re)written by this process (True), so every round makes progress before it is killed."""
    latest = run / rundir.LATEST
    before = latest.stat().st_mtime_ns if latest.exists() else None
    return wait_until(lambda: latest.exists() and latest.stat().st_mtime_ns != before, proc, timeout)


def resume_in_process(corpus: Path, run: Path):
    """The last resume runs through the CLI in this process (a subprocess costs seconds of start-up), saving
    less often (saves do not change what is learned) so that it finishes quickly."""
    args = train_command(corpus, run, resume=True)[3:] + ["--save-every", "100"]  # after `python -m charlstm`
    result = invoke(*args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def reference_weights(corpus_text: str, tmp_path: Path, run: Path) -> dict[str, torch.Tensor]:
    """The same run, in-process and never interrupted: the configs the run recorded (what --size auto chose, the
    precision included), saving less often."""
    recorded = json.loads((run / "run.json").read_text())
    model = ModelConfig(**recorded["model_config"])
    config = replace(TrainConfig(**recorded["train_config"]), save_every=100)
    assert (model.hidden, config.max_steps) == (16, TARGET_STEPS)
    corpus = Corpus(text=corpus_text, name="corpus", sources=["memory"])
    Trainer(corpus, model, config, tmp_path / "reference").train()
    return ckpt.load_checkpoint(tmp_path / "reference" / rundir.LATEST)["model"]


@pytest.mark.subprocess
@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_reaches_target(tmp_path):
    rng = random.Random(20240611)
    corpus = write_corpus(tmp_path, 3000)
    run = tmp_path / "run"
    steps_seen, kills, leftovers = [], 0, 0
    for round_ in range(3):
        proc = subprocess.Popen(
            train_command(corpus, run, resume=(run / rundir.LATEST).exists()),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        if round_ == 0:  # the first kill may come before any checkpoint exists
            started = wait_until(run.exists, proc)
        else:
            started = wait_for_new_save(run, proc)
        time.sleep(rng.uniform(0.0, 0.15))
        running = proc.poll() is None  # not finished, nor failed, in the meantime
        proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
        assert "Traceback" not in stderr, stderr
        assert proc.returncode == -signal.SIGKILL, stderr
        kills += started and running  # a kill that interrupted a process at work on the run
        leftovers += len(list(run.glob(".*.tmp")))
        if (run / rundir.LATEST).exists():
            steps_seen.append(saved_step(run))  # loads: a kill never leaves a damaged latest.pt
            if (run / rundir.BEST).exists():
                ckpt.load_model_checkpoint(run / rundir.BEST)
    assert kills == 3, f"only {kills} of 3 kills interrupted a running training process"
    assert steps_seen == sorted(steps_seen), f"a resume went backwards: {steps_seen}"
    assert steps_seen and steps_seen[-1] < TARGET_STEPS

    final = resume_in_process(corpus, run)
    assert final.exit_code == 0, final.output
    assert saved_step(run) == TARGET_STEPS
    assert not list(run.glob(".*.tmp")), "temporary files of killed saves were not cleaned up"
    # every resume restarted from exactly the saved state: the weights are those of an uninterrupted run
    resumed = ckpt.load_checkpoint(run / rundir.LATEST)["model"]
    expected = reference_weights(corpus.read_text(encoding="utf-8"), tmp_path, run)
    for name, tensor in expected.items():
        assert torch.allclose(resumed[name], tensor, atol=1e-5), name
    print(f"kills={kills} steps at kills={steps_seen} temp files left by kills={leftovers}")


KILL_IN_SAVE = textwrap.dedent(
    """
    import os, signal, sys, torch
    real_save, calls = torch.save, [0]
    def dying_save(obj, handle, *args, **kwargs):
        calls[0] += 1
        if calls[0] == int(os.environ["KILL_AT_SAVE"]):
            handle.write(b"PK\\x03\\x04 only the start of a checkpoint")
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, handle, *args, **kwargs)
    torch.save = dying_save
    from charlstm.cli.app import app
    app(sys.argv[1:])
    """
)


@pytest.mark.subprocess
@pytest.mark.slow
def test_sigkill_inside_a_save_keeps_previous_checkpoint_and_resumes(tmp_path):
    corpus = write_corpus(tmp_path, 3000)
    run = tmp_path / "run"
    args = train_command(corpus, run, resume=False)[3:]  # after `python -m charlstm`
    killed = subprocess.run(
        [sys.executable, "-c", KILL_IN_SAVE, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**ENV, "KILL_AT_SAVE": "4"},
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert list(run.glob(".latest.pt.*.tmp")), "the kill should have landed inside a save"
    assert saved_step(run) == 3 * SAVE_EVERY  # the third save is intact; the fourth never replaced it

    resumed = resume_in_process(corpus, run)
    assert resumed.exit_code == 0, resumed.output
    assert saved_step(run) == TARGET_STEPS
    assert not list(run.glob(".*.tmp"))


@pytest.mark.parametrize("every", ["steps", "seconds"])
def test_save_every_bounds_the_work_a_kill_can_lose(tmp_path, monkeypatch, every):
    """Between two saves there are never more than --save-every steps (or seconds of training)."""
    clock = iter(range(10**6))
    fake_time = SimpleNamespace(perf_counter=lambda: next(clock) * 0.25)  # every call: +0.25 s
    monkeypatch.setattr(train_module, "time", fake_time)  # the trainer's clock only
    saves: list[tuple[int, float]] = []
    real_save = ckpt.save_checkpoint

    def recording_save(payload, path):
        if Path(path).name == rundir.LATEST:
            saves.append((payload["progress"]["step"], payload["progress"]["train_seconds"]))
        real_save(payload, path)

    monkeypatch.setattr(ckpt, "save_checkpoint", recording_save)
    limit = {"save_every": 7} if every == "steps" else {"save_every_seconds": 3.0}
    config = TrainConfig(batch_size=4, seq_len=16, eval_every=1000, max_steps=60, **limit)
    corpus = memory_corpus(2000)
    Trainer(corpus, ModelConfig(hidden=16, embed=8), config, tmp_path / "run").train()
    steps = [0] + [s for s, _ in saves]
    seconds = [0.0] + [t for _, t in saves]
    assert steps[-1] == 60 and len(saves) >= 5
    if every == "steps":
        assert all(b - a == 7 for a, b in zip(steps[:-1], steps[1:-1])), steps
    else:
        gaps = [b - a for a, b in zip(seconds[:-1], seconds[1:])]
        assert all(gap <= 3.0 + 0.5 for gap in gaps), gaps  # at most one step (0.25-0.5 s) past the limit
        assert all(gap >= 3.0 for gap in gaps[:-1]), gaps  # and not more often than asked
