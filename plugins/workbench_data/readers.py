"""Reading source files into raw records, each with the place it came from.

Supported: `.txt`/`.md` (a document per file, paragraph or line), `.jsonl` (one JSON object per
line), `.json` (an array of objects), `.csv` (a header row, then one record per row) and
`.parquet` (with pyarrow). Folders are searched recursively for those suffixes.

Problems are reported with the file and line (or row): the caller decides whether a bad record
stops the run (UserError) or is dropped and counted (`--skip-invalid`).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import UserError

TEXT_SUFFIXES = (".txt", ".md", ".text")
SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".json", ".csv", ".parquet")
_SNIFF = 8192


class RecordError(Exception):
    """A bad record or file; `where` is `path:line` (or `path row N`)."""

    def __init__(self, where: str, message: str, reason: str):
        super().__init__(f"{where}: {message}")
        self.where, self.message, self.reason = where, message, reason


@dataclass
class Record:
    value: Any  # a dict from structured files, a str from text files
    where: str
    source: str


@dataclass
class Dropped:
    """Bad records skipped under --skip-invalid: counts by reason, and a few places to look."""

    reasons: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, err: RecordError) -> None:
        self.reasons[err.reason] += 1
        if len(self.examples) < 5:
            self.examples.append(str(err))

    @property
    def total(self) -> int:
        return sum(self.reasons.values())


def expand(sources: list[str]) -> list[Path]:
    """Files named directly, and supported files found under named folders, in a stable order."""
    files: list[Path] = []
    for src in sources:
        path = Path(src).expanduser()
        if not path.exists():
            raise UserError(f"{path} does not exist; pass a file or folder of training data")
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise UserError(
                    f"folder {path} holds no data files ({', '.join(SUFFIXES)}); "
                    "point at the files directly or add them"
                )
            files += found
        elif path.suffix.lower() not in SUFFIXES:
            raise UserError(
                f"{path} has an unsupported type '{path.suffix or 'no suffix'}'; "
                f"use one of {', '.join(SUFFIXES)}"
            )
        else:
            files.append(path)
    return files


def check_file(path: Path) -> None:
    """Cheap whole-file checks: readable, not empty, not binary. Raises RecordError."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF)
    except OSError as exc:
        raise RecordError(str(path), f"cannot be read ({exc.strerror or exc})", "unreadable file") from None
    if path.suffix.lower() == ".parquet":
        if size and not head.startswith(b"PAR1"):
            raise RecordError(str(path), "is not a Parquet file (no PAR1 header)", "binary file")
        if size == 0:
            raise RecordError(str(path), "is empty; remove it or add data", "empty file")
        return
    if size == 0 or not head.strip():
        raise RecordError(str(path), "is empty; remove it or add data", "empty file")
    nul = head.find(b"\0")
    if nul >= 0:
        line = head[:nul].count(b"\n") + 1
        raise RecordError(
            f"{path}:{line}", f"looks like a binary file, not text (NUL byte at offset {nul}); "
            "pass text, JSONL, JSON, CSV or Parquet files", "binary file",
        )


def require_parquet_support() -> None:
    if importlib.util.find_spec("pyarrow") is None:
        raise UserError("reading .parquet files needs pyarrow, which is not installed; run `pip install pyarrow`")


def read(path: Path, *, txt_unit: str = "file", dropped: Dropped | None = None) -> Iterator[Record]:
    """Records of one file. With `dropped`, bad records are counted there instead of raising."""
    try:
        check_file(path)
    except RecordError as err:
        if dropped is None:
            raise
        dropped.add(err)
        return
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet(path)
        return
    reader = {".jsonl": _jsonl, ".json": _json, ".csv": _csv}.get(suffix)
    if reader is None:
        yield from _text(path, txt_unit, dropped)
    else:
        yield from reader(path, dropped)


def _raise_or_drop(err: RecordError, dropped: Dropped | None) -> None:
    if dropped is None:
        raise err
    dropped.add(err)


def _utf8_error(path: Path, data: bytes, exc: UnicodeDecodeError, line_offset: int = 0) -> RecordError:
    line = line_offset + data[: exc.start].count(b"\n") + 1
    col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    return RecordError(
        f"{path}:{line}",
        f"is not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {col}); "
        "re-save the file as UTF-8", "not UTF-8",
    )


def _lines(path: Path, dropped: Dropped | None) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line, decoding each line strictly as UTF-8."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                _raise_or_drop(_utf8_error(path, raw, exc, lineno - 1), dropped)
                continue
            yield lineno, text.removeprefix("\ufeff") if lineno == 1 else text


def _jsonl(path: Path, dropped: Dropped | None) -> Iterator[Record]:
    for lineno, line in _lines(path, dropped):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            _raise_or_drop(RecordError(
                where, f"malformed JSON ({exc.msg} at column {exc.colno}); each line must be one "
                "JSON object", "malformed JSON"), dropped)
            continue
        if not isinstance(value, dict):
            _raise_or_drop(RecordError(
                where, f"expected a JSON object, got {json_type(value)}", "not an object"), dropped)
            continue
        yield Record(value, where, str(path))


def _json(path: Path, dropped: Dropped | None) -> Iterator[Record]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise _utf8_error(path, data, exc) from None  # a broken JSON document cannot be skipped around
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            yield from _jsonl(path, dropped)  # JSON Lines saved with a .json suffix
            return
        raise RecordError(f"{path}:{exc.lineno}", f"malformed JSON ({exc.msg} at column {exc.colno})",
                          "malformed JSON") from None
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise RecordError(str(path), "must hold an array of objects (or one object with one array)",
                              "not an array")
        value = lists[0]
    if not isinstance(value, list):
        raise RecordError(str(path), f"must hold an array of objects, got {json_type(value)}", "not an array")
    for i, item in enumerate(value, 1):
        where = f"{path} item {i}"
        if not isinstance(item, dict):
            _raise_or_drop(RecordError(where, f"expected a JSON object, got {json_type(item)}",
                                       "not an object"), dropped)
            continue
        yield Record(item, where, str(path))


def _csv(path: Path, dropped: Dropped | None) -> Iterator[Record]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        err = _utf8_error(path, data, exc)
        if dropped is None:
            raise err from None
        dropped.add(err)
        text = data.decode("utf-8", errors="replace")  # keep the other rows; U+FFFD marks the bad ones
    csv.field_size_limit(1 << 30)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        raise RecordError(f"{path}:1", "has no header row", "no header") from None
    header = [h.strip() for h in header]
    line = reader.line_num
    while True:
        start = line + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line = reader.line_num
            _raise_or_drop(RecordError(f"{path}:{start}", f"malformed CSV ({exc})", "malformed CSV"), dropped)
            continue
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{path}:{start}"
        if "\ufffd" in "".join(row) and dropped is not None:
            continue  # already counted as not UTF-8
        if len(row) != len(header):
            _raise_or_drop(RecordError(
                where, f"has {len(row)} fields but the header has {len(header)}", "wrong field count"), dropped)
            continue
        yield Record(dict(zip(header, row, strict=True)), where, str(path))


def _parquet(path: Path) -> Iterator[Record]:
    require_parquet_support()
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own error types
        raise RecordError(str(path), f"cannot be read as Parquet ({exc})", "malformed Parquet") from None
    row = 0
    for batch in pf.iter_batches(batch_size=4096):
        for item in batch.to_pylist():
            row += 1
            yield Record(item, f"{path} row {row}", str(path))


def _text(path: Path, unit: str, dropped: Dropped | None) -> Iterator[Record]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        if dropped is None or unit == "file":
            _raise_or_drop(_utf8_error(path, data, exc), dropped)
            return
        yield from _text_lines(path, unit, dropped)
        return
    if unit == "file":
        yield Record(text, f"{path}:1", str(path))
    elif unit == "line":
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                yield Record(line, f"{path}:{lineno}", str(path))
    else:
        yield from _paragraphs(path, enumerate(text.splitlines(), 1))


def _text_lines(path: Path, unit: str, dropped: Dropped) -> Iterator[Record]:
    """Line-wise decoding for a text file with bad bytes, dropping only the bad lines."""
    numbered = ((n, line.rstrip("\r\n")) for n, line in _lines(path, dropped))
    if unit == "line":
        for lineno, line in numbered:
            if line.strip():
                yield Record(line, f"{path}:{lineno}", str(path))
    else:
        yield from _paragraphs(path, numbered)


def _paragraphs(path: Path, numbered: Iterator[tuple[int, str]]) -> Iterator[Record]:
    para: list[str] = []
    start = 1
    for lineno, line in numbered:
        if line.strip():
            if not para:
                start = lineno
            para.append(line)
        elif para:
            yield Record("\n".join(para), f"{path}:{start}", str(path))
            para = []
    if para:
        yield Record("\n".join(para), f"{path}:{start}", str(path))


def json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "true/false",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)
