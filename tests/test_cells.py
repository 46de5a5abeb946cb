"""The cells of charlstm/cells.py: their step against their forward, their weights and initialisation, and every
cell through training, checkpoint, exact resume and seeded sampling."""

import warnings

import pytest
import torch
from torch import nn

from charlstm.checkpoint import store as ckpt
from charlstm.config import CELLS, CUSTOM_CELLS, InvalidValue, ModelConfig, SampleConfig
from charlstm.generate.sample import sample_text
from charlstm.generate.steppers import TorchStepper, make_stepper
from charlstm.model import cells
from charlstm.model.charrnn import CharRNN, weight_shapes
from charlstm.runs.model_file import load_model
from charlstm.training.run import train

from .helpers import (
    TINY_FLAGS,
    assert_ok,
    assert_one_error,
    curve,
    invoke,
    memory_corpus,
    saved_weights,
    tiny_model,
    tiny_train,
    write_corpus,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(cell: str, layers: int = 3, seed: int = 0, **overrides) -> CharRNN:
    torch.manual_seed(seed)
    return CharRNN(ModelConfig(vocab_size=11, cell=cell, layers=layers, hidden=12, embed=5, **overrides)).eval()


@pytest.mark.parametrize("cell", CUSTOM_CELLS)
def test_step_reproduces_forward_over_several_layers(cell):
    """The contract's `layer.step`, run character by character up the stack, equals `model.rnn` on the window."""
    model = _model(cell)
    torch.manual_seed(1)
    ids = torch.randint(11, (3, 9))  # (B, T)
    h0, c0 = torch.randn(3, 3, 12) * 0.5, torch.randn(3, 3, 12)  # (L, B, H): a state far from zeros
    with torch.no_grad():
        out, (h_end, c_end) = model.rnn(model.embed(ids), (h0, c0))
        hs, cs, outputs = list(h0), list(c0), []
        for t in range(ids.size(1)):
            x = model.embed(ids[:, t])
            for n, layer in enumerate(model.rnn.layers):
                x, (hs[n], cs[n]), quantities = layer.step(x, (hs[n], cs[n]))
                assert tuple(quantities) == layer.QUANTITIES
                assert all(q.shape == (3, 12) for q in quantities.values())
                assert torch.equal(quantities["h"], x)
            outputs.append(x)
    assert (torch.stack(outputs, 1) - out).abs().max() < 1e-5
    assert (torch.stack(hs) - h_end).abs().max() < 1e-5
    assert (torch.stack(cs) - c_end).abs().max() < 1e-5


@pytest.mark.parametrize("cell", CUSTOM_CELLS)
def test_one_character_at_a_time_equals_the_window_and_traces(cell):
    """T = 1 calls (sampling, export's single step) give the window's logits; the T = 1 step traces."""
    model = _model(cell, layers=2)
    ids = torch.randint(11, (2, 6))
    with torch.no_grad():
        logits, _ = model(ids)
        state, steps = model.initial_state(2), []
        for t in range(6):
            step_logits, state = model(ids[:, t : t + 1], state)
            steps.append(step_logits)
        assert (torch.cat(steps, 1) - logits).abs().max() < 1e-5
        traced = torch.jit.trace(model, (ids[:, :1], model.initial_state(2)))
        a, b = traced(ids[:, 1:2], state), model(ids[:, 1:2], state)
    assert (a[0] - b[0]).abs().max() < 1e-6


def test_the_recurrence_is_scriptable():
    """The loop is written for TorchScript (see the module docstring); scripted, it computes the same."""
    scripted = torch.jit.script(cells._recurrence)
    model = _model("pseudo2", layers=1)
    layer = model.rnn.layers[0]
    xp = layer.project(torch.randn(2, 4, 5)).transpose(0, 1)  # (T, B, G*H)
    h, c = torch.zeros(2, 12), torch.randn(2, 12)
    for got, want in zip(
        scripted(2, xp, h, c, layer.recurrent_weights()), cells._recurrence(2, xp, h, c, layer.recurrent_weights())
    ):
        assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_weight_shapes_match_every_cell(cell):
    config = ModelConfig(vocab_size=7, cell=cell, layers=2, hidden=6, embed=3)
    model = {name: tuple(t.shape) for name, t in CharRNN(config).state_dict().items()}
    assert list(weight_shapes(config).items()) == list(model.items())


def test_lstm_default_initialisation_is_unchanged():
    """Old seeds give the same lstm as before init/forget_bias existed: PyTorch's own draws, untouched."""
    torch.manual_seed(3)
    embed, rnn, head = nn.Embedding(9, 4), nn.LSTM(4, 8, num_layers=2, batch_first=True), nn.Linear(8, 9)
    torch.manual_seed(3)
    model = CharRNN(ModelConfig(vocab_size=9, layers=2, hidden=8, embed=4))
    for mine, theirs in zip(model.parameters(), [*embed.parameters(), *rnn.parameters(), *head.parameters()]):
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize("cell", ["lstm", *CUSTOM_CELLS])
def test_forget_bias_and_xavier(cell):
    model = _model(cell, layers=1, init="xavier", forget_bias=2.5)
    params = dict(model.rnn.named_parameters())
    if cell == "lstm":
        bias = params["bias_ih_l0"] + params["bias_hh_l0"]
        forget = bias[12:24]
    else:
        bias = params["layers.0.bias"]
        rows = {"pseudo": (24, 36), "pseudo2": (24, 36), "cifg": (0, 12)}.get(cell, (12, 24))
        forget = bias[rows[0] : rows[1]]
    expected = -2.5 if cell == "cifg" else 2.5  # cifg: f = 1 - i, so the input gate's bias is -F
    assert torch.all(forget == expected)
    assert torch.count_nonzero(bias) == 12  # xavier: every other bias zero
    weight = params["weight_hh_l0" if cell == "lstm" else "layers.0.weight_hh"]
    bound = (6 / (12 + 12)) ** 0.5  # Xavier-Glorot for one 12 x 12 gate block
    assert weight.abs().max() <= bound and weight.abs().max() > bound / 2


def test_custom_cells_default_forget_bias_is_one():
    for cell in CUSTOM_CELLS:
        assert ModelConfig(cell=cell).effective_forget_bias == 1.0
    assert ModelConfig(cell="lstm").effective_forget_bias is None
    with pytest.raises(InvalidValue, match="LSTM-like"):
        ModelConfig(cell="gru", forget_bias=1.0)
    with pytest.raises(InvalidValue, match="init"):
        ModelConfig(init="he")


@pytest.mark.slow
@pytest.mark.parametrize("cell", CUSTOM_CELLS)
def test_every_cell_trains_resumes_exactly_and_samples(tmp_path, cell):
    """N steps straight == N/2, stop, resume to N (weights and loss curve); the checkpoint samples the same seeded
    text on the default path (which falls back to the plain one) as on the plain path."""
    corpus, steps = memory_corpus(2000), 8
    model_config = tiny_model(cell=cell, hidden=8, dropout=0.1)  # dropout: the random stream must resume too
    straight = train(corpus, model_config, tiny_train(max_steps=steps), tmp_path / "a")
    assert straight.step == steps
    first = train(corpus, model_config, tiny_train(max_steps=steps), tmp_path / "b", should_stop=lambda s: s == 3)
    assert first.step == 3
    resumed = train(corpus, model_config, tiny_train(max_steps=steps), resume_from=tmp_path / "b")
    assert resumed.step == steps
    a, b = saved_weights(tmp_path / "a"), saved_weights(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert curve(tmp_path / "a") == curve(tmp_path / "b")
    payload = ckpt.load_model_checkpoint(tmp_path / "a" / "latest.pt")
    assert payload["model_config"]["cell"] == cell and payload["model_config"]["init"] == "default"
    loaded = load_model(tmp_path / "a")
    assert isinstance(make_stepper(loaded.model, 2), TorchStepper)
    config = SampleConfig(length=40, seed=5, num_samples=2, prime="the")
    fast, plain = sample_text(loaded, config), sample_text(loaded, config, fast=False)
    assert fast == plain and all(len(text) == len("the") + 40 for text in fast)  # the prime, then 40


@pytest.mark.slow
def test_cli_trains_a_custom_cell_with_init_and_forget_bias_and_samples(tmp_path):
    corpus = write_corpus(tmp_path, 3000)
    run = tmp_path / "run"
    flags = ["--cell", "pseudo2", "--init", "xavier", "--forget-bias", "2", "--max-steps", "6"]
    assert_ok(invoke("train", corpus, "--out", run, *TINY_FLAGS, *flags))
    config = ckpt.load_model_checkpoint(run / "latest.pt")["model_config"]
    assert (config["cell"], config["init"], config["forget_bias"]) == ("pseudo2", "xavier", 2.0)
    result = invoke("sample", run, "--length", "30", "--seed", "3")
    assert_ok(result)
    assert invoke("sample", run, "--length", "30", "--seed", "3").output == result.output
    info = invoke("info", run)
    assert_ok(info)
    assert "pseudo2" in info.output


@pytest.mark.slow
def test_a_checkpoint_without_the_new_fields_loads_samples_and_resumes(tmp_path):
    """Checkpoints written before `init` and `forget_bias` existed (their model_config lacks both)."""
    corpus = write_corpus(tmp_path, 3000)
    run = tmp_path / "old"
    assert_ok(invoke("train", corpus, "--out", run, *TINY_FLAGS, "--max-steps", "5"))
    for name in ("latest.pt", "best.pt"):
        payload = ckpt.load_checkpoint(run / name)
        for key in ("init", "forget_bias"):
            del payload["model_config"][key]
        torch.save(payload, run / name)
    assert "init" not in ckpt.load_model_checkpoint(run / "latest.pt")["model_config"]
    assert_ok(invoke("sample", run, "--length", "20", "--seed", "1"))
    assert_ok(invoke("train", corpus, "--resume", run, "--max-steps", "8", "-q"))
    assert ckpt.load_model_checkpoint(run / "latest.pt")["progress"]["step"] == 8


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--cell", "lstmx"], ["--cell", "peephole", "pseudo2", "lnlstm"]),
        (["--init", "he"], ["--init", "xavier"]),
        (["--cell", "gru", "--forget-bias", "1"], ["--forget-bias", "LSTM-like"]),
        (["--forget-bias", "nan"], ["--forget-bias"]),
    ],
)
def test_bad_cell_flags_are_one_line_errors(tmp_path, flags, fragments):
    corpus = write_corpus(tmp_path, 2000)
    assert_one_error(invoke("train", corpus, "--out", tmp_path / "r", *TINY_FLAGS, *flags), *fragments)


def test_train_help_lists_every_cell():
    result = invoke("train", "--help")
    text = " ".join(result.output.split())
    for cell in CELLS:
        assert cell in text
    assert "--init" in text and "--forget-bias" in text


@pytest.mark.parametrize("cell", CUSTOM_CELLS)
def test_one_step_exports_to_onnx(cell, tmp_path):
    """The export contract: `model(ids[:, None], state)` exports (T = 1), every state input used, and runs the same."""
    ort = pytest.importorskip("onnxruntime")
    model = _model(cell, layers=2)
    ids = torch.randint(11, (2, 1))
    state = (torch.randn(2, 2, 12) * 0.5, torch.randn(2, 2, 12))
    path = tmp_path / "step.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids, state), str(path), dynamo=False, input_names=["ids", "h", "c"])
    session = ort.InferenceSession(str(path))
    assert [i.name for i in session.get_inputs()] == ["ids", "h", "c"]
    got = session.run(None, {"ids": ids.numpy(), "h": state[0].numpy(), "c": state[1].numpy()})
    with torch.no_grad():
        logits, (h, c) = model(ids, state)
    for mine, theirs in zip(got, (logits, h, c)):
        assert abs(mine - theirs.numpy()).max() < 1e-5


@pytest.mark.parametrize("cell", CUSTOM_CELLS)
def test_window_weight_gradients_equal_per_step_autograd(cell):
    """The recurrent matrices' gradients taken once per window (training) equal plain autograd's per step."""
    model = _model(cell, layers=2).train()
    ids = torch.randint(11, (3, 9))
    state = (torch.randn(2, 3, 12) * 0.5, torch.randn(2, 3, 12))

    def gradients(per_window: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        for layer in model.rnn.layers:
            layer.SPLITS = type(layer).SPLITS if per_window else None  # None: the plain loop
        logits, (h, c) = model(ids, state)
        (logits.square().mean() + h.sum() + c.square().sum()).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain, per_window = gradients(False), gradients(True)
    for name in plain:
        assert (plain[name] - per_window[name]).abs().max() < 1e-5, name
