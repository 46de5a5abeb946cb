"""`charlstm probe`: the tasks' sequences, and the command on tiny settings."""

import json
import random

import pytest

from charlstm.probes import ProbeConfig, make_example, remaining_count, run_probe

from .helpers import assert_ok, assert_one_error, invoke

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_tasks_sequences():
    rng = random.Random(0)
    count = make_example("count", 3, rng)
    assert (count.prompt, count.answer) == ("aaaX", "bbb\n")
    assert remaining_count(count) == [1, 2, 3, 3, 2, 1, 0]  # a's seen, then b's still to emit
    distract = make_example("count-distract", 5, rng)
    assert distract.prompt.endswith("Y") and distract.prompt.count("a") == 5 and distract.answer == "bbbbb\n"
    assert set(distract.prompt[:-1]) <= {"a", "X"}
    memory = make_example("memory", 4, rng)
    assert memory.prompt[1:] == "xxxxY" and memory.answer == memory.prompt[0].lower() + "\n"
    copy = make_example("copy", 4, rng)
    assert copy.prompt == copy.answer[:-1] + "X" and set(copy.answer[:-1]) <= set("abc")


@pytest.mark.slow
def test_a_trained_counter_counts_and_its_units_follow_the_count():
    """A few hundred steps teach the 1 x 10 LSTM to count within a short range; the best unit follows the count."""
    result = run_probe(ProbeConfig(task="count", train_max=3, eval_max=6, steps=150, seeds=1))
    summary = result.summary()
    assert summary["in_range_accuracy"]["mean"] == 1.0
    first_fail = summary["first_fail_each"][0]
    assert first_fail is None or first_fail > 3
    assert abs(result.per_seed[0]["units"][0]["r"]) > 0.8


def test_probe_command_json_and_table():
    flags = ["--steps", "20", "--hidden", "6", "--eval-max", "12", "--seeds", "2", "--cell", "pseudo2"]
    result = invoke("probe", "count", *flags, "--json")
    assert_ok(result)
    data = json.loads(result.stdout)
    assert data["config"]["cell"] == "pseudo2" and data["config"]["train_max"] == 10
    assert sorted(int(n) for n in data["per_length"]) == list(range(1, 13))
    assert len(data["first_fail_each"]) == 2 and len(data["seeds"]) == 2
    assert {"mean", "min", "max"} == set(data["in_range_accuracy"])
    assert all(len(seed["units"]) == 3 for seed in data["seeds"])
    table = invoke("probe", "memory", "--steps", "10", "--eval-max", "11", "--cell", "gru")
    assert_ok(table)
    assert "probe memory: gru, 1 x 10" in table.stdout and "(beyond training)" in table.stdout
    assert "units following the remembered letter" in table.stdout


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["counting"], ["TASK", "count-distract"]),
        (["count", "--cell", "lsmt"], ["--cell", "pseudo2"]),
        (["count", "--steps", "0"], ["--steps"]),
        (["count", "--train-max", "12", "--eval-max", "5"], ["--eval-max"]),
        (["copy", "--lr", "-1"], ["--lr"]),
    ],
)
def test_bad_probe_flags_are_one_line_errors(args, fragments):
    assert_one_error(invoke("probe", *args), *fragments)
