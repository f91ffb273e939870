"""The one base of the errors a user can fix (a flag, a file, a path, the storage).

Every command line catches :class:`UserError` at its boundary and prints its message as one
line instead of a traceback; anything else is a bug and keeps its traceback. A UserError
raised inside Ray (a read task, a Ray Train worker) reaches the driver wrapped in Ray's own
errors, whose text is the remote traceback: :func:`user_error_in` finds it again.
"""

from __future__ import annotations

import sys


class UserError(Exception):
    """A problem in the user's input or environment; the message says where and what to do."""


def user_error_in(exc: BaseException) -> UserError | None:
    """The UserError behind ``exc``: ``exc`` itself, its cause or context, the original
    error of a Ray task error (its ``cause``) or of a failed Ray Train worker (a
    ``WorkerGroupError``'s ``worker_failures``); None when there is none (a bug)."""
    pending: list[object] = [exc]
    seen: set[int] = set()
    while pending:
        error = pending.pop(0)
        if not isinstance(error, BaseException) or id(error) in seen:
            continue
        seen.add(id(error))
        # Ray's task error subclasses the original error's class, but its text is the
        # whole remote traceback; the original is its ``cause``.
        cause = getattr(error, "cause", None)
        if isinstance(error, UserError) and not isinstance(cause, BaseException):
            return error
        failures = getattr(error, "worker_failures", None)
        pending += [cause, error.__cause__, error.__context__,
                    *(failures.values() if isinstance(failures, dict) else ())]
    return None


def print_error(exc: BaseException, code: int = 2) -> int:
    """Print ``error: <message>`` to stderr, one line: the message of the UserError behind
    ``exc`` if any (without the lines Ray's retries append to it); returns the exit code
    to use."""
    message = str(user_error_in(exc) or exc).split("\n", 1)[0]
    print(f"error: {message}", file=sys.stderr)
    return code
