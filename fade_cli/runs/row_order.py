"""Rows passed on in file order, however they come in: a local run's writer threads, a Ray run's workers."""
from __future__ import annotations

from concurrent.futures import Future
from typing import Callable, Optional, Protocol

from fade_cli.io.outputs import ResultRow


class RowSink(Protocol):
    """Where rows go, in file order (a run's ``fade_cli.runs.runner.ResultSink``)."""

    def add(self, row: ResultRow) -> None: ...


def finished(row: ResultRow) -> Future:
    """A row that needs no more work, as the future :meth:`RowsInOrder.put` takes."""
    future: Future = Future()
    future.set_result(row)
    return future


class RowsInOrder:
    """Rows handed to the sink, then the callback, in index (file) order, each once.

    A row comes in as a future: a local run puts each image's row in order, as a writer thread starts on its
    files; a Ray run puts rows already done, in whatever order its workers send them back, some twice after
    a batch Ray ran again (the first one counts). Either way a row is passed on once every row before it has
    been, and after a row that failed (its work, the sink or the callback raised) no later row is.

    Work waiting here may hold decoded images, so a local run bounds it: at most ``capacity`` rows, and at most
    ``pixel_budget`` pixels unless a single image is larger (:meth:`make_room`). A slow disk then slows the
    run down instead of filling memory, and a folder of 40-megapixel photos is written one photo at a time.
    """

    def __init__(self, output: Optional[RowSink], on_row: Optional[Callable[[ResultRow], None]],
                 capacity: Optional[int] = None, pixel_budget: Optional[int] = None):
        self.output = output
        self.on_row = on_row
        self.capacity = capacity
        self.pixel_budget = pixel_budget
        self.waiting: dict[int, tuple[Future, int]] = {}
        self.waiting_pixels = 0
        self.passed = 0  # rows passed on: the index of the next one
        self.failed = False

    def put(self, index: int, row: Future, pixels: int = 0) -> None:
        """The row of image ``index`` (its future), holding ``pixels`` pixels until it is passed on; a row of an
        index already received is dropped."""
        if index < self.passed or index in self.waiting:
            return
        self.waiting[index] = (row, pixels)
        self.waiting_pixels += pixels

    def make_room(self, pixels: int) -> None:
        """Wait (passing rows on) until a row of ``pixels`` more fits the bounds. Only for rows put in order:
        the next row to pass on must be waiting here."""
        while self.waiting and self._full(pixels):
            self._pass_on(self.passed)

    def hand_over(self, wait_for_all: bool = False) -> None:
        """Pass on the finished rows at the front (with ``wait_for_all``, every row up to a missing one)."""
        while self.passed in self.waiting and (wait_for_all or self.waiting[self.passed][0].done()):
            self._pass_on(self.passed)

    def salvage(self) -> None:
        """After an interruption: finish and pass on, in order, every row received, past a missing one too
        (``--resume`` scores the missing ones), up to one that failed.

        After a row that failed, nothing more is passed on and work not started is dropped.
        """
        if self.failed:
            for row, _ in self.waiting.values():
                row.cancel()
            return
        for index in sorted(self.waiting):
            if self.waiting[index][0].exception() is not None:  # exception() waits for the row
                return
            self._pass_on(index)

    def _full(self, pixels: int) -> bool:
        return ((self.capacity is not None and len(self.waiting) >= self.capacity)
                or (self.pixel_budget is not None and self.waiting_pixels + pixels > self.pixel_budget))

    def _pass_on(self, index: int) -> None:
        future, pixels = self.waiting.pop(index)
        self.waiting_pixels -= pixels
        self.passed = index + 1
        try:
            row = future.result()
            if self.output is not None:
                self.output.add(row)
            if self.on_row is not None:
                self.on_row(row)
        except BaseException:
            self.failed = True  # no later row may be recorded past one that was not
            raise
