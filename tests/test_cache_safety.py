"""The encoded-corpus cache in a run directory is checked before it is reused: a damaged or tampered cache
(corpus.json, corpus.<dtype>.bin, corpus.record-lengths.npy) is encoded again from the sources with a note,
never read out of bounds, never followed outside the run directory, and never crashes."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

import charlstm.data.tokencache as tokencache
import charlstm.data.tokens as tokens_module
from charlstm.data.tokens import prepare_tokens
from charlstm.data.vocab import Vocab
from charlstm.errors import CharlstmError

from .helpers import load_sources, make_text

DAMAGED = "is damaged"


@pytest.fixture(params=["records", "plain"])
def corpus(request, tmp_path):
    """A directory (one record per file, so corpus.record-lengths.npy exists) or one plain text file."""
    if request.param == "records":
        root = tmp_path / "src"
        root.mkdir()
        for i in range(5):
            (root / f"f{i}.txt").write_text(make_text(300 + 50 * i, seed=i))
        return load_sources(root)
    path = tmp_path / "plain.txt"
    path.write_text(make_text(2000))
    return load_sources(path)


def prepare(corpus, run: Path, in_memory_limit: int = 1 << 20):
    return prepare_tokens(corpus, 0.1, cache_dir=run, cache_over=0, in_memory_limit=in_memory_limit)


def built(corpus, run: Path):
    """The cache built in `run`, and the ids a cache-less encoding gives (what every rebuild must give again)."""
    first = prepare(corpus, run)
    assert "encoded the corpus" in first.notes[-1] and first.cache == run / "corpus.uint8.bin"
    expected = prepare_tokens(corpus, 0.1)
    assert np.array_equal(first.ids, expected.ids)
    return expected


def meta_of(run: Path) -> dict:
    return json.loads((run / "corpus.json").read_text())


def write_meta(run: Path, **changes) -> None:
    meta = {**meta_of(run), **changes}
    (run / "corpus.json").write_text(json.dumps(meta))


def assert_rebuilt(corpus, run: Path, expected, in_memory_limit: int = 1 << 20, reason: str = "") -> None:
    again = prepare(corpus, run, in_memory_limit)
    assert DAMAGED in again.notes[0] and reason in again.notes[0], again.notes
    assert "encoded the corpus" in again.notes[-1]
    assert np.array_equal(np.asarray(again.ids), expected.ids) and again.vocab.chars == expected.vocab.chars
    assert np.array_equal(np.asarray(again.val), expected.val) and again.summary() == expected.summary()
    if expected.record_lengths is not None:
        assert np.array_equal(again.record_lengths, expected.record_lengths)
    reused = prepare(corpus, run)  # and the rebuilt cache is whole again
    assert reused.notes == [f"reusing the encoded corpus {run / 'corpus.uint8.bin'} (sources unchanged)"]
    assert np.array_equal(np.asarray(reused.ids), expected.ids)


# ---------------------------------------------------------------------------------------------- corpus.json


@pytest.mark.parametrize(
    "text,reason",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ("\xff\xfe garbage", "not valid JSON"),
        ("", "not valid JSON"),
    ],
)
def test_corpus_json_unreadable(corpus, tmp_path, text, reason):
    run = tmp_path / "run"
    expected = built(corpus, run)
    (run / "corpus.json").write_bytes(text.encode("latin-1"))
    assert_rebuilt(corpus, run, expected, reason=reason)


@pytest.mark.parametrize(
    "changes,reason",
    [
        ({"tokens": "12"}, "'tokens' is missing or not an integer"),
        ({"tokens": True}, "'tokens' is missing or not an integer"),
        ({"chars": 1.5}, "'chars'"),
        ({"records": "yes"}, "'records'"),
        ({"fingerprint": None}, "'fingerprint'"),
        ({"vocab": "abc"}, "'vocab'"),
        ({"dtype": 8}, "'dtype'"),
        ({"file": ["corpus.uint8.bin"]}, "'file'"),
        ({"tokens": None, "chars": None}, "'tokens'"),
    ],
)
def test_corpus_json_with_wrong_types(corpus, tmp_path, changes, reason):
    run = tmp_path / "run"
    expected = built(corpus, run)
    write_meta(run, **changes)
    assert_rebuilt(corpus, run, expected, reason=reason)


def test_missing_keys(corpus, tmp_path):
    run = tmp_path / "run"
    expected = built(corpus, run)
    meta = meta_of(run)
    del meta["dtype"]
    (run / "corpus.json").write_text(json.dumps(meta))
    assert_rebuilt(corpus, run, expected, reason="'dtype' is missing")


@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_file_pointing_outside_the_run_is_not_followed(corpus, tmp_path, where):
    run = tmp_path / "run"
    expected = built(corpus, run)
    tokens = meta_of(run)["tokens"]
    outside = tmp_path / "outside.bin"  # the right size, full of ids far beyond the vocabulary
    outside.write_bytes(b"\xff" * tokens)
    (tmp_path / "corpus.uint8.bin").write_bytes(b"\xff" * tokens)  # what a cache_dir-relative "../x" would reach
    target = "../corpus.uint8.bin" if where == "relative" else str(outside)
    write_meta(run, file=target)
    assert_rebuilt(corpus, run, expected, reason="is not corpus.uint8.bin")
    assert outside.read_bytes() == b"\xff" * tokens and (tmp_path / "corpus.uint8.bin").exists(), "left alone"
    write_meta(run, file="../../etc/passwd")
    assert_rebuilt(corpus, run, expected, reason="'file'")


@pytest.mark.parametrize("dtype", ["float64", "int8", "uint16", "uint32", "object", "<u1"])
def test_dtype_not_the_vocabularys(corpus, tmp_path, dtype):
    run = tmp_path / "run"
    expected = built(corpus, run)
    tokens = meta_of(run)["tokens"]
    if dtype in ("uint16", "uint32"):  # a consistent-looking cache of the wrong type: file, name and size agree
        (run / "corpus.uint8.bin").rename(run / f"corpus.{dtype}.bin")
        with open(run / f"corpus.{dtype}.bin", "ab") as handle:
            handle.write(b"\0" * tokens * (np.dtype(dtype).itemsize - 1))
    write_meta(run, dtype=dtype, file=f"corpus.{dtype}.bin")
    assert_rebuilt(corpus, run, expected, reason="'dtype'")
    assert sorted(p.name for p in run.glob("corpus.*.bin")) == ["corpus.uint8.bin"], "the wrong-typed cache is gone"


@pytest.mark.parametrize(
    "vocab,reason",
    [
        (lambda v: ["ab"] + v[1:], "not a list of single characters"),
        (lambda v: [1] + v[1:], "not a list of single characters"),
        (lambda v: [None] + v[1:], "not a list of single characters"),
        (lambda v: [], "not a list of single characters"),
        (lambda v: v[:-2] + [v[-1], v[-2]], "not in the order"),  # two ids swapped: the text would decode wrong
        (lambda v: v[:-1] + [v[-2]], "repeats characters"),
        (lambda v: v[:-1], "beyond the"),  # one character fewer, well formed: caught by the id scan
    ],
    ids=["two-chars", "int", "null", "empty", "swapped", "repeated", "shorter"],
)
def test_vocab_not_single_characters(corpus, tmp_path, vocab, reason):
    run = tmp_path / "run"
    expected = built(corpus, run)
    changed = vocab(meta_of(run)["vocab"])
    write_meta(run, vocab=changed)
    assert_rebuilt(corpus, run, expected, reason=reason)


def test_records_without_a_marker(records_corpus, tmp_path):
    run = tmp_path / "run"
    expected = built(records_corpus, run)
    write_meta(run, vocab=meta_of(run)["vocab"][1:] + ["~"])  # still sorted, same size: the marker replaced
    assert_rebuilt(records_corpus, run, expected, reason="no end-of-record marker")


def test_a_resumed_vocabulary_in_its_own_order_is_reused(tmp_path):
    """A checkpoint's vocabulary (given on resume) is used as it is: a cache built with it is reused, whatever
    its order, and a cache built with another vocabulary is stale (an ordinary rebuild, not damage)."""
    path = tmp_path / "plain.txt"
    path.write_text(make_text(2000))
    corpus, run = load_sources(path), tmp_path / "run"
    chars = prepare_tokens(corpus, 0.1).vocab.chars
    given = Vocab(chars[::-1] + ["~"])  # not the built order, and a character the corpus lacks
    first = prepare_tokens(corpus, 0.1, vocab=given, cache_dir=run, cache_over=0)
    again = prepare_tokens(corpus, 0.1, vocab=given, cache_dir=run, cache_over=0)
    assert "reusing" in again.notes[0] and np.array_equal(np.asarray(again.ids), np.asarray(first.ids))
    other = prepare_tokens(corpus, 0.1, vocab=Vocab(chars), cache_dir=run, cache_over=0)
    assert len(other.notes) == 1 and "encoded the corpus" in other.notes[0]


def test_records_flag_or_marker_that_do_not_match_the_corpus(corpus, tmp_path):
    run = tmp_path / "run"
    expected = built(corpus, run)
    meta = meta_of(run)
    flipped = not meta["records"]
    vocab = [""] + meta["vocab"] if flipped else meta["vocab"][1:]
    write_meta(run, records=flipped, vocab=vocab, tokens=meta["chars"] if not flipped else meta["tokens"])
    assert_rebuilt(corpus, run, expected, reason="'records' does not match the corpus")


@pytest.mark.parametrize("change", [{"tokens": +1}, {"tokens": -1}, {"chars": +1}, {"chars": -1}])
def test_tokens_and_chars_that_do_not_match_the_files(corpus, tmp_path, change):
    run = tmp_path / "run"
    expected = built(corpus, run)
    meta = meta_of(run)
    write_meta(run, **{key: meta[key] + delta for key, delta in change.items()})
    assert_rebuilt(corpus, run, expected)  # the reason varies: size, lengths' sum, tokens vs chars


# ---------------------------------------------------------------------------------------------- the ids


@pytest.mark.parametrize("cut", [1, 100, "all"])
def test_truncated_or_missing_ids(corpus, tmp_path, cut):
    run = tmp_path / "run"
    expected = built(corpus, run)
    path = run / "corpus.uint8.bin"
    if cut == "all":
        path.unlink()
        reason = "corpus.uint8.bin is missing"
    else:
        path.write_bytes(path.read_bytes()[:-cut])
        reason = "bytes where corpus.json says"
    assert_rebuilt(corpus, run, expected, reason=reason)


@pytest.mark.parametrize("in_memory_limit", [0, 1 << 20], ids=["memory-mapped", "loaded"])
@pytest.mark.parametrize("where", [0, "middle", -1])
def test_ids_beyond_the_vocabulary(corpus, tmp_path, in_memory_limit, where, monkeypatch):
    monkeypatch.setattr(tokencache, "MAX_ID_CHUNK", 64)  # several slices, so the one holding it must be read
    run = tmp_path / "run"
    expected = built(corpus, run)
    path = run / "corpus.uint8.bin"
    ids = np.fromfile(path, dtype=np.uint8)
    size = len(meta_of(run)["vocab"])
    ids[len(ids) // 2 if where == "middle" else where] = size  # the first id out of range
    ids.tofile(path)
    assert_rebuilt(corpus, run, expected, in_memory_limit, reason=f"holds id {size}, beyond the {size}-character")


def test_the_id_check_reads_each_slice(tmp_path, monkeypatch):
    """_max_id over a memory-mapped file equals numpy's max, for sizes around the slice length."""
    monkeypatch.setattr(tokencache, "MAX_ID_CHUNK", 7)
    for n in (1, 6, 7, 8, 50):
        values = np.arange(n, dtype=np.uint16) % 5
        values[n - 1] = 9
        values.tofile(tmp_path / "ids.bin")
        assert tokencache._max_id(np.memmap(tmp_path / "ids.bin", dtype=np.uint16, mode="r")) == 9


@pytest.mark.parametrize("name", ["corpus.uint8.bin", "corpus.json"])
def test_links_are_not_followed(corpus, tmp_path, name):
    run = tmp_path / "run"
    expected = built(corpus, run)
    outside = tmp_path / f"outside-{name}"
    (run / name).rename(outside)
    kept = outside.read_bytes()
    (run / name).symlink_to(outside)  # same content, but the cache never writes a link: it could point anywhere
    assert_rebuilt(corpus, run, expected, reason=f"{name} is not a plain file")
    assert outside.read_bytes() == kept and not (run / name).is_symlink()


# ------------------------------------------------------------------------------------ record lengths


@pytest.fixture
def records_corpus(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    for i in range(5):
        (root / f"f{i}.txt").write_text(make_text(300 + 50 * i, seed=i))
    return load_sources(root)


def with_shape(raw: bytes, old: int, new: int) -> bytes:
    """A version-1 .npy file whose header claims `new` items instead of `old`, its header length kept."""
    size = int.from_bytes(raw[8:10], "little")
    header = raw[10 : 10 + size].replace(f"({old},)".encode(), f"({new},)".encode())
    assert f"({new},)".encode() in header
    header = header.rstrip(b"\n").rstrip(b" ").ljust(size - 1) + b"\n"
    assert len(header) == size
    return raw[:10] + header + raw[10 + size :]


def _pickled(lengths):
    return np.array([*lengths.tolist()[:-1], {"x": 1}], dtype=object)


@pytest.mark.parametrize(
    "tamper,reason",
    [
        (lambda lengths: lengths.reshape(1, -1), "not a 1-D array of integers"),
        (lambda lengths: lengths.astype(np.float64), "not a 1-D array of integers"),
        (lambda lengths: np.array([str(x) for x in lengths]), "not a 1-D array of integers"),
        (lambda lengths: lengths[:-1], "lengths where corpus.json says"),
        (lambda lengths: np.append(lengths, 0), "lengths where corpus.json says"),
        (lambda lengths: lengths + 1, "the lengths sum to"),
        (lambda lengths: np.concatenate([[lengths[0] + lengths[1] + 7], [-7], lengths[2:]]), "outside 1.."),
        (lambda lengths: np.concatenate([[2**62, 2**62], lengths[2:]]), "outside 1.."),  # a sum that would overflow
        (lambda lengths: lengths.astype(np.uint64), None),  # another integer type is fine: not rebuilt
    ],
    ids=["2-D", "float", "strings", "one-short", "one-more", "sum", "negative", "overflow", "uint64-ok"],
)
def test_tampered_record_lengths(records_corpus, tmp_path, tamper, reason):
    run = tmp_path / "run"
    expected = built(records_corpus, run)
    path = run / "corpus.record-lengths.npy"
    np.save(path, tamper(np.load(path)))
    if reason is None:
        reused = prepare(records_corpus, run)
        assert "reusing" in reused.notes[0] and np.array_equal(reused.record_lengths, expected.record_lengths)
        return
    assert_rebuilt(records_corpus, run, expected, reason=reason)


@pytest.mark.parametrize("damage", ["pickle", "truncated", "huge header", "not npy", "missing", "directory"])
def test_unreadable_record_lengths(records_corpus, tmp_path, damage):
    run = tmp_path / "run"
    expected = built(records_corpus, run)
    path = run / "corpus.record-lengths.npy"
    lengths = np.load(path)
    if damage == "pickle":  # loaded with allow_pickle=False: an object array is refused, never unpickled
        np.save(path, _pickled(lengths), allow_pickle=True)
        reason = "not a readable array"
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-5])
        reason = "not a readable array"
    elif damage == "huge header":  # claims 2**40 lengths: must fail without allocating them
        path.write_bytes(with_shape(path.read_bytes(), len(lengths), 1 << 40))
        reason = "not a readable array"
    elif damage == "not npy":
        path.write_text("hello")
        reason = "not a readable array"
    elif damage == "missing":
        path.unlink()
        reason = "corpus.record-lengths.npy is missing"
    else:
        path.unlink()
        path.mkdir()  # cannot be used, and cannot be removed to rebuild: one error line
        with pytest.raises(CharlstmError, match=r"^cannot rebuild the encoded corpus: cannot remove .*record-lengths"):
            prepare(records_corpus, run)
        return
    assert_rebuilt(records_corpus, run, expected, reason=reason)


# ---------------------------------------------------------------------------------------- cannot rebuild


def test_a_cache_that_cannot_be_rebuilt_is_one_error_line(corpus, tmp_path):
    run = tmp_path / "run"
    built(corpus, run)
    (run / "corpus.json").unlink()
    (run / "corpus.json").mkdir()  # not a file, and not removable by unlink
    with pytest.raises(CharlstmError) as failed:
        prepare(corpus, run)
    assert "cannot rebuild the encoded corpus" in str(failed.value) and "\n" not in str(failed.value)


def test_a_build_cut_short_is_never_described(corpus, tmp_path, monkeypatch):
    """The description goes first when a cache is rebuilt, so a crash mid-build leaves no cache to reuse."""
    run = tmp_path / "run"
    expected = built(corpus, run)
    os.utime(corpus.files[0], ns=(1, 1))  # the sources changed: an ordinary rebuild

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tokens_module, "encode_corpus", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare(corpus, run)
    assert not (run / "corpus.json").exists()
    monkeypatch.undo()
    again = prepare(corpus, run)
    assert DAMAGED not in " ".join(again.notes) and "encoded the corpus" in again.notes[-1]
    assert np.array_equal(np.asarray(again.ids), expected.ids)
