"""The dynamic batcher of `fade serve`, with a stand-in scoring function (no model needed)."""
from __future__ import annotations

import threading
import time

import pytest

from fade_cli.runs.serve.batcher import Batcher, NotRunning, QueueFull


class Recorder:
    """Scores by doubling; records each batch; can hold the worker until released."""

    def __init__(self, hold: bool = False):
        self.batches: list[tuple[str, list]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        if not hold:
            self.gate.set()

    def __call__(self, bank, inputs):
        self.entered.set()
        assert self.gate.wait(10)
        self.batches.append((bank, list(inputs)))
        return [2 * x for x in inputs]


def started(score, **kwargs) -> Batcher:
    settings = dict(max_batch=4, max_wait_s=0.5, max_queue=16) | kwargs
    batcher = Batcher(score, **settings)
    batcher.start()
    return batcher


def test_jobs_that_arrive_together_share_one_batch_per_bank():
    score = Recorder()
    batcher = started(score)
    jobs = batcher.submit("a", [1, 2]) + batcher.submit("b", [10]) + batcher.submit("a", [3])
    assert [job.future.result(5) for job in jobs] == [2, 4, 20, 6]
    assert batcher.stop(5)
    assert sorted(score.batches) == [("a", [1, 2, 3]), ("b", [10])]
    assert {job.batch_size for job in jobs[:2]} == {3}


def test_a_batch_never_holds_more_than_max_batch():
    score = Recorder()
    batcher = started(score, max_batch=2, max_wait_s=0.2)
    jobs = batcher.submit("a", [1, 2, 3, 4, 5])
    assert [job.future.result(5) for job in jobs] == [2, 4, 6, 8, 10]
    batcher.stop(5)
    assert [len(inputs) for _, inputs in score.batches] == [2, 2, 1]


def test_a_lone_job_waits_at_most_max_wait():
    score = Recorder()
    batcher = started(score, max_wait_s=0.05)
    began = time.monotonic()
    [job] = batcher.submit("a", [1])
    assert job.future.result(5) == 2
    assert time.monotonic() - began < 2
    batcher.stop(5)


def test_a_full_queue_refuses_all_of_a_request_and_nothing_else():
    score = Recorder(hold=True)
    batcher = started(score, max_batch=1, max_wait_s=0, max_queue=3)
    first = batcher.submit("a", [1])
    assert score.entered.wait(5)  # the worker holds job 1: the queue is empty again
    queued = batcher.submit("a", [2, 3])
    with pytest.raises(QueueFull):
        batcher.submit("a", [4, 5])
    assert batcher.depth == 2
    queued += batcher.submit("a", [6])
    score.gate.set()
    assert [job.future.result(5) for job in first + queued] == [2, 4, 6, 12]
    batcher.stop(5)


def test_a_cancelled_job_is_never_scored():
    score = Recorder(hold=True)
    batcher = started(score, max_batch=1, max_wait_s=0)
    batcher.submit("a", [1])
    assert score.entered.wait(5)
    [given_up] = batcher.submit("a", [2])
    [kept] = batcher.submit("a", [3])
    assert given_up.future.cancel()
    score.gate.set()
    assert kept.future.result(5) == 6
    batcher.stop(5)
    assert [inputs for _, inputs in score.batches] == [[1], [3]]


def test_a_failed_batch_fails_its_jobs_and_the_worker_goes_on():
    calls = []

    def score(bank, inputs):
        calls.append(inputs)
        if inputs == [1]:
            raise RuntimeError("out of memory")
        return inputs

    batcher = started(score, max_batch=1, max_wait_s=0)
    [bad] = batcher.submit("a", [1])
    with pytest.raises(RuntimeError, match="out of memory"):
        bad.future.result(5)
    [good] = batcher.submit("a", [7])
    assert good.future.result(5) == 7
    batcher.stop(5)


def test_stop_scores_what_is_queued_then_refuses_new_work():
    score = Recorder(hold=True)
    batcher = started(score, max_batch=1, max_wait_s=0)
    jobs = batcher.submit("a", [1, 2, 3])
    batcher.refuse_new_work()
    with pytest.raises(NotRunning):
        batcher.submit("a", [4])
    score.gate.set()
    assert batcher.stop(5)
    assert [job.future.result(0) for job in jobs] == [2, 4, 6]


def test_metrics_hooks_see_batch_sizes_and_depth():
    sizes, depths = [], []
    batcher = started(Recorder(), max_batch=8, max_wait_s=0.3, observe_batch=sizes.append, observe_depth=depths.append)
    jobs = batcher.submit("a", [1, 2, 3])
    [job.future.result(5) for job in jobs]
    batcher.stop(5)
    assert sizes == [3]
    assert depths[0] == 3 and depths[-1] == 0
