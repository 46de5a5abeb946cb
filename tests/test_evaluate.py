"""`charlstm eval`: the validation split agrees with what training recorded, files are scored with the state
carried, out-of-vocabulary characters are counted and left out, baselines and novelty come alongside."""

import json
import math

import numpy as np
import pytest
import torch

from charlstm.evaluate.scoring import score_stream
from charlstm.runs import directory as rundir
from charlstm.runs.model_file import load_model
from charlstm.training.run import train

from .helpers import (
    assert_ok,
    assert_one_error,
    invoke,
    load_sources,
    tiny_model,
    tiny_train,
    torch_threads,
    write_corpus,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run on a text file: its validation split (~600 characters) is scored whole by every validation."""
    folder = tmp_path_factory.mktemp("eval")
    corpus = write_corpus(folder, n_chars=6000)
    run_dir = folder / "run"
    with torch_threads(1):  # module-scoped: set up before the one_thread fixture
        train(load_sources(corpus), tiny_model(), tiny_train(max_steps=12, eval_every=5), run_dir)
    return run_dir


def _json(result) -> dict:
    assert_ok(result)
    return json.loads(result.stdout)


def test_the_split_agrees_with_the_recorded_final_evaluation(run):
    recorded = rundir.read_run_json(run)["final_val_loss"]
    data = _json(invoke("eval", run / rundir.LATEST, "--json"))
    assert data["scored"] == "validation split" and data["agrees"] is True
    assert data["total"]["nats_per_char"] == pytest.approx(recorded, abs=1e-5)
    assert data["total"]["chars_scored"] == rundir.read_run_json(run)["validation"]["split_chars"]
    text = invoke("eval", run / rundir.LATEST).stdout
    assert "agrees" in text and f"{recorded:.5f}" in text


def test_a_file_is_one_stream_with_the_state_carried(run):
    loaded = load_model(run)
    ids = np.random.default_rng(0).integers(0, len(loaded.vocab), 700)
    chunked, targets = score_stream(loaded.model, ids, "cpu", chunk=64)
    with torch.no_grad():
        logits, _ = loaded.model(torch.from_numpy(ids[:-1]).long()[None])  # one call over the whole text
        whole = torch.nn.functional.cross_entropy(logits[0], torch.from_numpy(ids[1:]).long(), reduction="sum")
    assert targets == 699 and chunked == pytest.approx(whole.item(), rel=1e-5)


def test_out_of_vocabulary_characters_are_counted_and_left_out(run, tmp_path):
    clean = write_corpus(tmp_path, n_chars=800, seed=5, name="clean.txt")
    text = clean.read_text()
    dirty = tmp_path / "dirty.txt"
    dirty.write_text(text[:100] + "ЖЖ" + text[100:300] + "€" + text[300:], encoding="utf-8")
    data = _json(invoke("eval", run, clean, dirty, "--json"))
    by_name = {row["name"]: row for row in data["rows"]}
    assert by_name[str(dirty)]["out_of_vocabulary"] == 3
    assert by_name[str(dirty)]["out_of_vocabulary_chars"] == ["Ж", "€"]
    assert by_name[str(dirty)]["nats_per_char"] == pytest.approx(by_name[str(clean)]["nats_per_char"], rel=1e-6)
    assert data["total"]["chars_scored"] == 2 * (len(text) - 1) and data["total"]["out_of_vocabulary"] == 3
    shown = invoke("eval", run, dirty).stdout
    assert "3 characters left out" in shown and "not in the averages" in shown


def test_baseline_orders_side_by_side(run, tmp_path):
    data = _json(invoke("eval", run, write_corpus(tmp_path, 500, seed=3), "--baseline", "--order", "1,3", "--json"))
    bits = data["total"]["baseline_bits_per_char"]
    assert set(bits) == {"1", "3"} and bits["3"] < bits["1"] < math.log2(30)
    assert data["baseline"]["train_chars"] > 5000 and data["baseline"]["fit_seconds"] >= 0
    shown = invoke("eval", run, "--baseline", "--order", "3").stdout
    assert "3-gram" in shown and "Kneser-Ney" in shown


def test_bad_inputs_are_one_line_errors(run, tmp_path):
    assert_one_error(invoke("eval", run, tmp_path / "missing.txt"), "not found", "missing.txt")
    alien = tmp_path / "alien.txt"
    alien.write_text("ЖЖЖЖЖЖЖ", encoding="utf-8")
    assert_one_error(invoke("eval", run, alien), "every character is outside", "alien.txt")
    for order in ("0", "8", "five"):
        assert_one_error(invoke("eval", run, "--baseline", "--order", order), "--order")
    assert_one_error(invoke("eval", tmp_path / "norun"), "norun")
    assert_one_error(invoke("eval", run, "--samples", tmp_path / "none.txt"), "samples file not found")


def test_samples_novelty(run, tmp_path):
    corpus_text = write_corpus(tmp_path, n_chars=6000).read_text()  # the run's corpus, written again
    samples = tmp_path / "samples.txt"
    samples.write_text(f"─── sample 1 ───\n{corpus_text[10:70]}\n─── sample 2 ───\nzzzzzzzzzzzzzzzzzzzzzz\n")
    data = _json(invoke("eval", run, "--samples", samples, "--json"))
    copied = data["novelty"]["copied"]
    assert copied["10"]["ngrams"] == 51 + 13 and copied["10"]["found"] == 51
    assert data["novelty"]["longest_copied"] == 60 and "rows" not in data
    shown = invoke("eval", run, "--samples", samples).stdout
    assert "longest copied span: 60 characters" in shown


def test_sample_novelty_after_the_samples(run):
    result = invoke("sample", run, "-N", "2", "--length", "80", "--seed", "1", "--novelty")
    assert_ok(result)
    assert "share copied" in result.output and "longest copied span" in result.output


@pytest.mark.slow
def test_a_table_trained_run_reads_tables_as_training_did(tmp_path):
    table = tmp_path / "posts.csv"
    rows = [f'{i},"post number {i}, about foxes and dogs"' for i in range(300)]
    table.write_text("id,Text\n" + "\n".join(rows) + "\n", encoding="utf-8")
    run_dir = tmp_path / "run"
    train(load_sources(table, text_field="Text"), tiny_model(), tiny_train(max_steps=12, eval_every=5), run_dir)
    held_out = tmp_path / "more.csv"
    held_out.write_text('id,Text\n1,"post number 7, about dogs"\n2,"post 9"\n', encoding="utf-8")
    data = _json(invoke("eval", run_dir, held_out, "--json"))  # --field Text: the run's
    # both records and their end markers are scored; the first record starts after a marker, as in training
    assert data["total"]["chars_scored"] == len("post number 7, about dogs") + len("post 9") + 2
    split = _json(invoke("eval", run_dir / rundir.LATEST, "--json"))
    assert split["agrees"] is True
    plain = tmp_path / "plain.txt"
    plain.write_text("post number 3, about foxes", encoding="utf-8")
    assert (
        _json(invoke("eval", run_dir, plain, "--json"))["total"]["chars_scored"]
        == len("post number 3, about foxes") + 1
    )


def test_the_run_corpus_given_again_with_corpus(run, tmp_path):
    again = write_corpus(tmp_path, n_chars=6000)  # the run's corpus, at another path
    data = _json(invoke("eval", run / rundir.LATEST, "--corpus", again, "--json"))
    assert data["agrees"] is True
    other = tmp_path / "other.txt"
    other.write_text("Ωmega " * 500, encoding="utf-8")
    assert_one_error(invoke("eval", run, "--corpus", other), "does not match the model")


def test_a_final_evaluation_of_a_slice_is_not_compared(tmp_path):
    corpus = write_corpus(tmp_path, n_chars=30000)  # a split of 3 segments of 1,024: the final scores 2
    run_dir = tmp_path / "run"
    config = tiny_train(max_steps=6, eval_every=5, eval_chars=100, final_eval_chars=1500)
    train(load_sources(corpus), tiny_model(), config, run_dir)
    data = _json(invoke("eval", run_dir / rundir.LATEST, "--json"))
    assert data["recorded_val_loss"] is None and "seeded slice" in data["recorded_what"]
    assert data["total"]["chars_scored"] == rundir.read_run_json(run_dir)["validation"]["split_chars"]
    assert "Nothing recorded to compare with" in invoke("eval", run_dir / rundir.LATEST).stdout
