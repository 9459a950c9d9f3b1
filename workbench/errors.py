"""Errors meant for people: one sentence, no traceback unless --debug."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """Bad input from the user. The CLI prints the message on one line and exits 2."""

    exit_code = 2


class Cancelled(Exception):
    """Raised inside a stage when the user asked the run to stop."""


def disk_full(exc: BaseException | None) -> BaseException | None:
    """The out-of-space error behind `exc` (ENOSPC or EDQUOT, SQLite's "database or disk is
    full", a Rust writer's "os error 28"), looking through wrapping exceptions; or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        if any(text in str(exc) for text in _FULL_TEXTS):
            return exc
        if is_database_error(exc) and "disk I/O error" in str(exc) and _workspace_full():
            return exc  # SQLite says this when the write-ahead log or its index cannot grow
        exc = exc.__cause__ or exc.__context__
    return None


def is_database_error(exc: BaseException) -> bool:
    return type(exc).__module__ == "sqlite3"


def _workspace_full() -> bool:
    import shutil

    from workbench import locations

    try:
        return shutil.disk_usage(locations.home()).free < 1 << 20
    except OSError:
        return False


_FULL_TEXTS = ("database or disk is full", "No space left on device", "os error 28", "Disk quota exceeded")


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Name `path` in an out-of-space error raised inside the block: torch's and Rust's writers
    only say that a write failed, not where."""
    try:
        yield
    except Exception as exc:
        full = disk_full(exc)
        if full is None or getattr(full, "filename", None):
            raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
