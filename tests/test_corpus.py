"""Corpus sources (files, directory + glob, CSV, JSONL, paragraphs), records, the encoded-corpus cache."""

import csv
import json
import os

import numpy as np
import pytest
import torch

import charlstm.data.corpus as corpus_module
import charlstm.data.tokens as data_module
from charlstm.checkpoint import store as ckpt
from charlstm.config import ModelConfig, SampleConfig, TrainConfig
from charlstm.data.corpus import Corpus, split_paragraphs, split_records
from charlstm.data.streams import Streams
from charlstm.data.textio import read_text_chunks, read_text_file
from charlstm.data.tokens import prepare_tokens, split_train_val
from charlstm.data.vocab import Vocab
from charlstm.errors import CharlstmError
from charlstm.generate.sample import sample_text
from charlstm.runs import directory as rundir
from charlstm.runs.model_file import load_model
from charlstm.training.run import train

from .helpers import SHARED_DATA, assert_one_error, cli_flags, invoke, load_sources, notes_into, torch_threads

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (see conftest.one_thread)


def records_of(data) -> list[str]:
    """The records of encoded data, decoded: the text between end-of-record ids."""
    ids = np.asarray(data.ids).tolist()
    eor = data.vocab.end_of_record
    out, current = [], []
    for i in ids:
        if i == eor:
            out.append(data.vocab.decode(current))
            current = []
        else:
            current.append(i)
    assert not current, "a record corpus ends with an end-of-record id"
    return out


@pytest.fixture
def tree(tmp_path):
    """A small source tree: code with tabs, a binary file, hidden folders, a nested package, an empty file."""
    root = tmp_path / "src"
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / ".venv" / "lib").mkdir(parents=True)
    files = {
        "main.py": "def main():\n\treturn 1\n\n\nif __name__ == '__main__':\n    main()\n",
        "pkg/__init__.py": "from .sub import x  # ünïcode\n",
        "pkg/sub/x.py": "class X:\n\t\tdef f(self):\n\t\t\tpass   \n",
        "README.md": "# src\r\n\r\nwindows line ends\r\n",
        "pkg/data.csv": "a,b\n1,2\n",  # in a directory, a CSV file is text like any other
    }
    for name, text in files.items():
        (root / name).write_bytes(text.encode())
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (root / "empty.py").write_bytes(b"")
    (root / ".git" / "config").write_text("[core]\n")
    (root / ".venv" / "lib" / "site.py").write_text("import os\n")
    return root


def test_several_files_join_in_order_without_records(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("first file\n")
    b.write_text("second\tfile\n")
    corpus = load_sources(a, b)
    assert not corpus.is_records and corpus.name == "a+1"
    data = prepare_tokens(corpus, 0.1)
    assert data.vocab.end_of_record is None and data.record_lengths is None
    assert data.vocab.decode(np.asarray(data.ids).tolist()) == "first file\nsecond\tfile\n"


def test_directory_every_text_file_one_record_each_in_sorted_order(tree):
    corpus = load_sources(tree)
    assert corpus.is_records and corpus.name == "src"
    names = [p.relative_to(tree).as_posix() for p in corpus.files]
    assert names == ["README.md", "main.py", "pkg/__init__.py", "pkg/data.csv", "pkg/sub/x.py"]
    note = corpus.notes[0]
    assert "5 file(s)" in note and "1 binary" in note and "1 empty" in note and "2 hidden folder(s)" in note
    assert ".git" in note
    data = prepare_tokens(corpus, 0.2)
    expected = [read_text_file(tree / n) for n in names]
    assert records_of(data) == expected  # tabs, indentation, trailing spaces byte for byte; CRLF -> LF
    assert data.vocab.chars[0] == "" and data.summary()["records"] == 5
    assert data.summary()["record_lengths"]["max"] == max(len(t) for t in expected)


def test_directory_glob_several_patterns_and_nothing_matching(tree):
    assert [p.name for p in load_sources(tree, globs=["*.py"]).files] == ["main.py", "__init__.py", "x.py"]
    assert [p.name for p in load_sources(tree, globs=["*.md", "sub/*.py"]).files] == ["README.md", "x.py"]
    with pytest.raises(CharlstmError, match=r"no text files matching \*\.rs"):
        load_sources(tree, globs=["*.rs"])
    with pytest.raises(CharlstmError, match="--glob selects files inside a directory"):
        load_sources(tree / "main.py", globs=["*.py"])


def test_stdlib_tree_round_trips_byte_for_byte():
    """A real source tree: every file comes back exactly from the ids (indentation, tabs, unicode)."""
    import email

    package = os.path.dirname(email.__file__)
    corpus = load_sources(package, globs=["*.py"])
    data = prepare_tokens(corpus, 0.1)
    assert records_of(data) == [read_text_file(p) for p in corpus.files if read_text_file(p)]


def write_csv(path, rows, header=("Text", "Date")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_csv_field_quoted_newlines_and_commas(tmp_path):
    path = tmp_path / "tweets.csv"
    tweets = ["plain", "with, a comma", 'two\nlines, and "quotes"', "crlf\r\ninside", "", "emoji 🙂 “curly”"]
    write_csv(path, [(t, "2018-01-01") for t in tweets])
    corpus = load_sources(path, text_field="Text")
    assert corpus.is_records and corpus.name == "tweets"
    data = prepare_tokens(corpus, 0.2)
    assert records_of(data) == [
        "plain",
        "with, a comma",
        'two\nlines, and "quotes"',
        "crlf\ninside",
        "emoji 🙂 “curly”",
    ]
    assert load_sources(path, text_field="text").text_field == "Text"  # a unique case-insensitive match


def test_csv_missing_field_lists_columns_and_single_column_needs_no_field(tmp_path):
    path = tmp_path / "t.csv"
    write_csv(path, [("hello", "x")])
    with pytest.raises(CharlstmError, match=r"no column 'body'; available: 'Text', 'Date'"):
        load_sources(path, text_field="body")
    with pytest.raises(CharlstmError, match=r"pick the text with --field \(one of: 'Text', 'Date'\)"):
        load_sources(path)
    single = tmp_path / "one.csv"
    single.write_text("line\nfirst\nsecond\n")
    assert records_of(prepare_tokens(load_sources(single), 0.5)) == ["first", "second"]


def test_field_without_a_table_is_an_error(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("text")
    with pytest.raises(CharlstmError, match="--field picks a column"):
        load_sources(path, text_field="text")


def test_jsonl_field_and_bad_lines(tmp_path):
    path = tmp_path / "posts.jsonl"
    rows = [{"text": "first\nline", "id": 1}, {"text": "second, ok", "id": 2}, {"text": 3, "id": 3}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert records_of(prepare_tokens(load_sources(path, text_field="text"), 0.3)) == ["first\nline", "second, ok", "3"]
    with pytest.raises(CharlstmError, match=r"no column 'body'; available: 'text', 'id'"):
        load_sources(path, text_field="body")
    path.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"body": "b"}) + "\n")
    with pytest.raises(CharlstmError, match=r"line 2 has no field 'text'; it has: 'body'"):
        prepare_tokens(load_sources(path, text_field="text"), 0.3)
    path.write_text(json.dumps({"text": "a"}) + "\n{not json\n")
    with pytest.raises(CharlstmError, match="line 2 is not valid JSON"):
        prepare_tokens(load_sources(path, text_field="text"), 0.3)


PARAGRAPHS = "\n\nFirst paragraph,\ntwo lines.\n\n\n  indented second\n \t \nthird\n\n"


def test_paragraph_records(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text(PARAGRAPHS)
    data = prepare_tokens(load_sources(path, records="paragraph"), 0.3)
    assert records_of(data) == ["First paragraph,\ntwo lines.", "  indented second", "third"]
    assert not load_sources(path).is_records  # a plain text file is one stream unless asked


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_paragraphs_split_across_chunks_match_whole(size):
    chunks = [PARAGRAPHS[i : i + size] for i in range(0, len(PARAGRAPHS), size)]
    assert list(split_paragraphs(chunks)) == list(split_paragraphs([PARAGRAPHS]))


FORTUNES = (
    "\n\nThe first fortune,\n\ton two lines.\n\n%\n"
    "  %  \n"  # a separator with spaces around it: an empty record between, dropped
    "\n\n%\n"  # a record of blank lines only: dropped
    "100% sure\n%%\n%x\n"  # not separators: a % inside a line, %%, %x
    "%\r\n"  # a separator with a stray CR
    "  indented, and the file ends without a separator"
)
FORTUNE_RECORDS = [
    "The first fortune,\n\ton two lines.",
    "100% sure\n%%\n%x",
    "  indented, and the file ends without a separator",
]


def joined_records(pieces) -> list[str]:
    """(text, record ends) pieces as whole records."""
    records, current = [], ""
    for text, ends in pieces:
        current += text
        if ends:
            records.append(current)
            current = ""
    assert current == "", "every piece belongs to a record that ends"
    return records


def test_separator_records(tmp_path):
    """--records sep:% reads a fortune file: a record ends at a line that is % alone."""
    path = tmp_path / "fortunes"
    path.write_text(FORTUNES)
    corpus = load_sources(path, records="sep:%")
    assert corpus.is_records and corpus.config.records == "sep:%"
    assert records_of(prepare_tokens(corpus, 0.3)) == FORTUNE_RECORDS
    assert records_of(prepare_tokens(load_sources(path, records="sep: % "), 0.3)) == FORTUNE_RECORDS
    assert load_sources(path, records="sep:%").fingerprint() != load_sources(path, records="paragraph").fingerprint()
    path.write_text("a\n%\n%\nb\n%\n")  # a trailing separator ends the last record; nothing after it
    assert records_of(prepare_tokens(load_sources(path, records="sep:%"), 0.5)) == ["a", "b"]
    path.write_text("one\n----\ntwo\n")  # any separator
    assert records_of(prepare_tokens(load_sources(path, records="sep:----"), 0.5)) == ["one", "two"]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_separator_records_split_across_chunks_match_whole(monkeypatch, size):
    chunks = [FORTUNES[i : i + size] for i in range(0, len(FORTUNES), size)]
    assert (
        list(split_records(chunks, "%")) == list(split_records([FORTUNES], "%")) == [(r, True) for r in FORTUNE_RECORDS]
    )
    # records longer than a read chunk come in pieces (memory stays flat), the same records once joined; a % cut
    # from its long line by a chunk boundary is no separator
    monkeypatch.setattr(corpus_module, "READ_CHUNK", 4)
    assert joined_records(split_records(chunks, "%")) == FORTUNE_RECORDS
    long_line = "abcdefghij%\n%\nx"
    cut = [long_line[i : i + size] for i in range(0, len(long_line), size)]
    assert joined_records(split_records(cut, "%")) == ["abcdefghij%", "x"]


def test_an_empty_separator_is_one_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "fortunes"
    path.write_text(FORTUNES)
    for records in ("sep:", "sep: "):
        assert_one_error(invoke("train", path, "--records", records, "--max-steps", "1"), "--records sep: needs")
    refused = assert_one_error(invoke("train", path, "--records", "%", "--max-steps", "1"), "--records must be one")
    assert "sep:STRING" in refused
    assert not (tmp_path / "checkpoints").exists()


def test_cli_separator_records_train_info_and_resume(tmp_path, monkeypatch):
    """A fortune file trained with --records sep:%: its checkpoint records the mode, and --resume (no corpus
    given) reads the file into the same records again."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "fortunes"
    path.write_text(
        "".join(f"Fortune number {i}:\nthe {'quick brown fox ' * (i % 4 + 1)}jumps.\n%\n" for i in range(40))
    )
    tiny = cli_flags(hidden=16, embed=8, batch_size=4, seq_len=8, eval_every=5, size="fixed")
    result = invoke("train", path, "--records", "sep:%", "--max-steps", "3", *tiny)
    assert result.exit_code == 0, result.output
    run = tmp_path / "checkpoints" / "fortunes"
    info = json.loads(invoke("info", run, "--json").output)
    assert info["records"] == 40 and info["corpus"]["config"]["records"] == "sep:%"
    resumed = invoke("train", "--resume", run, "--max-steps", "5", *tiny)
    assert resumed.exit_code == 0, resumed.output
    info = json.loads(invoke("info", run, "--json").output)
    assert info["step"] == 5 and info["records"] == 40 and info["corpus"]["config"]["records"] == "sep:%"


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_streamed_reading_matches_whole_file(tmp_path, chunk):
    """Multi-byte characters, CRLF pairs and a BOM split across chunk boundaries."""
    path = tmp_path / "t.txt"
    path.write_bytes("\ufeffcafé 🙂\r\nnaïve\r\n\r\n€ end\r".encode())
    assert "".join(read_text_chunks(path, chunk_bytes=chunk)) == read_text_file(path) == "café 🙂\nnaïve\n\n€ end\r"
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"line one\nline two \xe9 here\n" * 3)
    with pytest.raises(CharlstmError, match=r"not valid utf-8: byte 0xe9 at offset 18 \(line 2\).*--encoding"):
        "".join(read_text_chunks(bad, chunk_bytes=4))
    after_crlf = tmp_path / "crlf-bad.txt"  # the offset counts the file's bytes, CRs included
    after_crlf.write_bytes(b"a\r\nbb\r\n\r\n\xe9 tail")
    with pytest.raises(CharlstmError, match=r"byte 0xe9 at offset 9 \(line 4\)"):
        "".join(read_text_chunks(after_crlf, chunk_bytes=chunk))
    wide = tmp_path / "utf16.txt"  # another encoding: line ends are cleaned on the text
    wide.write_bytes("x\r\ny é\r\n\r".encode("utf-16"))
    assert (
        "".join(read_text_chunks(wide, "utf-16", chunk_bytes=chunk)) == read_text_file(wide, "utf-16") == "x\ny é\n\r"
    )


def test_split_falls_on_a_record_boundary():
    vocab = Vocab.from_text("abcdefgh", records=True)
    eor = vocab.end_of_record
    ids = np.concatenate([np.append(vocab.encode(r), eor) for r in ["abc", "defgh", "ab", "cdefgh", "a"]])
    train_ids, val_ids = split_train_val(ids, 0.3, eor)
    assert train_ids[-1] == eor and val_ids[-1] == eor and len(train_ids) + len(val_ids) == len(ids)
    # 22 ids, the plain cut at 15; records start at 4, 10, 13 and 20: the nearest, 13, leaves "cdefgh" and "a"
    assert vocab.decode(val_ids.tolist()) == "cdefgha"
    assert abs(len(val_ids) - 0.3 * len(ids)) <= 3  # the nearest boundary to the plain cut
    one_record = np.append(vocab.encode("abcdefgh" * 4), eor)
    assert len(split_train_val(one_record, 0.25, eor)[1]) == len(split_train_val(one_record, 0.25)[1])


def test_streams_rows_partition_the_batch_and_memmap_matches(tmp_path):
    ids = np.arange(1, 1001, dtype=np.int64) % 250
    full = Streams(ids, 6, 16)
    halves = [Streams(ids, 6, 16, rows=slice(0, 4)), Streams(ids, 6, 16, rows=slice(4, 6))]
    assert [h.batch_at(0)[0].shape[0] for h in halves] == [4, 2]
    assert all(h.batch == full.batch and h.num_targets == full.num_targets for h in halves)  # whole-batch counts
    path = tmp_path / "ids.bin"
    ids.astype(np.uint8).tofile(path)
    mapped = Streams(np.memmap(path, dtype=np.uint8, mode="r"), 6, 16)
    assert len(full) == len(halves[0]) == len(mapped)
    for k in range(len(full)):
        x, y = full.batch_at(k)
        assert int(x.min()) >= 0, "padded inputs read as id 0, never as the padding target"
        assert torch.equal(torch.cat([h.batch_at(k)[0] for h in halves]), x)
        assert torch.equal(torch.cat([h.batch_at(k)[1] for h in halves]), y)
        assert all(h.targets_in(k) == full.targets_in(k) for h in halves)
        mx, my = mapped.batch_at(k)
        assert mx.dtype == my.dtype == torch.int64 and torch.equal(mx, x) and torch.equal(my, y)
    with pytest.raises(ValueError, match="non-empty contiguous slice"):
        Streams(ids, 6, 16, rows=slice(6, 9))


def test_cache_built_reused_and_rebuilt_when_the_corpus_changes(tree, tmp_path):
    run = tmp_path / "run"
    corpus = load_sources(tree, globs=["*.py"])
    expected = prepare_tokens(corpus, 0.2)
    built = prepare_tokens(corpus, 0.2, cache_dir=run, cache_over=0, in_memory_limit=0, chunk=7)
    assert built.cache == run / "corpus.uint8.bin" and "encoded the corpus" in built.notes[0]
    assert isinstance(built.ids, np.memmap)
    assert np.array_equal(built.ids, expected.ids) and built.vocab.chars == expected.vocab.chars
    assert np.array_equal(built.val, expected.val) and built.summary() == expected.summary()
    again = prepare_tokens(load_sources(tree, globs=["*.py"]), 0.2, cache_dir=run, cache_over=0)
    assert "reusing" in again.notes[0] and np.array_equal(again.ids, expected.ids)
    assert not isinstance(again.ids, np.memmap)  # small enough to load
    (tree / "main.py").write_text("print('changed')\n")
    changed = prepare_tokens(load_sources(tree, globs=["*.py"]), 0.2, cache_dir=run, cache_over=0)
    assert "encoded the corpus" in changed.notes[0] and "print('changed')\n" in records_of(changed)
    with pytest.raises(CharlstmError, match=r"not in the checkpoint's vocabulary"):
        prepare_tokens(
            load_sources(tree, globs=["*.py"]),
            0.2,
            vocab=Vocab.from_text("abc", records=True),
            cache_dir=run,
            cache_over=0,
        )


def test_empty_corpus_and_records_against_a_vocabulary_without_marker(tmp_path):
    empty = tmp_path / "e.txt"
    empty.write_text("")
    with pytest.raises(CharlstmError, match="corpus is empty"):
        prepare_tokens(load_sources(empty), 0.1)
    path = tmp_path / "p.txt"
    path.write_text("ab\n\ncd\n")
    with pytest.raises(CharlstmError, match="trained without records"):
        prepare_tokens(load_sources(path, records="paragraph"), 0.1, vocab=Vocab.from_text("abcd\n"))


def test_records_in_training_streams(tmp_path):
    """Each record of a record corpus ends with the marker in the training targets; the split starts a record."""
    corpus = Corpus(records=["the end"] * 60, name="ends")
    data = prepare_tokens(corpus, 0.1)
    eor = data.vocab.end_of_record
    assert data.val[0] == data.vocab.index["t"] and data.train[-1] == eor
    streams = Streams(data.train, 4, 16)
    targets = torch.cat([y[y != -1] for _, y in (streams.batch_at(k) for k in range(len(streams)))])
    assert int((targets == eor).sum()) == int((np.asarray(data.train) == eor).sum())


@pytest.fixture(scope="module")
def ends_model(tmp_path_factory):
    """A tiny model trained on records that all read "the end": it learns to end a record after 'd'."""
    run = tmp_path_factory.mktemp("ends")
    corpus = Corpus(records=["the end", "the den", "then end"] * 40, name="ends")
    with torch_threads(1):
        train(
            corpus,
            ModelConfig(hidden=32, embed=8),
            TrainConfig(batch_size=8, seq_len=16, max_steps=150, eval_every=150, lr=1e-2),
            run,
        )
    return load_model(run)


def test_record_sampling_ends_where_the_model_ends_it(ends_model):
    texts = sample_text(ends_model, SampleConfig(length=60, num_samples=8, seed=1, temperature=0.5))
    ended = [t for t in texts if len(t) < 60]
    assert len(ended) >= 6, texts
    assert all(t.strip() for t in ended)
    primed = sample_text(ends_model, SampleConfig(length=60, num_samples=4, seed=1, temperature=0, prime="the"))
    assert all(t.startswith("the") and len(t) < 15 for t in primed), primed


@pytest.mark.skipif(not (SHARED_DATA / "tweets.csv").exists(), reason="shared tweets.csv not present")
def test_shared_tweets_csv_has_all_rows():
    data = prepare_tokens(load_sources(SHARED_DATA / "tweets.csv", text_field="Text"), 0.1)
    assert data.summary()["records"] == 13092
    assert sum("\n" in r for r in records_of(data)) == 937


def test_cached_memmapped_corpus_resumes_exactly(tmp_path, tree, monkeypatch):
    """Training from the encoded cache (memory-mapped) gives the same run as in memory, and resumes exactly."""
    corpus = load_sources(tree)
    model, config = ModelConfig(hidden=16, embed=8), TrainConfig(batch_size=4, seq_len=8, max_steps=12, eval_every=4)
    train(corpus, model, config, tmp_path / "memory")
    monkeypatch.setattr(data_module, "CACHE_OVER_BYTES", 0)
    monkeypatch.setattr(data_module, "IN_MEMORY_TOKENS", 0)
    train(corpus, model, config, tmp_path / "mapped", should_stop=lambda step: step == 5)
    assert (tmp_path / "mapped" / "corpus.uint8.bin").exists()
    lines = []
    train(corpus, model, config, tmp_path / "mapped", resume_from=tmp_path / "mapped", on_event=notes_into(lines))
    assert any("reusing the encoded corpus" in line for line in lines)
    a, b = (ckpt.load_checkpoint(tmp_path / run / "latest.pt")["model"] for run in ("memory", "mapped"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    curves = [
        [(r["step"], r["train_loss"], r["val_loss"]) for r in rundir.read_metrics(tmp_path / run)]
        for run in ("memory", "mapped")
    ]
    assert curves[0] == curves[1] and len(curves[0]) == 3


def test_cli_directory_glob_resume_info_and_record_sampling(tmp_path, tree, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny = cli_flags(hidden=16, embed=8, batch_size=4, seq_len=8, eval_every=5)
    result = invoke("train", tree, "--glob", "*.py", "--glob", "*.md", "--max-steps", "5", *tiny)
    assert result.exit_code == 0, result.output
    assert "4 file(s) matching *.py or *.md" in result.output
    run = tmp_path / "checkpoints" / "src"
    info = json.loads(invoke("info", run, "--json").output)
    assert info["records"] == 4 and set(info["record_lengths"]) == {"min", "median", "max"}
    assert info["corpus"]["config"]["globs"] == ["*.py", "*.md"]
    checkpoint_info = json.loads(invoke("info", run / "latest.pt", "--json").output)
    assert checkpoint_info["records"] == 4
    # --resume with no corpus rebuilds the same corpus from the recorded sources, glob included
    resumed = invoke("train", "--resume", run, "--max-steps", "8", *tiny)
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(invoke("info", run, "--json").output)["step"] == 8

    temps = invoke("sample", run, "-N", "2", "--temp", "0.5,1.0", "--max-length", "30", "--seed", "1")
    assert temps.exit_code == 0, temps.output
    assert temps.output.count("═══ temperature") == 2 and temps.output.count("─── sample") == 4
    lines = invoke(
        "sample", run, "-N", "3", "--format", "jsonl", "--length", "20", "--prime", "de", "--seed", "1"
    ).stdout.splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["sample"] for r in rows] == [1, 2, 3] and all(
        r["text"].startswith("de") and len(r["text"]) <= 22 for r in rows
    )
    bad = invoke("sample", run, "--temp", "0.5,x")
    assert bad.exit_code == 1 and "cannot read 'x'" in bad.output
    lonely = invoke("train", "--glob", "*.py", "--max-steps", "1")
    assert lonely.exit_code == 1 and "give the corpus path too" in lonely.output
