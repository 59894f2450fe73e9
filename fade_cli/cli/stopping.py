"""Stopping early the same way whatever asks: Ctrl-C, SIGTERM, SIGHUP, or stdout/stderr that cannot be written.

The `fade` group installs :func:`sigterm_as_interrupt` around every command, so a
command that saves its finished work on KeyboardInterrupt does the same on SIGTERM
(raised as :class:`~fade_cli.cli.exit_codes.Terminated`, a KeyboardInterrupt),
model loading included. SIGHUP (the terminal or SSH session closed) is taken as
SIGTERM. :func:`stop_exit_code` then tells the three apart.

The console entry point also guards stdout and stderr (:func:`guard_standard_streams`):
a write that fails there (a reader that closed the pipe, a full disk, an I/O error)
raises :class:`OutputStreamFailed`, a BrokenPipeError, so every command stops on it
as on a closed pipe (exit 141, finished results saved), wherever the write came
from: click.echo, rich, a library's print, or Python's last flush at exit.
"""
from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
from typing import Iterator, Optional, TextIO

from fade_cli.cli.exit_codes import Terminated

# What a command catches to save its work and stop (OutputStreamFailed is a BrokenPipeError).
STOPS = (KeyboardInterrupt, BrokenPipeError)
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


class OutputStreamFailed(BrokenPipeError):
    """stdout or stderr cannot be written (closed, full, broken): the run stops as on a closed pipe.

    Its ``errno`` is left unset (``reason`` holds the OS's): click takes an EPIPE for its own, as exit 1.
    """

    def __init__(self, stream: str, reason: OSError):
        what = "was closed" if isinstance(reason, BrokenPipeError) else f"cannot be written ({reason.strerror or reason})"
        super().__init__(f"{stream} {what}")
        self.stream = stream
        self.reason = reason


def silence_stdout(stop: Optional[BaseException] = None) -> None:
    """After a reader closed stdout: send what is still buffered to /dev/null, so exiting is quiet.

    A guarded stream that failed (``stop``, an :class:`OutputStreamFailed`) has already silenced itself.
    """
    if not isinstance(stop, OutputStreamFailed):
        silence_stream(sys.stdout)


def silence_stream(stream) -> None:
    """After a write to ``stream`` (stdout, stderr) failed: what is still buffered, and what follows, go to /dev/null."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        _silence(stream.fileno())


def _silence(fd: int) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class _GuardedFile(io.FileIO):
    """The file under a guarded stream: its first failed write silences it and raises OutputStreamFailed."""

    label = "stdout"

    def write(self, data) -> Optional[int]:
        try:
            return super().write(data)
        except BlockingIOError:
            raise
        except OSError as exc:
            # What stays buffered, and every later message, goes to /dev/null: stopping must not fail again.
            with contextlib.suppress(OSError):
                _silence(self.fileno())
            raise OutputStreamFailed(self.label, exc) from exc


def guard_standard_streams() -> None:
    """Replace sys.stdout and sys.stderr by the same streams over a :class:`_GuardedFile` (console entry only)."""
    sys.stdout = _guarded(sys.stdout, "stdout")
    sys.stderr = _guarded(sys.stderr, "stderr")


def _guarded(stream: Optional[TextIO], label: str) -> Optional[TextIO]:
    try:
        fd = stream.fileno()
        stream.flush()
    except (AttributeError, OSError, ValueError):  # no stream, or not a file (captured): left as it is
        return stream
    raw = _GuardedFile(fd, "w", closefd=False)
    raw.label = label
    return io.TextIOWrapper(io.BufferedWriter(raw), encoding=stream.encoding, errors=stream.errors,
                            line_buffering=stream.line_buffering, write_through=getattr(stream, "write_through", False))


def flush_standard_streams() -> bool:
    """Flush stdout and stderr before exiting (what Python would do last, out of any command's reach);
    False when one of them cannot be written."""
    written = True
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            written = False
    return written
