"""Running the engine over many files: decoding ahead in threads, batching, verdicts, outputs.

The CLI's `detect` (and `watch`) call :func:`run_detection`; programs can too.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Protocol

import numpy as np
import torch
from PIL import Image

from fade_cli.engine.detector import FadeEngine
from fade_cli.engine.result import Detection
from fade_cli.errors import ImageError, InputError
from fade_cli.io.defects import find_defects
from fade_cli.io.images import ImageFile, load_image
from fade_cli.io.outputs import ResultRow

# Batches decoded ahead of the model.
PREFETCH_BATCHES = 2

NG, OK = "NG", "OK"


class ResultSink(Protocol):
    """Where :func:`run_detection` puts its results: ``RunOutput`` (detect) or the results log of ``watch``."""

    def write_image(self, relative: str, image: Image.Image, detection: Detection) -> tuple[Optional[str], Optional[str]]:
        """Save the map and heatmap of one image; their paths relative to the output folder."""

    def write_mask(self, relative: str, mask_hw: np.ndarray) -> str:
        """Save a defect mask; its path relative to the output folder."""

    def add(self, row: ResultRow) -> None:
        """Record a finished image; called once per file, in order, before ``on_row``."""


@dataclass
class DecodedBatch:
    files: list[ImageFile]
    images: list[Optional[Image.Image]]
    errors: list[Optional[str]]
    pixels_by_size: Optional[dict[int, torch.Tensor]]


def verdict(score: float, threshold: Optional[float]) -> Optional[str]:
    """NG when the score reaches the threshold."""
    if threshold is None:
        return None
    return NG if score >= threshold else OK


def load_references(engine: FadeEngine, files: list[ImageFile], batch_size: int) -> None:
    """Add good images to the engine's bank; any unreadable reference stops the run."""
    if not files:
        raise InputError("the reference folder holds no image")
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        try:
            images = [load_image(f.path) for f in chunk]
        except ImageError as exc:
            raise InputError(f"reference image unusable: {exc}") from exc
        engine.add_references(images)


def _decode(engine: FadeEngine, files: list[ImageFile]) -> DecodedBatch:
    images: list[Optional[Image.Image]] = []
    errors: list[Optional[str]] = []
    for file in files:
        try:
            images.append(load_image(file.path))
            errors.append(None)
        except ImageError as exc:
            images.append(None)
            errors.append(str(exc))
    good = [image for image in images if image is not None]
    return DecodedBatch(files, images, errors, engine.prepare(good) if good else None)


def _decoded_batches(engine: FadeEngine, files: list[ImageFile], batch_size: int) -> Iterator[DecodedBatch]:
    """Decode and preprocess upcoming batches in background threads while the model runs.

    At most ``PREFETCH_BATCHES`` batches wait decoded, so memory does not grow with
    the number of files. When the consumer stops early (Ctrl-C, an error), batches
    not yet started are cancelled.
    """
    batches = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(max_workers=PREFETCH_BATCHES) as pool:
        pending: list[Future] = []
        try:
            for batch in batches[:PREFETCH_BATCHES]:
                pending.append(pool.submit(_decode, engine, batch))
            next_index = len(pending)
            while pending:
                decoded = pending.pop(0).result()
                if next_index < len(batches):
                    pending.append(pool.submit(_decode, engine, batches[next_index]))
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
    threshold: Optional[float] = None,
    on_row: Optional[Callable[[ResultRow], None]] = None,
    pixel_threshold: Optional[float] = None,
) -> None:
    """Score every file, writing outputs as images finish. A broken image gives an error row.

    With ``pixel_threshold``, NG images (every image when there is no ``threshold``)
    also get their defect ``regions`` and, with ``output``, a mask file.

    Each row goes to ``output`` and then ``on_row`` as soon as its image is done,
    so on KeyboardInterrupt they hold every finished row; the caller decides how
    to finish.
    """
    with contextlib.closing(_decoded_batches(engine, files, engine.config.batch_size)) as batches:
        for batch in batches:
            for row in _score_batch(engine, batch, output, threshold, pixel_threshold):
                if output is not None:
                    output.add(row)
                if on_row is not None:
                    on_row(row)


def _score_batch(
    engine: FadeEngine,
    batch: DecodedBatch,
    output: Optional[ResultSink],
    threshold: Optional[float],
    pixel_threshold: Optional[float],
) -> Iterator[ResultRow]:
    """The rows of one decoded batch, in file order, each image's files written before its row."""
    detections = iter(engine.detect_prepared(batch.pixels_by_size) if batch.pixels_by_size else [])
    for file, image, error in zip(batch.files, batch.images, batch.errors):
        if image is None:
            yield ResultRow(path=file.relative, error=error)
            continue
        detection = next(detections)
        row = ResultRow(
            path=file.relative,
            score=detection.score,
            language_score=detection.language_score,
            vision_score=detection.vision_score,
            verdict=verdict(detection.score, threshold),
        )
        if output is not None:
            row.map_path, row.heatmap_path = output.write_image(file.relative, image, detection)
        if pixel_threshold is not None and row.verdict != OK:
            _add_defects(row, file, image, detection, output, pixel_threshold)
        yield row
