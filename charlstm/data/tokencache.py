"""The encoded-corpus cache of a large corpus, in its run directory: <run>/corpus.<dtype>.bin (the ids),
corpus.record-lengths.npy (records) and corpus.json (its description, written last). Reused while the sources
and the vocabulary are unchanged; checked before reuse (anyone may have edited the files), never trusted."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from stat import S_ISREG
from typing import Any

import numpy as np

from charlstm.data.vocab import Vocab, token_dtype
from charlstm.errors import CharlstmError
from charlstm.runtime.atomic import atomic_write, write_json

CACHE_STEM = "corpus"  # <run dir>/corpus.<dtype>.bin, corpus.json and (records) corpus.record-lengths.npy
CACHE_DTYPES = ("uint8", "uint16", "uint32")
CACHE_META_MAX_BYTES = 64 << 20  # corpus.json of the largest vocabulary (all of Unicode, escaped) is far smaller
MAX_ID_CHUNK = 16 << 20  # ids checked at a time when a reused cache is scanned for ids beyond the vocabulary


def read_meta(
    cache_dir: Path, fingerprint: str | None, vocab: Vocab | None, records: bool | None = None
) -> tuple[dict | None, str | None]:
    """(the cache's description, None) when it was built from these very sources (and this vocabulary);
    (None, None) when there is none or it is stale (the sources or the vocabulary changed: an ordinary
    rebuild); (None, what is wrong) when its files are damaged or tampered with. Reads no ids."""
    meta_path = cache_dir / f"{CACHE_STEM}.json"
    try:
        if not meta_path.exists() and not meta_path.is_symlink():
            return None, None
        if not _is_plain_file(meta_path):
            return None, f"{meta_path.name} is not a plain file"
        if meta_path.stat().st_size > CACHE_META_MAX_BYTES:
            return None, f"{meta_path.name} is too large"
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not valid JSON"
        return None, f"{meta_path.name}: {reason}"
    problem = _meta_problem(meta, records)
    if problem:
        return None, f"{meta_path.name}: {problem}"
    if meta["fingerprint"] != fingerprint or (vocab is not None and meta["vocab"] != vocab.chars):
        return None, None
    if vocab is None and meta["vocab"] != _built_order(meta["vocab"]):  # given a vocabulary, it must be equal
        return None, f"{meta_path.name}: 'vocab' is not in the order it is built in (ids would decode wrongly)"
    itemsize = np.dtype(meta["dtype"]).itemsize
    problem = _file_problem(cache_dir / meta["file"], meta["tokens"] * itemsize)
    if problem:
        return None, problem
    if meta["records"]:
        problem = _file_problem(cache_dir / f"{CACHE_STEM}.record-lengths.npy")
        if problem:
            return None, problem
    return meta, None


def _meta_problem(meta: Any, records: bool | None) -> str | None:
    """What is wrong with the shape of corpus.json (written by `prepare_tokens`, but anyone may have edited it)."""
    if not isinstance(meta, dict):
        return "not a JSON object"
    kinds = {"fingerprint": str, "vocab": list, "dtype": str, "tokens": int, "chars": int, "records": bool, "file": str}
    names = {str: "a string", list: "a list", int: "an integer", bool: "true or false"}
    for key, kind in kinds.items():
        value = meta.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"{key!r} is missing or not {names[kind]}"
    chars = meta["vocab"]
    if not chars or not all(isinstance(c, str) and len(c) <= 1 for c in chars):
        return "'vocab' is not a list of single characters"
    if len(set(chars)) != len(chars):
        return "'vocab' repeats characters"
    if meta["records"] and Vocab.END_OF_RECORD not in chars:
        return "'vocab' has no end-of-record marker for a corpus of records"
    if meta["dtype"] not in CACHE_DTYPES or meta["dtype"] != token_dtype(len(chars)).name:
        return f"'dtype' {_short(meta['dtype'])} is not the id type of a {len(chars)}-character vocabulary"
    if meta["file"] != f"{CACHE_STEM}.{meta['dtype']}.bin":  # never a path of its own: nothing outside the run
        return f"'file' {_short(meta['file'])} is not {CACHE_STEM}.{meta['dtype']}.bin"
    if meta["chars"] < 1 or meta["tokens"] < meta["chars"] or (not meta["records"] and meta["tokens"] != meta["chars"]):
        return f"'tokens' ({meta['tokens']}) and 'chars' ({meta['chars']}) do not agree"
    if records is not None and meta["records"] != records:
        return "'records' does not match the corpus"
    return None


def _built_order(chars: list[str]) -> list[str]:
    """A vocabulary as `prepare_tokens` builds it from a corpus: the end-of-record marker, then characters sorted."""
    marker = [Vocab.END_OF_RECORD] if Vocab.END_OF_RECORD in chars else []
    return marker + sorted(set(chars) - {Vocab.END_OF_RECORD})


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _is_plain_file(path: Path) -> bool:
    """A regular file, not a link (the cache never writes links: one could point anywhere)."""
    try:
        return S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _file_problem(path: Path, size: int | None = None) -> str | None:
    """Why a cache file cannot be used (missing, a link or not a file, not `size` bytes), or None."""
    if not path.exists() and not path.is_symlink():
        return f"{path.name} is missing"
    if not _is_plain_file(path):
        return f"{path.name} is not a plain file"
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"{path.name} holds {actual:,} bytes where corpus.json says {size:,}"
    return None


def load_ids(
    cache_dir: Path, meta: dict, in_memory_limit: int, check_ids: bool, lengths: np.ndarray | None = None
) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """(ids, record lengths or None, None): the cached ids (loaded, or memory-mapped above `in_memory_limit`
    bytes); or (None, None, what is wrong). `check_ids`: scan every id once for one beyond the vocabulary (a
    cache this module wrote has none; a tampered one would index out of range in the model's embedding)."""
    path = cache_dir / meta["file"]
    try:
        if path.stat().st_size <= in_memory_limit:
            ids = np.fromfile(path, dtype=meta["dtype"])
        else:
            ids = np.memmap(path, dtype=meta["dtype"], mode="r")
    except (OSError, ValueError) as exc:
        return None, None, f"cannot read {path.name}: {getattr(exc, 'strerror', None) or exc}"
    if len(ids) != meta["tokens"]:
        return None, None, f"{path.name} holds {len(ids):,} ids where corpus.json says {meta['tokens']:,}"
    vocab_size = len(meta["vocab"])
    if check_ids and vocab_size <= np.iinfo(ids.dtype).max:  # else every value of the type is an id
        top = _max_id(ids)
        if top >= vocab_size:
            return None, None, f"{path.name} holds id {top}, beyond the {vocab_size}-character vocabulary"
    if not meta["records"]:
        return ids, None, None
    if lengths is None:
        lengths, problem = _load_record_lengths(cache_dir / f"{CACHE_STEM}.record-lengths.npy", meta)
        if problem:
            return None, None, problem
    return ids, lengths, None


def _max_id(ids: np.ndarray) -> int:
    """The largest id, a slice at a time (a memory-mapped corpus is read through once, never copied whole)."""
    top = 0
    for start in range(0, len(ids), MAX_ID_CHUNK):
        top = max(top, int(ids[start : start + MAX_ID_CHUNK].max()))
    return top


def _load_record_lengths(path: Path, meta: dict) -> tuple[np.ndarray | None, str | None]:
    """The record lengths, or (None, what is wrong): a 1-D integer array (no pickles) with one positive length
    per end-of-record id (tokens - chars of them), summing to `chars`."""
    try:
        # memory-mapped first: a header claiming more than the file holds fails here instead of allocating it
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        return None, f"{path.name} is not a readable array ({getattr(exc, 'strerror', None) or exc})"
    records, chars = meta["tokens"] - meta["chars"], meta["chars"]
    if not isinstance(mapped, np.ndarray) or mapped.ndim != 1 or mapped.dtype.kind not in "iu":
        return None, f"{path.name} is not a 1-D array of integers"
    if len(mapped) != records:
        return None, f"{path.name} holds {len(mapped):,} lengths where corpus.json says {records:,} records"
    if records and (int(mapped.min()) < 1 or int(mapped.max()) > chars):
        return None, f"{path.name} holds a length outside 1..{chars:,}"
    lengths = np.array(mapped, dtype=np.int64)  # each <= chars, so the sum cannot overflow
    del mapped
    if int(lengths.sum()) != chars:
        return (
            None,
            f"{path.name}: the lengths sum to {int(lengths.sum()):,} where corpus.json says {chars:,} characters",
        )
    return lengths, None


def remove(cache_dir: Path) -> None:
    """Remove a cache before writing a new one, its description first (so no partial cache is ever described)."""
    names = [f"{CACHE_STEM}.json", f"{CACHE_STEM}.record-lengths.npy"]
    names += sorted(p.name for p in cache_dir.glob(f"{CACHE_STEM}.*.bin"))
    for name in names:
        try:
            (cache_dir / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CharlstmError(
                f"cannot rebuild the encoded corpus: cannot remove {cache_dir / name}: {exc.strerror or exc}"
            ) from None


def write(
    cache_dir: Path,
    encode: Callable[[Callable[[np.ndarray], object]], None],
    vocab: Vocab,
    lengths: np.ndarray | None,
    fingerprint: str | None,
    tokens: int,
    chars: int,
) -> dict:
    """Write a new cache: the ids (`encode(write)` writes them), the record lengths, and last its description,
    which makes it valid. Returns the description."""
    dtype = token_dtype(len(vocab))
    path = cache_dir / f"{CACHE_STEM}.{dtype.name}.bin"
    remove(cache_dir)  # corpus.json first: a build cut short leaves no description of a partial cache
    atomic_write(path, lambda handle: encode(handle.write))
    if lengths is not None:
        lengths_path = cache_dir / f"{CACHE_STEM}.record-lengths.npy"
        atomic_write(lengths_path, lambda handle: np.save(handle, lengths, allow_pickle=False))
    meta = {
        "fingerprint": fingerprint,
        "vocab": vocab.chars,
        "dtype": dtype.name,
        "tokens": tokens,
        "chars": chars,
        "records": lengths is not None,
        "file": path.name,
    }
    write_json(cache_dir / f"{CACHE_STEM}.json", meta)
    return meta
