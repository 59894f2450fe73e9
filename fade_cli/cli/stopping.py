"""Stopping early the same way whatever asks: Ctrl-C, SIGTERM, or a reader that closed stdout.

The `fade` group installs :func:`sigterm_as_interrupt` around every command, so a
command that saves its finished work on KeyboardInterrupt does the same on SIGTERM
(raised as :class:`~fade_cli.cli.exit_codes.Terminated`, a KeyboardInterrupt),
model loading included. :func:`stop_exit_code` then tells the three apart.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Iterator

from fade_cli.cli.exit_codes import Terminated

STOPS = (KeyboardInterrupt, BrokenPipeError)  # what a command catches to save its work and stop


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` in the main thread, as SIGINT raises KeyboardInterrupt."""
    def handler(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (fade used as a library): leave signals alone
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def silence_stdout() -> None:
    """After a reader closed stdout: send what is still buffered to /dev/null, so exiting is quiet."""
    silence_stream(sys.stdout)


def silence_stream(stream) -> None:
    """After a write to ``stream`` (stdout, stderr) failed: what is still buffered, and what follows, go to /dev/null."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
