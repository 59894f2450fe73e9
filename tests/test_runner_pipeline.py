"""run_detection's pipeline: images decoded in parallel, files written in writer threads, rows in file order.

The engine here is a stand-in with the preprocessing and detection methods the
runner calls, so the tests exercise the scheduling alone, quickly and exactly.
"""
import threading
import time

import numpy as np
import pytest
from PIL import Image

from fade_cli.bank.calibration import Thresholds
from fade_cli.runs import runner
from fade_cli.engine.result import Detection
from fade_cli.io.atomic import OutputError
from fade_cli.io.images import ImageFile

BARRIER_TIMEOUT_S = 10


class StandInEngine:
    """Scores image k (in call order) as k / 100, with a flat map of that value."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.scored = 0
        self.batches: list[int] = []

    def resize_for_input(self, image):
        return {8: np.asarray(image.resize((8, 8)))}

    def batch_inputs(self, resized):
        return {8: np.stack([one[8] for one in resized])}

    def detect_prepared(self, pixels_by_size):
        count = len(pixels_by_size[8])
        self.batches.append(count)
        detections = []
        for _ in range(count):
            value = self.scored / 100
            grid = np.full((4, 4), value, dtype=np.float32)
            detections.append(Detection(value, value, None, grid, grid, None, grid))
            self.scored += 1
        return detections


class RecordingSink:
    """A result sink that records who called it, from which thread, and can slow or fail writes."""

    def __init__(self, writer_threads: int, write_seconds=None, fail_on=None, barrier=None):
        self.writer_threads = writer_threads
        self.write_seconds = write_seconds or {}
        self.fail_on = fail_on
        self.barrier = barrier
        self.added: list[str] = []
        self.add_threads: set[int] = set()
        self.active = 0
        self.most_active = 0
        self.lock = threading.Lock()

    def write_image(self, relative, image, detection):
        with self.lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            if self.barrier is not None:
                self.barrier.wait(timeout=BARRIER_TIMEOUT_S)
            time.sleep(self.write_seconds.get(relative, 0.0))
            if relative == self.fail_on:
                raise OutputError(f"cannot write {relative}: no space left on device")
            return f"maps/{relative}.npy", None
        finally:
            with self.lock:
                self.active -= 1

    def write_mask(self, relative, mask_hw):
        return f"masks/{relative}.png"

    def add(self, row):
        self.add_threads.add(threading.get_ident())
        self.added.append(row.path)


@pytest.fixture
def image_files(tmp_path):
    files = []
    for index in range(7):
        path = tmp_path / f"{index}.png"
        Image.new("RGB", (12, 10), (index * 30, 0, 0)).save(path)
        files.append(ImageFile(path, path.name))
    return files


def test_rows_keep_file_order_when_later_writes_finish_first(image_files):
    slow_first = {"0.png": 0.3, "1.png": 0.2, "2.png": 0.1}
    sink = RecordingSink(writer_threads=4, write_seconds=slow_first)
    seen = []

    runner.run_detection(StandInEngine(batch_size=3), image_files, sink, Thresholds(image=0.03), on_row=seen.append)

    names = [f.relative for f in image_files]
    assert sink.added == names and [row.path for row in seen] == names
    assert [row.verdict for row in seen] == ["OK"] * 3 + ["NG"] * 4
    assert [row.score for row in seen] == pytest.approx([k / 100 for k in range(7)])
    assert all(row.map_path == f"maps/{row.path}.npy" for row in seen)
    assert sink.add_threads == {threading.get_ident()}


def test_writes_of_different_images_run_at_the_same_time(image_files):
    # Each write waits for a second one to arrive: with one writer at a time this would time out.
    sink = RecordingSink(writer_threads=2, barrier=threading.Barrier(2))

    runner.run_detection(StandInEngine(batch_size=2), image_files[:4], sink)

    assert sink.added == [f.relative for f in image_files[:4]]
    assert sink.most_active == 2


def test_one_writer_thread_means_one_write_at_a_time(image_files):
    sink = RecordingSink(writer_threads=1, write_seconds={"0.png": 0.05, "1.png": 0.05})

    runner.run_detection(StandInEngine(batch_size=4), image_files, sink)

    assert sink.most_active == 1
    assert sink.added == [f.relative for f in image_files]


@pytest.mark.parametrize("budget, most_at_once", [(250, 2), (50, 1)])
def test_large_images_are_written_fewer_at_a_time(image_files, monkeypatch, budget, most_at_once):
    # Each image is 12 x 10 = 120 pixels: a budget of 250 lets two be written at once; one larger
    # than the budget is still written, alone. Writes take 0.2 s, so two let through together overlap.
    monkeypatch.setattr(runner, "WRITE_PIXEL_BUDGET", budget)
    sink = RecordingSink(writer_threads=4, write_seconds={f.relative: 0.2 for f in image_files})

    runner.run_detection(StandInEngine(batch_size=4), image_files, sink)

    assert sink.most_active == most_at_once
    assert sink.added == [f.relative for f in image_files]


def test_a_failed_write_stops_the_run_with_earlier_rows_recorded_and_none_after(image_files):
    sink = RecordingSink(writer_threads=4, fail_on="3.png", write_seconds={"2.png": 0.1})

    with pytest.raises(OutputError, match="no space left"):
        runner.run_detection(StandInEngine(batch_size=2), image_files, sink)

    assert sink.added == ["0.png", "1.png", "2.png"]


def test_interrupt_keeps_the_rows_of_every_image_already_scored(image_files):
    engine = StandInEngine(batch_size=2)
    real_detect = engine.detect_prepared

    def interrupted_at_third_batch(pixels_by_size):
        if len(engine.batches) == 2:
            raise KeyboardInterrupt
        return real_detect(pixels_by_size)

    engine.detect_prepared = interrupted_at_third_batch
    # Three slow writes fill the three writer threads: 3.png has not started when the interrupt comes.
    sink = RecordingSink(writer_threads=3, write_seconds={"0.png": 0.2, "1.png": 0.2, "2.png": 0.2})

    with pytest.raises(KeyboardInterrupt):
        runner.run_detection(engine, image_files, sink)

    assert sink.added == ["0.png", "1.png", "2.png", "3.png"]


def test_undecodable_file_gets_an_error_row_in_its_place(image_files):
    broken = image_files[2].path
    broken.write_bytes(b"not an image")
    sink = RecordingSink(writer_threads=2)
    seen = []

    runner.run_detection(StandInEngine(batch_size=3), image_files, sink, on_row=seen.append)

    assert sink.added == [f.relative for f in image_files]
    assert seen[2].error and seen[2].score is None
    assert [row.score for row in seen if not row.error] == pytest.approx([k / 100 for k in range(6)])


def test_images_are_decoded_in_parallel_beyond_one_thread_per_batch(image_files, monkeypatch):
    real_load = runner.load_image
    # Three decodes must meet: more than the two batches decoded ahead could give with a thread each.
    arrived = threading.Barrier(3)

    def load_in_threes(path):
        arrived.wait(timeout=BARRIER_TIMEOUT_S)
        return real_load(path)

    monkeypatch.setattr(runner, "DECODE_THREADS", 3)
    monkeypatch.setattr(runner, "load_image", load_in_threes)
    sink = RecordingSink(writer_threads=1)

    runner.run_detection(StandInEngine(batch_size=3), image_files[:6], sink)

    assert sink.added == [f.relative for f in image_files[:6]]
