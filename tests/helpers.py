"""What the test modules share: the calling conventions of the trainer, tiny configurations, corpora made on the
spot, the command line (in process and as a subprocess) and small models. Fixtures stay in conftest.py.

When charlstm's API changes (a keyword renamed, a module split), this is the one place to change.
"""

from __future__ import annotations

import os
import random
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from typer.testing import CliRunner

from charlstm.checkpoint import store as ckpt
from charlstm.cli.app import app
from charlstm.config import CorpusConfig, ModelConfig, TrainConfig
from charlstm.data.corpus import Corpus, load_corpus
from charlstm.data.vocab import Vocab
from charlstm.model.charrnn import CharRNN
from charlstm.runs import directory as rundir
from charlstm.runs.model_file import LoadedModel

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# ------------------------------------------------------------------------------ calling the trainer quietly


def notes_into(lines: list[str]):
    """An on_event sink for train()/Trainer that keeps the notes' text in `lines` (and ignores other events)."""

    def sink(kind: str, data: dict) -> None:
        if kind == "note":
            lines.append(data["text"])

    return sink


# ------------------------------------------------------------------------------------------- threads


@contextmanager
def torch_threads(n: int):
    """Run a block on `n` torch threads, then restore the count (tiny models: one thread is fastest on a
    loaded 2-core machine, where two OpenMP threads spin against each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# -------------------------------------------------------------------------------------------- corpora


def make_text(n_chars: int = 6000, seed: int = 0) -> str:
    """A small corpus with learnable structure (repeated words), made on the spot."""
    rng = random.Random(seed)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "runs", "away", "home"]
    lines = []
    total = 0
    while total < n_chars:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9))).capitalize() + "."
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines)[:n_chars] + "\n"


def write_corpus(directory: Path, n_chars: int = 6000, seed: int = 0, name: str = "corpus.txt") -> Path:
    """`make_text` written to directory/name (UTF-8)."""
    path = Path(directory) / name
    path.write_text(make_text(n_chars, seed), encoding="utf-8")
    return path


def write_bytes(directory: Path, name: str, data: bytes) -> Path:
    path = Path(directory) / name
    path.write_bytes(data)
    return path


def memory_corpus(n_chars: int = 3000, seed: int = 0, name: str = "tiny") -> Corpus:
    """A corpus held in memory (no file behind it)."""
    return Corpus(text=make_text(n_chars, seed), name=name, sources=["memory"])


def load_sources(*paths, **options) -> Corpus:
    """The corpus of these files/directories, as the CLI would load it (options: CorpusConfig's fields)."""
    return load_corpus(CorpusConfig(paths=[str(p) for p in paths], **options))


# ------------------------------------------------------------------------------------ tiny configurations


def tiny_model(**overrides) -> ModelConfig:
    """Two layers of 24 units, embeddings of 8, no dropout (unless overridden)."""
    return ModelConfig(**{"layers": 2, "hidden": 24, "embed": 8, "dropout": 0.0, **overrides})


def tiny_train(**overrides) -> TrainConfig:
    """Batch 8 x 16 characters, a validation every 5 steps, lr 5e-3 (unless overridden); no budget."""
    return TrainConfig(**{"batch_size": 8, "seq_len": 16, "eval_every": 5, "lr": 5e-3, **overrides})


def cli_flags(quiet: bool = True, **options) -> list[str]:
    """Command-line flags from keyword arguments: cli_flags(batch_size=4) == ["--batch-size", "4", "-q"]."""
    flags = []
    for key, value in options.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags + (["-q"] if quiet else [])


TINY_FLAGS = cli_flags(hidden=16, embed=8, batch_size=4, seq_len=16, eval_every=5)  # a tiny run on the command line
TINY_RUN_FLAGS = cli_flags(
    layers=2, hidden=24, embed=8, batch_size=8, seq_len=16, eval_every=5, lr="5e-3"
)  # tiny_model()
# and tiny_train() on the command line


# ----------------------------------------------------------------------------------------- a run's files


def saved_weights(run_dir: Path, name: str = rundir.LATEST) -> dict[str, torch.Tensor]:
    return ckpt.load_checkpoint(Path(run_dir) / name)["model"]


def saved_step(run_dir: Path, name: str = rundir.LATEST) -> int:
    """The step in a run's checkpoint, loaded the way a resume loads it (this fails if the file is damaged)."""
    return ckpt.load_model_checkpoint(Path(run_dir) / name)["progress"]["step"]


def curve(run_dir: Path) -> list[tuple]:
    """The run's validations: (step, chars seen, train loss, val loss) each."""
    return [(r["step"], r["chars_seen"], r["train_loss"], r["val_loss"]) for r in rundir.read_metrics(run_dir)]


def checkpoint_bytes(run_dir: Path, names=(rundir.LATEST, rundir.BEST)) -> dict[str, bytes]:
    """The bytes of a run's checkpoints, to check later that nothing touched them."""
    return {name: (Path(run_dir) / name).read_bytes() for name in names}


# ---------------------------------------------------------------------------------- the command line

runner = CliRunner()


def invoke(*args, **kwargs):
    """`charlstm ARGS` in this process (arguments may be paths or numbers)."""
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def assert_ok(result) -> None:
    """Exit 0 and no escaped exception."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 0, result.output


def assert_one_error(result, *fragments: str) -> str:
    """Exit 1, exactly one line starting with `error:` holding every fragment (besides notes: `note:` lines, and
    the line that says what --size auto chose, printed before training starts), and no escaped exception.
    Returns the error line."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    notes = ("error:", "note:", "--size auto:")
    others = [line for line in result.output.splitlines() if line.strip() and not line.startswith(notes)]
    assert len(errors) == 1 and not others, result.output
    for fragment in fragments:
        assert fragment in errors[0], result.output
    return errors[0]


def charlstm_command(*args) -> list[str]:
    """`python -m charlstm ARGS` as a subprocess command line."""
    return [sys.executable, "-m", "charlstm", *(str(a) for a in args)]


def one_thread_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child, on one OpenMP thread."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def child_env() -> dict[str, str]:
    """For a child that starts ranks of its own (torchrun, torch.multiprocessing): one thread, no rank of this
    process's, and this checkout's charlstm importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


# ------------------------------------------------------------------------------------------ small models

SAMPLE_CHARS = list("\n .,;abcdefghijklmnopqrstuvwxyz")
END_OF_RECORD = ""  # the end-of-record marker: Vocab puts it first (id 0)


def scaled_random_model(
    vocab_size: int,
    cell: str = "lstm",
    layers: int = 2,
    hidden: int = 24,
    seed: int = 0,
    gain: float = 3.0,
    dropout: float = 0.0,
) -> CharRNN:
    """A model in eval mode with random weights scaled up by `gain`, so that its states and next-character
    distributions are far from uniform."""
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=vocab_size, cell=cell, layers=layers, hidden=hidden, embed=8, dropout=dropout)
    model = CharRNN(config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(gain)
    return model.eval()


def random_loaded_model(
    cell: str = "lstm",
    layers: int = 2,
    hidden: int = 24,
    seed: int = 0,
    gain: float = 3.0,
    chars: list[str] = SAMPLE_CHARS,
) -> LoadedModel:
    """`scaled_random_model` over `chars`, ready to sample from."""
    model = scaled_random_model(len(chars), cell, layers, hidden, seed, gain)
    return LoadedModel(model=model, vocab=Vocab(chars), path=Path("random"), payload={})


class CreatesFile:
    """Pickles to a call of open(target, "w"): a checkpoint holding it must be refused, never unpickled."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


# `torchrun` with two processes, training: the command's start (the arguments of `charlstm train` follow)
TORCHRUN_TWO = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
TORCHRUN_TWO_TRAIN = [*TORCHRUN_TWO, "-m", "charlstm", "train"]
