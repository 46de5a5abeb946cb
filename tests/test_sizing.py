"""--size auto: the chooser as a pure function (corpus size, budget, device speed -> shape), and the flag's
plumbing through `charlstm train` (the note, explicit flags win, run.json, resume keeps the choice)."""

import json

import pytest
import torch

import charlstm.training.run as train_module
from charlstm.config import CELLS, ModelConfig, TrainConfig
from charlstm.errors import CharlstmError
from charlstm.model.charrnn import CharRNN, count_params
from charlstm.runtime import threads
from charlstm.runtime.device import check_autocast
from charlstm.training import sizing
from charlstm.training.sizing import StepCost, choose_size

from .helpers import assert_ok, assert_one_error, invoke, write_corpus

pytestmark = pytest.mark.usefixtures("one_thread")

# a step of 32 x 32 characters costing 5 ms plus 40 ns per parameter: about this 2-core CPU (1 x 384: ~30k chars/s)
CPU = StepCost(fixed=0.005, per_param=4e-8, batch=32, seq_len=32)
SHAKESPEARE_CHARS, VOCAB = 1_003_000, 65


def shape_params(layers: int, hidden: int, embed: int = ModelConfig.embed) -> int:
    return count_params(ModelConfig(vocab_size=VOCAB, layers=layers, hidden=hidden, embed=embed))


def params_of(choice: sizing.SizeChoice) -> int:
    return shape_params(choice.layers, choice.hidden)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(("layers", "hidden", "embed"), [(1, 48, 16), (2, 48, 16), (3, 20, 33)])
def test_count_params_is_the_models(cell, layers, hidden, embed):
    """The count the chooser sizes by is that of the model it builds, for every cell (from the table of weight
    shapes checkpoints are checked against: cifg's three gates, peephole's and lnlstm's extra weights)."""
    config = ModelConfig(vocab_size=VOCAB, cell=cell, layers=layers, hidden=hidden, embed=embed)
    assert count_params(config) == CharRNN(config).num_params


def test_a_longer_budget_never_chooses_a_smaller_model():
    sizes = [params_of(choose_size(50_000_000, VOCAB, TrainConfig(max_time=t), CPU)) for t in (30, 100, 600, 3600)]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]


def test_a_faster_device_chooses_a_larger_model():
    fast = StepCost(fixed=CPU.fixed / 10, per_param=CPU.per_param / 10, batch=32, seq_len=32)
    budget = TrainConfig(max_time=600)
    slow_choice = choose_size(50_000_000, VOCAB, budget, CPU)
    fast_choice = choose_size(50_000_000, VOCAB, budget, fast)
    assert fast_choice.params > slow_choice.params
    assert fast_choice.chars_per_second > 0 and slow_choice.chars_per_second > 0


def test_the_chosen_model_sees_enough_characters_and_the_next_would_not():
    choice = choose_size(50_000_000, VOCAB, TrainConfig(max_time=600), CPU)
    seen = 600 * (1 - sizing.OVERHEAD_SHARE) * choice.chars_per_second
    assert seen >= sizing.CHARS_PER_PARAM * choice.params
    wider = shape_params(choice.layers, choice.hidden + sizing.HIDDEN_STEP)
    assert 600 * (1 - sizing.OVERHEAD_SHARE) * CPU.chars_per_second(wider) < sizing.CHARS_PER_PARAM * wider


def test_a_small_corpus_caps_the_model_and_says_so():
    big = choose_size(50_000_000, VOCAB, TrainConfig(max_time=3600), CPU)
    small = choose_size(200_000, VOCAB, TrainConfig(max_time=3600), CPU)
    assert small.params <= sizing.PARAMS_PER_CORPUS_CHAR * 200_000 < big.params
    assert "more parameters than the corpus has characters" in small.reason


def test_step_and_epoch_budgets_need_no_speed():
    by_steps = choose_size(SHAKESPEARE_CHARS, VOCAB, TrainConfig(max_steps=3000), None)
    assert by_steps.chars_per_second is None
    assert by_steps.passes == pytest.approx(3000 * 32 * 32 / SHAKESPEARE_CHARS)
    assert by_steps.params * sizing.CHARS_PER_PARAM <= 3000 * 32 * 32
    by_epochs = choose_size(SHAKESPEARE_CHARS, VOCAB, TrainConfig(epochs=2), None)
    assert by_epochs.passes == pytest.approx(2)
    assert "2 epochs" in by_epochs.reason and "3,000 steps" in by_steps.reason
    with pytest.raises(ValueError):
        choose_size(SHAKESPEARE_CHARS, VOCAB, TrainConfig(max_time=60), None)


def test_the_reason_line_says_shape_params_speed_and_passes():
    choice = choose_size(SHAKESPEARE_CHARS, VOCAB, TrainConfig(max_time=600), CPU)
    assert choice.reason.startswith(f"{choice.layers} x {choice.hidden} LSTM, ")
    assert "params" in choice.reason and "10m00s at ~" in choice.reason and "chars/s" in choice.reason
    assert "1M-character corpus ~" in choice.reason


def test_given_values_are_kept():
    fixed = {"hidden": 200, "layers": 2, "lr": 1e-3, "batch_size": 8, "seq_len": 64}
    choice = choose_size(SHAKESPEARE_CHARS, VOCAB, TrainConfig(max_time=600), CPU, fixed=fixed)
    assert (choice.hidden, choice.layers, choice.lr, choice.batch_size, choice.seq_len) == (200, 2, 1e-3, 8, 64)
    assert "--layers, --hidden, --batch-size, --seq-len, --lr given" in choice.reason and choice.init == "xavier"
    only_layers = choose_size(50_000_000, VOCAB, TrainConfig(max_time=600), CPU, fixed={"layers": 2})
    assert only_layers.layers == 2


@pytest.mark.slow
def test_calibration_measures_a_positive_cost():
    cost, seconds = sizing.calibrate(VOCAB, torch.device("cpu"), batch=4, seq_len=8, widths=(16, 256), rounds=3)
    assert cost.per_param >= 0 and cost.fixed > 0 and seconds > 0
    assert cost.threads in threads.candidates(torch.get_num_threads())  # the fastest count, named
    assert cost.chars_per_second(10_000) > cost.chars_per_second(10_000_000)


# ------------------------------------------------------------------------------------ the flag, end to end


def run_json(run_dir):
    return json.loads((run_dir / "run.json").read_text())


def test_auto_chooses_says_why_and_records_it(tmp_path):
    corpus = write_corpus(tmp_path, 6000)
    result = invoke("train", corpus, "--size", "auto", "--max-steps", 3, "--out", tmp_path / "run")
    assert_ok(result)
    notes = [line for line in result.output.splitlines() if "--size auto:" in line]
    assert len(notes) == 1 and "3 steps" in notes[0], result.output
    summary = run_json(tmp_path / "run")
    model, train = summary["model_config"], summary["train_config"]
    assert summary["size"] == "auto" and summary["size_choice"] in notes[0]
    assert f"{model['layers']} x {model['hidden']} LSTM, " in notes[0]
    assert f"batch {train['batch_size']} x {train['seq_len']}, lr {train['lr']:g}, xavier init, " in notes[0]
    assert f"weight decay {sizing.RECIPE_WEIGHT_DECAY:g}:" in notes[0]
    assert model["init"] == sizing.RECIPE_INIT and train["weight_decay"] == sizing.RECIPE_WEIGHT_DECAY
    # a 6,000-character corpus: the smallest shape, whatever the budget
    assert (model["layers"], model["hidden"]) == (1, sizing.MIN_HIDDEN)
    info = invoke("info", tmp_path / "run")
    assert_ok(info)
    assert "--size auto: " in info.output and "size" in info.output


def test_explicit_flags_win_and_resume_keeps_the_choice(tmp_path):
    corpus = write_corpus(tmp_path, 6000)
    run = tmp_path / "run"
    flags = ["--size", "auto", "--hidden", 40, "--lr", "0.004", "--batch-size", 4, "--seq-len", 16, "--embed", 8]
    flags += ["--init", "default"]
    assert_ok(invoke("train", corpus, *flags, "--max-steps", 2, "--out", run, "-q"))
    first = run_json(run)
    assert first["model_config"]["hidden"] == 40 and first["train_config"]["lr"] == 0.004
    assert first["model_config"]["init"] == "default"
    assert (first["train_config"]["batch_size"], first["train_config"]["seq_len"]) == (4, 16)
    assert "--hidden, --batch-size, --seq-len, --lr, --init given" in first["size_choice"]
    assert first["train_config"]["weight_decay"] == sizing.RECIPE_WEIGHT_DECAY
    result = invoke("train", "--resume", "--out", run, "--max-steps", 4, "--size", "fixed")
    assert_ok(result)
    assert "--size fixed differs from the checkpoint's auto; using auto" in result.output
    second = run_json(run)
    assert second["step"] == 4 and second["size"] == "auto" and second["size_choice"] == first["size_choice"]
    assert second["model_config"] == first["model_config"] and second["train_config"]["lr"] == 0.004


def test_auto_is_the_default_and_fixed_is_the_default_shape(tmp_path):
    corpus = write_corpus(tmp_path, 6000)
    result = invoke("train", corpus, "--max-steps", 1, "--embed", 8, "--out", tmp_path / "auto")
    assert_ok(result)
    assert "--size auto:" in result.output
    assert run_json(tmp_path / "auto")["size"] == "auto"
    assert_ok(
        invoke("train", corpus, "--size", "fixed", "--max-steps", 1, "--embed", 8, "--out", tmp_path / "run", "-q")
    )
    summary = run_json(tmp_path / "run")
    assert summary["size"] == "fixed" and summary["size_choice"] is None
    assert summary["model_config"]["hidden"] == ModelConfig.hidden
    assert summary["train_config"]["weight_decay"] == TrainConfig.weight_decay == 0.0


def bf16_lstm_runs_here() -> bool:
    try:
        check_autocast(torch.device("cpu"), torch.bfloat16)
    except CharlstmError:
        return False
    return True


@pytest.mark.skipif(not bf16_lstm_runs_here(), reason="this CPU cannot run an LSTM in bf16 at all")
def test_auto_trains_in_bf16_on_a_cpu_with_bf16_instructions(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: True)
    corpus = write_corpus(tmp_path, 6000)
    flags = ["--max-steps", 2, "--embed", 8, "--device", "cpu", "-q"]
    result = invoke("train", corpus, *flags, "--out", tmp_path / "auto")
    assert_ok(result)
    summary = run_json(tmp_path / "auto")
    assert summary["precision"] == "bf16" and summary["size_choice"].endswith(", bf16 on this CPU")
    assert summary["train_config"]["precision"] == "bf16"  # what --resume goes on with
    # the validation scores the saved fp32 weights: `charlstm eval` finds the figure training recorded
    scored = invoke("eval", tmp_path / "auto" / "latest.pt", "--json")
    assert_ok(scored)
    assert json.loads(scored.output)["agrees"] is True, scored.output
    # --precision given, or --size fixed: fp32
    for extra, name in ((["--precision", "fp32"], "given"), (["--size", "fixed"], "fixed")):
        assert_ok(invoke("train", corpus, *flags, *extra, "--out", tmp_path / name))
        assert run_json(tmp_path / name)["precision"] == "fp32"
    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: False)
    assert_ok(invoke("train", corpus, *flags, "--out", tmp_path / "plain"))
    assert run_json(tmp_path / "plain")["precision"] == "fp32"


def test_a_bad_size_is_one_line(tmp_path):
    assert_one_error(invoke("train", write_corpus(tmp_path), "--size", "huge", "--max-steps", 1), "--size", "auto")


@pytest.mark.slow
def test_a_time_budget_measures_the_device(tmp_path):
    corpus = write_corpus(tmp_path, 6000)
    result = invoke("train", corpus, "--size", "auto", "--max-time", "4s", "--embed", 8, "--out", tmp_path / "run")
    assert_ok(result)
    note = next(line for line in result.output.splitlines() if "--size auto:" in line)
    assert "4s at ~" in note and "chars/s" in note and "speed measured in" in note
    assert run_json(tmp_path / "run")["elapsed_seconds"] < 6


def test_a_plan_is_made_again_from_the_measured_speed():
    budget = TrainConfig(max_time=600)
    model = ModelConfig(vocab_size=VOCAB)
    plan = sizing.Plan(50_000_000, VOCAB, 64, "lstm", {}, (), CPU, "")
    small_model, small_train, _ = sizing.apply_plan(plan, model, budget)
    assert small_train.planned_chars_per_second == pytest.approx(
        CPU.chars_per_second(shape_params(small_model.layers, small_model.hidden, 64)), rel=1e-3
    )
    assert not sizing.off_plan(small_train.planned_chars_per_second, 1.9 * small_train.planned_chars_per_second)
    assert sizing.off_plan(small_train.planned_chars_per_second, 2.1 * small_train.planned_chars_per_second)
    faster = 8 * small_train.planned_chars_per_second
    big_model, big_train, new_plan = sizing.replan(plan, small_model, small_train, faster, 580)
    assert shape_params(big_model.layers, big_model.hidden, 64) > shape_params(
        small_model.layers, small_model.hidden, 64
    )
    assert new_plan.cost.chars_per_second(1000) == pytest.approx(8 * CPU.chars_per_second(1000))
    assert "speed measured in training" in big_train.size_choice


def test_dropout_once_the_budget_covers_the_corpus_many_times():
    few = choose_size(SHAKESPEARE_CHARS, VOCAB, TrainConfig(max_time=100.0), CPU)
    many = choose_size(SHAKESPEARE_CHARS, VOCAB, TrainConfig(max_time=600.0), CPU)
    assert few.passes < sizing.MANY_PASSES <= many.passes
    assert few.dropout == 0.0 and "dropout" not in few.reason
    assert many.dropout == sizing.RECIPE_DROPOUT and f"dropout {sizing.RECIPE_DROPOUT:g}" in many.reason
    given = choose_size(SHAKESPEARE_CHARS, VOCAB, TrainConfig(max_time=600.0), CPU, fixed={"dropout": 0.05})
    assert given.dropout == 0.05 and "--dropout given" in given.reason


def test_weight_decay_unless_given(tmp_path):
    choice = choose_size(SHAKESPEARE_CHARS, VOCAB, TrainConfig(max_time=100.0), CPU)
    assert choice.weight_decay == sizing.RECIPE_WEIGHT_DECAY > 0
    assert f"weight decay {sizing.RECIPE_WEIGHT_DECAY:g}" in choice.reason
    none = choose_size(SHAKESPEARE_CHARS, VOCAB, TrainConfig(max_time=100.0), CPU, fixed={"weight_decay": 0.0})
    assert none.weight_decay == 0.0 and "weight decay" not in none.reason and "--weight-decay given" in none.reason
    # through the command line: the flag wins
    corpus = write_corpus(tmp_path, 6000)
    flags = ["--max-steps", 1, "--embed", 8, "--weight-decay", "0.02", "-q"]
    assert_ok(invoke("train", corpus, *flags, "--out", tmp_path / "run"))
    summary = run_json(tmp_path / "run")
    assert summary["train_config"]["weight_decay"] == 0.02 and "--weight-decay given" in summary["size_choice"]
