"""Loss curves: `charlstm info RUN` draws them in the terminal, `--plot FILE` writes an image, and several runs are
overlaid with their summaries side by side."""

import json
import sys

import pytest

from charlstm.cli.plots import Curve, chars_unit, terminal_chart
from charlstm.runs import directory as rundir
from charlstm.training.run import train

from .helpers import assert_ok, assert_one_error, invoke, memory_corpus, tiny_model, tiny_train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (see conftest.one_thread)

ROWS = [
    {"step": 250, "chars_seen": 256_000, "train_loss": 2.31, "val_loss": 2.12},
    {"step": 500, "chars_seen": 512_000, "train_loss": 1.87, "val_loss": 1.80},
    {"step": 750, "chars_seen": 768_000, "train_loss": 1.62, "val_loss": 1.66},
    {"step": 1000, "chars_seen": 1_024_000, "train_loss": None, "val_loss": 1.58},  # no training loss: skipped
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny trained runs (different learning rates), named `slow` and `fast`."""
    root = tmp_path_factory.mktemp("runs")
    for name, lr in (("slow", 1e-3), ("fast", 1e-2)):
        train(memory_corpus(3000), tiny_model(), tiny_train(max_steps=15, lr=lr, sample_every=0), root / name)
    return root / "slow", root / "fast"


def test_terminal_chart_draws_both_curves_against_characters_seen():
    chart = terminal_chart([Curve("run", ROWS)], width=80, height=20, color=False)
    lines = chart.splitlines()
    assert len(lines) == 20 and max(len(line) for line in lines) == 80
    assert "\x1b" not in chart  # colourless for a pipe
    assert "loss (nats/char)" in lines[0] and "characters seen (M)" in lines[-1]
    assert "train" in chart and "val" in chart  # the legend
    assert "2.31" in chart or "2.3" in chart  # the top of the y axis: the highest loss
    coloured = terminal_chart([Curve("run", ROWS)], width=80, height=20, color=True)
    assert "\x1b[" in coloured


def test_several_runs_are_overlaid_by_name():
    other = [{**row, "val_loss": row["val_loss"] - 0.1} for row in ROWS]
    chart = terminal_chart([Curve("small", ROWS), Curve("big", other)], width=80, height=20, color=False)
    assert "small" in chart and "big" in chart
    assert terminal_chart([Curve("empty", [])]) == ""


def test_chars_unit():
    assert chars_unit(999) == (1.0, "")
    assert chars_unit(20_480) == (1e3, "k")
    assert chars_unit(2_500_000) == (1e6, "M")


def test_info_draws_the_loss_curve_of_a_run(runs):
    slow, _ = runs
    shown = invoke("info", slow)
    assert_ok(shown)
    assert "charlstm info" in shown.stdout and "loss (nats/char)" in shown.stdout
    assert "characters seen (k)" in shown.stdout  # 15 steps of 8 x 16 characters: thousands
    assert "\x1b" not in shown.stdout  # not a terminal here: no colour codes
    bare = invoke("info", slow, "--no-chart")
    assert "loss (nats/char)" not in bare.stdout and "best val loss" in bare.stdout


def test_info_of_several_runs_side_by_side(runs):
    slow, fast = runs
    shown = invoke("info", slow, fast)
    assert_ok(shown)
    header = next(line for line in shown.stdout.splitlines() if "slow" in line)
    assert "fast" in header  # one column per run
    assert "loss (nats/char)" in shown.stdout
    data = json.loads(invoke("info", slow, fast, "--json").stdout)
    assert [item["run"] for item in data] == [str(slow), str(fast)]
    assert all(item["step"] == 15 for item in data)
    single = json.loads(invoke("info", slow, "--json").stdout)  # one run: one object, as before
    assert single["step"] == 15 and single["run"] == str(slow)


def test_info_without_validations_says_so(tmp_path):
    run = tmp_path / "run"
    train(memory_corpus(3000), tiny_model(), tiny_train(max_steps=4, eval_every=100), run, should_stop=lambda s: s == 2)
    rundir.rewrite_metrics(run, [])
    shown = invoke("info", run)
    assert_ok(shown)
    assert "no validations yet" in shown.stdout


def test_plot_writes_an_svg_and_a_png(runs, tmp_path):
    pytest.importorskip("matplotlib")
    slow, fast = runs
    svg = tmp_path / "curves.svg"
    assert_ok(invoke("info", slow, "--plot", svg, "--no-chart"))
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert "characters seen" in text and "val" in text  # text stays text in the SVG
    first = svg.read_bytes()
    assert_ok(invoke("info", slow, "--plot", svg, "--no-chart"))
    assert svg.read_bytes() == first  # no date, fixed ids: the same run gives the same file
    png = tmp_path / "both.png"
    assert_ok(invoke("info", slow, fast, "--plot", png, "--no-chart"))
    assert png.read_bytes().startswith(b"\x89PNG")


def test_plot_errors_are_one_line(runs, tmp_path, monkeypatch):
    slow, _ = runs
    assert_one_error(invoke("info", slow, "--plot", tmp_path / "curves.txt"), "must end in .svg, .png or .pdf")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the plot extra were not installed
    assert_one_error(invoke("info", slow, "--plot", tmp_path / "curves.svg"), "pip install 'charlstm[plot]'")


def test_info_of_a_checkpoint_file_kept_elsewhere(runs, tmp_path):
    slow, _ = runs
    lone = tmp_path / "model.pt"
    lone.write_bytes((slow / "latest.pt").read_bytes())
    shown = invoke("info", lone, "--samples")
    assert_ok(shown)
    assert "without its run directory: no metrics.jsonl, no loss curve" in shown.stdout
    assert "No samples: a checkpoint file without its run directory" in shown.stdout
    assert "loss (nats/char)" in invoke("info", slow / "best.pt").stdout  # a run's own checkpoint: its run's curve
