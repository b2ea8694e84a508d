"""Errors that mean "the input was wrong", as opposed to a bug: every front end prints them as one sentence and
exits with code 2 (`exit_status`)."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(ValueError):
    """Bad input from the user: an unknown name, a wrong path, an option out of range."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read, or that does not fit the model."""


def exit_status(prog: str, command: Callable[..., object], *args) -> int:
    """Run a front end's `command(*args)`: 0 when it ends, 2 and one line `prog: error: ...` for a UserError.
    Anything else is a bug and keeps its traceback. Every command-line entry point goes through here."""
    try:
        command(*args)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0
