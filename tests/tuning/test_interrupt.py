"""Ctrl-C is seen while Ray Tune's own SIGINT handler takes it (as it does during a
search), without replacing that handler."""

from __future__ import annotations

import os
import signal

from ray_fer.tuning.interrupt import signals_seen


def _like_tunes_handler(taken: list[int]):
    def handler(signum, frame):
        taken.append(signum)

    return handler


def test_a_sigint_taken_by_another_handler_is_seen():
    taken: list[int] = []
    previous = signal.signal(signal.SIGINT, _like_tunes_handler(taken))
    try:
        with signals_seen() as seen:
            assert not seen()
            os.kill(os.getpid(), signal.SIGINT)
            assert taken == [signal.SIGINT]
            assert seen()
        assert seen()  # still known once the search is over
    finally:
        signal.signal(signal.SIGINT, previous)


def test_other_signals_are_not_an_interruption_and_the_wakeup_fd_is_restored():
    taken: list[int] = []
    previous = signal.signal(signal.SIGUSR2, _like_tunes_handler(taken))
    try:
        with signals_seen() as seen:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert taken == [signal.SIGUSR2]
            assert not seen()
        assert signal.set_wakeup_fd(-1) == -1
    finally:
        signal.signal(signal.SIGUSR2, previous)
