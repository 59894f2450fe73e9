"""Leave-one-out scoring of the references (see ``calibration.py`` for the statistic)."""
from __future__ import annotations

from typing import Callable, Optional

from fade_cli.bank.calibration import DEFAULT_MARGIN, MIN_REFERENCES, Calibration, check_margin
from fade_cli.engine.detector import FadeEngine
from fade_cli.engine.result import Detection
from fade_cli.core.errors import InputError
from fade_cli.io.images import ImageFile, load_image
from fade_cli.runs.runner import score_images


def leave_one_out(
    engine: FadeEngine,
    files: list[ImageFile],
    margin: float = DEFAULT_MARGIN,
    on_done: Optional[Callable[[], None]] = None,
) -> Calibration:
    """Score each reference of ``engine`` against a bank of the others.

    ``files`` are the references in the order they were added to the engine
    (one image each); they are decoded again one at a time, so memory does not
    grow with their number.
    """
    check_margin(margin)
    count = engine.reference_count
    if count < MIN_REFERENCES:
        raise InputError(f"calibration needs at least {MIN_REFERENCES} reference images, there is {count}")
    if count != len(files):
        raise ValueError(f"the engine holds {count} references but {len(files)} files were given")
    detections = []
    for index, file in enumerate(files):
        detections.append(_score_left_out(engine, index, file))
        if on_done is not None:
            on_done()
    return Calibration(
        margin=margin,
        files=tuple(f.relative for f in files),
        image_scores=tuple(d.score for d in detections),
        pixel_maxima=tuple(float(d.anomaly_map.max()) for d in detections),
    )


def _score_left_out(engine: FadeEngine, index: int, file: ImageFile) -> Detection:
    """Detect on reference ``index`` with an engine whose bank lacks that reference's patches."""
    count = engine.reference_count
    others = FadeEngine.from_saved(engine.loaded, engine.config, engine.cls_classifier_2d, engine.seg_classifier_2d,
                                   engine.bank.without_reference(index, count), count - 1, engine.regions)
    [detection] = score_images(others, [(file.relative, str(file.path), load_image(file.path))])
    return detection
