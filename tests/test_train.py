import json
import math

import pytest
import torch

from charlstm.checkpoint import store as ckpt
from charlstm.config import ModelConfig, TrainConfig
from charlstm.data.corpus import Corpus
from charlstm.errors import CharlstmError
from charlstm.runs import directory as rundir
from charlstm.training.budget import lr_at
from charlstm.training.run import train
from charlstm.training.trainer import Trainer

from . import helpers
from .helpers import curve, memory_corpus, notes_into, tiny_train
from .helpers import saved_weights as weights

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (see conftest.one_thread)


def tiny_model(**kw):
    """With dropout: an exact resume must restore the random stream too."""
    return helpers.tiny_model(**{"dropout": 0.1, **kw})


@pytest.fixture
def corpus():
    return memory_corpus(3000)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_resume_is_exact(tmp_path, corpus, cell):
    """N steps straight == N/2 steps, stop, resume to N: same weights, same loss curve (CPU)."""
    steps = 24  # crosses an epoch boundary (streams wrap) with this corpus and shape
    straight = train(corpus, tiny_model(cell=cell), tiny_train(max_steps=steps), tmp_path / "a")
    assert straight.step == steps
    first = train(
        corpus,
        tiny_model(cell=cell),
        tiny_train(max_steps=steps),
        tmp_path / "b",
        should_stop=lambda step: step == 13,
    )
    assert first.step == 13 and first.stopped_by == "stop_request"
    resumed = train(
        corpus, tiny_model(cell=cell), tiny_train(max_steps=steps), tmp_path / "x", resume_from=tmp_path / "b"
    )
    assert resumed.step == steps and resumed.run_dir == tmp_path / "b"
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert curve(tmp_path / "a") == curve(tmp_path / "b")
    assert len(curve(tmp_path / "a")) == steps // 5 + 1  # every 5 steps, and the end


def test_streams_wrap_within_resume_test(corpus):
    trainer = Trainer(corpus, tiny_model(), tiny_train(max_steps=24), "unused")
    assert len(trainer.train_streams) < 24, "the exact-resume test should cross an epoch boundary"


def test_run_files(tmp_path, corpus):
    result = train(corpus, tiny_model(), tiny_train(max_steps=10), tmp_path / "run")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    for key in (
        "model_config",
        "train_config",
        "vocab_size",
        "params",
        "step",
        "chars_seen",
        "best_val_loss",
        "train_seconds",
        "chars_per_second",
    ):
        assert key in run, key
    assert run["step"] == 10 and run["params"] == result.params
    rounding = 0.0005 / run["train_seconds"]  # run.json keeps train_seconds to 3 decimals; 10 tiny steps take ~0.02 s
    assert run["chars_per_second"] == pytest.approx(run["chars_seen"] / run["train_seconds"], rel=0.01 + rounding)
    rows = rundir.read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [5, 10]
    assert set(rows[0]) >= {"step", "chars_seen", "train_loss", "val_loss", "seconds"}
    best = min(r["val_loss"] for r in rows)
    assert run["best_val_loss"] == pytest.approx(best)
    best_ckpt = ckpt.load_checkpoint(tmp_path / "run" / "best.pt")
    assert best_ckpt["progress"]["best_val_loss"] == pytest.approx(best)


def test_training_lowers_loss(tmp_path, corpus):
    result = train(
        corpus,
        ModelConfig(hidden=64),
        tiny_train(max_steps=120, eval_every=40, seq_len=32, batch_size=8),
        tmp_path / "r",
    )
    rows = rundir.read_metrics(tmp_path / "r")
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] < math.log(result.vocab_size)
    assert result.best_val_loss < 2.2


def test_architecture_flags_lose_to_checkpoint_with_warning(tmp_path, corpus):
    train(corpus, tiny_model(), tiny_train(max_steps=4), tmp_path / "r")
    lines = []
    result = train(
        corpus,
        tiny_model(hidden=99),
        tiny_train(max_steps=6),
        tmp_path / "r",
        resume_from=tmp_path / "r",
        explicit={"hidden", "max_steps"},
        on_event=notes_into(lines),
    )
    assert result.step == 6
    assert any("--hidden 99" in line and "24" in line for line in lines)
    assert ckpt.load_checkpoint(tmp_path / "r" / "latest.pt")["model_config"]["hidden"] == 24


def test_resume_refuses_new_characters(tmp_path, corpus):
    train(corpus, tiny_model(), tiny_train(max_steps=2), tmp_path / "r")
    other = Corpus(text=corpus.text + "Zebra ü", name="tiny", sources=["memory"])
    with pytest.raises(CharlstmError, match="not in the checkpoint's vocabulary.*'Z'"):
        train(other, tiny_model(), tiny_train(max_steps=4), tmp_path / "r", resume_from=tmp_path / "r")


def test_nan_loss_stops_without_saving_poisoned_weights(tmp_path, corpus):
    train(corpus, tiny_model(), tiny_train(max_steps=5), tmp_path / "r")
    before = weights(tmp_path / "r")
    trainer = Trainer(
        corpus,
        tiny_model(),
        tiny_train(max_steps=10),
        tmp_path / "r",
        resume_from=tmp_path / "r",
        explicit={"max_steps"},
    )
    with torch.no_grad():
        trainer.model.head.bias.fill_(float("nan"))
    with pytest.raises(CharlstmError, match=r"loss became nan at step 6.*lower --lr"):
        trainer.train()
    after = weights(tmp_path / "r")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_time_budget_and_schedule(tmp_path, corpus):
    result = train(corpus, tiny_model(), tiny_train(max_time=1.0, eval_every=10_000), tmp_path / "r")
    # --max-time limits the run's wall clock (validations and saves included, the final one too); the training
    # steps are part of it
    assert result.stopped_by == "max_time" and 0.5 <= result.elapsed_seconds <= 1.0 + 0.3
    assert 0 < result.train_seconds <= result.elapsed_seconds
    config = TrainConfig(lr=1.0, warmup_frac=0.1, min_lr_frac=0.1)
    assert lr_at(config, 0.0) < 0.05 and lr_at(config, 0.1) == pytest.approx(1.0)
    assert lr_at(config, 1.0) == pytest.approx(0.1)
    assert lr_at(config, 0.3) > lr_at(config, 0.6) > lr_at(config, 0.9)


def test_epoch_budget(tmp_path, corpus):
    trainer = Trainer(corpus, tiny_model(), tiny_train(epochs=2, eval_every=1000), tmp_path / "r")
    result = trainer.train()
    assert result.stopped_by == "epochs"
    assert result.chars_seen == 2 * trainer.train_streams.num_targets
    assert result.step == 2 * len(trainer.train_streams)


@pytest.mark.parametrize("stop_at", [5, 7])
def test_a_stop_on_a_validation_step_validates_on_resume_and_the_curve_is_whole(tmp_path, stop_at):
    """Stopped at step 5 (a validation was due there: eval every 5) or 7, then resumed to 10: the same curve
    as a run that never stopped. The validation due at the stop runs first on resume, on that step's weights."""
    corpus, model = memory_corpus(3000), helpers.tiny_model(hidden=8)
    train(corpus, model, tiny_train(max_steps=10), tmp_path / "straight")
    stopped = train(corpus, model, tiny_train(max_steps=10), tmp_path / "b", should_stop=lambda s: s == stop_at)
    assert stopped.step == stop_at
    train(corpus, model, tiny_train(max_steps=10), resume_from=tmp_path / "b")
    assert [row[0] for row in curve(tmp_path / "b")] == [5, 10]
    assert curve(tmp_path / "b") == curve(tmp_path / "straight")
