"""The one base of the errors a user can fix (a flag, a file, a path, the storage).

Every command line catches :class:`UserError` at its boundary and prints its message as one
line instead of a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys


class UserError(Exception):
    """A problem in the user's input or environment; the message says where and what to do."""


def print_error(exc: Exception, code: int = 2) -> int:
    """Print ``error: <message>`` to stderr; returns the exit code to use."""
    print(f"error: {exc}", file=sys.stderr)
    return code
