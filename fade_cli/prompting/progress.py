"""How a long-running generator reports progress and warnings without knowing who listens.

The command line installs a reporter that draws a progress bar on stderr;
library callers get Python warnings and no bar. A generator only calls
:func:`current_reporter` and uses the three methods of :class:`ProgressReporter`.
"""
from __future__ import annotations

import contextlib
import contextvars
import warnings
from typing import Iterator, Protocol


class ProgressReporter(Protocol):
    def start(self, total: int, description: str) -> None:
        """A task of ``total`` steps begins."""

    def advance(self, steps: int = 1) -> None:
        """``steps`` more steps are done."""

    def warn(self, message: str) -> None:
        """Something the user should know; the result is still usable."""


class WarningsReporter:
    """The default: no progress, warnings through :mod:`warnings`."""

    def start(self, total: int, description: str) -> None:
        return None

    def advance(self, steps: int = 1) -> None:
        return None

    def warn(self, message: str) -> None:
        warnings.warn(message, stacklevel=3)


_REPORTER: contextvars.ContextVar[ProgressReporter] = contextvars.ContextVar("fade_prompt_reporter",
                                                                            default=WarningsReporter())


def current_reporter() -> ProgressReporter:
    return _REPORTER.get()


@contextlib.contextmanager
def reporting_to(reporter: ProgressReporter) -> Iterator[ProgressReporter]:
    """Send the progress of generators run inside this block to ``reporter``."""
    token = _REPORTER.set(reporter)
    try:
        yield reporter
    finally:
        _REPORTER.reset(token)
