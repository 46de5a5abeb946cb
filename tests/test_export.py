"""charlstm export: ONNX (onnxruntime), TorchScript (torch.jit.load without charlstm) and the HTML page (Chromium),
each against the PyTorch model; records stop at the marker; bad checkpoints and bad flags are one line."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from charlstm.checkpoint import store as ckpt
from charlstm.config import SampleConfig
from charlstm.export import formats as export_module
from charlstm.export import page as page_module
from charlstm.generate.sample import sample_text
from charlstm.runs.model_file import load_model

from .browser import console_errors, open_page
from .helpers import (
    ROOT,
    SAMPLE_CHARS,
    assert_ok,
    assert_one_error,
    invoke,
    one_thread_env,
    scaled_random_model,
    torch_threads,
)

pytestmark = pytest.mark.usefixtures("one_thread")

CHARS = sorted(set(SAMPLE_CHARS) | set("ROMEO:"))  # the README sampler's prime is "ROMEO:"
PRIME = "ROMEO: the lazy dog"
TOLERANCE = 1e-4  # max |Δlogit| of ONNX and TorchScript against the model
PAGE_TOLERANCE = 1e-3  # max |Δp| of the page's next-character distribution against charlstm's


def save_run(
    directory: Path, cell: str, records: bool = False, eor_bias: float = 0.0, seed: int = 0, gain: float = 2.0
) -> Path:
    """A run directory whose best.pt holds a 2-layer random model of `cell` (weights scaled up, so that its
    states and distributions are far from uniform). `records`: the vocabulary starts with the end-of-record
    marker, the checkpoint holds record start states, and the marker's logit is raised by `eor_bias`."""
    chars = ([""] if records else []) + CHARS
    model = scaled_random_model(len(chars), cell, layers=2, hidden=24, seed=seed, gain=gain)
    if records:
        with torch.no_grad():
            model.head.bias[0] += eor_bias
    payload = {"model_config": asdict(model.config), "vocab": chars, "model": model.state_dict()}
    if records:
        generator = torch.Generator().manual_seed(seed)
        count = 2 if cell == "lstm" else 1
        payload["start_states"] = [torch.randn(2, 5, 24, generator=generator) * 0.5 for _ in range(count)]
    directory.mkdir(parents=True)
    ckpt.save_checkpoint(payload, directory / "best.pt")
    return directory


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export-runs")
    made = {cell: save_run(root / cell, cell, seed=i) for i, cell in enumerate(("lstm", "gru", "rnn"))}
    made["records"] = save_run(root / "records", "gru", records=True, eor_bias=3.0, seed=5)
    made["records-lstm"] = save_run(root / "records-lstm", "lstm", records=True, eor_bias=3.0, seed=6)
    return made


def probe_ids(run: Path, seed: int = 0) -> tuple[list[int], np.ndarray]:
    """200 ids (a prime, then charlstm's own sample) and the model's logits (200, V) over them, in one call."""
    loaded = load_model(run)
    text = sample_text(loaded, SampleConfig(prime=PRIME, length=400, temperature=1.0, seed=seed), start="zeros")[0]
    eor = loaded.vocab.end_of_record
    ids = ([eor] if eor is not None else []) + loaded.vocab.encode(text).tolist()
    ids = (ids * 200)[:200]  # a record may end early: the next one follows its marker, as in training
    with torch.inference_mode():
        logits, _ = loaded.model(torch.tensor([ids]))  # (1, T, V): the whole sequence in one forward
    return ids, logits[0].numpy()


def clean_env() -> dict[str, str]:
    """A child's environment on one thread, without this checkout on its path."""
    return {k: v for k, v in one_thread_env().items() if k != "PYTHONPATH"}


# ---------------------------------------------------------------------------------------------- onnx


@pytest.fixture(scope="module")
def onnx_files(runs) -> dict[str, Path]:
    made = {}
    for name in ("lstm", "records", "rnn"):  # records: a GRU
        with torch_threads(1):
            result = invoke("export", runs[name], "--format", "onnx")
        assert_ok(result)
        assert "checked with onnxruntime over 200 steps" in result.output
        made[name] = runs[name] / f"{name}.onnx"
    return made


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "records", "rnn"])
def test_onnx_matches_the_model_over_200_steps(runs, onnx_files, cell):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_files[cell]), providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    sidecar = json.loads(export_module.sidecar_path(onnx_files[cell]).read_text(encoding="utf-8"))
    loaded = load_model(runs[cell])
    assert meta == sidecar and meta["vocab"] == loaded.vocab.chars and meta["config"] == asdict(loaded.model.config)
    assert meta["end_of_record"] == loaded.vocab.end_of_record
    names = [i.name for i in session.get_inputs()]
    assert names == (["ids", "h", "c"] if loaded.model.config.cell == "lstm" else ["ids", "h"])

    ids, expected = probe_ids(runs[cell])
    state = {name: np.zeros((2, 1, 24), np.float32) for name in names[1:]}
    rows = []
    for token in ids:
        logits, *new_state = session.run(None, {"ids": np.array([token], np.int64), **state})
        state = dict(zip(state, new_state))
        rows.append(logits[0])
    assert len(ids) == 200
    assert np.abs(np.stack(rows) - expected).max() < TOLERANCE

    # the batch size is free: three streams at once, each as it runs alone
    batch = {name: np.zeros((2, 3, 24), np.float32) for name in names[1:]}
    outputs = session.run(None, {"ids": np.array(ids[:3], np.int64), **batch})
    for b, token in enumerate(ids[:3]):
        alone = session.run(None, {"ids": np.array([token], np.int64), **{n: s[:, :1] for n, s in batch.items()}})
        assert np.abs(outputs[0][b] - alone[0][0]).max() < TOLERANCE


def readme_sampler() -> str:
    """The README's ONNX sampler, as printed there."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    (snippet,) = [b for b in blocks if "onnxruntime as ort" in b]
    return snippet


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_readme_onnx_sampler_runs_and_stops_at_the_end_of_record(runs, onnx_files, tmp_path):
    snippet = readme_sampler()
    assert len(snippet.strip().splitlines()) <= 22 and "import torch" not in snippet and "charlstm" not in snippet
    for name, records in (("lstm", False), ("records", True)):
        script = tmp_path / f"sampler_{name}.py"
        script.write_text(snippet.replace('"shakespeare.onnx"', repr(str(onnx_files[name]))), encoding="utf-8")
        # charlstm and torch cannot be imported: the snippet needs only onnxruntime and NumPy
        blocked = "import sys; sys.modules['charlstm'] = sys.modules['torch'] = None; "
        code = blocked + f"exec(compile(open({str(script)!r}).read(), 'sampler', 'exec'))"
        done = subprocess.run(
            [sys.executable, "-I", "-c", code],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
            env=clean_env(),
        )
        assert done.returncode == 0, done.stderr
        text = done.stdout[:-1]  # print's newline
        assert text.startswith("ROMEO:") and set(text) <= set(CHARS)
        if records:  # the marker's logit is raised: the record ends within a few characters
            assert len(text) < 100
        else:
            assert len(text) == len("ROMEO:") + 500


# --------------------------------------------------------------------------------------- torchscript


@pytest.fixture(scope="module")
def torchscript_files(runs) -> dict[str, Path]:
    made = {}
    for name in ("lstm", "gru", "rnn", "records", "records-lstm"):
        with torch_threads(1):
            result = invoke("export", runs[name], "--format", "torchscript")
        assert_ok(result)
        made[name] = runs[name] / f"{name}.torchscript"
    return made


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "records-lstm"])
def test_torchscript_matches_the_model_over_200_steps(runs, torchscript_files, cell):
    module = torch.jit.load(str(torchscript_files[cell]))
    ids, expected = probe_ids(runs[cell])
    state = [torch.zeros(2, 1, 24) for _ in range(2 if "lstm" in cell else 1)]
    rows = []
    with torch.inference_mode():
        for token in ids:
            logits, *state = module(torch.tensor([token]), *state)
            rows.append(logits[0].numpy())
    assert np.abs(np.stack(rows) - expected).max() < TOLERANCE
    assert json.loads(module.config())["vocab"] == load_model(runs[cell]).vocab.chars


@pytest.mark.slow
@pytest.mark.subprocess
def test_torchscript_loads_and_generates_where_charlstm_is_not_installed(torchscript_files, tmp_path):
    code = (
        "import sys\n"
        "sys.modules['charlstm'] = None  # installed or not, it cannot be imported here\n"
        "import torch\n"
        "for path in sys.argv[1:]:\n"
        "    m = torch.jit.load(path)\n"
        "    print(repr(m.generate('ROMEO:', 300, 0.8, 7)))\n"
        "    print(repr(m.generate('ROMEO:', 300, 0.8, 7)))\n"
        "    print(repr(m.generate('ROMEO:', 300, 0.8, 8)))\n"
    )
    paths = [str(torchscript_files[name]) for name in ("lstm", "records")]
    done = subprocess.run(
        [sys.executable, "-I", "-c", code, *paths],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stderr
    plain, plain_again, plain_other, record, record_again, record_other = [
        ast.literal_eval(line) for line in done.stdout.split("\n")[:6]
    ]
    for text in (plain, record):
        assert text.startswith("ROMEO:") and set(text) <= set(CHARS)
    assert len(plain) == 306 and plain == plain_again and plain != plain_other  # the seed decides the text
    assert len(record) < 100 and record == record_again  # the record ends at its marker (raised logit)


def test_torchscript_stops_only_at_the_marker(runs, tmp_path):
    """With the marker's logit lowered far below the rest, the record runs to the length asked."""
    never = save_run(tmp_path / "never", "lstm", records=True, eor_bias=-1e3, seed=6)
    assert_ok(invoke("export", never, "--format", "torchscript"))
    module = torch.jit.load(str(never / "never.torchscript"))
    assert len(module.generate("ROMEO:", 200, 1.0, 3)) == 206
    raised = torch.jit.load(str(runs["records-lstm"] / "records-lstm.torchscript"))  # the same model, marker raised
    assert len(raised.generate("ROMEO:", 200, 1.0, 3)) < 100


# ---------------------------------------------------------------------------------------------- html


def charlstm_distribution(run: Path, prime: str) -> np.ndarray:
    """charlstm's next-character distribution after `prime` (after the marker on a record-trained model), from
    zeros: what the page's `distribution(prime)` gives."""
    loaded = load_model(run)
    eor = loaded.vocab.end_of_record
    ids = ([eor] if eor is not None else []) + loaded.vocab.encode(prime).tolist()
    ids = ids or [loaded.vocab.index["\n"]]  # nothing to read: a newline, as `charlstm sample` feeds
    with torch.inference_mode():
        logits, _ = loaded.model(torch.tensor([ids]))
    return torch.softmax(logits[0, -1], -1).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "records"])
def test_the_page_writes_in_the_browser_with_charlstms_probabilities(runs, torchscript_files, browser, cell):
    precision = ["--precision", "float32"] if cell == "rnn" else []  # the page's other weight decoder
    result = invoke("export", runs[cell], "--format", "html", *precision)
    assert_ok(result)
    page = runs[cell] / f"{cell}.html"
    html = page.read_text(encoding="utf-8")
    assert not re.search(r"(src|href)=\"(https?:)?//", html) and "fetch(" not in html  # nothing from the network
    open_page(browser, page)
    assert browser.execute_script("return window.charlstm && window.charlstm.ready") is True
    assert console_errors(browser) == []
    vocab = browser.execute_script("return window.charlstm.vocab")
    assert vocab == load_model(runs[cell]).vocab.chars

    for prime in ("ROMEO:", "the quick fox. and", ""):
        page_p = np.array(browser.execute_script("return window.charlstm.distribution(arguments[0])", prime))
        assert np.abs(page_p - charlstm_distribution(runs[cell], prime)).max() < PAGE_TOLERANCE

    # a person's use: a prime, a temperature, a length and a seed, then Generate; the text streams into the page
    for field, value in (("prime", "ROMEO: "), ("temperature", "0.9"), ("length", "300"), ("seed", "42")):
        box = browser.find_element("id", field)
        box.clear()
        box.send_keys(value)
    browser.find_element("id", "generate").click()
    deadline = time.time() + 20
    while browser.execute_script("return window.charlstm.lastRun") is None and time.time() < deadline:
        time.sleep(0.05)
    run = browser.execute_script("return window.charlstm.lastRun")
    shown = browser.find_element("id", "output").text
    assert run is not None and set(run["text"]) <= set(vocab) and shown.startswith("ROMEO:")
    if cell == "records":
        assert run["ended"] == "the model ended the record" and run["chars"] < 300
    else:
        assert run["ended"] == "length reached" and run["chars"] == 300
    same = browser.execute_script("return window.charlstm.generate('ROMEO: ', 300, 0.9, 42)")
    assert same == "ROMEO: " + run["text"]  # the seed decides the text
    if cell == "rnn":  # float32 weights: the same text as TorchScript's generate (same generator, same rule)
        assert same == torch.jit.load(str(torchscript_files[cell])).generate("ROMEO: ", 300, 0.9, 42)
    assert console_errors(browser) == []


def test_the_page_refuses_a_cell_its_step_does_not_cover(runs, monkeypatch, tmp_path):
    monkeypatch.setattr(export_module, "PAGE_CELLS", ("gru", "rnn"))  # as it will meet cells added later
    assert_one_error(invoke("export", runs["lstm"], "--format", "html", "--out", tmp_path / "x.html"), "'lstm'", "onnx")
    assert not (tmp_path / "x.html").exists()


@pytest.mark.slow
def test_the_page_takes_float16_where_it_is_within_the_tolerance_and_states_its_error(runs, tmp_path, monkeypatch):
    loaded = load_model(runs["lstm"])
    html, precision, error, _ = page_module.page_html(loaded)  # auto
    assert precision == "float16" and 0 < error < PAGE_TOLERANCE
    assert f'"error": {json.dumps(error)}' in html and '"precision": "float16"' in html
    html32, precision, error, _ = page_module.page_html(loaded, "float32")
    assert precision == "float32" and error == 0 and len(html32) > 1.5 * len(html)
    monkeypatch.setattr(page_module, "PAGE_TOLERANCE", 1e-9)  # float16 now costs more than auto accepts
    result = invoke("export", runs["lstm"], "--format", "html", "--out", tmp_path / "p.html")
    assert_ok(result)
    assert "weights in float32 (float16 would cost" in result.output
    assert '"precision": "float32"' in (tmp_path / "p.html").read_text(encoding="utf-8")
    result = invoke("export", runs["lstm"], "--format", "html", "--precision", "float16", "--out", tmp_path / "q.html")
    assert_ok(result)
    assert "weights in float16 (as asked): max |Δp|" in result.output


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "html"])
def test_a_corrupt_checkpoint_is_refused_and_nothing_is_written(runs, tmp_path, fmt):
    data = bytearray((runs["lstm"] / "best.pt").read_bytes())
    for i in range(200, len(data) - 200, 61):
        data[i] ^= 0xFF
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(data))
    target = tmp_path / f"out{export_module.SUFFIXES[fmt]}"
    assert_one_error(invoke("export", bad, "--format", fmt, "--out", target), "not a loadable checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]


def test_bad_flags_and_paths_are_one_line(runs, tmp_path, monkeypatch):
    assert_one_error(invoke("export", runs["lstm"], "--format", "tflite"), "--format must be one of onnx")
    assert_one_error(invoke("export", runs["lstm"], "--format", "html", "--precision", "int4"), "--precision must be")
    assert_one_error(invoke("export", runs["lstm"], "--format", "onnx", "--precision", "float16"), "html only")
    assert_one_error(invoke("export", tmp_path / "nothing", "--format", "html"), "nothing")
    assert_one_error(invoke("export", runs["lstm"], "--format", "html", "--out", tmp_path), "is a directory")
    assert_one_error(invoke("export", runs["lstm"], "--format", "onnx", "--out", tmp_path / "m.json"), "name it .onnx")
    blocked = tmp_path / "file"
    blocked.write_text("x")
    assert_one_error(invoke("export", runs["lstm"], "--format", "html", "--out", blocked / "x.html"), "could not save")
    monkeypatch.chdir(tmp_path)
    assert_one_error(invoke("export", "--format", "html"), "no trained model found")


def test_onnx_without_the_extra_says_how_to_install_it(runs, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    line = assert_one_error(invoke("export", runs["lstm"], "--format", "onnx", "--out", tmp_path / "m.onnx"))
    assert "onnxscript" in line and "pip install 'charlstm[export]'" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_a_model_whose_forward_does_not_trace_is_refused_by_name(runs, tmp_path, monkeypatch, fmt):
    """A cell with a Python branch on the data (as a cell added later might have): the trace freezes one branch
    (TorchScript, caught by the check against the model) or fails (ONNX); either way one line naming the cell."""
    from charlstm.model.charrnn import CharRNN

    plain = CharRNN.forward

    def branchy(self, x, state=None):
        logits, state = plain(self, x, state)
        if int(x[0, -1]) == 3:  # a branch on a value: what tracing cannot follow
            logits = logits + 1.0
        return logits, state

    monkeypatch.setattr(CharRNN, "forward", branchy)
    target = tmp_path / f"m{export_module.SUFFIXES[fmt]}"
    assert_one_error(
        invoke("export", runs["lstm"], "--format", fmt, "--out", target), "'lstm' model cannot be exported"
    )
    assert not target.exists()


def test_output_paths_default_beside_the_checkpoint(runs, tmp_path):
    result = invoke("export", runs["rnn"] / "best.pt", "--format", "torchscript", "--out", tmp_path / "sub" / "m.ts")
    assert_ok(result)
    assert (tmp_path / "sub" / "m.ts").is_file() and "max |Δlogit|" in result.output
    single = tmp_path / "poet.pt"
    single.write_bytes((runs["rnn"] / "best.pt").read_bytes())
    assert_ok(invoke("export", single, "--format", "torchscript"))
    assert (tmp_path / "poet.torchscript").is_file()  # a .pt file: beside it, its name; a run: RUN/RUN.<format>


# ------------------------------------------------------------------------------------ the cells of cells.py

CUSTOM_CELLS = ("peephole", "pseudo", "pseudo2", "cifg", "lnlstm")


@pytest.fixture(scope="module")
def custom_runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export-custom")
    # the layer-normalised LSTM with every weight doubled is chaotic: float32 rounding differences between a
    # whole window and one step at a time grow past 1e-4 within ~30 steps (float64 agrees to 2e-5); at gain 1
    # they stay below 3e-6
    gains = {"lnlstm": 1.0}
    return {
        cell: save_run(root / cell, cell, seed=10 + i, gain=gains.get(cell, 2.0)) for i, cell in enumerate(CUSTOM_CELLS)
    }


def run_step_graph(step, ids: list[int]) -> np.ndarray:
    """Logits (T, V) of a single-step graph fed `ids` one at a time from zero (h, c) states (2 x 1 x 24)."""
    state, rows = [np.zeros((2, 1, 24), np.float32) for _ in range(2)], []
    for token in ids:
        logits, *state = step(token, state)
        rows.append(logits[0])
    return np.stack(rows)


@pytest.mark.slow
@pytest.mark.parametrize("cell", CUSTOM_CELLS)
def test_every_custom_cell_exports_to_torchscript_with_the_models_logits(custom_runs, tmp_path, cell):
    out = tmp_path / f"{cell}.pt"
    assert_ok(invoke("export", custom_runs[cell], "--format", "torchscript", "--out", out))
    module = torch.jit.load(str(out))
    ids, expected = probe_ids(custom_runs[cell])

    def step(token, state):
        with torch.inference_mode():
            outputs = module(torch.tensor([token]), *(torch.from_numpy(s) for s in state))
        return [o.numpy() for o in outputs]

    assert np.abs(run_step_graph(step, ids) - expected).max() < TOLERANCE


@pytest.mark.slow
def test_a_custom_cell_exports_to_onnx_with_the_models_logits(custom_runs, tmp_path):
    import onnxruntime

    out = tmp_path / "pseudo2.onnx"
    assert_ok(invoke("export", custom_runs["pseudo2"], "--format", "onnx", "--out", out))
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["ids", "h", "c"]
    ids, expected = probe_ids(custom_runs["pseudo2"])
    step = lambda token, state: session.run(None, {"ids": np.array([token], np.int64), "h": state[0], "c": state[1]})  # noqa: E731
    assert np.abs(run_step_graph(step, ids) - expected).max() < TOLERANCE


@pytest.mark.parametrize("cell", CUSTOM_CELLS)
def test_the_page_refuses_each_custom_cell_by_name(custom_runs, tmp_path, cell):
    assert_one_error(invoke("export", custom_runs[cell], "--format", "html", "--out", tmp_path / "x.html"), f"'{cell}'")
    assert not (tmp_path / "x.html").exists()


def test_an_export_never_overwrites_a_file_of_the_run(runs, tmp_path):
    """A run directory named `run` exports to run.onnx beside run.onnx.json, and its own run.json is untouched;
    an --out naming one of the run's files (or the checkpoint read) is refused, nothing written."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes((runs["gru"] / "best.pt").read_bytes())
    (run / "run.json").write_text('{"step": 7}', encoding="utf-8")
    assert_ok(invoke("export", run, "--format", "torchscript"))
    assert (run / "run.torchscript").exists() and json.loads((run / "run.json").read_text()) == {"step": 7}
    assert export_module.sidecar_path(run / "run.onnx") == run / "run.onnx.json"
    before = (run / "best.pt").read_bytes()
    for name in ("best.pt", "run.json", "metrics.jsonl"):
        assert_one_error(invoke("export", run, "--format", "torchscript", "--out", run / name), name, "--out")
    assert (run / "best.pt").read_bytes() == before and not (run / "metrics.jsonl").exists()
    loose = tmp_path / "model.pt"
    loose.write_bytes(before)
    assert_one_error(invoke("export", loose, "--format", "html", "--out", loose), "model.pt", "--out")
    assert loose.read_bytes() == before


def test_sample_and_inspect_never_write_over_a_file_of_the_run(runs, tmp_path):
    """The same guard as export's (rundir.refuse_run_file) for `sample --out` and `inspect --out`."""
    run = tmp_path / "r"
    run.mkdir()
    (run / "best.pt").write_bytes((runs["lstm"] / "best.pt").read_bytes())
    before = (run / "best.pt").read_bytes()
    assert_one_error(invoke("sample", run, "-N", "2", "--length", "5", "--out", run / "best.pt"), "best.pt", "--out")
    assert_one_error(invoke("inspect", run, "--prime", "ROMEO", "--length", "5", "--out", run / "best.pt"), "--out")
    assert (run / "best.pt").read_bytes() == before
