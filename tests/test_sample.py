import pytest
import torch

from charlstm.config import ModelConfig, SampleConfig, TrainConfig
from charlstm.data.vocab import Vocab
from charlstm.errors import CharlstmError
from charlstm.generate import sample as sample_module
from charlstm.generate.next_char import choose, filter_logits
from charlstm.generate.sample import sample_text
from charlstm.model.charrnn import CharRNN
from charlstm.runs.model_file import LoadedModel, load_model
from charlstm.training.run import train

from .helpers import memory_corpus, torch_threads

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (see conftest.one_thread)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    with torch_threads(1):
        train(
            memory_corpus(4000),
            ModelConfig(hidden=48, embed=16),
            TrainConfig(batch_size=8, seq_len=32, max_steps=60, eval_every=30),
            run,
        )
    return load_model(run)


def test_same_seed_same_text_and_different_seed_differs(trained):
    config = SampleConfig(length=200, seed=7)
    a, b = sample_text(trained, config), sample_text(trained, config)
    assert a == b and len(a[0]) == 200
    assert sample_text(trained, SampleConfig(length=200, seed=8)) != a


def test_only_vocabulary_characters(trained):
    text = sample_text(trained, SampleConfig(length=300, seed=1, temperature=1.5))[0]
    assert set(text) <= set(trained.vocab.chars)


def test_prime_is_printed_first_and_unknown_prime_named(trained):
    text = sample_text(trained, SampleConfig(length=50, seed=1, prime="The quick"))[0]
    assert text.startswith("The quick") and len(text) == len("The quick") + 50
    with pytest.raises(CharlstmError, match="'X' 'é'"):
        sample_text(trained, SampleConfig(length=5, prime="Xé"))


def test_greedy_is_deterministic_and_equals_top_k_1(trained):
    greedy = sample_text(trained, SampleConfig(length=80, temperature=0, seed=1))
    assert greedy == sample_text(trained, SampleConfig(length=80, temperature=0, seed=99))
    assert greedy == sample_text(trained, SampleConfig(length=80, temperature=1.0, top_k=1, seed=5))


def test_batch_of_samples_and_stop(trained):
    texts = sample_text(trained, SampleConfig(length=120, seed=3, num_samples=5))
    assert len(texts) == 5 and len(set(texts)) > 1
    stopped = sample_text(trained, SampleConfig(length=400, seed=3, num_samples=4, stop=["."]))
    full_texts = sample_text(trained, SampleConfig(length=400, seed=3, num_samples=4))
    assert any("." in full for full in full_texts), full_texts  # the stop string is met (else nothing is checked)
    for full, cut in zip(full_texts, stopped):
        if "." in full:
            assert cut == full[: full.index(".")]
        else:
            assert cut == full


def test_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    top2 = filter_logits(logits, 1.0, 2, 1.0)
    assert top2[0, :2].sum() == 0 and top2.sum().item() == pytest.approx(1.0)
    assert (filter_logits(logits, 1.0, 0, 0.5)[0] > 0).tolist() == [False, False, False, True]  # top is 0.64
    assert (filter_logits(logits, 1.0, 0, 0.7)[0] > 0).tolist() == [False, False, True, True]
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3]])
    assert choose(probs, torch.tensor([0.05])).item() == 0
    assert choose(probs, torch.tensor([0.5])).item() == 2
    assert choose(probs, torch.tensor([0.95])).item() == 3


class ScriptedStepper:
    """Stands in for a model: yields fixed rows of ids (one per sample), whatever it is fed."""

    def __init__(self, rows):
        self.rows = rows

    def sample_ids(self, x, config, rng, state=None):
        yield from self.rows[: config.length]


@pytest.mark.parametrize(
    "stream,stop,expected",
    [
        ("ab|cd", [], "ab"),  # "|" stands for end-of-record: it ends the sample, unprinted
        ("abxy|q", ["xyz"], "abxy"),  # a stop's prefix held back when the record ends is still emitted
        ("abxyzq", ["xyz"], "ab"),
        ("abxyzq", ["q", "yz"], "abx"),  # the first stop to complete wins
        ("xyzab", ["xyz"], ""),
        ("abxy", ["xyz"], "abxy"),  # length reached with a prefix held back
        ("aaaa", ["aaaaa", "b"], "aaaa"),
    ],
)
def test_stop_strings_and_end_of_record_emit_exactly_the_text_before_them(monkeypatch, stream, stop, expected):
    vocab = Vocab(["", *"abcdqxyz"])  # id 0: end of record
    ids = [0 if c == "|" else vocab.index[c] for c in stream]
    other = [vocab.index["d"]] * len(ids)  # a second sample that never stops
    monkeypatch.setattr(
        sample_module, "make_stepper", lambda *a, **k: ScriptedStepper([[i, o] for i, o in zip(ids, other)])
    )
    model = CharRNN(ModelConfig(vocab_size=len(vocab.chars), hidden=8, embed=4))
    loaded = LoadedModel(model=model, vocab=vocab, path=None, payload={})
    texts = sample_text(loaded, SampleConfig(length=len(ids), seed=0, num_samples=2, stop=stop))
    assert texts == [expected, "d" * len(ids)]
