"""The vocabulary: the distinct characters of a corpus <-> ids, and the end-of-record marker."""

from __future__ import annotations

import numpy as np

from charlstm.errors import CharlstmError


class Vocab:
    """The distinct characters of a corpus, sorted; id i <-> chars[i].

    An entry may be the empty string: the end-of-record marker, a token the model learns that decodes to nothing.
    """

    END_OF_RECORD = ""

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}
        codepoints = [ord(c) for c in self.chars if c]
        self._lookup = np.full(max(codepoints, default=-1) + 1, -1, dtype=np.int32)  # code point -> id, -1 unknown
        self._lookup[codepoints] = [i for i, c in enumerate(self.chars) if c]

    @classmethod
    def from_text(cls, text: str, records: bool = False) -> Vocab:
        chars = sorted(set(text))
        return cls(([cls.END_OF_RECORD] if records else []) + chars)

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def end_of_record(self) -> int | None:
        return self.index.get(self.END_OF_RECORD)

    def unknown(self, text: str) -> list[str]:
        """The characters of `text` that are not in the vocabulary, sorted."""
        return sorted(set(text) - set(self.index))

    def encode(self, text: str, dtype: np.dtype | type = np.int64) -> np.ndarray:
        """Text -> ids, vectorised through a code-point lookup table. Unknown characters raise CharlstmError."""
        codepoints = _codepoints(text)
        if not len(codepoints):
            return np.zeros(0, dtype=dtype)
        if int(codepoints.max()) >= len(self._lookup):
            raise CharlstmError(f"characters not in the model's vocabulary: {show_chars(self.unknown(text))}")
        ids = self._lookup[codepoints]
        if int(ids.min()) < 0:
            raise CharlstmError(f"characters not in the model's vocabulary: {show_chars(self.unknown(text))}")
        return ids.astype(dtype, copy=False)

    def decode(self, ids) -> str:
        chars = self.chars
        return "".join(chars[i] for i in ids)


def _codepoints(text: str) -> np.ndarray:
    """The code points of `text`: uint8 when it is ASCII (the fast, common case), else uint32."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def show_chars(chars: list[str], most: int = 20) -> str:
    shown = " ".join(repr(c) for c in chars[:most])
    return shown + (f" … and {len(chars) - most} more" if len(chars) > most else "")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every id."""
    return np.dtype(np.uint8 if vocab_size <= 1 << 8 else np.uint16 if vocab_size <= 1 << 16 else np.uint32)
