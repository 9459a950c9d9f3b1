"""Errors meant for people: one sentence, no traceback unless --debug."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user. The CLI prints the message on one line and exits 2."""

    exit_code = 2


class Cancelled(Exception):
    """Raised inside a stage when the user asked the run to stop."""
