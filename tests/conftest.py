from pathlib import Path

import pytest
import torch

from .browser import browser  # noqa: F401 (the headless Chromium fixture for the HTML page tests)
from .helpers import SHARED_DATA, make_text, torch_threads, write_corpus  # noqa: F401 (make_text: older imports)

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    return write_corpus(tmp_path)


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
    with torch_threads(1):
        yield
