"""The one row-ordering helper of local and Ray runs (fade_cli.runs.row_order.RowsInOrder)."""
from __future__ import annotations

from concurrent.futures import Future

import pytest

from fade_cli.io.outputs import ResultRow
from fade_cli.runs.row_order import RowsInOrder, finished


class Sink:
    def __init__(self, fail_on=None):
        self.rows, self.fail_on = [], fail_on

    def add(self, row):
        if row.path == self.fail_on:
            raise OSError("disk full")
        self.rows.append(row.path)


def row(index):
    return finished(ResultRow(path=f"img{index}.png"))


def test_rows_in_any_order_and_twice_are_passed_on_once_in_order():
    sink, seen = Sink(), []
    rows = RowsInOrder(sink, lambda r: seen.append(r.path))
    for index in (2, 0, 2, 1, 0, 3):
        rows.put(index, row(index))
        rows.hand_over()
    assert sink.rows == seen == [f"img{i}.png" for i in range(4)] and rows.passed == 4


def test_salvage_passes_on_the_rows_past_a_missing_one_in_order():
    sink = Sink()
    rows = RowsInOrder(sink, None)
    for index in (4, 0, 2):
        rows.put(index, row(index))
        rows.hand_over()
    rows.salvage()
    assert sink.rows == ["img0.png", "img2.png", "img4.png"]


def test_nothing_is_passed_on_past_a_failed_row():
    sink = Sink(fail_on="img1.png")
    rows = RowsInOrder(sink, None)
    for index in (1, 2):
        rows.put(index, row(index))
    later = Future()
    rows.put(3, later)
    rows.put(0, row(0))
    with pytest.raises(OSError):
        rows.hand_over()
    rows.salvage()
    assert sink.rows == ["img0.png"] and later.cancelled()


def test_salvage_stops_at_a_row_whose_work_failed():
    sink = Sink()
    rows = RowsInOrder(sink, None)
    broken = Future()
    broken.set_exception(OSError("write failed"))
    rows.put(0, row(0))
    rows.put(1, broken)
    rows.put(2, row(2))
    rows.salvage()
    assert sink.rows == ["img0.png"]


def test_make_room_passes_rows_on_until_one_more_fits_the_bounds():
    sink = Sink()
    rows = RowsInOrder(sink, None, capacity=2, pixel_budget=100)
    rows.put(0, row(0), pixels=60)
    rows.make_room(30)
    assert sink.rows == []
    rows.put(1, row(1), pixels=30)
    rows.make_room(10)  # two rows wait: at capacity
    assert sink.rows == ["img0.png"]
    rows.put(2, row(2), pixels=10)
    rows.make_room(500)  # larger than the budget alone: waits for every row before it, then fits
    assert sink.rows == ["img0.png", "img1.png", "img2.png"] and rows.waiting_pixels == 0
