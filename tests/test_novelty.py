"""Novelty of samples: the same figures as a brute-force search (torch-rnn's novel_substrings.py), fast."""

import json
import random

import numpy as np
import pytest

from charlstm.evaluate.novelty import TrainingText, read_samples


def _training(text: str) -> TrainingText:
    chars = sorted(set(text))
    code_of = {c: i + 1 for i, c in enumerate(chars)}
    return TrainingText(np.array([code_of[c] for c in text]), code_of)


def _brute(samples: list[str], train: str, n: int) -> tuple[int, int]:
    found = total = 0
    for sample in samples:
        for i in range(len(sample) - n + 1):
            total += 1
            found += sample[i : i + n] in train
    return found, total


def _brute_longest(samples: list[str], train: str) -> int:
    return max(
        (j - i for s in samples for i in range(len(s)) for j in range(i, len(s) + 1) if s[i:j] in train), default=0
    )


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_brute_force(seed):
    rng = random.Random(seed)
    train = "".join(rng.choice("abc de\n") for _ in range(3000))
    samples = []
    for _ in range(5):  # copies of the training text, spliced with new text and characters it lacks
        start = rng.randrange(0, 2900)
        copied = train[start : start + rng.randint(5, 90)]
        samples.append(
            "".join(rng.choice("abcxyz ") for _ in range(rng.randint(0, 30))) + copied + "Ω" * rng.randint(0, 2)
        )
    result = _training(train).novelty(samples, lengths=(3, 10, 20, 40))
    for n in (3, 10, 20, 40):
        assert result.copied[n] == _brute(samples, train, n)
    assert result.longest == _brute_longest(samples, train)
    assert result.longest_text in train and len(result.longest_text) == result.longest
    assert result.longest_text in samples[result.longest_sample]


def test_windows_do_not_span_samples_and_unknown_characters_never_match():
    train = "hello world and more text here"
    tt = _training(train)
    result = tt.novelty(["hello wor", "ld and mo"], lengths=(10,))
    assert result.copied[10] == (0, 0)  # neither sample has 10 characters; joined they would match
    assert tt.novelty(["hello w\u00f8rld and more"], lengths=(3,)).copied[3] == _brute(
        ["hello w\u00f8rld and more"], train, 3
    )
    assert tt.novelty(["zzzz"]).longest == 0


def test_read_samples_from_what_sample_writes():
    text = "═══ temperature 0.5 ═══\n─── sample 1 ───\nfirst\nline\n─── sample 2 ───\nsecond\n"
    text += "═══ temperature 1 ═══\n─── sample 1 ───\nthird\n"
    assert read_samples(text) == ["first\nline", "second", "third"]
    jsonl = "".join(
        json.dumps({"temperature": 1.0, "sample": i, "text": t}) + "\n" for i, t in enumerate(["a\nb", "c"])
    )
    assert read_samples(jsonl) == ["a\nb", "c"]
    assert read_samples("just one sample\n") == ["just one sample"]
