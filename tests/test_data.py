import math

import numpy as np
import pytest
import torch

from charlstm.data.streams import IGNORE_INDEX, Streams, fit_batch_shape
from charlstm.data.textio import decode_bytes
from charlstm.data.tokens import split_train_val
from charlstm.data.vocab import Vocab
from charlstm.errors import CharlstmError


def test_vocab_round_trip_and_sorted():
    text = "héllo wörld\t… 🙂\n"
    vocab = Vocab.from_text(text)
    assert vocab.chars == sorted(set(text))
    ids = vocab.encode(text)
    assert ids.dtype == np.int64 and len(ids) == len(text)
    assert vocab.decode(ids.tolist()) == text


def test_vocab_unknown_characters_named():
    vocab = Vocab.from_text("abc")
    assert vocab.unknown("abxyz") == ["x", "y", "z"]
    with pytest.raises(CharlstmError, match="'x'"):
        vocab.encode("ax")


def test_end_of_record_marker_decodes_to_nothing():
    vocab = Vocab.from_text("ab", records=True)
    assert vocab.end_of_record == 0
    assert vocab.decode([1, 0, 2]) == "ab"


def test_split_is_last_fraction():
    ids = np.arange(1000)
    train, val = split_train_val(ids, 0.1)
    assert len(val) == 100 and val[0] == 900 and len(train) == 900


def test_split_matches_nanogpt_cut_on_shakespeare_size():
    train, val = split_train_val(np.zeros(1_115_394), 0.1)
    assert len(val) == 111_540


@pytest.mark.parametrize("n,batch,seq", [(1001, 4, 10), (1000, 7, 13), (50, 3, 100), (50, 3, 5), (129, 8, 16)])
def test_streams_rows_continue_across_batches(n, batch, seq):
    ids = torch.arange(n)
    streams = Streams(ids, batch, seq)
    windows = list(streams)
    checked = 0
    for k in range(len(windows) - 1):
        x_k, _ = windows[k]
        x_next, _ = windows[k + 1]
        for i in range(batch):
            last, first = int(x_k[i, -1]), int(x_next[i, 0])
            if first != 0 or last != 0:  # padded tail of the last stream reads as 0
                assert first == last + 1, f"row {i} of window {k + 1} does not continue window {k}"
                checked += 1
    # at every boundary between windows, every row but the last (the one that may end in padding) was checked;
    # (50, 3, 100) fits in one window: nothing to continue, hence (50, 3, 5)
    assert checked >= (batch - 1) * (len(windows) - 1)
    assert len(windows) == math.ceil(math.ceil((n - 1) / batch) / seq)


@pytest.mark.parametrize("n,batch,seq", [(1001, 4, 10), (1000, 7, 13), (17, 2, 5), (5000, 64, 64)])
def test_streams_cover_every_target_once_in_order(n, batch, seq):
    ids = torch.arange(n)
    streams = Streams(ids, batch, seq)
    rows = [[] for _ in range(batch)]
    total = 0
    for k, (x, y) in enumerate(streams):
        assert x.shape == y.shape and x.shape[0] == batch and x.shape[1] <= seq
        total += streams.targets_in(k)
        for i in range(batch):
            rows[i].extend(t for t in y[i].tolist() if t != IGNORE_INDEX)
    targets = [t for row in rows for t in row]
    assert targets == list(range(1, n))  # every character but the first, once, in order
    assert total == n - 1 == streams.num_targets
    # inputs are the previous character of each target
    for x, y in streams:
        mask = y != IGNORE_INDEX
        assert torch.equal(x[mask] + 1, y[mask])


def test_fit_batch_shape_shrinks_with_notice_and_refuses_tiny():
    assert fit_batch_shape(10_000, 8, 64) == (8, 64, None)
    batch, seq, notice = fit_batch_shape(300, 64, 128)
    assert batch * seq <= 299 and notice and "shorter than one batch" in notice
    with pytest.raises(CharlstmError, match="too short"):
        fit_batch_shape(5, 64, 128)


def test_decode_bytes_bom_crlf_and_errors():
    assert decode_bytes("\ufeffa\r\nb".encode(), "x") == "a\nb"
    with pytest.raises(CharlstmError, match="binary"):
        decode_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00", "x")
    with pytest.raises(CharlstmError, match="--encoding"):
        decode_bytes(b"caf\xe9 au lait", "x")
    assert decode_bytes(b"caf\xe9", "x", "latin-1") == "café"


@pytest.mark.parametrize("dtype,top", [(np.uint8, 200), (np.uint16, 60000), (np.uint32, 70000)])
@pytest.mark.parametrize(
    "n,batch,seq,rows", [(203, 8, 7, None), (203, 8, 7, slice(4, 8)), (50, 3, 16, slice(0, 1)), (1000, 16, 32, None)]
)
def test_device_side_gather_equals_host_gather(dtype, top, n, batch, seq, rows):
    """The gather a GPU run uses (torch ops on the resident compact ids), run on the CPU against numpy's."""
    ids = np.random.default_rng(n + batch).integers(0, top, n).astype(dtype)
    host = Streams(ids, batch, seq, rows=rows, gather_on_host=True)
    device = Streams(ids, batch, seq, rows=rows, gather_on_host=False)
    assert isinstance(device._tokens, torch.Tensor) and not isinstance(host._tokens, torch.Tensor)
    for k in range(len(host)):
        (x_host, y_host), (x_dev, y_dev) = host.batch_at(k), device.batch_at(k)
        assert x_dev.dtype == y_dev.dtype == torch.int64
        assert torch.equal(x_host, x_dev) and torch.equal(y_host, y_dev), k
        assert device.targets_in(k) == host.targets_in(k)
    if rows is None:  # the last window holds the padding of the last stream, when it ends early
        assert (y_host == IGNORE_INDEX).any() == (batch * host.stream_len > n - 1)
