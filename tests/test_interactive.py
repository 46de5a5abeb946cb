"""`charlstm sample RUN --interactive`: the conversation's logic in process, and the real command typed into
through a pseudo-terminal (pexpect), as a person uses it."""

import os
import re
import sys

import pexpect
import pytest
import torch

from charlstm.config import SampleConfig
from charlstm.errors import CharlstmError
from charlstm.generate.interactive import Conversation, Session, decode_escapes
from charlstm.generate.sample import sample_text
from charlstm.runs.model_file import load_model
from charlstm.training.run import train

from .helpers import ROOT, load_sources, memory_corpus, tiny_model, tiny_train, write_corpus

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (see conftest.one_thread)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny model trained a little (so that it prefers some characters)."""
    path = tmp_path_factory.mktemp("interactive") / "run"
    with torch.random.fork_rng():
        train(memory_corpus(3000), tiny_model(), tiny_train(max_steps=20, eval_every=20, sample_every=0), path)
    return path


def logits_of(conversation):
    return torch.as_tensor(conversation.logits).clone()


def test_the_state_is_kept_across_turns_and_reset_forgets(run):
    loaded = load_model(run)
    one = Conversation(loaded, SampleConfig(seed=1))
    start = logits_of(one)
    one.feed("The quick")
    one.feed(" brown")
    two = Conversation(loaded, SampleConfig(seed=1))
    two.feed("The quick brown")
    assert torch.allclose(logits_of(one), logits_of(two), atol=1e-6)  # two turns == one turn of both
    assert not torch.allclose(logits_of(one), start)
    one.reset()
    assert torch.equal(logits_of(one), start) and one.text == ""


def test_a_first_continuation_is_what_charlstm_sample_draws_with_the_same_seed(run):
    loaded = load_model(run)
    conversation = Conversation(loaded, SampleConfig(seed=5, length=60))
    said = "".join(conversation.continuation())
    assert said == sample_text(loaded, SampleConfig(seed=5, length=60))[0]
    assert len(said) == 60 and conversation.text == said


def test_a_record_model_starts_and_ends_a_record(tmp_path):
    files = tmp_path / "notes"
    files.mkdir()
    for i in range(30):
        write_corpus(files, 100, seed=i, name=f"note{i}.txt")
    train(load_sources(files), tiny_model(), tiny_train(max_steps=30, eval_every=30, sample_every=0), tmp_path / "r")
    loaded = load_model(tmp_path / "r")
    conversation = Conversation(loaded, SampleConfig(seed=3, length=400))
    said = "".join(conversation.continuation())
    assert said == sample_text(loaded, SampleConfig(seed=3, length=400))[0]  # from a record start state, as sample
    if len(said) < 400:
        assert conversation.ended_record


def test_top_lists_probabilities_and_a_pick_feeds_that_character(run):
    conversation = Conversation(load_model(run), SampleConfig(seed=1))
    conversation.feed("The")
    top = conversation.top(5)
    assert len(top) == 5
    probabilities = [p for _, p in top]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
    token = top[1][0]
    char = conversation.pick(token)
    other = Conversation(load_model(run), SampleConfig(seed=1))
    other.feed("The" + char)
    assert torch.allclose(logits_of(conversation), logits_of(other), atol=1e-6)


def test_characters_outside_the_vocabulary_feed_nothing(run):
    conversation = Conversation(load_model(run), SampleConfig(seed=1))
    before = logits_of(conversation)
    with pytest.raises(CharlstmError, match="not in the model's vocabulary: 'é'"):
        conversation.feed("The é")
    assert torch.equal(logits_of(conversation), before) and conversation.text == ""


def test_escapes():
    assert decode_escapes(r"a\nb\tc\\n") == "a\nb\tc\\n"


def test_session_commands_in_process(run):
    """The session's replies to each command, driven by a scripted prompt."""
    lines = iter(["/temp 0", "/length 12", "The", "", "/top 3", "2", "x", "/seed nope", "/top 99", "/bogus", "/quit"])
    shown = []
    conversation = Conversation(load_model(run), SampleConfig(seed=1))
    Session(conversation, lambda prompt: next(lines), shown.append).run()
    text = "".join(shown)
    assert "Temperature 0." in text and "Continuations of 12 characters." in text
    assert "picked" in text and "cannot read 'nope' as a number; e.g. /seed 7" in text
    assert "/top takes a number from 1 to 50, got 99" in text
    assert "Unknown command /bogus" in text
    assert conversation.config.temperature == 0 and conversation.config.length == 12
    # greedy (temperature 0) from "The": the continuation is the argmax path, 12 characters a turn
    greedy = Conversation(load_model(run), SampleConfig(seed=1, temperature=0, length=12))
    greedy.feed("The")
    first = "".join(greedy.continuation())
    assert "The" + first in text


def _spawn(*args):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "PROMPT_TOOLKIT_NO_CPR": "1",  # a pty answers no cursor-position request: do not ask (nor warn)
        "TERM": "xterm",
    }
    return pexpect.spawn(
        sys.executable,
        ["-m", "charlstm", "sample", *map(str, args)],
        env=env,
        dimensions=(24, 100),
        encoding="utf-8",
        timeout=60,
    )


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def ask(child, line: str) -> None:
    """Type a line once the prompt is drawn (typed ahead, a Ctrl-D would reach the terminal, not the prompt)."""
    child.expect(">")
    child.sendline(line)


@pytest.mark.slow
@pytest.mark.subprocess
def test_typing_into_the_real_command(run):
    child = _spawn(run, "--interactive", "--seed", "1", "--length", "40")
    try:
        child.expect("Ctrl-D leaves")
        ask(child, "The quick")
        child.expect("The quick")  # the text typed, then the model's continuation of it
        ask(child, "/top 3")
        child.expect(r"1  '.+?'\s+\d+\.\d%")
        ask(child, "1")
        child.expect("picked '")
        child.expect("pick 1-3")
        ask(child, "")
        ask(child, "Zebra é")  # outside the vocabulary: one line, and the session goes on
        child.expect("not in the model's vocabulary: 'Z' 'é'; nothing was fed")
        ask(child, "/temp 0.5")
        child.expect("Temperature 0.5.")
        ask(child, "/length 300")
        child.expect("Continuations of 300 characters.")
        ask(child, "/seed 7")
        child.expect("Seed 7.")
        ask(child, "/reset")
        child.expect("Forgotten")
        ask(child, "/help")
        child.expect("Ctrl-D \\(or /quit\\) leaves")
        child.expect(">")
        child.sendcontrol("d")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


@pytest.mark.slow
@pytest.mark.subprocess
def test_interactive_refuses_other_layouts_in_one_line(run):
    child = _spawn(run, "--interactive", "-N", "2")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    output = ANSI.sub("", child.before)
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines[-1].startswith("error: --interactive takes one --temp") and "Traceback" not in output
