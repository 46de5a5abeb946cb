"""The draw rule itself (charlstm/draw.py), on hand-made numbers: temperature, top-k, top-p, the inverse-CDF
choice from a uniform, and the NumPy twin of the torch draw where they meet ties and edges.

Elsewhere: tests/test_sample.py (test_filters: a few hand-made filters), tests/test_steppers.py (the NumPy
draw equals the torch draw on many random logits; uniform_chunks is the per-step stream)."""

import numpy as np
import pytest
import torch

from charlstm.generate.next_char import choose, draw_ids, draw_ids_numpy, filter_logits, uniform_chunks

# uniforms spread evenly over (0, 1), none on a multiple of 1/16 (where a CDF of the probabilities below could
# stand, and float32 and float64 may round to either side)
GRID = (torch.arange(1000, dtype=torch.float64) + 0.25) / 1000


def random_logits(rows: int, vocab: int, seed: int) -> torch.Tensor:
    """Logits without ties (float32), spread widely enough for the filters to matter."""
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def both_draws(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0):
    """The torch and NumPy draws on the same logits and uniforms: (torch ids, numpy ids) as lists."""
    expected = draw_ids(logits, uniforms, temperature, top_k, top_p).tolist()
    got = draw_ids_numpy(logits.numpy(), uniforms.numpy(), temperature, top_k, top_p).tolist()
    return expected, got


# ------------------------------------------------------------------------------------------ choose


PROBS = torch.tensor([[0.125, 0.0, 0.5, 0.375]], dtype=torch.float64)  # exact in binary: cdf 0.125, 0.125, 0.625, 1


@pytest.mark.parametrize(
    "u,expected",
    [(0.0, 0), (0.1, 0), (0.125, 2), (0.3, 2), (0.624, 2), (0.625, 3), (0.9, 3), (0.999999, 3), (1.0, 3)],
)
def test_a_uniform_picks_the_first_id_whose_cumulative_probability_exceeds_it(u, expected):
    """At a boundary (u == cdf) the next id is drawn, never one of zero probability (id 1); u = 1 (which torch.rand
    never gives) is clamped to the last id."""
    assert choose(PROBS, torch.tensor([u], dtype=torch.float64)).tolist() == [expected]
    assert choose(PROBS * 8, torch.tensor([u], dtype=torch.float64)).tolist() == [expected]  # weights need no sum of 1


def test_choose_takes_each_row_with_its_own_uniform():
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75], [1.0, 0.0, 0.0]])
    assert choose(probs, torch.tensor([0.75, 0.25, 0.99])).tolist() == [1, 2, 0]
    assert choose(probs, torch.tensor([0.25, 0.2, 0.0])).tolist() == [0, 1, 0]


@pytest.mark.parametrize("draw", ["torch", "numpy"])
def test_evenly_spread_uniforms_draw_each_id_as_often_as_its_probability(draw):
    logits = torch.log(torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625]))[None].expand(len(GRID), -1).contiguous()
    if draw == "torch":
        ids = draw_ids(logits, GRID, 1.0, 0, 1.0)
    else:
        ids = torch.from_numpy(draw_ids_numpy(logits.numpy(), GRID.numpy(), 1.0, 0, 1.0))
    # cumulative 0.5, 0.75, 0.875, 0.9375, 1: u = (i + 0.25) / 1000 draws id 3 for i = 875..937, id 4 for 938..999
    assert torch.bincount(ids, minlength=5).tolist() == [500, 250, 125, 63, 62]
    assert ids.tolist() == sorted(ids.tolist())  # a larger u never draws an earlier id


# ------------------------------------------------------------------------------------- temperature


def test_temperature_zero_is_the_argmax_whatever_the_uniforms():
    logits = random_logits(6, 17, seed=1)
    expected = logits.argmax(dim=-1).tolist()
    for u in (0.0, 0.5, 0.999):
        uniforms = torch.full((6,), u, dtype=torch.float64)
        for top_k, top_p in ((0, 1.0), (3, 0.5)):
            assert both_draws(logits, uniforms, 0.0, top_k, top_p) == (expected, expected)


def test_temperature_zero_takes_the_first_of_tied_maxima():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    assert both_draws(logits, torch.tensor([0.9, 0.9], dtype=torch.float64), 0.0) == ([1, 0], [1, 0])


@pytest.mark.parametrize("temperature", [0.25, 1.0, 2.5])
def test_temperature_divides_the_logits(temperature):
    logits = random_logits(4, 9, seed=2)
    probs = filter_logits(logits, temperature, 0, 1.0)
    torch.testing.assert_close(probs, torch.softmax(logits.double() / temperature, dim=-1).float())


def test_a_tiny_temperature_is_greedy_without_overflow():
    logits = torch.tensor([[1e4, 1e4 - 1e-2, -1e4, 0.0]])
    for temperature in (1e-45, 1e-30, 1e-8):
        probs = filter_logits(logits, temperature, 0, 1.0)
        assert torch.isfinite(probs).all() and probs.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert both_draws(logits, torch.tensor([0.99], dtype=torch.float64), 1e-30) == ([0], [0])


# ------------------------------------------------------------------------------------------- top-k


@pytest.mark.parametrize("k", [1, 2, 5, 11])
def test_top_k_keeps_exactly_the_k_most_likely(k):
    logits = random_logits(8, 12, seed=k)
    probs = filter_logits(logits, 1.0, k, 1.0)
    kept = probs > 0
    assert kept.sum(dim=-1).tolist() == [k] * 8
    top = torch.topk(logits, k, dim=-1).indices
    assert torch.equal(kept, torch.zeros_like(kept).scatter_(-1, top, True))
    # renormalised over the kept ids, in the proportions they had
    masked = logits.double().masked_fill(~kept, float("-inf"))
    torch.testing.assert_close(probs, torch.softmax(masked, dim=-1).float())


@pytest.mark.parametrize("k", [0, 12, 50])
def test_top_k_off_or_not_below_the_vocabulary_keeps_every_id(k):
    logits = random_logits(3, 12, seed=3)
    torch.testing.assert_close(filter_logits(logits, 1.0, k, 1.0), torch.softmax(logits, dim=-1))


@pytest.mark.parametrize("draw", ["torch", "numpy"])
def test_top_k_draws_reach_every_kept_id_and_no_other(draw):
    logits = random_logits(1, 12, seed=4).expand(len(GRID), -1).contiguous()
    if draw == "torch":
        ids = draw_ids(logits, GRID, 1.3, 4, 1.0)
    else:
        ids = torch.from_numpy(draw_ids_numpy(logits.numpy(), GRID.numpy(), 1.3, 4, 1.0))
    assert set(ids.tolist()) == set(torch.topk(logits[0], 4).indices.tolist())


# ------------------------------------------------------------------------------------------- top-p


def smallest_set_reaching(probs: torch.Tensor, p: float) -> set[int]:
    """The most likely ids, fewest first, until their mass reaches p (float64)."""
    order = torch.argsort(probs.double(), descending=True, stable=True)
    total, kept = 0.0, set()
    for i in order.tolist():
        kept.add(i)
        total += float(probs[i])
        if total >= p:
            break
    return kept


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.77, 0.9, 0.999])
def test_top_p_keeps_the_smallest_set_reaching_p(p):
    logits = random_logits(20, 15, seed=5)
    full = torch.softmax(logits.double(), dim=-1)
    probs = filter_logits(logits, 1.0, 0, p)
    checked = 0
    for row in range(20):
        cumulative = torch.cumsum(torch.sort(full[row], descending=True).values, 0)
        if (cumulative - p).abs().min() < 1e-5:  # within float32 rounding of a boundary: either set is right
            continue
        kept = set(torch.nonzero(probs[row]).flatten().tolist())
        assert kept == smallest_set_reaching(full[row], p), row
        # the kept ids keep their probabilities (choose() scales u by their total: no renormalisation needed)
        torch.testing.assert_close(probs[row], torch.where(probs[row] > 0, full[row], 0.0).float())
        checked += 1
    assert checked >= 18


def test_top_p_always_keeps_the_most_likely_and_one_keeps_all():
    logits = random_logits(5, 10, seed=6)
    assert (filter_logits(logits, 1.0, 0, 1e-9) > 0).sum(dim=-1).tolist() == [1] * 5
    assert (filter_logits(logits, 1.0, 0, 1e-9).argmax(dim=-1) == logits.argmax(dim=-1)).all()
    torch.testing.assert_close(filter_logits(logits, 1.0, 0, 1.0), torch.softmax(logits, dim=-1))


def test_top_p_applies_to_the_top_k_distribution():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    # top-2 leaves 0.4/0.7 and 0.3/0.7: 0.57 alone reaches p = 0.5, where over all four ids it would not
    assert (filter_logits(logits, 1.0, 2, 0.5) > 0).tolist() == [[True, False, False, False]]
    assert (filter_logits(logits, 1.0, 0, 0.5) > 0).tolist() == [[True, True, False, False]]


# ----------------------------------------------------------------------------------- torch and NumPy


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (1.0, 2, 1.0), (1.0, 0, 0.5), (0.8, 3, 0.9)])
@pytest.mark.parametrize("rows", [1, 30])  # one row: NumPy's single-stream path; 30: exp and cumsum in torch
def test_numpy_and_torch_agree_on_tied_logits(temperature, top_k, top_p, rows):
    """Ties: top-k keeps every id tied with the k-th, top-p orders equal probabilities by id (a stable sort)."""
    logits = torch.tensor([[0.0, 2.0, 1.0, 2.0, 1.0, 2.0, -1.0]]).expand(rows, -1).contiguous()
    for u in GRID[::37]:
        uniforms = torch.full((rows,), float(u), dtype=torch.float64)
        expected, got = both_draws(logits, uniforms, temperature, top_k, top_p)
        assert got == expected, float(u)


def test_numpy_single_row_path_equals_its_batch_path():
    logits = random_logits(1, 30, seed=7).numpy()
    for u in GRID[::7].numpy():
        one = draw_ids_numpy(logits, np.array([u]), 0.9, 0, 1.0)  # the single-stream hot path
        two = draw_ids_numpy(np.repeat(logits, 2, axis=0), np.array([u, u]), 0.9, 0, 1.0)
        assert one.tolist() == two[:1].tolist() == two[1:].tolist(), u


# ---------------------------------------------------------------------------------------- uniforms


@pytest.mark.parametrize("rows,chunk", [(0, 4), (1, 4), (4, 4), (10, 4), (3, 64)])
def test_uniform_chunks_shapes(rows, chunk):
    chunks = list(uniform_chunks(torch.Generator().manual_seed(0), 5, rows, chunk))
    assert [c.shape[1] for c in chunks] == [5] * len(chunks)
    assert [c.shape[0] for c in chunks] == [chunk] * (rows // chunk) + ([rows % chunk] if rows % chunk else [])
    assert all(c.dtype == torch.float32 and bool(((c >= 0) & (c < 1)).all()) for c in chunks)
