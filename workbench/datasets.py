"""Reading the `dataset` artifacts that `workbench data prepare` writes: the card and the
normalised JSONL rows. Light (no torch), so stages can check inputs in `validate()`.

A dataset directory holds `card.json` (`type` is pretrain, instruction, preference or
classification) and `train.jsonl` / `val.jsonl`; see docs/data.md for the row shapes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workbench.errors import UserError

ROLES = ("system", "user", "assistant")


def read_card(dataset_dir: Path, ref: str) -> dict[str, Any]:
    path = dataset_dir / "card.json"
    if not path.exists():
        raise UserError(f"dataset {ref} has no card.json at {path}; prepare it with `workbench data prepare`")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(card, dict):
        raise UserError(f"{path} must hold a JSON object")
    return card


def require_type(card: dict[str, Any], wanted: str, ref: str, stage: str) -> None:
    found = card.get("type")
    if found != wanted:
        raise UserError(
            f"dataset {ref} holds '{found}' data, but {stage} needs '{wanted}' data; "
            f"prepare one with `workbench data prepare --type {wanted}`"
        )


def check_replay(ctx: Any, ref: str | None, length: int, context: int | None) -> None:
    """`--replay` names a pretrain dataset, and its windows fit the model's context."""
    if ref is None:
        return
    data = ctx.artifact(ref, "dataset")
    require_type(read_card(data.path, ref), "pretrain", ref, "--replay")
    if context is not None and length > context:
        raise UserError(f"--replay-length {length} is longer than the model's context of {context} tokens")


def iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """("file:line", value) for each non-blank line; a bad line is an error naming its place."""
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    with fh:
        try:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{n}", json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        except UnicodeDecodeError:
            raise UserError(f"{path} is not UTF-8 text") from None


def parse_messages(value: Any, where: str) -> list[dict[str, str]]:
    """A non-empty list of {role, content} turns, copied to plain dicts."""
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(value, 1):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise UserError(f"{where}: message {i} needs a text 'content' field")
        if m.get("role") not in ROLES:
            raise UserError(f"{where}: message {i} has role {m.get('role')!r}; use one of {', '.join(ROLES)}")
        out.append({"role": m["role"], "content": m["content"]})
    return out
