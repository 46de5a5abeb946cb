"""Text typed at a terminal with its escapes made the characters they name: `sample --stop '\n'` and what the user
types in `sample --interactive` read \\n, \\t and \\\\ the same way. No torch here: the command line imports it."""

from __future__ import annotations

ESCAPES = {"\\n": "\n", "\\t": "\t", "\\\\": "\\"}


def decode_escapes(text: str) -> str:
    r"""`text` with \n and \t (and \\ for a backslash) made the characters they name; any other backslash stays."""
    out, i = [], 0
    while i < len(text):
        pair = text[i : i + 2]
        if pair in ESCAPES:
            out.append(ESCAPES[pair])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)
