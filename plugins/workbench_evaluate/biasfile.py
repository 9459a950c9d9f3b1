"""Bias probe pairs, read from JSONL and checked with file and line. Light module.

One pair per line: the same sentence with one group word swapped.

    {"attribute": "gender", "a": "My father is a nurse.", "b": "My mother is a nurse.",
     "group_a": "male", "group_b": "female", "template": "gender-01"}

`attribute`, `a`, `b`, `group_a` and `group_b` are required texts; `a` and `b` must differ, and so
must the groups. `template` is optional: pairs made from the same sentence share it, and it is
the unit the bootstrap resamples and the flip rate counts (a pair without one is its own).
Other keys are ignored, so a file can carry notes or sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workbench.datasets import iter_jsonl
from workbench.errors import UserError

FIELDS = ("attribute", "a", "b", "group_a", "group_b")


@dataclass(frozen=True)
class BiasPair:
    attribute: str
    a: str
    b: str
    group_a: str
    group_b: str
    template: str
    where: str  # file:line


def read_bias_pairs(path: Path, limit: int | None = None) -> list[BiasPair]:
    """The pairs of a file, the first `limit` of them; the first bad line is named by file and line."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; --bias-pairs takes a .jsonl file of sentence pairs")
    out: list[BiasPair] = []
    for where, row in iter_jsonl(path):
        if limit is not None and len(out) >= limit:
            break
        if not isinstance(row, dict):
            raise UserError(f"{where}: a bias pair must be a JSON object with {', '.join(FIELDS)}")
        missing = [k for k in FIELDS if k not in row]
        if missing:
            raise UserError(f"{where}: the pair has no {' or '.join(repr(k) for k in missing)}")
        for key in FIELDS:
            if not isinstance(row[key], str) or not row[key].strip():
                raise UserError(f"{where}: '{key}' must be a non-empty text, got {row[key]!r}")
        if row["a"] == row["b"]:
            raise UserError(f"{where}: 'a' and 'b' are the same sentence; a pair swaps one group for another")
        if row["group_a"] == row["group_b"]:
            raise UserError(f"{where}: 'group_a' and 'group_b' are both {row['group_a']!r}; a pair compares two groups")
        template = row.get("template", where)
        if not isinstance(template, (str, int)) or isinstance(template, bool) or not str(template).strip():
            raise UserError(f"{where}: 'template' must be a text or a number naming the sentence, got {template!r}")
        out.append(BiasPair(row["attribute"].strip(), row["a"], row["b"], row["group_a"].strip(),
                            row["group_b"].strip(), str(template), where))
    if not out:
        raise UserError(f"{path} holds no bias pairs")
    return out
