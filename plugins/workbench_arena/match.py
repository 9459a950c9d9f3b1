"""What both faces of the arena share: the seeded choice of a pair and its sides, the vote
vocabulary, and the prompts file. Standard library only, so the TUI can import it freely."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import UserError

#: Stored verdicts, and what a person may type or press for each.
VOTE_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("1", "left", "l"),
    "right": ("2", "right", "r"),
    "tie": ("t", "tie", "3", "="),
    "both_bad": ("b", "both bad", "bad", "both_bad", "both", "0"),
}
VOTE_HELP = "1 or left (A is better), 2 or right (B is better), t or tie, b or both bad"


def parse_vote(text: str) -> str | None:
    """The verdict a typed answer names, or None when it names none."""
    word = " ".join(text.strip().lower().split())
    return next((vote for vote, words in VOTE_WORDS.items() if word in words), None)


@dataclass(frozen=True)
class Pairing:
    """One comparison: which model sits left (A) and which right (B), and the seed that chose
    them, which also seeds both models' sampling."""

    left: str
    right: str
    seed: int


def pick_pair(models: list[str], seed: int) -> Pairing:
    """Two distinct models from `models`, in a random order, both decided by `seed` alone."""
    if len(set(models)) < 2:
        raise UserError("the arena needs at least two different models")
    left, right = random.Random(seed).sample(sorted(set(models)), 2)
    return Pairing(left, right, seed)


def read_prompts(path: Path) -> list[str]:
    """Prompts from a text file (one per line; blank lines skipped) or a .jsonl file (one JSON
    string, or an object with a "prompt" string, per line). A bad line is a UserError naming
    file:line; nothing is returned from a file with one."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read prompts file {path}: {exc.strerror or exc}") from None
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    prompts: list[str] = []
    for n, line_bytes in enumerate(raw.splitlines(), start=1):
        where = f"{path}:{n}"
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{where}: not UTF-8 text (byte {exc.start + 1})") from None
        if not line.strip():
            continue
        if not jsonl:
            prompts.append(line.strip())
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not JSON: {exc.msg} (column {exc.colno})") from None
        if isinstance(value, dict):
            value = value.get("prompt")
            if not isinstance(value, str):
                raise UserError(f'{where}: an object needs a "prompt" string')
        if not isinstance(value, str):
            raise UserError(f'{where}: expected a JSON string or an object with a "prompt" string')
        if not value.strip():
            raise UserError(f"{where}: the prompt is empty")
        prompts.append(value)
    if not prompts:
        raise UserError(f"prompts file {path} holds no prompts")
    return prompts
