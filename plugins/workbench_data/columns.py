"""Column mapping: rows whose columns are named differently from the shapes `rows.py` knows.

`data prepare` and `download --dataset` declare the same `--X-field` options; a named column is
renamed to its role before the row's shape is detected, so every reader and row shape works
with it. Light module: options only.
"""

from __future__ import annotations

from typing import Any

from workbench.errors import UserError
from workbench.options import option

#: Roles a column can be mapped to, each with what it holds (the help text of its option).
ROLES = {
    "instruction": "the instruction of Alpaca-shaped rows",
    "input": "the optional input of Alpaca-shaped rows",
    "output": "the answer of Alpaca-shaped rows",
    "system": "the optional system prompt of Alpaca-shaped rows",
    "messages": "the chat, a list of {role, content} or ShareGPT {from, value} (a conversations "
                "column is used when there is no messages column)",
    "prompt": "the prompt of preference rows (text or a message list)",
    "chosen": "the preferred answer of preference rows (text or a message list)",
    "rejected": "the dispreferred answer of preference rows (text or a message list)",
}


def column_option(role: str) -> Any:
    """The `--ROLE-field` option, declared in each stage that reads rows."""
    return option(role, help=f"Column holding {ROLES[role]}", group="columns", advanced=True)


def mapping(options: Any) -> dict[str, str]:
    """role → column, for the roles the user mapped to another column."""
    return {role: col for role in ROLES if (col := getattr(options, f"{role}_field")) != role}


def named_columns(options: Any) -> dict[str, str]:
    """flag → column for every column the user named, `--text-field` and `--label-field` included."""
    named = {f"--{role}-field": col for role, col in mapping(options).items()}
    for role in ("text", "label"):
        if getattr(options, f"{role}_field") != role:
            named[f"--{role}-field"] = getattr(options, f"{role}_field")
    return named


def check_named(options: Any, first: Any, where: str) -> None:
    """A column the user named must be in the data: one line listing the columns there are."""
    if not isinstance(first, dict):
        return
    for flag, col in named_columns(options).items():
        if col not in first:
            raise UserError(f'{flag} names column "{col}", which {where} does not have; '
                            f"its columns are: {', '.join(first) or 'none'}")


def rename(value: Any, roles: dict[str, str]) -> Any:
    """The record with mapped columns under their roles' names; ShareGPT's `conversations` stands
    for `messages` unless another column was named."""
    if not isinstance(value, dict):
        return value
    if "messages" not in roles and "messages" not in value and "conversations" in value:
        roles = {**roles, "messages": "conversations"}
    if not roles:
        return value
    out = {k: v for k, v in value.items() if k not in roles.values()}
    for role, col in roles.items():
        if col in value:
            out[role] = value[col]
    return out
