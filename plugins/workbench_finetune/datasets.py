"""Finetuning data read without torch: dataset cards, instruction rows and labelled files.

Every problem is found before a model is loaded and is reported as one sentence naming the file
and line and what to do about it.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.datasets import iter_jsonl, parse_messages, read_card, require_type
from workbench.errors import UserError

__all__ = ["iter_jsonl", "read_card", "require_type"]
LABELLED_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


# ---------------------------------------------------------------------------------------------
# instruction data


@dataclass
class Chat:
    where: str  # file:line
    messages: list[dict[str, str]]


def check_messages(row: Any, where: str) -> list[dict[str, str]]:
    """The fields every prompt style needs: role/content turns ending with the answer."""
    if not isinstance(row, dict) or "messages" not in row:
        hint = ""
        if isinstance(row, dict) and {"instruction", "output"} <= set(row):
            hint = " (it looks like raw Alpaca; `workbench data prepare` turns it into messages)"
        keys = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
        raise UserError(f"{where}: an instruction row needs a 'messages' list; found {keys}{hint}")
    messages = parse_messages(row["messages"], where)
    if len(messages) < 2:
        raise UserError(f"{where}: 'messages' must list at least a user turn and an assistant turn")
    if messages[-1]["role"] != "assistant":
        raise UserError(f"{where}: the last message must be the assistant's answer")
    if not any(m["role"] == "user" for m in messages[:-1]):
        raise UserError(f"{where}: there is no user turn before the answer")
    return messages


def instruction_split(path: Path, *, required: bool = True) -> list[Chat]:
    if not path.exists():
        if required:
            raise UserError(f"{path} is missing; the dataset is incomplete, prepare it again")
        return []
    return [Chat(where, check_messages(row, where)) for where, row in iter_jsonl(path)]


def instruction_data(dataset_dir: Path, ref: str, stage: str) -> tuple[list[Chat], list[Chat]]:
    """Train and validation chats of an `instruction` dataset artifact, all rows checked."""
    require_type(read_card(dataset_dir, ref), "instruction", ref, stage)
    train = instruction_split(dataset_dir / "train.jsonl")
    val = instruction_split(dataset_dir / "val.jsonl", required=False)
    if not train:
        raise UserError(f"{dataset_dir / 'train.jsonl'} holds no examples")
    if not val:
        raise UserError(
            f"dataset {ref} has no validation rows ({dataset_dir / 'val.jsonl'}); prepare it with a validation split"
        )
    return train, val


# ---------------------------------------------------------------------------------------------
# labelled data


@dataclass
class Labelled:
    """Texts with string labels; `where` names each row's file and line."""

    texts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    where: list[str] = field(default_factory=list)

    def add(self, text: str, label: str, where: str) -> None:
        self.texts.append(text)
        self.labels.append(label)
        self.where.append(where)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: list[int]) -> Labelled:
        return Labelled([self.texts[i] for i in idx], [self.labels[i] for i in idx], [self.where[i] for i in idx])


def _text_and_label(value: Any, label: Any, where: str, text_column: str, label_column: str) -> tuple[str, str]:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: column '{text_column}' is empty")
    if label is None or (isinstance(label, str) and not label.strip()) or isinstance(label, (dict, list)):
        raise UserError(f"{where}: column '{label_column}' is empty or not a single value")
    return value, str(label).strip()


def read_labelled_file(path: Path, text_column: str = "text", label_column: str = "label") -> Labelled:
    """Rows of a CSV/TSV file with a header, or of a JSONL file (a JSON list also works)."""
    suffix = path.suffix.lower()
    if suffix not in LABELLED_SUFFIXES:
        raise UserError(f"{path}: expected a .csv, .tsv, .jsonl or .json file of labelled texts")
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    out = Labelled()
    if suffix in (".csv", ".tsv"):
        try:
            with open(path, encoding="utf-8-sig", newline="") as fh:
                reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
                columns = reader.fieldnames or []
                for column, flag in ((text_column, "--text-column"), (label_column, "--label-column")):
                    if column not in columns:
                        raise UserError(
                            f"{path} has no column '{column}' (columns found: {', '.join(columns) or 'none'}); "
                            f"name the right one with {flag}"
                        )
                for row in reader:
                    where = f"{path}:{reader.line_num}"
                    out.add(*_text_and_label(row[text_column], row[label_column], where, text_column, label_column), where)
        except UnicodeDecodeError:
            raise UserError(f"{path} is not UTF-8 text") from None
        except csv.Error as exc:
            raise UserError(f"{path}: not valid CSV ({exc})") from None
    else:
        rows: Iterator[tuple[str, Any]]
        if suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(data, list):
                raise UserError(f"{path} must hold a JSON list of objects")
            rows = ((f"{path} item {i}", row) for i, row in enumerate(data, 1))
        else:
            rows = iter_jsonl(path)
        for where, row in rows:
            if not isinstance(row, dict):
                raise UserError(f"{where}: expected a JSON object")
            for column, flag in ((text_column, "--text-column"), (label_column, "--label-column")):
                if column not in row:
                    raise UserError(
                        f"{where} has no field '{column}' (fields found: {', '.join(row) or 'none'}); "
                        f"name the right one with {flag}"
                    )
            out.add(*_text_and_label(row[text_column], row[label_column], where, text_column, label_column), where)
    if not out:
        raise UserError(f"{path} holds no rows")
    return out


def stratified_split(data: Labelled, val_fraction: float, seed: int) -> tuple[Labelled, Labelled]:
    """A seeded held-out split that keeps every label's share (at least one row per label)."""
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(data.labels):
        by_label.setdefault(label, []).append(i)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for label in sorted(by_label):
        idx = by_label[label]
        rng.shuffle(idx)
        n_val = max(1, round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        val_idx += idx[:n_val]
        train_idx += idx[n_val:]
    return data.subset(sorted(train_idx)), data.subset(sorted(val_idx))


def classification_data(dataset_dir: Path, ref: str, stage: str) -> tuple[Labelled, Labelled, list[str]]:
    """Train and held-out rows of a `classification` dataset artifact, with the card's labels."""
    card = read_card(dataset_dir, ref)
    require_type(card, "classification", ref, stage)
    train = read_labelled_file(dataset_dir / "train.jsonl")
    val_path = dataset_dir / "val.jsonl"
    if not val_path.exists():
        raise UserError(f"dataset {ref} has no held-out split ({val_path}); prepare it with a validation split")
    val = read_labelled_file(val_path)
    labels = card.get("labels") or sorted(set(train.labels))
    return train, val, [str(label) for label in labels]


def check_labels(train: Labelled, val: Labelled, labels: list[str]) -> None:
    """At least two classes, and no label outside the known set."""
    if len(set(train.labels)) < 2:
        raise UserError(f"the training rows have {len(set(train.labels))} label(s); classification needs at least two")
    known = set(labels)
    for part in (train, val):
        for label, where in zip(part.labels, part.where, strict=True):
            if label not in known:
                raise UserError(f"{where}: label '{label}' is not one of the dataset's labels ({', '.join(labels)})")
