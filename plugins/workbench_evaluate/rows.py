"""Held-out rows of the datasets eval reads, checked with file and line. Light module."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from workbench.datasets import iter_jsonl, parse_messages
from workbench.errors import UserError


@dataclass
class Prompted:
    """Prompt turns (ending with a user turn) and the reference answer."""

    prompt: list[dict[str, str]]
    answer: str
    where: str


def _lines(path: Path) -> Iterator[tuple[str, object]]:
    if not path.exists():
        raise UserError(f"{path} is missing; prepare the dataset again with `workbench data prepare`")
    return iter_jsonl(path)


def read_instructions(path: Path, limit: int | None = None) -> list[Prompted]:
    """Instruction rows: the last message is the reference answer."""
    out: list[Prompted] = []
    for where, row in _lines(path):
        if limit is not None and len(out) >= limit:
            break
        msgs = parse_messages(row.get("messages") if isinstance(row, dict) else None, where)
        if msgs[-1]["role"] != "assistant" or len(msgs) < 2:
            raise UserError(f"{where}: an instruction row must end with the assistant's answer after a user turn")
        out.append(Prompted(msgs[:-1], msgs[-1]["content"], where))
    return out


@dataclass
class Pair:
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    where: str


def read_pairs(path: Path, limit: int | None = None) -> list[Pair]:
    """Preference rows in the normalised form: messages (ending with a user turn), chosen, rejected."""
    out: list[Pair] = []
    for where, row in _lines(path):
        if limit is not None and len(out) >= limit:
            break
        if not isinstance(row, dict):
            raise UserError(f"{where}: a preference row must be a JSON object")
        msgs = parse_messages(row.get("messages"), where)
        if msgs[-1]["role"] != "user":
            raise UserError(f"{where}: the prompt turns must end with a user turn")
        chosen, rejected = row.get("chosen"), row.get("rejected")
        if not isinstance(chosen, str) or not isinstance(rejected, str):
            raise UserError(f"{where}: 'chosen' and 'rejected' must be strings")
        out.append(Pair(msgs, chosen, rejected, where))
    return out


def read_texts(path: Path, limit: int | None = None) -> list[str]:
    """Pretrain documents, counted exactly as the token cache counts them (blank lines skipped)."""
    out: list[str] = []
    for where, row in _lines(path):
        if limit is not None and len(out) >= limit:
            break
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise UserError(f"{where}: not a pretrain row ({{\"text\": ...}})")
        out.append(row["text"])
    return out
