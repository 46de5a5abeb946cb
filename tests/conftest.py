import random
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

torch.set_num_threads(min(2, torch.get_num_threads()))


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


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


@pytest.fixture
def shakespeare() -> Path:
    path = SHARED_DATA / "tinyshakespeare.txt"
    if not path.exists():
        pytest.skip(f"reference corpus not present at {path}")
    return path


@pytest.fixture
def one_thread():
    """Tiny models on one thread: two OpenMP threads on a loaded 2-core machine spin against each other and
    run many times slower (use with `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def notes_into(lines: list[str]):
    """An on_event sink for train()/Trainer that keeps the notes' text in `lines` (and ignores other events)."""

    def sink(kind: str, data: dict) -> None:
        if kind == "note":
            lines.append(data["text"])

    return sink
