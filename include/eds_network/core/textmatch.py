"""Whole-token matching of identity values in text, shared by the hospital's scrubber and the leak scanner.

Text is folded (accents removed, NFKD → ASCII; case-folded unless asked otherwise) and cut into tokens: letters,
digits and the punctuation of e-mail addresses and names (`@ _ + ' . -`); anything else separates, and
punctuation at a token's edges is dropped ("Dupont." is "dupont"). A name matches only as whole tokens in
sequence: "Li" is found in "Mme Li" and not in "lithium"; "Le Gall" in "vu par le gall".
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

_KEEP = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ@_+'.-"
_SEPARATE = bytes(c if c in _KEEP else 32 for c in range(256))
EDGE = ".-_'+"


def fold(text: str, *, lower: bool = True) -> str:
    """Accents removed (NFKD, ASCII only), so 'Église' and 'eglise' match; case-folded unless lower=False."""
    if not text.isascii():
        text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return text.lower() if lower else text


def raw_tokens(folded: str) -> list[str]:
    """Tokens of text already folded (`fold`), edge punctuation kept."""
    return folded.encode("ascii", "ignore").translate(_SEPARATE).decode("ascii").split()


def tokens(text: str, *, lower: bool = True) -> list[str]:
    return [s for s in (t.strip(EDGE) for t in raw_tokens(fold(text, lower=lower))) if s]


class NameMatcher:
    """Names (any length) as whole tokens: a one-word name by set lookup, a several-word name as a token
    sequence. Case-insensitive, accent-insensitive."""

    def __init__(self, names: Iterable[str]):
        self.single: set[str] = set()
        self.multi: dict[str, list[str]] = {}  # first token -> " a b " sequences
        for n in names:
            if n is None:
                continue
            toks = tokens(str(n))
            if len(toks) == 1:
                self.single.add(toks[0])
            elif toks:
                self.multi.setdefault(toks[0], []).append(" " + " ".join(toks) + " ")

    def __len__(self) -> int:
        return len(self.single) + sum(len(v) for v in self.multi.values())

    def found_in(self, text: str) -> bool:
        toks = tokens(text)
        if not toks:
            return False
        if self.single.intersection(toks):
            return True
        if self.multi and self.multi.keys() & set(toks):
            joined = " " + " ".join(toks) + " "
            return any(seq in joined for t in set(toks) & self.multi.keys() for seq in self.multi[t])
        return False
