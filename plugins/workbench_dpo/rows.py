"""Preference rows read and checked without torch, so `validate` can refuse bad data before a run
is created.

The normalised row is `{"messages": [...prompt turns ending with a user turn], "chosen": str,
"rejected": str}`. Two other shapes that preference sets commonly come in are accepted too: a
plain `"prompt"` string instead of `messages`, and `chosen`/`rejected` as message lists whose last
message is the assistant's answer (when they also carry the prompt turns, those turns become the
prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.datasets import iter_jsonl, parse_messages, read_card
from workbench.errors import UserError


@dataclass
class PreferenceRow:
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    where: str  # "path:line", for error messages


def check_preference_dataset(dataset_dir: Path, ref: str) -> dict[str, Any]:
    """The dataset card, or a UserError when the dataset is not a preference set."""
    card = read_card(dataset_dir, ref)
    kind = card.get("type")
    if kind != "preference":
        raise UserError(
            f"dataset '{ref}' has type '{kind}', but dpo needs a preference dataset "
            "(rows with messages, chosen and rejected); prepare one with `workbench data prepare`"
        )
    if not (dataset_dir / "train.jsonl").exists():
        raise UserError(f"dataset '{ref}' has no train.jsonl in {dataset_dir}")
    return card


def read_rows(path: Path) -> list[PreferenceRow]:
    """Every row of a split; the first bad one is reported with its file and line."""
    if not path.exists():
        return []
    return [parse_row(raw, where) for where, raw in iter_jsonl(path)]


def parse_row(raw: Any, where: str) -> PreferenceRow:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: a preference row must be a JSON object")
    for key in ("chosen", "rejected"):
        if key not in raw:
            raise UserError(f"{where}: the row has no '{key}' field; each row needs messages (or prompt), chosen and rejected")
    chosen_turns, chosen = _answer(raw["chosen"], "chosen", where)
    rejected_turns, rejected = _answer(raw["rejected"], "rejected", where)
    if "messages" in raw:
        prompt = parse_messages(raw["messages"], where)
    elif "prompt" in raw:
        if not isinstance(raw["prompt"], str) or not raw["prompt"].strip():
            raise UserError(f"{where}: 'prompt' must be a non-empty string")
        prompt = [{"role": "user", "content": raw["prompt"]}]
    elif chosen_turns:
        if chosen_turns != rejected_turns:
            raise UserError(f"{where}: 'chosen' and 'rejected' carry different prompt turns")
        prompt = chosen_turns
    else:
        raise UserError(f"{where}: the row has no 'messages' field (the prompt turns, ending with a user turn)")
    if not prompt or prompt[-1]["role"] != "user":
        raise UserError(f"{where}: the prompt turns must end with a user turn")
    return PreferenceRow(prompt, chosen, rejected, where)


def _answer(value: Any, key: str, where: str) -> tuple[list[dict[str, str]], str]:
    """(prompt turns carried along, answer text) of a `chosen` or `rejected` field."""
    if isinstance(value, str):
        text, turns = value, []
    elif isinstance(value, list) and value:
        msgs = parse_messages(value, where)
        if msgs[-1]["role"] != "assistant":
            raise UserError(f"{where}: the last message of '{key}' must be the assistant's answer")
        text, turns = msgs[-1]["content"], msgs[:-1]
    else:
        raise UserError(f"{where}: '{key}' must be a string or a list of messages ending with the assistant's answer")
    if not text.strip():
        raise UserError(f"{where}: '{key}' is empty")
    return turns, text
