"""The events a run emits, as JSON lines in `runs/<id>/events.jsonl`.

Every event is one JSON object with `type` and `time` (Unix seconds). Types:

- `started`   {attempt, pid, resume_from}
- `progress`  {step, total, unit, desc, rate, eta_s, elapsed_s}
- `metric`    {step, values: {name: number}}
- `log`       {level, message}
- `checkpoint`{step, path}
- `artifact`  {id, kind, name, path}
- `done`      {result}
- `failed`    {error, user_error}
- `cancelled` {checkpoint}

Because events live on disk, a run outlives the face that started it and any face can follow it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workbench.errors import writing

TERMINAL = ("done", "failed", "cancelled")


class EventWriter:
    """Appends events; each line is written whole, so readers never see half a line.

    A write that fails (a full disk) is cut back off, so the next event, such as the `failed`
    that says why, starts on a line of its own.
    """

    def __init__(self, path: Path):
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        event = {"type": type, "time": round(time.time(), 3), **fields}
        data = (json.dumps(event, default=_jsonable) + "\n").encode("utf-8")
        start = os.fstat(self._fd).st_size
        try:
            with writing(self.path):
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
                if type in TERMINAL:
                    os.fsync(self._fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            raise
        return event

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.endswith("\n"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return out


class EventTail:
    """Incremental reader: `poll()` returns the events appended since the last call."""

    def __init__(self, path: Path, offset: int = 0):
        self.path = path
        self.offset = offset
        self._partial = ""

    def poll(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
                self.offset = fh.tell()
        except FileNotFoundError:
            return []
        text = self._partial + chunk
        lines = text.split("\n")
        self._partial = lines.pop()  # an unfinished line waits for its newline
        events = []
        for line in lines:
            if line.strip():
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return events


def follow(path: Path, is_alive: Any, poll_s: float = 0.1, offset: int = 0) -> Iterator[dict[str, Any]]:
    """Yield events until the current attempt ends (a terminal event) or the worker is gone.

    `is_alive()` is asked when no new events arrive; when it says no, remaining lines are read
    once more and the generator stops. `offset` skips what earlier attempts wrote.
    """
    tail = EventTail(path, offset)
    while True:
        events = tail.poll()
        yield from events
        if events and events[-1]["type"] in TERMINAL:
            # A terminal event may be followed by a resume's `started`; stop at the last one seen.
            more = tail.poll()
            if not more:
                return
            yield from more
            if more[-1]["type"] in TERMINAL:
                return
            continue
        if not events:
            if not is_alive():
                yield from tail.poll()
                return
            time.sleep(poll_s)
