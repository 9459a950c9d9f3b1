"""Raw records → the normalised rows every stage reads, one type at a time.

    pretrain        {"text": str}
    instruction     {"messages": [{"role", "content"}, ...]}          (ends with the assistant)
    preference      {"messages": [... ending with a user turn], "chosen": str, "rejected": str}
    classification  {"text": str, "label": str}

Accepted inputs: plain text; objects with a text field; Alpaca `instruction`/`input`/`output`
(an optional `system`); chat `messages` lists of {role, content}, or ShareGPT's {from, value}
(human, gpt, system); preference `prompt`/`chosen`/`rejected` where the prompt is text or a
message list and the answers are text or message lists ending with the assistant's turn (the
binarized shape of UltraFeedback); `text`/`label` pairs for classification. Columns named
otherwise are renamed first (`columns.py`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from workbench_data.readers import Record, RecordError, json_type

ROLES = ("system", "user", "assistant")
#: ShareGPT's speaker names for the roles.
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user",
                  "assistant": "assistant"}

Row = dict[str, Any]


def detect_type(record: Record, text_field: str, label_field: str) -> str:
    """The dataset type a record's shape implies."""
    value = record.value
    if isinstance(value, str):
        return "pretrain"
    keys = set(value)
    if {"chosen", "rejected"} <= keys:
        return "preference"
    if "messages" in keys or {"instruction", "output"} <= keys:
        return "instruction"
    if label_field in keys and text_field in keys:
        return "classification"
    if text_field in keys:
        return "pretrain"
    shown = ", ".join(sorted(keys)[:8]) or "none"
    raise RecordError(
        record.where,
        f"cannot tell the dataset type from the fields ({shown}); pass --type, or --text-field "
        "for a text column", "unknown shape",
    )


def normalizer(kind: str, text_field: str, label_field: str) -> Callable[[Record], Row]:
    if kind == "pretrain":
        return lambda r: {"text": r.value if isinstance(r.value, str) else _str(r, text_field)}
    if kind == "classification":
        return lambda r: {"text": _str(r, text_field), "label": _label(r, label_field)}
    if kind == "instruction":
        return _instruction
    if kind == "preference":
        return _preference
    raise ValueError(kind)


def _need_object(r: Record) -> dict[str, Any]:
    if not isinstance(r.value, dict):
        raise RecordError(r.where, "plain text cannot hold this dataset type; use JSON or JSONL", "wrong type")
    return r.value


def _missing(r: Record, key: str) -> RecordError:
    present = ", ".join(r.value) if isinstance(r.value, dict) else ""
    return RecordError(r.where, f'missing field "{key}" (fields present: {present or "none"})', "missing field")


def _str(r: Record, key: str, *, optional: bool = False) -> str:
    value = _need_object(r).get(key)
    if value is None:
        if optional:
            return ""
        raise _missing(r, key)
    if not isinstance(value, str):
        raise RecordError(r.where, f'field "{key}" must be a string, got {json_type(value)}', "wrong type")
    return value


def _label(r: Record, key: str) -> str:
    value = _need_object(r).get(key)
    if value is None:
        raise _missing(r, key)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RecordError(
            r.where, f'field "{key}" must be a string or an integer, got {json_type(value)}', "wrong type")
    return str(value).strip()


def _messages(r: Record, value: Any, field: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        got = "an empty list" if value == [] else json_type(value)
        raise RecordError(r.where, f'field "{field}" must be a non-empty list of messages, got {got}',
                          "wrong type")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise RecordError(r.where, f'{field}[{i}] must be an object, got {json_type(msg)}', "wrong type")
        if "from" in msg and "role" not in msg:  # ShareGPT
            speaker, content = msg.get("from"), msg.get("value")
            role = SHAREGPT_ROLES.get(speaker, speaker) if isinstance(speaker, str) else speaker
            if content is None:
                raise RecordError(r.where, f'{field}[{i}] is missing "value"', "missing field")
        else:
            role, content = msg.get("role"), msg.get("content")
        if role is None or content is None:
            missing = "role" if role is None else "content"
            raise RecordError(r.where, f'{field}[{i}] is missing "{missing}"', "missing field")
        if role not in ROLES:
            raise RecordError(r.where, f'{field}[{i}] has role {role!r}; use one of {", ".join(ROLES)}',
                              "wrong type")
        if not isinstance(content, str):
            raise RecordError(r.where, f'{field}[{i}].content must be a string, got {json_type(content)}',
                              "wrong type")
        out.append({"role": role, "content": content})
    return out


def _instruction(r: Record) -> Row:
    obj = _need_object(r)
    if "messages" in obj:
        msgs = _messages(r, obj["messages"], "messages")
        if msgs[-1]["role"] != "assistant":
            raise RecordError(r.where, "the last message must be the assistant's answer", "wrong type")
        if not any(m["role"] == "user" for m in msgs):
            raise RecordError(r.where, "messages hold no user turn", "missing field")
        return {"messages": msgs}
    instruction, extra, output = _str(r, "instruction"), _str(r, "input", optional=True), _str(r, "output")
    system = _str(r, "system", optional=True)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    msgs = [{"role": "system", "content": system}] if system.strip() else []
    msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return {"messages": msgs}


def _answer(r: Record, obj: dict[str, Any], key: str) -> tuple[str, list[dict[str, str]] | None]:
    """An answer given as text, or as a conversation ending with the assistant (its prompt too)."""
    value = obj.get(key)
    if value is None:
        raise _missing(r, key)
    if isinstance(value, str):
        return value, None
    msgs = _messages(r, value, key)
    if msgs[-1]["role"] != "assistant":
        raise RecordError(r.where, f'the last message of "{key}" must be the assistant\'s answer', "wrong type")
    return msgs[-1]["content"], msgs[:-1]


def _preference(r: Record) -> Row:
    obj = _need_object(r)
    chosen, chosen_prompt = _answer(r, obj, "chosen")
    rejected, _ = _answer(r, obj, "rejected")
    prompt = obj.get("prompt", obj.get("messages"))
    if prompt is None:
        if not chosen_prompt:
            raise _missing(r, "prompt")
        msgs = chosen_prompt
    elif isinstance(prompt, str):
        msgs = [{"role": "user", "content": prompt}]
    else:
        msgs = _messages(r, prompt, "prompt" if "prompt" in obj else "messages")
    if msgs[-1]["role"] == "assistant":
        raise RecordError(r.where, "the prompt must end with a user turn, not the assistant's", "wrong type")
    return {"messages": msgs, "chosen": chosen, "rejected": rejected}


# --- views of a row used by cleaning, filters and the card -----------------------------------


def strings(row: Row) -> list[str]:
    """Every free-text string of a row, in order (the label is not free text)."""
    if "messages" in row:
        out = [m["content"] for m in row["messages"]]
        if "chosen" in row:
            out += [row["chosen"], row["rejected"]]
        return out
    return [row["text"]]


def map_strings(row: Row, fn: Callable[[str], str]) -> Row:
    if "messages" in row:
        new: Row = {"messages": [{"role": m["role"], "content": fn(m["content"])} for m in row["messages"]]}
        if "chosen" in row:
            new["chosen"], new["rejected"] = fn(row["chosen"]), fn(row["rejected"])
        return new
    new = {"text": fn(row["text"])}
    if "label" in row:
        new["label"] = row["label"]
    return new


def body(row: Row) -> str:
    """The text that stands for a row in length statistics, quality filters and near-dedup:
    the document, or the conversation with its (chosen) answer."""
    if "messages" in row:
        parts = [m["content"] for m in row["messages"]]
        if "chosen" in row:
            parts.append(row["chosen"])
        return "\n".join(parts)
    return row["text"]


def exact_key(row: Row) -> str:
    """What makes two rows the same: the text for documents and classification (a text with two
    labels is a duplicate, not a second example), the whole conversation otherwise."""
    if "messages" in row:
        return json.dumps(row, ensure_ascii=False, sort_keys=True)
    return row["text"]
