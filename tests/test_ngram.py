"""The Kneser-Ney baseline: proper distributions, a case checked by hand, the shortcuts that make it fast."""

import numpy as np
import pytest

from charlstm.errors import CharlstmError
from charlstm.evaluate.ngram import MAX_ORDER, KneserNey, _number, parse_orders


@pytest.mark.parametrize("order", range(1, MAX_ORDER + 1))
def test_distributions_sum_to_one_for_random_contexts(order):
    rng = np.random.default_rng(order)
    text = rng.integers(0, 6, 3000)
    text[::4] = 1  # some structure, so that counts differ
    model = KneserNey(text, vocab_size=9, max_order=MAX_ORDER)  # ids 6..8 never occur
    for _ in range(20):
        context = rng.integers(0, 9, rng.integers(1, 10))  # seen, unseen and out-of-training contexts
        distribution = model.next_distribution(context, order)
        assert distribution.shape == (9,)
        assert (distribution > 0).all()
        assert distribution.sum() == pytest.approx(1.0, abs=1e-12)


def test_a_tiny_case_by_hand():
    a, b, c = 0, 1, 2
    model = KneserNey(np.array([a, b, a, b]), vocab_size=3, max_order=2)
    # order 1, raw counts a:2 b:2 of 4; n1 = 0, n2 = 2 -> D = 0, held at the floor 0.05; uniform 1/3 below
    d1 = 0.05
    expected_1 = {w: (max(n - d1, 0) + d1 * 2 / 3) / 4 for w, n in ((a, 2), (b, 2), (c, 0))}
    got_1 = model.next_distribution(np.array([a]), 1)
    assert got_1 == pytest.approx([expected_1[a], expected_1[b], expected_1[c]])
    # order 2: bigrams ab x2, ba x1 (raw, the top level): n1 = 1, n2 = 1 -> D = 1/3;
    # the unigram level below uses continuation counts: a follows b once, b follows a once (total 2, types 2);
    # n1 = 2, n2 = 0 -> D = 1, held at the ceiling 0.95
    d_low = 0.95
    low = {w: (max(n - d_low, 0) + d_low * 2 / 3) / 2 for w, n in ((a, 1), (b, 1), (c, 0))}
    d2 = 1 / 3
    after_a = {a: (0 + d2 * 1 * low[a]) / 2, b: (2 - d2 + d2 * 1 * low[b]) / 2, c: (d2 * 1 * low[c]) / 2}
    assert model.next_distribution(np.array([a]), 2) == pytest.approx([after_a[a], after_a[b], after_a[c]])
    # c was never seen: its history falls through to the level below unchanged
    assert model.next_distribution(np.array([c]), 2) == pytest.approx([low[a], low[b], low[c]])
    # the first character has no history: only targets after it are scored
    nats, targets = model.nats_sum(np.array([a, b]), 2)
    assert targets == 1 and nats == pytest.approx(-np.log(after_a[b]))


def test_higher_orders_fit_structured_text_better():
    rng = np.random.default_rng(0)
    words = [rng.integers(0, 20, rng.integers(3, 8)) for _ in range(30)]
    text = np.concatenate([words[i] for i in rng.integers(0, 30, 3000)])
    held_out = np.concatenate([words[i] for i in rng.integers(0, 30, 300)])
    model = KneserNey(text, vocab_size=20, max_order=5)
    per_char = [model.nats_sum(held_out, k)[0] / (len(held_out) - 1) for k in (1, 2, 3, 5)]
    assert per_char == sorted(per_char, reverse=True)


def test_numbering_matches_numpy_unique():
    keys = np.random.default_rng(1).integers(0, 50, 2000).astype(np.int64)
    for got, expected in zip(
        _number(keys), np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    ):
        assert np.array_equal(got, expected.reshape(got.shape))


@pytest.mark.parametrize("text,expected", [("5", [5]), ("3,5,7", [3, 5, 7]), (" 1, 7 ", [1, 7])])
def test_parse_orders(text, expected):
    assert parse_orders(text) == expected


@pytest.mark.parametrize("text", ["0", "8", "x", "3,,", ""])
def test_parse_orders_refuses(text):
    with pytest.raises(CharlstmError, match="--order"):
        parse_orders(text)
