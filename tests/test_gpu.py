"""The CUDA paths on a real GPU: skipped where there is none (CI has none).

What they check, each next to the CPU test that covers its logic without a GPU:
  * the CUDA-graph sampler is captured (not the eager fallback) and writes the same ids as the plain
    per-character stepper on the same GPU (CPU: test_steppers.test_chunked_stepper_eager_equals_plain);
  * training on the GPU keeps the corpus resident and gathers windows there, in fp32 and bf16, resumes, and its
    checkpoint samples on the CPU (CPU: test_data.test_device_side_gather_equals_host_gather, test_train);
  * two GPUs with NCCL train what one process trains (CPU, gloo: test_distributed).

    PYTHONPATH=. python3 -m pytest -q tests/test_gpu.py     # or scripts/gpu_figures.sh, which runs it first
"""

import math
import subprocess

import pytest
import torch

from charlstm.checkpoint import store as ckpt
from charlstm.config import SampleConfig
from charlstm.data.corpus import load_corpus
from charlstm.generate.sample import sample_text
from charlstm.generate.steppers import ChunkedTorchStepper, TorchStepper, make_stepper
from charlstm.runs import directory as rundir
from charlstm.runs.model_file import LoadedModel, load_model
from charlstm.training.run import train
from charlstm.training.trainer import Trainer

from .helpers import END_OF_RECORD, TINY_RUN_FLAGS, TORCHRUN_TWO_TRAIN, child_env, tiny_model, tiny_train, write_corpus
from .helpers import SAMPLE_CHARS as CHARS
from .helpers import random_loaded_model as random_model

STEPS = 12
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def on_gpu(loaded: LoadedModel) -> LoadedModel:
    return LoadedModel(model=loaded.model.cuda(), vocab=loaded.vocab, path=loaded.path, payload={})


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), 1000)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_cuda_graph_sampler_is_captured_and_matches_the_plain_stepper(cell):
    model = on_gpu(random_model(cell=cell, seed=9)).model
    settings = [dict(temperature=0.9), dict(temperature=1.1, top_k=6, top_p=0.95), dict(temperature=0)]
    for extra in settings:
        config = SampleConfig(length=101, seed=0, num_samples=3, **extra)  # 101: three whole chunks and a part
        x = torch.tensor([[1, 5, 7]] * 3, device="cuda")  # (N, P)
        with torch.inference_mode():
            plain = list(TorchStepper(model).sample_ids(x, config, torch.Generator().manual_seed(4)))
            stepper = make_stepper(model, config.num_samples)
            assert isinstance(stepper, ChunkedTorchStepper)
            fast = list(stepper.sample_ids(x, config, torch.Generator().manual_seed(4)))
        assert stepper.graph is not None, "CUDA graph capture failed; the eager fallback ran"
        assert fast == plain, extra
        assert len(fast) == 101 and all(len(row) == 3 for row in fast)


def test_cuda_sampling_ends_records_like_the_plain_path():
    loaded = on_gpu(random_model(seed=5, chars=[END_OF_RECORD, *CHARS]))
    with torch.no_grad():
        loaded.model.head.bias[0] -= 1.0  # end-of-record likely enough to end some samples early
    config = SampleConfig(length=200, seed=3, num_samples=6, stop=["."])
    assert sample_text(loaded, config) == sample_text(loaded, config, fast=False)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gpu_training_is_resident_resumes_and_samples_on_the_cpu(tmp_path, corpus_path, precision):
    corpus = load_corpus([corpus_path])
    config = tiny_train(max_steps=STEPS, device="cuda", precision=precision)
    trainer = Trainer(corpus, tiny_model(), config, tmp_path / "run")
    streams = trainer.train_streams
    assert trainer.device.type == "cuda" and not streams._on_host  # the ids live on the GPU
    assert streams._tokens.device.type == "cuda" and streams._tokens.element_size() == 1  # compact, uint8
    x, y = streams.batch_at(0)
    assert x.device.type == y.device.type == "cuda"
    first = trainer.train(should_stop=lambda step: step == 6)
    assert first.step == 6 and first.precision == precision and first.device.startswith("cuda")
    resumed = train(corpus, tiny_model(), config, tmp_path / "run", resume_from=tmp_path / "run")
    assert resumed.step == STEPS and math.isfinite(resumed.best_val_loss)
    train(corpus, tiny_model(), config, tmp_path / "straight")
    a, b = (ckpt.load_checkpoint(tmp_path / name / rundir.LATEST)["model"] for name in ("run", "straight"))
    tolerance = dict(rtol=1e-3, atol=1e-4) if precision == "fp32" else dict(rtol=5e-2, atol=5e-3)
    for key in a:  # resumed == straight, up to cuDNN's choice of kernels (and bf16 rounding)
        torch.testing.assert_close(a[key], b[key], **tolerance, msg=key)
    loaded = load_model(tmp_path / "run", device="cpu")
    text = sample_text(loaded, SampleConfig(length=200, seed=1))[0]
    assert len(text) == 200 and set(text) <= set(loaded.vocab.chars)


@pytest.mark.distributed
@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpus_with_nccl_train_what_one_gpu_trains(tmp_path, corpus_path):
    single = tmp_path / "single"
    train(
        load_corpus([corpus_path]), tiny_model(), tiny_train(max_steps=STEPS, device="cuda", precision="fp32"), single
    )
    command = [
        *TORCHRUN_TWO_TRAIN,
        str(corpus_path),
        "--max-steps",
        str(STEPS),
        "--precision",
        "fp32",
        "--out",
        str(tmp_path / "ddp"),
        *TINY_RUN_FLAGS,
        "--device",
        "cuda",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=child_env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert rundir.read_run_json(tmp_path / "ddp")["world_size"] == 2
    one, two = (ckpt.load_checkpoint(run / rundir.LATEST) for run in (single, tmp_path / "ddp"))
    assert one["progress"]["step"] == two["progress"]["step"] == STEPS
    for key in one["model"]:  # NCCL sums the gradients in another order (TF32 is allowed for fp32 matmuls)
        torch.testing.assert_close(one["model"][key], two["model"][key], rtol=1e-2, atol=1e-3, msg=key)
