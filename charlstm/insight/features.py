"""Features of a text, one number per character, and the units whose values follow them (`inspect --find`).

Built in: `line-position`, `indent`, `bracket-depth`, `in-quotes`, `in-word`, `in-tag`; anything else is a
regular expression (1 inside a match, 0 outside).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from charlstm.errors import CharlstmError

TOP_UNITS = 10  # units printed per feature

# a #hashtag, an @mention or a URL, as a tweet writes them
TAG = re.compile(r"https?://\S+|www\.\S+|[#@]\w+")


def line_position(text: str) -> np.ndarray:
    """Characters since the line began (0 on its first character; a newline counts as its line's last)."""
    out = np.zeros(len(text), dtype=np.float32)
    column = 0
    for i, char in enumerate(text):
        out[i] = column
        column = 0 if char == "\n" else column + 1
    return out


def indent(text: str) -> np.ndarray:
    """The leading whitespace (spaces and tabs) of the line each character is on."""
    out = np.zeros(len(text), dtype=np.float32)
    start = 0
    for line in text.split("\n"):
        width = len(line) - len(line.lstrip(" \t"))
        end = min(start + len(line) + 1, len(text))  # with the line's newline
        out[start:end] = width
        start = end
    return out


def bracket_depth(text: str) -> np.ndarray:
    """Nesting of (), [] and {} after reading each character (an opening bracket is inside what it opens)."""
    out = np.zeros(len(text), dtype=np.float32)
    depth = 0
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        out[i] = depth
        if char in ")]}":
            depth = max(0, depth - 1)
    return out


def in_quotes(text: str) -> np.ndarray:
    """1 from an opening quote (' or ") to its closing one, both included. An apostrophe between two letters
    (don't) is not a quote; Python's triple quotes work out, as three toggles."""
    out = np.zeros(len(text), dtype=np.float32)
    open_quote = None
    for i, char in enumerate(text):
        if char in "\"'":
            if char == "'" and 0 < i < len(text) - 1 and text[i - 1].isalpha() and text[i + 1].isalpha():
                out[i] = open_quote is not None
                continue
            if open_quote is None:
                open_quote = char
                out[i] = 1
                continue
            if open_quote == char:
                open_quote = None
                out[i] = 1
                continue
        out[i] = open_quote is not None
    return out


def in_word(text: str) -> np.ndarray:
    """1 on letters, digits and underscores."""
    return np.array([char.isalnum() or char == "_" for char in text], dtype=np.float32)


def in_matches(pattern: re.Pattern, text: str) -> np.ndarray:
    """1 inside a match of `pattern`, 0 outside."""
    out = np.zeros(len(text), dtype=np.float32)
    for match in pattern.finditer(text):
        out[match.start() : match.end()] = 1
    return out


BUILT_IN: dict[str, Callable[[str], np.ndarray]] = {
    "line-position": line_position,
    "indent": indent,
    "bracket-depth": bracket_depth,
    "in-quotes": in_quotes,
    "in-word": in_word,
    "in-tag": lambda text: in_matches(TAG, text),
}


def feature_values(feature: str, text: str) -> np.ndarray:
    """The feature's value at each character of `text`: a built-in name, or else a regular expression."""
    if feature in BUILT_IN:
        return BUILT_IN[feature](text)
    try:
        pattern = re.compile(feature)
    except re.error as exc:
        raise CharlstmError(
            f"--find {feature!r} is neither a built-in feature ({', '.join(BUILT_IN)}) nor a valid regular "
            f"expression: {exc}"
        ) from None
    return in_matches(pattern, text)


@dataclass
class Match:
    """A unit and how well its value follows a feature."""

    layer: int
    quantity: str
    unit: int
    r: float  # Pearson correlation over the text's characters


def pearson(values: np.ndarray, feature: np.ndarray) -> np.ndarray:
    """Pearson r between each column of `values` (T, H) and `feature` (T,): (H,); 0 where a unit is constant."""
    centred = values.astype(np.float64) - values.mean(axis=0)  # (T, H)
    target = feature.astype(np.float64) - feature.mean()  # (T,)
    norms = np.sqrt((centred**2).sum(axis=0)) * np.sqrt((target**2).sum())  # (H,)
    covariance = target @ centred  # (H,)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(norms > 0, covariance / norms, 0.0)
    return r


def rank_units(
    layers: list[dict[str, np.ndarray]], feature: np.ndarray, name: str, top: int = TOP_UNITS
) -> list[Match]:
    """The `top` units, over every layer and quantity, with the largest |r| against `feature`."""
    if len(feature) < 2 or float(feature.max()) == float(feature.min()):
        raise CharlstmError(f"--find {name!r} is the same at every character of the text; nothing to correlate with")
    matches = []
    for layer, quantities in enumerate(layers):
        for quantity, values in quantities.items():
            for unit, r in enumerate(pearson(values, feature)):
                matches.append(Match(layer, quantity, unit, float(r)))
    matches.sort(key=lambda m: -abs(m.r))
    return matches[:top]
