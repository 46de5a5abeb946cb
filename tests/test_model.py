import pytest
import torch

from charlstm.config import ModelConfig
from charlstm.errors import CharlstmError
from charlstm.model.charrnn import CharRNN, detach_state, state_from_list

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (see conftest.one_thread)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_shapes_and_state(cell):
    config = ModelConfig(vocab_size=11, cell=cell, layers=2, hidden=16, embed=8, dropout=0.1)
    model = CharRNN(config)
    x = torch.randint(0, 11, (3, 7))
    logits, state = model(x)
    assert logits.shape == (3, 7, 11)
    tensors = [s.detach().cpu() for s in (state if isinstance(state, tuple) else (state,))]
    assert len(tensors) == (2 if cell == "lstm" else 1)
    assert all(t.shape == (2, 3, 16) for t in tensors)
    restored = state_from_list(tensors, cell, "cpu")
    logits2, _ = model(x[:, :1], detach_state(restored))
    assert logits2.shape == (3, 1, 11)


def test_carried_state_equals_one_long_pass():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=5, layers=2, hidden=12, embed=4)).eval()
    x = torch.randint(0, 5, (2, 20))
    whole, _ = model(x)
    first, state = model(x[:, :9])
    second, _ = model(x[:, 9:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)


def test_initial_state_is_zero():
    model = CharRNN(ModelConfig(vocab_size=5, hidden=6))
    h, c = model.initial_state(4)
    assert h.shape == (1, 4, 6) and not h.any() and not c.any()


def test_bad_config_is_a_user_error():
    with pytest.raises(CharlstmError, match="cell must be one of"):
        CharRNN(ModelConfig(vocab_size=5, cell="transformer"))
    with pytest.raises(CharlstmError, match="dropout must be in"):
        CharRNN(ModelConfig(vocab_size=5, dropout=1.0))
