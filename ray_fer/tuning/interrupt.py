"""Whether Ctrl-C interrupted a search.

Ray Tune 2.60 handles the first SIGINT (Ctrl-C) of a search itself: it saves the
experiment once more, stops the trials and returns from ``Tuner.fit`` as if the search
had ended, marking the trials it stopped as terminated, like those ASHA stopped. The
signal is seen here without taking it from Tune: Python writes the number of every signal
that reaches a Python handler, Tune's included, to the wakeup file descriptor
(:func:`signal.set_wakeup_fd`). A second Ctrl-C raises KeyboardInterrupt in ``fit``.
"""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Callable, Iterator

#: The signals on which Tune ends a search early (Ctrl-C, and SIGUSR1 where it exists).
STOP_SIGNALS = frozenset({signal.SIGINT, *([signal.SIGUSR1] if hasattr(signal, "SIGUSR1")
                                           else [])})


@contextlib.contextmanager
def signals_seen(signums: frozenset[int] = STOP_SIGNALS) -> Iterator[Callable[[], bool]]:
    """Yields a function that tells whether one of ``signums`` has arrived meanwhile,
    whichever Python handler took it. Outside the main thread, where no signal handler
    runs, it always says False."""
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    try:
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except ValueError:  # not the main thread
        reader.close()
        writer.close()
        yield lambda: False
        return
    seen: set[int] = set()

    def arrived() -> bool:
        if reader.fileno() != -1:  # open: read what arrived since last asked
            with contextlib.suppress(BlockingIOError):
                while chunk := reader.recv(256):
                    seen.update(chunk)
        return bool(seen & set(signums))

    try:
        yield arrived
    finally:
        arrived()  # what came before the end still counts when asked afterwards
        signal.set_wakeup_fd(previous)
        reader.close()
        writer.close()
