"""The inspection service: the banks it serves, and one request's path from bytes to result rows.

Decoding and resizing run in a thread pool, the forward pass in the batcher's one
worker, and the row is built by :func:`fade_cli.runs.runner.finish_row`: the function that
builds the rows of `fade detect`, so a served row is the results.jsonl row of
`fade detect` for the same image and bank (scores bit-equal on the CPU: an image's
score does not depend on the batch it shared, see ``engine.text.abnormal_probability``).
"""
from __future__ import annotations

import asyncio
import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional, TypeVar

import numpy as np
from PIL import Image

from fade_cli.bank.calibration import Thresholds
from fade_cli.engine.detector import FadeEngine
from fade_cli.engine.result import Detection
from fade_cli.io.heatmap import overlay, upsample_map
from fade_cli.io.images import ImageFile, decode_image_bytes
from fade_cli.io.outputs import PNG_COMPRESS_LEVEL, ResultRow
from fade_cli.io.roi import FrameRegion
from fade_cli.runs.runner import DECODE_THREADS, NG, finish_row, in_region, regions_of_engine, score_prepared
from fade_cli.runs.serve.admission import PixelBudget, TooLarge, declared_pixels
from fade_cli.runs.serve.archive import Archive
from fade_cli.runs.serve.batcher import Batcher, Job
from fade_cli.runs.serve.metrics import ServeMetrics

STARTING, READY, DRAINING, FAILED = "starting", "ready", "draining", "failed"
T = TypeVar("T")


@dataclass
class ServedBank:
    """One bank the service scores with: its engine (a model shared with banks of the same model) and thresholds."""

    name: str
    engine: FadeEngine
    thresholds: Thresholds
    source: str

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/banks`` says about it."""
        config = self.engine.config
        return {
            "name": self.name,
            "class": config.class_name,
            "model": self.engine.loaded.identity,
            "thresholds": asdict(self.thresholds),  # as a bank file records them
            "references": self.engine.reference_count,
            "scales": list(config.seg_sizes),
            "cls_size": config.cls_size,
        }


@dataclass
class Upload:
    """An image as the client sent it; ``label`` (its file name, if any) is only ever a label, never a path."""

    label: str
    data: bytes


@dataclass
class Prepared:
    upload: Upload
    image: Image.Image
    inputs: dict[int, np.ndarray]
    decode_s: float
    region: Optional[FrameRegion] = None  # the bank's ROI on this image (what the model saw is cut to it)


@dataclass
class ServiceSettings:
    max_batch: Optional[int] = None  # None: the engines' batch size (8 on a GPU, 1 on a CPU, or --batch-size)
    max_wait_s: float = 0.005
    max_queue: int = 64
    timeout_s: float = 30.0
    drain_timeout_s: Optional[float] = None  # how long a stop waits for the worker (a model still loading)
    max_pixels: Optional[int] = None  # larger uploads are refused from their header (a small PNG can hold 400 MP)
    max_pixels_in_flight: Optional[int] = None  # decoded pixels of all requests at once; None: unbounded


class UnknownBank(LookupError):
    """No bank of that name is served."""


class BankNotNamed(LookupError):
    """Several banks are served and the request named none."""


class TimedOut(Exception):
    """The model did not answer within the request timeout."""


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


class Cut(Exception):
    """The service stopped (its drain timeout passed) before the request was answered."""


@dataclass
class Extras:
    """What a request asked for besides the row."""

    heatmap_png: bool = False
    map_npy: bool = False


@dataclass
class InspectionService:
    """Loads the banks in the batcher's worker (which then owns the model), warms up, then scores requests.

    ``state`` is ``starting`` until the banks are loaded and one forward pass has run,
    then ``ready``; ``draining`` once a stop was asked for; ``failed`` if loading failed
    (``failure`` says why, and ``on_failure`` is called so the server can exit).
    :meth:`request_stop` asks the server to drain and stop (``on_stop_request``) as a
    stop signal does; :meth:`cut` ends the drain: the requests not answered by then
    get :class:`Cut`, and ``cut_requests`` counts them.
    """

    load_banks: Callable[[], list[ServedBank]]
    settings: ServiceSettings = field(default_factory=ServiceSettings)
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    archive: Optional[Archive] = None
    on_failure: Callable[[BaseException], None] = lambda exc: None
    on_ready: Callable[[], None] = lambda: None
    on_stop_request: Callable[[], None] = lambda: None

    def __post_init__(self) -> None:
        self.state = STARTING
        self.failure: Optional[BaseException] = None
        self.cut_requests = 0
        self.was_ready = False
        self._cut: Optional[asyncio.Event] = None  # made in the event loop that serves the requests
        self.banks: dict[str, ServedBank] = {}
        self.batcher = Batcher(self._score_batch, self.settings.max_batch or 1, self.settings.max_wait_s,
                               self.settings.max_queue, observe_batch=self.metrics.batch_size.observe,
                               observe_depth=self.metrics.queue_depth.set)
        self.pixels = PixelBudget(self.settings.max_pixels_in_flight)
        self._decoders = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="fade-decode")
        # One archive writer: rows are appended in the order requests finish, one whole line at a time.
        self._archiver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fade-archive")

    # --- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.batcher.start(before=self._load_and_warm_up)

    def drain(self) -> None:
        """Stop taking requests (readiness turns 503); what is queued is still answered."""
        if self.state in (STARTING, READY):  # a stop while the model loads: it never turns ready
            self.state = DRAINING
        self.metrics.ready.set(0)
        self.batcher.refuse_new_work()

    def request_stop(self) -> None:
        """Drain and stop the server, as a stop signal would (callable from any thread)."""
        self.drain()
        self.on_stop_request()

    def cut(self) -> None:
        """The drain timeout passed (call in the event loop): what is not answered yet gets :class:`Cut`."""
        self.drain()
        if self._cut is None:
            self._cut = asyncio.Event()
        self._cut.set()
        self.batcher.cancel_queued()

    async def unless_cut(self, work: Awaitable[T]) -> T:
        """``work``'s result, or :class:`Cut` when the drain timeout passes first (``work`` is then cancelled).

        A request whose rows are being archived when the cut comes is still answered: its
        row is in the archive, so its client must get it.
        """
        if self._cut is None:
            self._cut = asyncio.Event()
        task = asyncio.ensure_future(work)
        cut = asyncio.ensure_future(self._cut.wait())
        try:
            await asyncio.wait({task, cut}, return_when=asyncio.FIRST_COMPLETED)
            task.cancel()  # nothing when it is done already
            return await task
        except asyncio.CancelledError:  # cut, or the server gave up on the request: either way unanswered
            task.cancel()
            self.cut_requests += 1
            if not self._cut.is_set():
                raise
            raise Cut(f"the service stopped before this request was answered (drain timeout of "
                      f"{self.settings.drain_timeout_s:g} s)") from None
        finally:
            cut.cancel()

    def stop(self, timeout_s: Optional[float] = None) -> bool:
        """After the server's drain: finish the queue and stop the worker and the pools.

        False when the worker was still busy after ``timeout_s`` (default: the settings'
        drain timeout; none while the model loads: a stop does not wait for a load). A
        process must then end without Python's shutdown (``os._exit``): torch aborts a
        process whose interpreter ends while a thread is inside it.
        """
        self.drain()
        if timeout_s is None:
            timeout_s = self.settings.drain_timeout_s if self.was_ready else 0
        finished = self.batcher.stop(timeout_s)
        self._decoders.shutdown(wait=False, cancel_futures=True)
        self._archiver.shutdown(wait=True)
        return finished

    def _load_and_warm_up(self) -> None:
        try:
            banks = self.load_banks()
            for served in banks:
                # The first forward pass at each size allocates and picks kernels: done before /readyz says ready.
                served.engine.detect([Image.new("RGB", (served.engine.config.cls_size,) * 2)])
        except BaseException as exc:  # reported by the server, which then exits with the error's code
            self.state, self.failure = FAILED, exc
            self.batcher.refuse_new_work()
            self.on_failure(exc)
            return
        self.banks = {served.name: served for served in banks}
        if self.settings.max_batch is None:
            self.batcher.max_batch = max(served.engine.batch_size for served in banks)
        if self.state == STARTING:
            self.state, self.was_ready = READY, True
            self.metrics.ready.set(1)
            self.on_ready()

    # --- scoring ----------------------------------------------------------------------------------
    def bank(self, name: Optional[str]) -> ServedBank:
        """The bank a request names; without a name, the only one served."""
        if name is None:
            if len(self.banks) == 1:
                return next(iter(self.banks.values()))
            raise BankNotNamed(f"several banks are served: name one with ?bank= ({', '.join(sorted(self.banks))})")
        if name not in self.banks:
            raise UnknownBank(f"no bank named {name!r} is served; served: {', '.join(sorted(self.banks))}")
        return self.banks[name]

    async def detect(
        self,
        served: ServedBank,
        uploads: list[Upload],
        extras: Extras = Extras(),
        client_gone: Optional[Callable[[], Awaitable[Any]]] = None,
    ) -> list[dict[str, Any]]:
        """Score the uploads with one bank: one answer per upload, in order.

        Raises ImageError (an undecodable upload), TooLarge (an image or the request over a limit),
        QueueFull or Busy (no room now), NotRunning, TimedOut, ClientGone (when the coroutine
        ``client_gone()`` finishes first) or the engine's error.
        """
        loop = asyncio.get_running_loop()
        received = time.monotonic()
        if len(uploads) > self.settings.max_queue:
            raise TooLarge(f"{len(uploads)} images in one request, over the limit of {self.settings.max_queue} "
                           "(the queue's length)")
        # Admitted before anything is decoded: places in the queue, then the pixels the headers declare.
        with self.batcher.reserve(len(uploads)) as reservation:
            pixels = await loop.run_in_executor(self._decoders, self._declared_pixels, uploads)
            with self.pixels.hold(pixels):
                prepared = await self._decode_all(served, uploads)
                jobs = self.batcher.submit(served.name, [(one.inputs, one.region) for one in prepared],
                                           reservation)
                return await self._finish(served, prepared, jobs, extras, client_gone, received)

    async def _decode_all(self, served: ServedBank, uploads: list[Upload]) -> list[Prepared]:
        """Every upload decoded; the first failure is raised once no decode runs any more (they hold pixels)."""
        loop = asyncio.get_running_loop()
        outcomes = await asyncio.gather(*(
            loop.run_in_executor(self._decoders, _prepare, served.engine, upload, self.settings.max_pixels)
            for upload in uploads), return_exceptions=True)
        failure = next((outcome for outcome in outcomes if isinstance(outcome, BaseException)), None)
        if failure is not None:
            raise failure
        return outcomes

    def _declared_pixels(self, uploads: list[Upload]) -> int:
        return sum(declared_pixels(upload.data, upload.label, self.settings.max_pixels) for upload in uploads)

    async def _finish(self, served: ServedBank, prepared: list[Prepared], jobs: list[Job], extras: Extras,
                      client_gone: Optional[Callable[[], Awaitable[Any]]], received: float) -> list[dict[str, Any]]:
        """Wait for the model, then build the answers (and archive them) while the images are still held."""
        loop = asyncio.get_running_loop()
        detections = await self._wait_for(jobs, client_gone)
        answers = await asyncio.gather(*(
            loop.run_in_executor(self._decoders, _answer, served, one, detection, extras)
            for one, detection in zip(prepared, detections)))
        self._count(served, [row for row, _ in answers])
        if self.archive is not None:
            await _finish_even_if_cancelled(loop.run_in_executor(
                self._archiver, self.archive.keep_all, [(one.upload.label, one.upload.data) for one in prepared],
                [row for row, _ in answers]))
        total_s = time.monotonic() - received
        return [{**row.to_dict(), "bank": served.name, **added, "timings": _timings(one, job, total_s)}
                for (row, added), one, job in zip(answers, prepared, jobs)]

    async def _wait_for(self, jobs: list[Job], client_gone: Optional[Callable[[], Awaitable[Any]]]) -> list[Detection]:
        results = asyncio.gather(*(asyncio.wrap_future(job.future) for job in jobs))
        watchers = {results}
        gone = asyncio.ensure_future(client_gone()) if client_gone is not None else None
        if gone is not None:
            watchers.add(gone)
        try:
            done, _ = await asyncio.wait(watchers, timeout=self.settings.timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the request was cut: its images are not scored
            _cancel(results, jobs)
            raise
        finally:
            if gone is not None:
                gone.cancel()
        if results in done:
            return results.result()
        _cancel(results, jobs)
        if gone is not None and gone in done:
            raise ClientGone()
        raise TimedOut(f"no answer within --timeout {self.settings.timeout_s:g} s")

    def _score_batch(self, bank: str, items: list[tuple[dict[int, np.ndarray], Optional[FrameRegion]]]
                     ) -> list[Detection]:
        engine = self.banks[bank].engine
        regions = None if regions_of_engine(engine) is None else [region for _, region in items]
        return score_prepared(engine, engine.batch_inputs([inputs for inputs, _ in items]), regions)

    def _count(self, served: ServedBank, rows: list[ResultRow]) -> None:
        self.metrics.images.labels(served.name).inc(len(rows))
        self.metrics.ng.labels(served.name).inc(sum(row.verdict == NG for row in rows))


def _cancel(results: asyncio.Future, jobs: list[Job]) -> None:
    results.cancel()  # first: a gather whose parts were cancelled under it would log an unread error
    for job in jobs:  # not started yet: never scored; already running: the result is dropped
        job.future.cancel()


async def _finish_even_if_cancelled(future: asyncio.Future) -> None:
    """Await ``future``; when cancelled meanwhile, still wait for it (and return): a started write completes."""
    try:
        await asyncio.shield(future)
    except asyncio.CancelledError:
        await future


def _prepare(engine: FadeEngine, upload: Upload, max_pixels: Optional[int]) -> Prepared:
    started = time.monotonic()
    image = decode_image_bytes(upload.data, upload.label, max_pixels)
    cut, region = in_region(engine, Path(upload.label).name, upload.label, image)  # the bank's ROI, never wider
    return Prepared(upload, image, engine.resize_for_input(cut), time.monotonic() - started, region)


def _answer(served: ServedBank, one: Prepared, detection: Detection, extras: Extras) -> tuple[ResultRow, dict]:
    """The row as `fade detect` builds it (no files written), and the heatmap and map when asked for."""
    file = ImageFile(Path(one.upload.label), one.upload.label)
    row = finish_row(file, one.image, detection, None, served.thresholds, region=one.region)
    added = {}
    if extras.heatmap_png or extras.map_npy:
        at_image_size = upsample_map(detection.anomaly_map, one.image.height, one.image.width)
        if extras.heatmap_png:
            buffer = io.BytesIO()
            shown = one.image if one.region is None or one.region.whole_frame else one.region.shown(one.image)
            overlay(shown, at_image_size).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
            added["heatmap_png"] = base64.b64encode(buffer.getvalue()).decode("ascii")
        if extras.map_npy:
            buffer = io.BytesIO()
            np.save(buffer, at_image_size, allow_pickle=False)
            added["map_npy"] = base64.b64encode(buffer.getvalue()).decode("ascii")
    return row, added


def _timings(one: Prepared, job: Job, total_s: float) -> dict[str, Any]:
    queued_s = (job.started_at or job.queued_at) - job.queued_at
    return {"decode_ms": round(one.decode_s * 1000, 3), "queue_ms": round(queued_s * 1000, 3),
            "model_ms": round(job.model_s * 1000, 3), "total_ms": round(total_s * 1000, 3),
            "batch_size": job.batch_size}
