"""Running the engine over many files: decoding ahead in threads, batching, verdicts, outputs.

The CLI's `detect` (and `watch`) call :func:`run_detection`; programs can too.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Protocol

import numpy as np
import torch
from PIL import Image

from fade_cli.bank.calibration import Thresholds
from fade_cli.config import MutualSettings
from fade_cli.engine.detector import FadeEngine
from fade_cli.engine.mutual import ALONE_IN_GROUP, balanced_groups, require_mutual_batch
from fade_cli.engine.result import Detection
from fade_cli.core.errors import ImageError, InputError
from fade_cli.io.atomic import OutputError
from fade_cli.io.defects import find_defects
from fade_cli.io.images import ImageFile, load_image
from fade_cli.io.input_checks import smallest_input_size, upscale_warning
from fade_cli.io.outputs import ResultRow
from fade_cli.io.roi import FrameRegion, RegionPlan
from fade_cli.runs.row_order import RowsInOrder, finished

# Batches decoded ahead of the model, and threads decoding their images.
PREFETCH_BATCHES = 2
DECODE_THREADS = min(16, os.cpu_count() or 1)
# Pixels of the images whose files are being written at once: eight 8-megapixel photos, or one larger one.
WRITE_PIXEL_BUDGET = 64_000_000

NG, OK = "NG", "OK"


class ResultSink(Protocol):
    """Where :func:`run_detection` puts its results: ``RunOutput`` (detect) or the results log of ``watch``.

    ``write_image`` and ``write_mask`` run in ``writer_threads`` threads at once
    (one thread: one call at a time, in file order); ``add`` runs in the caller's thread.
    """

    writer_threads: int

    def write_image(self, relative: str, image: Image.Image, detection: Detection) -> tuple[Optional[str], Optional[str]]:
        """Save the map and heatmap of one image; their paths relative to the output folder."""

    def write_mask(self, relative: str, mask_hw: np.ndarray) -> str:
        """Save a defect mask; its path relative to the output folder."""

    def add(self, row: ResultRow) -> None:
        """Record a finished image; called once per file, in order, before ``on_row``."""


@dataclass
class _Scored:
    """One file's outcome: an error, or a detection with its image (None: decoded again to write its files)."""

    file: ImageFile
    error: Optional[str] = None
    detection: Optional[Detection] = None
    image: Optional[Image.Image] = None
    pixels: int = 0
    region: Optional[FrameRegion] = None


@dataclass
class DecodedBatch:
    files: list[ImageFile]
    images: list[Optional[Image.Image]]
    errors: list[Optional[str]]
    pixels_by_size: Optional[dict[int, torch.Tensor]]
    regions: Optional[list[Optional[FrameRegion]]] = None  # with an ROI: each readable frame's region


def verdict(score: float, threshold: Optional[float]) -> Optional[str]:
    """NG when the score reaches the threshold."""
    if threshold is None:
        return None
    return NG if score >= threshold else OK


def load_references(engine: FadeEngine, files: list[ImageFile]) -> None:
    """Add good images to the engine's bank, a batch at a time; any unreadable reference stops the run.

    With an ROI each reference is cut to its region, and its patches outside the region stay out of the bank."""
    if not files:
        raise InputError("the reference folder holds no image")
    for start in range(0, len(files), engine.batch_size):
        chunk = files[start : start + engine.batch_size]
        try:
            framed = [in_region(engine, f.relative, str(f.path), load_image(f.path)) for f in chunk]
        except ImageError as exc:
            raise InputError(f"reference image unusable: {exc}") from exc
        if regions_of_engine(engine) is None:
            engine.add_references([image for image, _ in framed])
        else:
            engine.add_references([image for image, _ in framed], [_inside(region) for _, region in framed])


def regions_of_engine(engine: FadeEngine) -> Optional[RegionPlan]:
    """Where the engine's frames are inspected (None: whole frames; also for engines that know no regions)."""
    return getattr(engine, "regions", None)


def in_region(engine: FadeEngine, relative: str, label: str, image: Image.Image
              ) -> tuple[Image.Image, Optional[FrameRegion]]:
    """(what the model sees of a frame, its region); the whole frame and None without an ROI.

    A frame the ROI cannot fit raises :class:`~fade_cli.io.roi.RegionError` (an error row)."""
    plan = regions_of_engine(engine)
    if plan is None:
        return image, None
    region = plan.region_for(relative, image.width, image.height, label)
    return region.cut(image), region


def _inside(region: Optional[FrameRegion]) -> Optional[np.ndarray]:
    """The mask the engine masks its maps with; None for the whole frame (scored exactly as without an ROI)."""
    return None if region is None or region.whole_frame else region.crop_mask


def _framed(detection: Detection, region: Optional[FrameRegion]) -> Detection:
    """A detection of a cut frame with its maps at the frame's size (0 outside the ROI)."""
    return detection if region is None or region.whole_frame else region.framed(detection)


def score_prepared(engine: FadeEngine, pixels_by_size: dict[int, torch.Tensor],
                   regions: Optional[list[Optional[FrameRegion]]] = None) -> list[Detection]:
    """Score a batch of prepared inputs; with their regions, maps back in frame coordinates."""
    if regions is None:
        return engine.detect_prepared(pixels_by_size)
    detections = engine.detect_prepared(pixels_by_size, [_inside(region) for region in regions])
    return [_framed(detection, region) for detection, region in zip(detections, regions)]


def score_images(engine: FadeEngine, frames: list[tuple[str, str, Image.Image]]) -> list[Detection]:
    """Score (relative path, label, image) frames in one batch, each in its region."""
    cut = [in_region(engine, relative, label, image) for relative, label, image in frames]
    inputs = engine.batch_inputs([engine.resize_for_input(image) for image, _ in cut])
    regions = None if regions_of_engine(engine) is None else [region for _, region in cut]
    return score_prepared(engine, inputs, regions)


def decode_one(
    file: ImageFile, resize: Callable[[Image.Image], dict[int, np.ndarray]]
) -> tuple[Optional[Image.Image], Optional[dict], Optional[str]]:
    """(image, ``resize(image)``, None), or (None, None, why) for a file that cannot be decoded.

    ``resize`` is ``engine.resize_for_input``, or ``resize_for_config`` where decoding runs apart from the model."""
    try:
        image = load_image(file.path)
    except ImageError as exc:
        return None, None, str(exc)
    return image, resize(image), None


def _decode_batch(engine: FadeEngine, files: list[ImageFile], image_pool: ThreadPoolExecutor) -> DecodedBatch:
    if regions_of_engine(engine) is not None:
        return _decode_batch_in_regions(engine, files, image_pool)
    return batch_of_decoded(engine, files, list(image_pool.map(lambda file: decode_one(file, engine.resize_for_input),
                                                                files)))


def _decode_batch_in_regions(engine: FadeEngine, files: list[ImageFile], image_pool: ThreadPoolExecutor
                             ) -> DecodedBatch:
    def decode(file: ImageFile) -> tuple[Optional[Image.Image], Optional[dict], Optional[str], Optional[FrameRegion]]:
        try:
            image = load_image(file.path)
            cut, region = in_region(engine, file.relative, str(file.path), image)
        except ImageError as exc:  # RegionError too: the ROI does not fit this frame, or its mask is missing
            return None, None, str(exc), None
        return image, engine.resize_for_input(cut), None, region

    decoded = list(image_pool.map(decode, files))
    batch = batch_of_decoded(engine, files, [(image, inputs, error) for image, inputs, error, _ in decoded])
    batch.regions = [region for image, _, _, region in decoded if image is not None]
    return batch


def batch_of_decoded(
    engine: FadeEngine, files: list[ImageFile],
    decoded: list[tuple[Optional[Image.Image], Optional[dict], Optional[str]]],
) -> DecodedBatch:
    """The batch of ``files`` from their :func:`decode_one` results, the readable images stacked for the engine."""
    resized = [inputs for _, inputs, _ in decoded if inputs is not None]
    return DecodedBatch(
        files,
        images=[image for image, _, _ in decoded],
        errors=[error for _, _, error in decoded],
        pixels_by_size=engine.batch_inputs(resized) if resized else None,
    )


def decoded_batches(engine: FadeEngine, files: list[ImageFile]) -> Iterator[DecodedBatch]:
    """Decode and resize upcoming batches (``engine.batch_size`` images) in background threads while the model runs.

    Images are decoded in parallel, one per thread (PIL releases the GIL), so a
    GPU that scores a hundred images a second is not left waiting on one core.
    At most ``PREFETCH_BATCHES`` batches wait decoded, so memory does not grow
    with the number of files. When the consumer stops early (Ctrl-C, an error),
    batches not yet started are cancelled.
    """
    size = engine.batch_size
    batches = [files[i : i + size] for i in range(0, len(files), size)]
    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as image_pool, \
            ThreadPoolExecutor(max_workers=PREFETCH_BATCHES) as batch_pool:
        pending: list[Future] = []
        try:
            for batch in batches[:PREFETCH_BATCHES]:
                pending.append(batch_pool.submit(_decode_batch, engine, batch, image_pool))
            next_index = len(pending)
            while pending:
                decoded = pending.pop(0).result()
                if next_index < len(batches):
                    pending.append(batch_pool.submit(_decode_batch, engine, batches[next_index], image_pool))
                    next_index += 1
                yield decoded
        finally:
            for future in pending:
                future.cancel()


def _add_defects(
    row: ResultRow, file: ImageFile, image: Image.Image, detection: Detection, output: Optional[ResultSink],
    pixel_threshold: float,
) -> None:
    mask_hw, row.regions = find_defects(detection.anomaly_map, image.height, image.width, pixel_threshold)
    if output is not None:
        row.mask_path = output.write_mask(file.relative, mask_hw)


def run_detection(
    engine: FadeEngine,
    files: list[ImageFile],
    output: Optional[ResultSink] = None,
    thresholds: Thresholds = Thresholds(),
    on_row: Optional[Callable[[ResultRow], None]] = None,
    mutual: Optional[MutualSettings] = None,
    on_encoded: Optional[Callable[[], None]] = None,
) -> None:
    """Score every file, writing outputs as images finish. A broken image gives an error row.

    With ``mutual`` the run is scored by mutual scoring (docs/mutual.md): each group of images is
    first encoded (``on_encoded`` called per file), then scored; rows come in relative-path order
    and broken images are left out of the others' comparisons.

    With a pixel threshold, NG images (every image when there is no image threshold)
    also get their defect ``regions`` and, with ``output``, a mask file.

    Each image's files are written in ``output.writer_threads`` background threads
    while the model scores the next batch. Rows go to ``output.add`` and then
    ``on_row`` in file order, each once its files are written. On
    KeyboardInterrupt the rows of every image already scored are still written and
    passed on (up to a failed one); the caller decides how to finish.
    """
    if mutual is not None and regions_of_engine(engine) is not None:
        raise InputError("mutual scoring does not take an inspection region (ROI); score without one")
    if mutual is None:
        scored = _scored_batches(engine, decoded_batches(engine, files))
    else:
        scored = _mutual_scored_groups(engine, files, mutual, on_encoded)
    _finish_rows(engine, scored, output, thresholds, on_row)


def run_decoded(
    engine: FadeEngine,
    batches: Iterable[DecodedBatch],
    output: Optional[ResultSink] = None,
    thresholds: Thresholds = Thresholds(),
    on_row: Optional[Callable[[ResultRow], None]] = None,
) -> None:
    """:func:`run_detection` for batches decoded elsewhere (the decoding tasks of a Ray run): same rows, same files."""
    decoded = (batch for batch in batches)  # a generator: _scored_batches closes what it reads
    _finish_rows(engine, _scored_batches(engine, decoded), output, thresholds, on_row)


def _finish_rows(
    engine: FadeEngine,
    scored: Iterator[list[_Scored]],
    output: Optional[ResultSink],
    thresholds: Thresholds,
    on_row: Optional[Callable[[ResultRow], None]],
) -> None:
    """Write each scored image's files in writer threads and pass its row on in file order (see run_detection)."""
    threads = output.writer_threads if output is not None else 1
    # Stand-in engines (tests, plugins) may have no config: their images are not judged for size.
    config = getattr(engine, "config", None)
    smallest_input = smallest_input_size(config) if config is not None else None
    rows = RowsInOrder(output, on_row, capacity=engine.batch_size + threads, pixel_budget=WRITE_PIXEL_BUDGET)
    index = itertools.count()
    with ThreadPoolExecutor(max_workers=threads) as writers, contextlib.closing(scored) as batches:
        try:
            for batch in batches:
                for item in batch:
                    if item.detection is None:
                        rows.put(next(index), finished(ResultRow(path=item.file.relative, error=item.error)))
                        continue
                    finish = functools.partial(finish_row, item.file, item.image, item.detection, output, thresholds,
                                               smallest_input, item.region)
                    rows.make_room(item.pixels)
                    rows.put(next(index), writers.submit(finish), item.pixels)
                rows.hand_over()
            rows.hand_over(wait_for_all=True)
        except BaseException:
            rows.salvage()
            raise


def _scored_batches(engine: FadeEngine, decoded: Iterator[DecodedBatch]) -> Iterator[list[_Scored]]:
    """Each batch scored as soon as it is decoded."""
    with contextlib.closing(decoded) as batches:
        for batch in batches:
            detections = iter(score_prepared(engine, batch.pixels_by_size, batch.regions)
                              if batch.pixels_by_size else [])
            regions = iter(batch.regions or [])
            yield [
                _Scored(file, error) if image is None
                else _Scored(file, detection=next(detections), image=image, pixels=image.width * image.height,
                             region=next(regions, None))
                for file, image, error in zip(batch.files, batch.images, batch.errors)
            ]


def _mutual_scored_groups(
    engine: FadeEngine, files: list[ImageFile], settings: MutualSettings, on_encoded: Optional[Callable[[], None]]
) -> Iterator[list[_Scored]]:
    """Mutual scoring in two passes per group: encode every image of the group, then score them together.

    Groups are cut from the files sorted by relative path, so that results do not depend on the order
    files come in. Decoded images are not kept between the passes (memory stays bounded by the stored
    features of one group); each is decoded again when its files are written.
    """
    require_mutual_batch(len(files))
    for group in balanced_groups(sorted(files, key=lambda f: f.relative), settings.group):
        encoded, items = [], []
        with contextlib.closing(decoded_batches(engine, list(group))) as batches:
            for batch in batches:
                if batch.pixels_by_size is not None:
                    encoded.append(engine.encode_for_mutual(batch.pixels_by_size, settings))
                for file, image, error in zip(batch.files, batch.images, batch.errors):
                    pixels = 0 if image is None else image.width * image.height
                    items.append(_Scored(file, error, pixels=pixels))
                    if on_encoded is not None:
                        on_encoded()
        readable = [item for item in items if item.error is None]
        if len(readable) == 1:
            readable[0].error = ALONE_IN_GROUP
        elif readable:
            for item, detection in zip(readable, engine.detect_mutual(encoded, settings)):
                item.detection = detection
        yield items


def non_finite_result(detection: Detection) -> Optional[str]:
    """Why a detection cannot be judged (a NaN or infinite score or map), or None.

    NaN compares False with every threshold: such an image would pass as OK.
    """
    scores = {"score": detection.score, "language score": detection.language_score,
              "vision score": detection.vision_score}
    for name, value in scores.items():
        if value is not None and not np.isfinite(value):
            return f"the {name} is {value} (the engine produced a non-finite number)"
    if not np.isfinite(detection.anomaly_map).all():
        return "the anomaly map holds NaN or infinite values (the engine produced non-finite numbers)"
    return None


def finish_row(
    file: ImageFile,
    image: Optional[Image.Image],
    detection: Detection,
    output: Optional[ResultSink],
    thresholds: Thresholds,
    smallest_input: Optional[int] = None,
    region: Optional[FrameRegion] = None,
) -> ResultRow:
    """One scored image's row, its files written first (runs in a writer thread; `fade serve` builds its rows here
    too). Without ``image`` (mutual scoring keeps no decoded images) the file is decoded again.

    With ``smallest_input`` (the smallest size the model takes), an image it enlarges too much
    keeps its score and verdict, and its ``error`` says why the score says little.
    With the frame's ``region`` (an ROI) the heatmap dims the ignored area and outlines the ROI, and the row
    names the ROI."""
    problem = non_finite_result(detection)
    if problem is not None:
        return ResultRow(path=file.relative, error=f"{file.path}: not inspected: {problem}")
    try:
        image = image if image is not None else load_image(file.path)
    except ImageError as exc:  # changed on disk since it was scored
        return ResultRow(path=file.relative, error=str(exc))
    row = ResultRow(
        path=file.relative,
        score=detection.score,
        language_score=detection.language_score,
        vision_score=detection.vision_score,
        verdict=verdict(detection.score, thresholds.image),
    )
    if region is not None:
        row.roi = region.source
    try:
        if output is not None:
            shown = image if region is None or region.whole_frame else region.shown(image)
            row.map_path, row.heatmap_path = output.write_image(file.relative, shown, detection)
        if thresholds.pixel is not None and row.verdict != OK:
            _add_defects(row, file, image, detection, output, thresholds.pixel)
    except OutputError as exc:
        if exc.stops_the_run:
            raise
        # This image's file name cannot be written (too long for the output folder, a sub-folder not
        # writable): its score and verdict stand, the row says which files are missing.
        row.error = f"{file.path}: scored, but its output files were not written: {exc}"
    too_small = upscale_warning(image.width, image.height, smallest_input) if smallest_input else None
    if too_small is not None:
        row.error = "; ".join(filter(None, [row.error, f"{file.path}: {too_small}"]))
    return row
