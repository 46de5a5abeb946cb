"""A checkpoint from a stranger cannot hurt: memory bombs, lies about sizes, shared or strided storages, zip
bombs, exponential structures and code are refused with one line, fast, before anything big is allocated.

The cases that would allocate gigabytes if the loader let them through run in the fuzzer's worker process
(benchmarks/fuzz_checkpoint.py) under an address-space limit, with their time and peak RSS measured.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
import torch

from charlstm.checkpoint import store as ckpt
from charlstm.config import ModelConfig, SampleConfig
from charlstm.errors import CharlstmError
from charlstm.generate.sample import sample_text
from charlstm.model.charrnn import CharRNN, weight_shapes
from charlstm.runs import directory as rundir
from charlstm.runs.model_file import load_model

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fuzz_checkpoint", ROOT / "benchmarks" / "fuzz_checkpoint.py")
fuzz = importlib.util.module_from_spec(_spec)
sys.modules["fuzz_checkpoint"] = fuzz
_spec.loader.exec_module(fuzz)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """The fuzzer's worker process (launched first: it imports torch while the seeds train)."""
    process = fuzz.Worker(as_limit_mb=3072, log=tmp_path_factory.mktemp("worker") / "worker.log")
    process.launch()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def seeds(request, tmp_path_factory):
    """Real checkpoints: tiny LSTM/GRU/RNN (records) runs and variants (no optimizer, start states, ranks).

    When a test of this module that uses the worker is selected, the worker is launched first (it imports torch
    while the seeds train); otherwise (-m "not subprocess") no process is started."""
    if any("worker" in item.fixturenames for item in request.session.items if item.module is request.module):
        request.getfixturevalue("worker")
    return {seed.name: seed for seed in fuzz.make_seeds(tmp_path_factory.mktemp("seeds"))}


def refused(path: Path, *fragments: str) -> str:
    """The loader's one-line answer, checked to hold every fragment."""
    with pytest.raises(CharlstmError) as caught:
        ckpt.load_model_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def in_worker(worker, path: Path, seed: str = "lstm", resume: bool = False) -> dict:
    """Every command's target on `path` in the worker: its outcome, time and RSS growth (MB)."""
    answer = worker.run(path, seed, resume, path.with_suffix(".marker"))
    answer["rss_mb"] = (answer["rss_peak"] - answer["rss_before"]) / 2**20
    return answer


def expanded_bomb(seed: fuzz.Seed, hidden: int) -> dict:
    """The checkpoint of a model with `hidden` units whose every weight is a stride-0 view of one zero."""
    payload = {k: v for k, v in seed.payload.items() if k not in ("optimizer", "hidden", "start_states")}
    payload["model_config"] = {**payload["model_config"], "hidden": hidden}
    shapes = weight_shapes(ModelConfig(**payload["model_config"]))
    payload["model"] = {name: torch.zeros(1).expand(shape) for name, shape in shapes.items()}
    return payload


# ------------------------------------------------------------------------------------------ memory bombs


@pytest.mark.subprocess
@pytest.mark.parametrize("hidden", [60000, 6000])
def test_stride0_memory_bomb_is_one_line_fast_and_small(seeds, worker, tmp_path, hidden):
    """A 15 KB file whose weights are torch.zeros(1).expand(240000, 60000) once cost 57.6 GB at the first check."""
    path = tmp_path / "bomb.pt"
    torch.save(expanded_bomb(seeds["lstm"], hidden), path)
    assert path.stat().st_size < 64_000
    answer = in_worker(worker, path)
    assert answer["outcome"] == "refused", answer
    assert "not dense and contiguous" in answer["message"] and "strides (0, 0)" in answer["message"], answer
    assert "\n" not in answer["message"]
    assert answer["seconds"] < 5.0 and answer["rss_mb"] < 50, answer
    refused(path, "is not a usable charlstm checkpoint", "not dense and contiguous")


def test_storage_that_declares_more_than_its_record_holds(seeds, tmp_path):
    entries = fuzz.entries_of(seeds["gru"].raw)
    _, data = fuzz.pickle_of(entries)
    ops = fuzz.opcodes(data)
    persid = next(i for i, op in enumerate(ops) if op[0] == "BINPERSID")
    numel = next(op for op in reversed(ops[:persid]) if op[0] in fuzz.INT_OPS)  # ... numel TUPLE [BINPUT] BINPERSID
    lie = data[: numel[2]] + fuzz.pint(10**10) + data[numel[3] :]
    path = tmp_path / "lie.pt"
    fuzz.write_zip(path, fuzz.with_pickle(entries, lie))
    refused(path, "not a loadable checkpoint", "declares 10000000000 x 4 bytes but the archive holds")
    # and a record cut short under an honest pickle
    entries = fuzz.entries_of(seeds["gru"].raw)
    index = next(i for i, (name, _) in enumerate(entries) if name.endswith("/data/0"))
    entries[index] = (entries[index][0], entries[index][1][:-4])
    fuzz.write_zip(path, entries)
    refused(path, "not a loadable checkpoint", "declares")


def test_two_weights_sharing_one_storage(seeds, tmp_path):
    payload = dict(seeds["lstm"].payload)
    model = dict(payload["model"])
    model["rnn.bias_hh_l0"] = model["rnn.bias_ih_l0"]  # the same tensor twice
    torch.save({**payload, "model": model}, tmp_path / "same.pt")
    refused(tmp_path / "same.pt", "share one storage")
    both = torch.randn(2, *model["rnn.bias_ih_l0"].shape)  # two views of one storage
    model["rnn.bias_ih_l0"], model["rnn.bias_hh_l0"] = both[0], both[1]
    torch.save({**payload, "model": model}, tmp_path / "views.pt")
    refused(tmp_path / "views.pt", "rnn.bias_ih_l0", "own their bytes")


def test_transposed_and_offset_weights(seeds, tmp_path):
    payload = dict(seeds["gru"].payload)
    head = payload["model"]["head.weight"]
    torch.save({**payload, "model": {**payload["model"], "head.weight": head.t().contiguous().t()}}, tmp_path / "t.pt")
    refused(tmp_path / "t.pt", "head.weight", "not dense and contiguous")
    bigger = torch.randn(head.numel() + 7)[7:].view(head.shape)  # right shape, at an offset in a larger storage
    torch.save({**payload, "model": {**payload["model"], "head.weight": bigger}}, tmp_path / "o.pt")
    refused(tmp_path / "o.pt", "head.weight", "at offset 7")


@pytest.mark.subprocess
def test_compressed_entries_and_a_zip_bomb(seeds, worker, tmp_path):
    entries = fuzz.entries_of(seeds["rnn"].raw)
    fuzz.write_zip(tmp_path / "deflated.pt", entries, compress=lambda name: True)
    refused(tmp_path / "deflated.pt", "not a loadable checkpoint", "is compressed")
    # 200 MB of zeros declared as one storage, deflated to ~200 KB: refused without inflating it
    path = tmp_path / "zipbomb.pt"
    fuzz.m_zip(fuzz.Fixed("zip-bomb"), seeds["rnn"], path, tmp_path / "marker")
    assert path.stat().st_size < 1_000_000
    answer = in_worker(worker, path, "rnn")
    assert answer["outcome"] == "refused" and "is compressed" in answer["message"], answer
    assert answer["seconds"] < 5.0 and answer["rss_mb"] < 50, answer


BOMBS = [
    "dag-corpus",
    "cycle",
    "deep-tuple-key",
    "colliding-keys",
    "deep-list",
    "bytearray",
    "tensor-new",
    "memo-flood",
    "none-flood",
    "big-pickle",
]


@pytest.mark.subprocess
@pytest.mark.parametrize("variant", BOMBS)
def test_pickle_bombs_are_refused_fast(seeds, worker, tmp_path, variant):
    """A few bytes of pickle with memo references make a structure whose naive walk is exponential (dag), a
    cycle, a dict key whose hash overflows the C stack (torch.load dies of SIGSEGV), int keys of one hash (a
    dict of them fills in quadratic time: 40k took torch.load 14 s), calls torch allows..."""
    path = tmp_path / f"{variant}.pt"
    case = fuzz.m_bomb(fuzz.Fixed(variant), seeds["lstm"], path, tmp_path / "marker")
    assert case.variant == variant and case.must_refuse
    answer = in_worker(worker, path)
    assert answer["outcome"] == "refused", answer
    assert answer["seconds"] < 5.0 and answer["rss_mb"] < 200, answer


def test_dag_in_corpus_saved_by_torch(seeds, tmp_path):
    for levels, fragment in ((25, "reached twice"), (60, "nests deeper than 32 levels")):
        dag: list = []
        for _ in range(levels):
            dag = [dag, dag]  # 2**levels leaves for json.dumps or a recursive check; under 1 KB of pickle
        payload = seeds["rnn"].payload
        torch.save({**payload, "corpus": {**payload["corpus"], "dag": dag}}, tmp_path / "dag.pt")
        start = time.perf_counter()
        refused(tmp_path / "dag.pt", fragment)
        assert time.perf_counter() - start < 1.0


class _Calls:
    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def test_code_in_a_checkpoint_never_runs(seeds, tmp_path):
    import os

    marker = tmp_path / "pwned"
    for i, evil in enumerate(
        [
            _Calls(os.system, f"touch {marker}"),
            _Calls(open, str(marker), "w"),
            _Calls(exec, f"open({str(marker)!r}, 'w')"),
        ]
    ):
        path = tmp_path / f"evil{i}.pt"
        torch.save({**seeds["lstm"].payload, "corpus": {"x": evil}}, path)
        with pytest.raises(CharlstmError, match="refusing to load .* it asks to import or call"):
            ckpt.load_model_checkpoint(path)
        with pytest.raises(CharlstmError, match="refusing to load"):
            ckpt.load_checkpoint(path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ start states


def test_start_states_good_loads_and_samples(seeds, tmp_path):
    for name in ("rnn-starts", "lstm-starts"):
        loaded = load_model(seeds[name].path)
        states = loaded.payload["start_states"]
        assert all(t.dtype == torch.float32 and t.shape[1] in (3, 5) for t in states)
        assert len(sample_text(loaded, SampleConfig(length=20, seed=1, num_samples=3))) == 3


@pytest.mark.parametrize(
    "edit,fragment",
    [
        (lambda s: [t[:, :, :-1].clone() for t in s], "start states have shapes"),
        (lambda s: s[:1], "start states have shapes"),  # an LSTM needs h and c
        (lambda s: [torch.zeros(t.shape[0], 0, t.shape[2]) for t in s], "1 <= K <= 1024"),
        (lambda s: [torch.zeros(t.shape[0], 1025, t.shape[2]) for t in s], "1 <= K <= 1024"),
        (lambda s: [t.double() for t in s], "float32"),
        (lambda s: s[0], "not a list of tensors"),
        (
            lambda s: [
                t.expand(t.shape[0], t.shape[1], t.shape[2]).transpose(1, 2).contiguous().transpose(1, 2) for t in s
            ],
            "not dense and contiguous",
        ),
        (lambda s: [t.masked_fill(t > 0.5, float("nan")) for t in s], "start states are not finite"),
    ],
)
def test_start_states_bad_are_refused(seeds, tmp_path, edit, fragment):
    payload = seeds["lstm-starts"].payload
    torch.save({**payload, "start_states": edit(payload["start_states"])}, tmp_path / "bad.pt")
    refused(tmp_path / "bad.pt", "is not a usable charlstm checkpoint", fragment)


def test_older_checkpoints_without_start_states_or_optimizer_load(seeds, tmp_path):
    for name in ("lstm", "gru", "rnn", "lstm-noopt", "gru-noopt"):
        payload = torch.load(seeds[name].path, weights_only=True)
        payload.pop("start_states", None)  # as written before start states existed (the trainer writes them now)
        older = tmp_path / f"{name}-older.pt"
        torch.save(payload, older)
        loaded = ckpt.load_model_checkpoint(older)
        assert "start_states" not in loaded
        assert ("optimizer" in loaded) == ("noopt" not in name)
        load_model(older)


# ------------------------------------------------------------------------------------------ the reader


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)


def test_reader_reads_what_torch_load_reads(seeds):
    for seed in seeds.values():
        ours = ckpt.load_model_checkpoint(seed.path)
        assert same(ours, torch.load(seed.path, weights_only=True)), seed.name
        for tensor in ours["model"].values():  # each owns its bytes, like a fresh tensor
            assert tensor.is_contiguous() and tensor.storage_offset() == 0
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 3])
def test_weight_shapes_match_the_model(cell, layers):
    config = ModelConfig(vocab_size=11, cell=cell, layers=layers, hidden=6, embed=5)
    model = {name: tuple(t.shape) for name, t in CharRNN(config).state_dict().items()}
    assert list(weight_shapes(config).items()) == list(model.items())


def test_save_writes_views_as_tensors_that_own_their_bytes(tmp_path):
    base = torch.arange(24.0)
    weights = {"a": base[4:8], "b": base.view(4, 6).t(), "c": torch.zeros(1).expand(3, 3), "d": torch.ones(2)}
    weights["e"] = weights["d"]
    ckpt.save_checkpoint({"model_config": {}, "vocab": [], "model": weights}, tmp_path / "x.pt")
    loaded = ckpt.load_checkpoint(tmp_path / "x.pt")["model"]
    assert all(same(loaded[k], weights[k].contiguous()) for k in weights)


@pytest.mark.parametrize(
    "edit,fragment",
    [
        ({"hidden": 10**100}, "out of range"),
        ({"layers": 100_000}, "beyond any charlstm model"),
        ({"vocab_size": 2**62}, "beyond any charlstm model"),
        ({"embed": 2**40}, "beyond any charlstm model"),
        ({"hidden": 10**6}, "weight rnn.weight_ih_l0 has shape"),
        ({"cell": "transformer"}, "cell"),
    ],
)
def test_absurd_configs_are_refused_before_anything_is_read(seeds, tmp_path, edit, fragment):
    payload = seeds["lstm"].payload
    torch.save({**payload, "model_config": {**payload["model_config"], **edit}}, tmp_path / "c.pt")
    refused(tmp_path / "c.pt", fragment)


# ------------------------------------------------------------------------------------------ run records


def test_damaged_run_json_is_a_charlstm_error(tmp_path):
    for content in (b"{", b"[1, 2]", b"null", b"\xff\xfe garbage", b"[" * 100_000, b'"text"'):
        (tmp_path / "run.json").write_bytes(content)
        with pytest.raises(CharlstmError, match="run.json"):
            rundir.read_run_json(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"step": 3}))
    assert rundir.read_run_json(tmp_path) == {"step": 3}


def test_metrics_line_cut_by_a_kill_is_skipped_and_the_next_row_kept(tmp_path):
    rundir.append_metrics(tmp_path, {"step": 1, "val_loss": 2.0})
    with open(tmp_path / rundir.METRICS, "a") as handle:
        handle.write('{"step": 2, "val_lo')  # killed mid-line
    assert [r["step"] for r in rundir.read_metrics(tmp_path)] == [1]
    rundir.append_metrics(tmp_path, {"step": 3, "val_loss": 1.0})
    with open(tmp_path / rundir.METRICS, "ab") as handle:
        handle.write(b'[1]\n"x"\n{"step": "ten"}\n\xff\xfe\n' + b"[" * 100_000 + b"\n")
    assert [r["step"] for r in rundir.read_metrics(tmp_path)] == [1, 3]


# ------------------------------------------------------------------------------------------ the fuzzer


@pytest.mark.subprocess
@pytest.mark.slow
def test_seeded_fuzz_cases_load_or_refuse_with_one_line(seeds, worker, tmp_path):
    """A few hundred seeded mutations of the real checkpoints, every kind in turn: each ends in a correct load
    or a one-line CharlstmError within 5 s and 300 MB, no code runs, and the must-refuse ones are refused."""
    results = fuzz.run_fuzz(
        list(seeds.values()),
        cases=224,
        seed=20240607,
        work=tmp_path,
        resume_every=10,
        time_limit=5.0,
        rss_limit_mb=300.0,
        worker=worker,
    )
    bad = [f"{r.kind}/{r.variant} ({r.seed}): {r.message}" for r in results if r.outcome == "BAD"]
    assert not bad, "\n".join(bad)
    kinds = {r.kind for r in results}
    assert kinds == set(fuzz.MUTATIONS)
    assert any(r.outcome == "loaded" for r in results) and any(r.outcome == "refused" for r in results)
