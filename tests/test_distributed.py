"""Several processes (torchrun, gloo on CPU) train exactly what one process trains on the same streams, and a
run resumes with another number of processes. Each launch takes some seconds: the models are tiny."""

import math
import os
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from charlstm.checkpoint import store as ckpt
from charlstm.config import TrainConfig
from charlstm.data import tokens as data_module
from charlstm.data.corpus import load_corpus
from charlstm.data.streams import Streams
from charlstm.errors import CharlstmError
from charlstm.runs import directory as rundir
from charlstm.runtime.distributed import Distributed
from charlstm.training.loss import window_loss_sum
from charlstm.training.run import train
from charlstm.training.trainer import Trainer

from . import helpers
from .helpers import TINY_RUN_FLAGS, TORCHRUN_TWO_TRAIN, child_env, invoke, tiny_model, torch_threads, write_corpus

STEPS = 12
# the same run through the CLI flags and through the config objects (helpers.tiny_model and tiny_train, on the
# CPU); dropout 0: no randomness in training; fp32 (which --size auto would otherwise choose only on a CPU without
# bf16 instructions): in bf16 each rank's gradients round differently, so two ranks could not match one process
FLAGS = [*TINY_RUN_FLAGS, "--device", "cpu", "--precision", "fp32"]
TIMEOUT = 600  # generous: a loaded 2-core machine
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (see conftest.one_thread)


def tiny_train(**kw) -> TrainConfig:
    return helpers.tiny_train(**{"device": "cpu", "precision": "fp32", **kw})


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), 1000)  # 8 windows an epoch: 12 steps wrap, padding included


@pytest.fixture(scope="module")
def single_run(corpus_path, tmp_path_factory) -> Path:
    """The reference: one process, STEPS steps straight."""
    run = tmp_path_factory.mktemp("single") / "run"
    with torch_threads(1):
        train(load_corpus([corpus_path]), tiny_model(), tiny_train(max_steps=STEPS), run)
    return run


def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [*TORCHRUN_TWO_TRAIN, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=child_env())
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def assert_same_run(a: Path, b: Path) -> None:
    """Same weights, carried state and loss curve, within float tolerance (gradients are summed in another order)."""
    first, second = ckpt.load_checkpoint(a / rundir.LATEST), ckpt.load_checkpoint(b / rundir.LATEST)
    assert first["progress"]["step"] == second["progress"]["step"] == STEPS
    assert first["model"].keys() == second["model"].keys()
    for key in first["model"]:
        torch.testing.assert_close(first["model"][key], second["model"][key], rtol=1e-4, atol=1e-5, msg=key)
    assert len(first["hidden"]) == len(second["hidden"]) == 2  # LSTM (h, c), all 8 rows
    for x, y in zip(first["hidden"], second["hidden"]):
        assert x.shape == y.shape == (2, 8, 24)
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    curve_a, curve_b = rundir.read_metrics(a), rundir.read_metrics(b)
    assert [(r["step"], r["chars_seen"]) for r in curve_a] == [(r["step"], r["chars_seen"]) for r in curve_b]
    for ra, rb in zip(curve_a, curve_b):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-5)
        assert ra["val_loss"] == pytest.approx(rb["val_loss"], rel=1e-5)


# ------------------------------------------------------------------------------------ pieces, in process


def test_streams_rows_keep_the_full_geometry():
    ids = np.arange(203) % 50
    full = Streams(ids, batch=8, seq_len=7)
    share = Streams(ids, batch=8, seq_len=7, rows=slice(4, 8))  # holds the padded last stream
    assert len(share) == len(full) and share.num_targets == full.num_targets
    for k in range(len(full)):
        x_full, y_full = full.batch_at(k)  # (8, T)
        x, y = share.batch_at(k)  # (4, T)
        assert torch.equal(x, x_full[4:]) and torch.equal(y, y_full[4:])
        assert share.targets_in(k) == full.targets_in(k)  # counts are over all 8 rows


def test_rows_split_evenly_or_refuse():
    assert Distributed().rows(8) is None
    assert Distributed(rank=1, world_size=3).rows(9) == slice(3, 6)
    with pytest.raises(CharlstmError, match="--batch-size 8 does not split evenly over 3 processes"):
        Distributed(rank=0, world_size=3).rows(8)


def test_compile_flag_compiles_the_loss(tmp_path, corpus_path, monkeypatch):
    compiled = []

    def fake_compile(module, *args, **kwargs):  # compiling for real takes minutes on a small CPU
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    trainer = Trainer(load_corpus([corpus_path]), tiny_model(), tiny_train(max_steps=3, compile=True), tmp_path / "r")
    assert compiled == [window_loss_sum] and trainer.loss_sum is window_loss_sum
    assert (
        Trainer(load_corpus([corpus_path]), tiny_model(), tiny_train(max_steps=3), tmp_path / "e").loss_sum
        is window_loss_sum
    )
    assert len(compiled) == 1  # not without the flag
    trainer.train()
    saved = ckpt.load_checkpoint(tmp_path / "r" / rundir.LATEST)
    assert saved["train_config"]["compile"] is True
    assert saved["model"].keys() == trainer.model.state_dict().keys()  # the bare module's names, no wrapper prefix


def test_compile_flag_on_the_command_line(tmp_path, corpus_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, *a, **k: compiled.append(module) or module)
    result = invoke("train", corpus_path, "--max-steps", "2", "--out", tmp_path / "r", "--compile", *FLAGS)
    assert result.exit_code == 0, result.output
    assert len(compiled) == 1
    assert rundir.read_run_json(tmp_path / "r")["train_config"]["compile"] is True


# ------------------------------------------------------------------------------------------ two ranks


@pytest.mark.distributed
@pytest.mark.subprocess
@pytest.mark.slow
def test_two_ranks_match_one_process(tmp_path, corpus_path, single_run):
    run = tmp_path / "ddp"
    done = torchrun(str(corpus_path), "--max-steps", str(STEPS), "--out", str(run), *FLAGS)
    assert done.stderr.count("charlstm train") == 1, done.stderr  # only rank 0 reports
    assert "x 2 processes" in done.stderr
    assert rundir.read_run_json(run)["world_size"] == 2
    assert_same_run(single_run, run)
    # rank 0 alone samples while training: one sample per validation, as one process writes
    steps = [r["step"] for r in rundir.read_samples(run)]
    assert steps == [r["step"] for r in rundir.read_samples(single_run)] == [5, 10, 12]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, port: int, corpus_path: Path, run: Path, stop_at: int) -> None:
    """One of two ranks, started by torch.multiprocessing (so that the test can stop it at a given step)."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    # only rank 1 asks to stop (as when a signal reaches one process): both must stop at that step
    train(
        load_corpus([corpus_path]),
        tiny_model(),
        tiny_train(max_steps=STEPS),
        run,
        should_stop=lambda step: rank == 1 and step == stop_at,
    )


@pytest.mark.distributed
@pytest.mark.subprocess
@pytest.mark.slow
def test_two_rank_checkpoint_resumes_in_one_process(tmp_path, corpus_path, single_run, monkeypatch):
    run = tmp_path / "run"
    for key, value in child_env().items():
        monkeypatch.setenv(key, value)
    ranks = mp.start_processes(
        _rank, args=(_free_port(), corpus_path, run, 6), nprocs=2, start_method="spawn", join=False
    )
    deadline = time.monotonic() + TIMEOUT
    while not ranks.join(timeout=1):  # raises if a rank failed
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail("the two ranks did not finish (did one stop without the other?)")
    assert ckpt.load_checkpoint(run / rundir.LATEST)["progress"]["step"] == 6
    resumed = train(load_corpus([corpus_path]), tiny_model(), tiny_train(max_steps=STEPS), run, resume_from=run)
    assert resumed.step == STEPS and resumed.world_size == 1
    assert_same_run(single_run, run)


def _rank_encoding(rank: int, port: int, corpus_path: Path, run: Path, marks: Path) -> None:
    """A rank that caches even a tiny corpus and leaves a mark each time it encodes one."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    data_module.CACHE_OVER_BYTES = 0
    encode = data_module.encode_corpus

    def marked(*args, **kwargs):
        (marks / f"rank{rank}-{time.monotonic_ns()}").touch()
        return encode(*args, **kwargs)

    data_module.encode_corpus = marked
    train(load_corpus([corpus_path]), tiny_model(), tiny_train(max_steps=2), run)


@pytest.mark.distributed
@pytest.mark.subprocess
@pytest.mark.slow
def test_rank_0_builds_the_corpus_cache_and_the_other_ranks_reuse_it(tmp_path, corpus_path, monkeypatch):
    run, marks = tmp_path / "run", tmp_path / "marks"
    marks.mkdir()
    for key, value in child_env().items():
        monkeypatch.setenv(key, value)
    mp.start_processes(_rank_encoding, args=(_free_port(), corpus_path, run, marks), nprocs=2, start_method="spawn")
    assert [m.name.split("-")[0] for m in marks.iterdir()] == ["rank0"]  # encoded once, by rank 0
    assert len(list(run.glob("corpus.*.bin"))) == 1
    assert ckpt.load_checkpoint(run / rundir.LATEST)["progress"]["step"] == 2


def _rank_that_fails_on_rank_0(rank: int, port: int, corpus_path: Path, run: Path, errors: Path, where: str) -> None:
    """A rank whose corpus scan (`where` = "corpus") or first checkpoint save ("save") fails on rank 0 only,
    as a corpus found bad by the first reader, or a full disk where rank 0 writes."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    if rank == 0 and where == "corpus":

        def bad_corpus(*args, **kwargs):
            raise CharlstmError("corpus is empty: bad.txt")

        data_module.scan_corpus = bad_corpus
    if rank == 0 and where == "save":

        def full_disk(*args, **kwargs):
            raise CharlstmError("could not save latest.pt: the disk is full; the previous file is unchanged")

        ckpt.save_checkpoint = full_disk
    try:
        train(load_corpus([corpus_path]), tiny_model(), tiny_train(max_steps=2), run)
    except CharlstmError as exc:
        (errors / f"rank{rank}").write_text(str(exc))


@pytest.mark.distributed
@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize(
    "where,doing,message",
    [
        ("corpus", "preparing the corpus", "corpus is empty: bad.txt"),
        ("save", "saving a checkpoint", "could not save latest.pt: the disk is full; the previous file is unchanged"),
    ],
)
def test_a_failure_on_rank_0_alone_stops_every_rank(tmp_path, corpus_path, monkeypatch, where, doing, message):
    """Rank 1 waits for rank 0 (its corpus, its save); when rank 0 fails, rank 1 must stop too, not hang."""
    errors = tmp_path / "errors"
    errors.mkdir()
    for key, value in child_env().items():
        monkeypatch.setenv(key, value)
    started = time.monotonic()
    ranks = mp.start_processes(
        _rank_that_fails_on_rank_0,
        args=(_free_port(), corpus_path, tmp_path / "run", errors, where),
        nprocs=2,
        start_method="spawn",
        join=False,
    )
    while not ranks.join(timeout=1):
        if time.monotonic() - started > 120:
            for process in ranks.processes:
                process.kill()
            pytest.fail("rank 1 kept waiting after rank 0 failed")
    assert (errors / "rank0").read_text() == message
    assert (errors / "rank1").read_text() == f"another process failed while {doing} (it says why)"


@pytest.mark.distributed
@pytest.mark.subprocess
@pytest.mark.slow
def test_one_process_checkpoint_resumes_on_two_ranks(tmp_path, corpus_path, single_run):
    run = tmp_path / "run"
    first = train(
        load_corpus([corpus_path]), tiny_model(), tiny_train(max_steps=STEPS), run, should_stop=lambda step: step == 7
    )
    assert first.step == 7
    torchrun(str(corpus_path), "--resume", str(run), "--device", "cpu", "-q")
    assert_same_run(single_run, run)


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path, corpus_path):
    """A real torch.compile (CPU, C++ compiler needed) trains the same weights as eager, within float tolerance.

    Opt-in (CHARLSTM_TEST_COMPILE=1): a cold compile takes most of a minute on a small CPU."""
    import shutil

    if os.environ.get("CHARLSTM_TEST_COMPILE") != "1":
        pytest.skip("set CHARLSTM_TEST_COMPILE=1 to compile for real (slow)")
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("no C++ compiler for torch.compile on CPU")
    corpus = load_corpus([corpus_path])
    for name, compile in (("eager", False), ("compiled", True)):
        trainer = Trainer(corpus, tiny_model(), tiny_train(max_steps=3, compile=compile), tmp_path / name)
        trainer.train()
    assert trainer.loss_sum is not window_loss_sum
    eager, compiled = (ckpt.load_checkpoint(tmp_path / n / rundir.LATEST)["model"] for n in ("eager", "compiled"))
    for key in eager:
        torch.testing.assert_close(eager[key], compiled[key], rtol=1e-4, atol=1e-5, msg=key)


def test_bf16_trains_and_resumes_or_is_refused_in_one_line(tmp_path, corpus_path):
    """bf16 autocast (the GPU default) on this CPU: either it trains and resumes (the carried state is bf16),
    or the CPU has no bf16 LSTM kernels and the run is refused with one clear line, not a oneDNN traceback."""
    corpus = load_corpus([corpus_path])
    config = tiny_train(max_steps=4, eval_every=2, precision="bf16")
    try:
        first = train(corpus, tiny_model(), config, tmp_path / "r", should_stop=lambda step: step == 2)
    except CharlstmError as exc:
        assert str(exc) == "--precision bf16: this cpu cannot run recurrent layers in bf16; use --precision fp32"
        return
    assert first.precision == "bf16"
    resumed = train(corpus, tiny_model(), config, tmp_path / "r", resume_from=tmp_path / "r")
    assert resumed.step == 4 and math.isfinite(resumed.best_val_loss)
