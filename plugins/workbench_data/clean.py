"""Text cleaning and the simple quality filters, each a small pure function.

Cleaning keeps meaning and layout: Unicode normalisation (NFC by default; NFKC also folds
compatibility forms such as ligatures and full-width letters), removal of control and
invisible format characters (tabs and newlines stay), and whitespace tidying that keeps
indentation (trailing spaces go, runs of blank lines shrink to one, ends are trimmed).

Quality filters answer "is this a real document?" with cheap numbers, after Gopher's rules:
too many symbols or too few words made of letters, too many repeated lines, too short.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

# Cc (control) except tab/newline, plus invisible Cf characters that only ever get in the way.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200e\u200f\u2060\ufeff\ufffe]")
_TRAILING = re.compile(r"[ \t\u00a0\u3000]+(?=\n|$)")
_BLANKS = re.compile(r"\n{3,}")
_WORD = re.compile(r"\S+")
_LETTER = re.compile(r"[^\W\d_]")



@dataclass(frozen=True)
class Cleaner:
    unicode_form: str = "NFC"  # NFC, NFKC or none
    control: bool = True
    whitespace: bool = True

    def __call__(self, text: str) -> str:
        if self.unicode_form != "none":
            text = unicodedata.normalize(cast("Literal['NFC', 'NFKC']", self.unicode_form), text)
        if self.control:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
            text = _CONTROL.sub("", text)
        if self.whitespace:
            text = _TRAILING.sub("", text.replace("\r\n", "\n"))
            text = _BLANKS.sub("\n\n", text).strip()
        return text


@dataclass(frozen=True)
class QualityRules:
    max_symbol_ratio: float = 0.3
    min_alpha_words: float = 0.6
    max_repeated_lines: float = 0.3
    min_words: int = 5


def symbol_ratio(text: str) -> float:
    """Share of non-space characters that are neither letters nor digits."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    return sum(1 for c in chars if not c.isalnum()) / len(chars)


def alpha_word_ratio(text: str) -> float:
    """Share of whitespace-separated words that contain a letter."""
    words = _WORD.findall(text)
    if not words:
        return 0.0
    return sum(1 for w in words if _LETTER.search(w)) / len(words)


def repeated_line_ratio(text: str) -> float:
    """Share of non-empty lines that repeat an earlier line."""
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    if len(lines) < 2:
        return 0.0
    counts = Counter(lines)
    return sum(c - 1 for c in counts.values()) / len(lines)


def word_count(text: str) -> int:
    return len(_WORD.findall(text))


def quality_checks(rules: QualityRules) -> dict[str, Callable[[str], bool]]:
    """Filter name → predicate that is True when a text FAILS the filter."""
    return {
        "symbols": lambda t: symbol_ratio(t) > rules.max_symbol_ratio
        or alpha_word_ratio(t) < rules.min_alpha_words,
        "repeated-lines": lambda t: repeated_line_ratio(t) > rules.max_repeated_lines,
        "short": lambda t: word_count(t) < rules.min_words,
    }
