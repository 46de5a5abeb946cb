"""The configuration (charlstm/config.py): every refusal names its field (the CLI names the flag: see
test_the_cli_names_the_flag_of_a_refused_field), the defaults are valid, durations and
temperature lists are read as documented, and configs read from a checkpoint are type-checked.

Each refusal is written as `Config(...).validate()` inside `pytest.raises`, so that it holds whether a config
checks itself when it is made or when it is validated."""

import math
import re
from dataclasses import asdict

import pytest

from charlstm.config import (
    CorpusConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
    from_dict,
    parse_duration,
    parse_temperatures,
)
from charlstm.errors import CharlstmError

# ------------------------------------------------------------------------------------------ defaults


@pytest.mark.parametrize("cls", [CorpusConfig, ModelConfig, TrainConfig, SampleConfig])
def test_defaults_are_valid(cls):
    cls().validate()


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(cell="gru", layers=3, hidden=1, embed=1, dropout=0.0),
        ModelConfig(cell="rnn", dropout=0.999),
        TrainConfig(lr=1e-9, weight_decay=0, grad_clip=0, val_frac=0.5, max_steps=1, epochs=0.01, max_time=0.5),
        TrainConfig(device="cpu", precision="bf16", compile=True),
        SampleConfig(length=0, temperature=0, top_k=0, top_p=1.0, num_samples=1),
        SampleConfig(temperature=100.0, top_k=1, top_p=1e-9),
        CorpusConfig(records="paragraph"),
    ],
    ids=repr,
)
def test_values_at_the_edges_are_valid(config):
    config.validate()


# ------------------------------------------------------------------------------------------ refusals


def refused(message: str):
    """pytest.raises for a CharlstmError whose text starts with `message` (taken literally)."""
    return pytest.raises(CharlstmError, match="^" + re.escape(message))


MODEL_REFUSALS = [
    (
        dict(cell="transformer"),
        "cell must be one of lstm, gru, rnn, peephole, pseudo, pseudo2, cifg, lnlstm, got 'transformer'",
    ),
    (dict(layers=0), "layers must be > 0, got 0"),
    (dict(layers=-2), "layers must be > 0, got -2"),
    (dict(hidden=0), "hidden must be > 0, got 0"),
    (dict(embed=0), "embed must be > 0, got 0"),
    (dict(dropout=-0.1), "dropout must be in [0, 1), got -0.1"),
    (dict(dropout=1.0), "dropout must be in [0, 1), got 1.0"),
    (dict(dropout=math.nan), "dropout must be in [0, 1), got nan"),
    (dict(init="he"), "init must be one of default, xavier, got 'he'"),
    (dict(cell="gru", forget_bias=1.0), "forget_bias applies to LSTM-like cells only, not gru"),
    (dict(forget_bias=math.inf), "forget_bias must be a number in [-100, 100], got inf"),
]


@pytest.mark.parametrize("changes,message", MODEL_REFUSALS)
def test_model_config_refusals(changes, message):
    with refused(message):
        ModelConfig(**changes).validate()


TRAIN_REFUSALS = [
    (dict(batch_size=0), "batch_size must be > 0, got 0"),
    (dict(seq_len=-1), "seq_len must be > 0, got -1"),
    (dict(eval_every=0), "eval_every must be > 0, got 0"),
    (dict(planned_chars_per_second=-1.0), "planned_chars_per_second must be a positive number, got -1.0"),
    (dict(eval_chars=0), "eval_chars must be > 0, got 0"),
    (dict(final_eval_chars=0), "final_eval_chars must be > 0, got 0"),
    (dict(lr=0.0), "lr must be a positive number, got 0.0"),
    (dict(lr=-1), "lr must be a positive number, got -1"),
    (dict(lr=math.nan), "lr must be a positive number, got nan"),
    (dict(lr=math.inf), "lr must be a positive number, got inf"),
    (dict(weight_decay=-0.01), "weight_decay must be >= 0, got -0.01"),
    (dict(grad_clip=-1.0), "grad_clip must be >= 0 (0 turns clipping off), got -1.0"),
    (dict(val_frac=0.0), "val_frac must be in (0, 0.5], got 0.0"),
    (dict(val_frac=0.51), "val_frac must be in (0, 0.5], got 0.51"),
    (dict(max_steps=0), "max_steps must be > 0, got 0"),
    (dict(epochs=0.0), "epochs must be > 0, got 0.0"),
    (dict(epochs=math.nan), "epochs must be > 0, got nan"),
    (dict(max_time=-5.0), "max_time must be > 0, got -5.0"),
    (dict(device="tpu"), "device must be one of auto, cpu, cuda, mps, got 'tpu'"),
    (dict(precision="fp8"), "precision must be one of auto, fp32, bf16, got 'fp8'"),
    (dict(sample_every=-1), "sample_every must be >= 0 (0: no samples while training), got -1"),
    (dict(sample_length=0), "sample_length must be > 0, got 0"),
    (dict(sample_temp=-0.1), "sample_temp must be >= 0, got -0.1"),
    (dict(sample_temp=math.inf), "sample_temp must be >= 0, got inf"),
    (dict(size="huge"), "size must be one of auto, fixed, got 'huge'"),
]


@pytest.mark.parametrize("changes,message", TRAIN_REFUSALS)
def test_train_config_refusals(changes, message):
    with refused(message):
        TrainConfig(**changes).validate()


SAMPLE_REFUSALS = [
    (dict(length=-1), "length must be >= 0, got -1"),
    (dict(temperature=-0.5), "temperature must be >= 0, got -0.5"),
    (dict(temperature=math.nan), "temperature must be >= 0, got nan"),
    (dict(temperature=math.inf), "temperature must be >= 0, got inf"),
    (dict(top_k=-1), "top_k must be >= 0, got -1"),
    (dict(top_p=0.0), "top_p must be in (0, 1], got 0.0"),
    (dict(top_p=1.01), "top_p must be in (0, 1], got 1.01"),
    (dict(num_samples=0), "num_samples must be > 0, got 0"),
]


@pytest.mark.parametrize("changes,message", SAMPLE_REFUSALS)
def test_sample_config_refusals(changes, message):
    with refused(message):
        SampleConfig(**changes).validate()


def test_corpus_config_refuses_an_unknown_record_mode():
    with refused("records must be one of auto, file, paragraph, none, or sep:STRING (a record ends at a line"):
        CorpusConfig(records="lines").validate()
    with pytest.raises(CharlstmError, match=r"sep:STRING .*, got '%'$"):  # a separator alone is no mode: sep:% is
        CorpusConfig(records="%").validate()
    for empty in ("sep:", "sep:  "):
        with refused("records sep: needs the text of the separator line, e.g. sep:%"):
            CorpusConfig(records=empty).validate()
    assert CorpusConfig(records="sep:%").records == "sep:%"  # kept as given: checkpoints record it so


def test_every_checked_field_has_a_refusal_here():
    """A new check in validate() (a new field) needs its case above: the cases cover every field they can."""
    covered = {key for changes, _ in MODEL_REFUSALS + TRAIN_REFUSALS + SAMPLE_REFUSALS for key in changes}
    unchecked = {
        "vocab_size",
        "warmup_frac",
        "min_lr_frac",
        "save_every",
        "save_every_seconds",
        "seed",
        "compile",
        "encoding",
        "prime",
        "stop",
        "sample_prime",  # checked against the corpus's vocabulary when training starts (test_train_samples.py)
        "size_choice",  # free text: what --size auto chose
        "replanned",  # free text: what the run's speed check changed
    }
    every = {f for cls in (ModelConfig, TrainConfig, SampleConfig) for f in asdict(cls())}
    assert every - unchecked == covered


# ------------------------------------------------------------------------------------------ durations


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("90", 90.0),
        ("2.5", 2.5),
        (".5", 0.5),
        ("5.", 5.0),
        ("90s", 90.0),
        ("90 sec", 90.0),
        ("3secs", 3.0),
        ("10m", 600.0),
        ("10min", 600.0),
        ("2 mins", 120.0),
        ("2h", 7200.0),
        ("1.5h", 5400.0),
        ("1hr", 3600.0),
        ("2hrs", 7200.0),
        ("1d", 86400.0),
        ("10M", 600.0),
        ("  7m  ", 420.0),
    ],
)
def test_parse_duration_units_and_bare_numbers(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5m", "5 parsecs", "1e3", "5mm", "m", "5m5s", "1,5h", "nan", "inf"])
def test_parse_duration_refuses_what_it_cannot_read(text):
    with refused(f"--max-time: cannot read {text!r} as a duration; use e.g. 90s, 10m or 2h"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["0", "0s", "0.0h", "00m", ".0"])
def test_parse_duration_refuses_zero(text):
    with refused(f"--max-time must be longer than zero, got {text!r}"):
        parse_duration(text)


def test_parse_duration_names_the_flag_it_reads():
    with refused("--save-every: cannot read 'often' as a duration"):
        parse_duration("often", flag="--save-every")
    with refused("--save-every must be longer than zero, got '0m'"):
        parse_duration("0m", flag="--save-every")


# ------------------------------------------------------------------------------------- temperatures


@pytest.mark.parametrize(
    "text,temperatures",
    [("0.8", [0.8]), ("0", [0.0]), ("0.5,0.8,1.0", [0.5, 0.8, 1.0]), (" 0.5 , 1 ", [0.5, 1.0]), ("1,1", [1.0, 1.0])],
)
def test_parse_temperatures(text, temperatures):
    assert parse_temperatures(text) == temperatures


@pytest.mark.parametrize(
    "text,message",
    [
        ("x", "--temp: cannot read 'x' as a number"),
        ("0.5,x", "--temp: cannot read 'x' as a number"),
        ("0.5,", "--temp: cannot read '' as a number"),
        ("", "--temp: cannot read '' as a number"),
        ("-1", "--temp must be >= 0, got -1"),
        ("0.5, -0.1", "--temp must be >= 0, got -0.1"),
        ("nan", "--temp must be >= 0, got nan"),
        ("inf", "--temp must be >= 0, got inf"),
    ],
)
def test_parse_temperatures_refusals(text, message):
    with refused(message):
        parse_temperatures(text)


# ---------------------------------------------------------------------------------------- from_dict


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(cell="gru", hidden=7),
        TrainConfig(lr=0.1, max_steps=3, compile=True),
        SampleConfig(stop=["\n\n"], seed=None),
        CorpusConfig(paths=["a"], text_field="t"),
    ],
)
def test_from_dict_round_trips(config):
    assert from_dict(type(config), asdict(config)) == config


def test_from_dict_ignores_unknown_keys():
    config = from_dict(ModelConfig, {"hidden": 32, "attention_heads": 4, "future": {"x": 1}})
    assert config == ModelConfig(hidden=32)


@pytest.mark.parametrize(
    "cls,data,message",
    [
        (ModelConfig, {"layers": "two"}, "ModelConfig.layers = 'two' is not of type int"),
        (ModelConfig, {"hidden": 2.0}, "ModelConfig.hidden = 2.0 is not of type int"),
        (ModelConfig, {"cell": 1}, "ModelConfig.cell = 1 is not of type str"),
        (TrainConfig, {"lr": "fast"}, "TrainConfig.lr = 'fast' is not of type float"),
        (TrainConfig, {"max_steps": 1.5}, "TrainConfig.max_steps = 1.5 is not of type int | None"),
        (TrainConfig, {"compile": 1}, "TrainConfig.compile = 1 is not of type bool"),
        (TrainConfig, {"lr": None}, "TrainConfig.lr = None is not of type float"),
        (SampleConfig, {"stop": ["a", 1]}, "SampleConfig.stop = ['a', 1] is not of type list[str]"),
        (SampleConfig, {"stop": "a"}, "SampleConfig.stop = 'a' is not of type list[str]"),
        (CorpusConfig, {"paths": "corpus.txt"}, "CorpusConfig.paths = 'corpus.txt' is not of type list[str]"),
    ],
)
def test_from_dict_refuses_wrong_types(cls, data, message):
    with refused(message):
        from_dict(cls, data)


@pytest.mark.parametrize(
    "cls,key",
    [
        (ModelConfig, "hidden"),
        (ModelConfig, "dropout"),
        (TrainConfig, "lr"),
        (TrainConfig, "max_steps"),
        (TrainConfig, "epochs"),
        (SampleConfig, "seed"),
        (SampleConfig, "top_k"),
    ],
)
@pytest.mark.parametrize("value", [True, False])
def test_from_dict_does_not_take_a_bool_for_a_number(cls, key, value):
    with refused(f"{cls.__name__}.{key} = {value!r} is not of type"):
        from_dict(cls, {key: value})


def test_from_dict_takes_an_int_for_a_float_and_none_where_allowed():
    config = from_dict(TrainConfig, {"lr": 1, "max_steps": None, "epochs": 2, "save_every": 5, "compile": False})
    assert config.lr == 1 and config.max_steps is None and config.epochs == 2 and config.save_every == 5
    assert from_dict(SampleConfig, {"seed": None}).seed is None


@pytest.mark.parametrize("data", [["hidden", 3], "hidden=3", None, 3])
def test_from_dict_refuses_what_is_not_a_mapping(data):
    with refused(f"ModelConfig is a {type(data).__name__}, not a mapping"):
        from_dict(ModelConfig, data)


def test_a_long_wrong_value_is_cut_short_in_the_message():
    with pytest.raises(CharlstmError) as caught:
        from_dict(ModelConfig, {"cell": ["x" * 1000]})
    assert len(str(caught.value)) < 100


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--lr", "-1"], "error: --lr must be a positive number, got -1.0"),
        (["train", "--batch-size", "0"], "error: --batch-size must be > 0, got 0"),
        (["train", "x.txt", "--records", "lines"], "error: --records must be one of auto, file, paragraph, none"),
        (["sample", "--top-p", "2"], "error: --top-p must be in (0, 1], got 2.0"),
        (["sample", "--length", "-1"], "error: --length must be >= 0, got -1"),
    ],
)
def test_the_cli_names_the_flag_of_a_refused_field(args, message):
    from typer.testing import CliRunner

    from charlstm.cli.app import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and result.output.startswith(message), result.output
