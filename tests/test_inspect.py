"""`charlstm inspect` as a person uses it: the command (CliRunner), and the page it writes in a real headless
Chromium, opened from file://."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from charlstm.config import ModelConfig, TrainConfig
from charlstm.runs import directory as rundir
from charlstm.training.run import train

from .browser import console_errors, open_page
from .helpers import assert_ok, assert_one_error, invoke, make_text, memory_corpus, torch_threads

pytestmark = pytest.mark.usefixtures("one_thread")

HIDDEN, LAYERS = 16, 2
TEXT = make_text(400, seed=5)  # what the page reads


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny 2 x 16 LSTM run with a few validations in its metrics.jsonl."""
    run_dir = tmp_path_factory.mktemp("run")
    with torch_threads(1):
        train(
            memory_corpus(3000),
            ModelConfig(layers=LAYERS, hidden=HIDDEN, embed=8),
            TrainConfig(batch_size=8, seq_len=16, max_steps=20, eval_every=5),
            run_dir,
        )
    return run_dir


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "read.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def page(run, text_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("page") / "page.html"
    with torch_threads(1):
        assert_ok(invoke("inspect", run, "--text", text_file, "--out", out, "--find", "in-word"))
    return out


def test_writes_one_page_and_prints_its_path_and_the_units_found(run, text_file, tmp_path):
    out = tmp_path / "sub" / "p.html"
    result = invoke("inspect", run, "--text", text_file, "--out", out, "--find", "line-position", "--find", "[aeiou]")
    assert_ok(result)
    lines = result.output.strip().splitlines()
    assert lines[-1] == str(out) and out.is_file()
    for feature in ("line-position", "[aeiou]"):
        at = next(i for i, line in enumerate(lines) if line.startswith(f"--find {feature}:"))
        units = lines[at + 1 : at + 11]
        assert len(units) == 10 and all("r = " in line for line in units)
        rs = [abs(float(line.split("r = ")[1])) for line in units]
        assert rs == sorted(rs, reverse=True)
    document = out.read_text(encoding="utf-8").replace("http://www.w3.org/2000/svg", "")  # a name, not a fetch
    assert "http://" not in document and "https://" not in document  # nothing fetched from a network
    assert "<script src" not in document and "<link" not in document


def test_json_has_the_findings_and_the_saturation_counts(run, text_file, tmp_path):
    result = invoke("inspect", run, "--text", text_file, "--out", tmp_path / "p.html", "--find", "in-word", "--json")
    assert_ok(result)
    data = json.loads(result.output)
    assert data["page"] == str(tmp_path / "p.html") and data["chars"] == len(TEXT) and not data["cut"]
    found = data["findings"]["in-word"]
    assert len(found) == 10 and {"layer", "quantity", "unit", "r"} <= set(found[0])
    gates = [(s["layer"], s["gate"]) for s in data["saturation"]]
    assert gates == [(layer, g) for layer in range(LAYERS) for g in ("input gate", "forget gate", "output gate")]
    for entry in data["saturation"]:
        assert len(entry["left"]) == len(entry["right"]) == HIDDEN
        assert all(0 <= left + right <= entry["chars"] for left, right in zip(entry["left"], entry["right"]))


def test_prime_generates_and_the_seed_repeats_it(run, tmp_path):
    args = ("inspect", run, "--prime", "The ", "--length", "60", "--seed", "3", "--json")
    first = json.loads(invoke(*args, "--out", tmp_path / "a.html").output)
    second = json.loads(invoke(*args, "--out", tmp_path / "b.html").output)
    assert first["primed"] == 4 and first["chars"] == 64 and first["seed"] == 3
    assert first["mean_surprise"] == second["mean_surprise"]


def test_a_long_text_is_cut_at_the_stated_limit(run, text_file, tmp_path):
    result = invoke("inspect", run, "--text", text_file, "--out", tmp_path / "p.html", "--max-chars", "100")
    assert_ok(result)
    assert f"read the first 100 of {len(TEXT)} characters" in result.output
    big = tmp_path / "big.txt"  # larger than one read: read only as far as the cut, its length left unknown
    big.write_text(TEXT * (3_000_000 // len(TEXT)), encoding="utf-8")
    result = invoke("inspect", run, "--text", big, "--out", tmp_path / "p.html", "--max-chars", "100", "--json")
    assert_ok(result)
    data = json.loads(result.output)
    assert data["chars"] == 100 and data["cut"] and data["total_chars"] is None


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--text", "{text}"], "no such run"),
        (["--text", "{missing}"], "not found"),
        (["--text", "{foreign}"], "never saw"),
        (["--text", "{text}", "--find", "(unclosed"], "neither a built-in feature"),
        (["--text", "{text}", "--prime", "a"], "exactly one of --text"),
        ([], "exactly one of --text"),
        (["--prime", "€"], "--prime has characters"),
        (["--prime", "a", "--temp", "-1"], "--temp"),
    ],
)
def test_bad_input_is_one_line(run, text_file, tmp_path, args, fragment):
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("abc € def", encoding="utf-8")
    paths = {"text": text_file, "missing": tmp_path / "nope.txt", "foreign": foreign}
    target = tmp_path / "no-run" if fragment == "no such run" else run
    args = [a.format(**paths) for a in args]
    assert_one_error(invoke("inspect", target, *args, "--out", tmp_path / "p.html"), fragment)


# ------------------------------------------------------------------------------------------- in Chromium


def load(browser, page: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, page)
    WebDriverWait(browser, 20).until(lambda d: d.execute_script("return !!document.body.dataset.ready"))


def colours(browser) -> list[str]:
    return browser.execute_script(
        "return [...document.querySelectorAll('#text span')].map(s => s.style.backgroundColor)"
    )


@pytest.mark.slow  # a real browser
def test_page_opens_without_errors_on_the_best_unit_and_the_picker_recolours(browser, page, run):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    load(browser, page)
    assert console_errors(browser) == []
    spans = browser.find_elements(By.CSS_SELECTOR, "#text span")
    assert len(spans) == len(TEXT)
    best = browser.find_element(By.CSS_SELECTOR, "#findings button").text  # e.g. "L1 candidate #3 r=0.52"
    layer, unit = best.split()[0][1:], best.split("#")[1].split()[0]
    assert Select(browser.find_element(By.ID, "layer")).first_selected_option.text == layer
    assert browser.find_element(By.ID, "unit").get_attribute("value") == unit

    before = colours(browser)
    Select(browser.find_element(By.ID, "quantity")).select_by_visible_text("c")
    after_quantity = colours(browser)
    assert after_quantity != before
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)  # the next unit
    assert browser.find_element(By.ID, "unit").get_attribute("value") == str(int(unit) + 1)
    assert colours(browser) != after_quantity

    heat = browser.find_element(By.ID, "heat")  # a click on a row of the heatmap picks that unit
    browser.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "arguments[0].dispatchEvent(new MouseEvent('click', {clientX: r.left + 5, clientY: r.top + r.height * 0.99,"
        " bubbles: true}));",
        heat,
    )
    assert browser.find_element(By.ID, "unit").get_attribute("value") == str(HIDDEN - 1)
    assert console_errors(browser) == []


@pytest.mark.slow  # a real browser
def test_hovering_a_character_shows_five_predictions(browser, page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    load(browser, page)
    span = browser.find_elements(By.CSS_SELECTOR, "#text span")[10]
    ActionChains(browser).move_to_element(span).perform()
    tip = browser.find_element(By.ID, "tip")
    assert tip.is_displayed()
    rows = tip.find_elements(By.CSS_SELECTOR, ".pred")
    assert len(rows) == 5
    probabilities = [float(row.get_attribute("data-p")) for row in rows]
    assert 0 < sum(probabilities) <= 1
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(row.find_element(By.CSS_SELECTOR, ".char").text for row in rows)


@pytest.mark.slow  # a real browser
def test_the_saturation_plot_and_the_loss_curve_are_drawn(browser, page, run):
    from selenium.webdriver.common.by import By

    load(browser, page)
    plots = browser.find_elements(By.CSS_SELECTOR, "#saturation svg.saturation-plot")
    assert len(plots) == LAYERS
    for plot in plots:
        assert len(plot.find_elements(By.TAG_NAME, "circle")) == 3 * HIDDEN  # input, forget, output gates
    validations = len(rundir.read_metrics(run))
    assert validations >= 2
    for series in ("train", "val"):
        points = browser.find_element(By.CSS_SELECTOR, f"#loss polyline.loss-{series}").get_attribute("points")
        assert len(points.split()) == validations


@pytest.mark.slow  # trains a second tiny run
def test_a_record_trained_model_reads_the_text_as_a_record(tmp_path):
    from charlstm.config import CorpusConfig

    table = tmp_path / "posts.csv"
    table.write_text("Text\n" + "".join(f'"post {i} about #tag{i % 3} @user"\n' for i in range(150)), encoding="utf-8")
    run_dir = tmp_path / "records-run"
    with torch_threads(1):
        train(
            CorpusConfig(paths=[str(table)], text_field="Text"),
            ModelConfig(cell="gru", layers=1, hidden=12, embed=8),
            TrainConfig(batch_size=4, seq_len=16, max_steps=10, eval_every=5),
            run_dir,
        )
    text = tmp_path / "post.txt"
    text.write_text("post 7 about #tag1 @user", encoding="utf-8")
    result = invoke("inspect", run_dir, "--text", text, "--find", "in-tag", "--json", "--out", tmp_path / "p.html")
    assert_ok(result)
    data = json.loads(result.output)
    assert data["chars"] == 24 and data["saturation"][0]["gate"] == "reset gate"
    assert '"⟨end⟩"' in (tmp_path / "p.html").read_text(encoding="utf-8")  # the marker, as predictions name it


@pytest.mark.slow  # a real browser
def test_primed_and_generated_characters_are_told_apart(browser, run, tmp_path):
    from selenium.webdriver.common.by import By

    page = tmp_path / "primed.html"
    assert_ok(invoke("inspect", run, "--prime", "The dog", "--length", "40", "--seed", "2", "--out", page))
    load(browser, page)
    spans = browser.find_elements(By.CSS_SELECTOR, "#text span")
    primed = [span.text for span in spans if "primed" in span.get_attribute("class")]
    assert "".join(primed) == "The dog" and len(spans) == 47
    assert "7 primed characters" in browser.find_element(By.ID, "origin").text
    assert console_errors(browser) == []


def test_a_corrupt_checkpoint_is_one_line(text_file, tmp_path):
    damaged = tmp_path / "best.pt"
    damaged.write_bytes(b"PK\x03\x04 not really a checkpoint")
    assert_one_error(invoke("inspect", damaged, "--text", text_file, "--out", tmp_path / "p.html"))
    assert not (tmp_path / "p.html").exists()
