"""Stopping early the same way whatever asks: Ctrl-C, SIGTERM, SIGHUP, or a reader that closed stdout.

The `fade` group installs :func:`sigterm_as_interrupt` around every command, so a
command that saves its finished work on KeyboardInterrupt does the same on SIGTERM
(raised as :class:`~fade_cli.cli.exit_codes.Terminated`, a KeyboardInterrupt),
model loading included. SIGHUP (the terminal or SSH session closed) is taken as
SIGTERM. :func:`stop_exit_code` then tells the three apart.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Iterator

from fade_cli.cli.exit_codes import Terminated

STOPS = (KeyboardInterrupt, BrokenPipeError)  # what a command catches to save its work and stop
# A closed terminal (SIGHUP) would kill a run without saving: it stops like SIGTERM. (Windows has no SIGHUP.)
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread, as SIGINT raises
    KeyboardInterrupt."""
    def handler(signum, frame):
        raise Terminated()

    previous = {}
    try:
        for signum in _STOP_SIGNALS:
            previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread (fade used as a library): leave signals alone
        pass
    try:
        yield
    finally:
        for signum, action in previous.items():
            signal.signal(signum, action)


def silence_stdout() -> None:
    """After a reader closed stdout: send what is still buffered to /dev/null, so exiting is quiet."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
