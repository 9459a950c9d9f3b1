"""Multiple-choice questions in the MMLU format, read from JSONL or CSV, and their prompts.

Accepted shapes (a folder is read file by file, in name order, like MMLU's `data/test/`):

- JSONL: `{"question": ..., "choices": [...], "answer": "B"}`; the choices may instead be fields
  `"A"`, `"B"`, ...; the answer may be a letter or a 0-based index (the Hugging Face `cais/mmlu`
  layout); `"subject"` is optional.
- CSV: MMLU's own files, without a header: question, one column per choice, answer letter; or
  with a header naming `question`, `A`..`D` (or more letters), `answer` and optionally `subject`.

A file's subject, when its rows have none, is its name without MMLU's `_test`/`_val`/`_dev`.
Light module: standard library only.
"""

from __future__ import annotations

import csv
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.datasets import iter_jsonl
from workbench.errors import UserError

LETTERS = string.ascii_uppercase[:10]
FORMATS = ("letter", "cloze")


@dataclass
class Question:
    subject: str
    question: str
    choices: list[str]
    answer: int
    where: str  # file:line


def read_questions(path: Path) -> list[Question]:
    """Every question in a file or folder; the first bad row is named by file and line."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".jsonl", ".csv"))
        if not files:
            raise UserError(f"{path} holds no .jsonl or .csv files of multiple-choice questions")
    else:
        files = [path]
    out: list[Question] = []
    for f in files:
        if f.suffix.lower() == ".jsonl":
            out += _read_jsonl(f)
        elif f.suffix.lower() == ".csv":
            out += _read_csv(f)
        else:
            raise UserError(f"{f} is neither .jsonl nor .csv; multiple-choice files come in MMLU's JSONL or CSV layout")
    if not out:
        raise UserError(f"{path} holds no multiple-choice questions")
    return out


def _subject_of(path: Path) -> str:
    stem = path.stem
    for suffix in ("_test", "_val", "_dev", "_validation", "_train"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _question(q: Any, choices: list[Any], answer: Any, subject: Any, where: str) -> Question:
    if not isinstance(q, str) or not q.strip():
        raise UserError(f"{where}: the question is missing or empty")
    if len(choices) < 2 or len(choices) > len(LETTERS):
        raise UserError(f"{where}: a question needs 2 to {len(LETTERS)} choices, found {len(choices)}")
    if not all(isinstance(c, (str, int, float)) and str(c).strip() for c in choices):
        raise UserError(f"{where}: every choice must be a non-empty text")
    if isinstance(answer, bool):
        answer = None
    if isinstance(answer, str) and answer.strip().isdigit():
        answer = int(answer.strip())
    if isinstance(answer, int):
        index = answer
    elif isinstance(answer, str) and answer.strip().upper() in LETTERS:
        index = LETTERS.index(answer.strip().upper())
    else:
        raise UserError(f"{where}: the answer must be a letter (A, B, ...) or a 0-based index, got {answer!r}")
    if not 0 <= index < len(choices):
        raise UserError(f"{where}: the answer {answer!r} names no choice (there are {len(choices)})")
    return Question(str(subject or "").strip(), q.strip(), [str(c).strip() for c in choices], index, where)


def _read_jsonl(path: Path) -> list[Question]:
    out = []
    for where, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise UserError(f"{where}: a question must be a JSON object with question, choices and answer")
        if "choices" in row:
            choices = row["choices"]
            if not isinstance(choices, list):
                raise UserError(f"{where}: 'choices' must be a list of texts")
        else:
            choices = [row[k] for k in LETTERS if k in row]
        if "answer" not in row:
            raise UserError(f"{where}: the row has no 'answer' (a letter or a 0-based index)")
        out.append(_question(row.get("question"), choices, row["answer"],
                             row.get("subject") or _subject_of(path), where))
    return out


def _read_csv(path: Path) -> list[Question]:
    out: list[Question] = []
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return out
    header = [h.strip().lower() for h in rows[0]]
    if "question" in header and "answer" in header:
        col = {h: i for i, h in enumerate(header)}
        letters = [k for k in LETTERS if k.lower() in col]
        body, first_line = rows[1:], 2
        for n, row in enumerate(body, first_line):
            if not any(cell.strip() for cell in row):
                continue
            where = f"{path}:{n}"
            if len(row) < len(header):
                raise UserError(f"{where}: expected {len(header)} columns, found {len(row)}")
            subject = row[col["subject"]] if "subject" in col else _subject_of(path)
            out.append(_question(row[col["question"]], [row[col[k.lower()]] for k in letters],
                                 row[col["answer"]], subject, where))
        return out
    for n, row in enumerate(rows, 1):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path}:{n}"
        if len(row) < 4:
            raise UserError(f"{where}: an MMLU row is question, the choices, then the answer letter; found {len(row)} columns")
        out.append(_question(row[0], row[1:-1], row[-1], _subject_of(path), where))
    return out


def prompt_and_continuations(q: Question, fmt: str) -> tuple[str, list[str]]:
    """The text every choice is scored after, and the choices' continuations.

    `letter` is MMLU's own zero-shot prompt: the lettered choices are listed and the letters are
    scored. `cloze` scores each choice's text after the question, which small models can do long
    before they learn to map letters to answers.
    """
    if fmt == "letter":
        about = f" about {q.subject.replace('_', ' ')}" if q.subject else ""
        lines = [f"The following are multiple choice questions (with answers){about}.", "", q.question]
        lines += [f"{LETTERS[i]}. {c}" for i, c in enumerate(q.choices)]
        lines.append("Answer:")
        return "\n".join(lines), [f" {LETTERS[i]}" for i in range(len(q.choices))]
    if fmt == "cloze":
        return f"Question: {q.question}\nAnswer:", [f" {c}" for c in q.choices]
    raise UserError(f"unknown multiple-choice format '{fmt}'; choose {' or '.join(FORMATS)}")
