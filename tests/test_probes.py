"""`charlstm probe`: the tasks' sequences, and the command on tiny settings."""

import json
import random

import pytest

from charlstm.experiments.probes import ProbeConfig, make_example, remaining_count, run_probe

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


@pytest.mark.slow  # a real browser
def test_probe_page_opens_on_the_unit_that_follows_the_count(tmp_path, browser):
    """`probe --out`: the inspector's page of the probe model, in Chromium, opens on the best unit it names,
    with the custom cell's own quantities (pseudo2's state and read gate) in the picker."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from .browser import console_errors, open_page

    page = tmp_path / "count.html"
    result = invoke("probe", "count", "--steps", "30", "--cell", "pseudo2", "--eval-max", "11", "--out", str(page))
    assert_ok(result)
    assert f"page: {page}" in result.stdout
    open_page(browser, page)
    WebDriverWait(browser, 20).until(lambda d: d.execute_script("return !!document.body.dataset.ready"))
    assert console_errors(browser) == []
    text = "".join(s.text for s in browser.find_elements(By.CSS_SELECTOR, "#text span"))
    assert "aaaXbbb" in text.replace("↵", "").replace("\n", "")
    best = browser.find_element(By.CSS_SELECTOR, "#findings button").text  # e.g. "L1 state #3 r=-0.97"
    assert browser.find_element(By.ID, "unit").get_attribute("value") == best.split("#")[1].split()[0]
    quantities = [o.text for o in Select(browser.find_element(By.ID, "quantity")).options]
    assert {"state", "read gate"} <= set(quantities)
    assert "count still to emit" in browser.find_element(By.ID, "findings").text


def test_probe_page_json_and_the_copy_task_refused(tmp_path):
    page = tmp_path / "memory.html"
    result = invoke("probe", "memory", "--steps", "10", "--eval-max", "11", "--out", str(page), "--json")
    assert_ok(result)
    assert json.loads(result.stdout)["page"] == str(page) and page.stat().st_size > 0
    assert_one_error(invoke("probe", "copy", "--steps", "5", "--out", str(tmp_path / "c.html")), "--out", "copy")
    assert not (tmp_path / "c.html").exists()
