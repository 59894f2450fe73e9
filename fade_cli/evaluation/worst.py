"""The worst-scored test images of a run, and their heatmaps.

"Worst" is measured by how much an image spoils the image AUROC: for a good
image, the fraction of defective images it outscores; for a defective image, the
fraction of good images that outscore it (ties count one half). Scores are not
calibrated across classes, so this rank-based measure is what makes "worst"
comparable. Ties are broken by the raw score (high for good images, low for
defective ones), then by path, so the choice is reproducible. The heatmaps
outline the ground truth in white.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from fade_cli.core.errors import ImageError
from fade_cli.evaluation.evaluate import ImageRecord
from fade_cli.evaluation.masks import load_mask
from fade_cli.io.files import confined_path
from fade_cli.io.heatmap import overlay, upsample_map
from fade_cli.io.images import load_image
from fade_cli.io.outputs import write_png

OUTLINE_COLOUR = (255, 255, 255)


def misranking(records: Sequence[ImageRecord]) -> np.ndarray:
    """Per record, the fraction of images of the other label that are ordered wrongly against it."""
    good = np.sort([r.score for r in records if not r.anomalous])
    defective = np.sort([r.score for r in records if r.anomalous])
    result = np.zeros(len(records))
    for index, record in enumerate(records):
        others = good if record.anomalous else defective
        if len(others) == 0:
            continue
        below = np.searchsorted(others, record.score, side="left")
        above = len(others) - np.searchsorted(others, record.score, side="right")
        ties = len(others) - below - above
        wrong = above if record.anomalous else below
        result[index] = (wrong + 0.5 * ties) / len(others)
    return result


def worst_records(records: Sequence[ImageRecord], count: int) -> list[tuple[ImageRecord, float]]:
    """The ``count`` worst records with their misranking, worst first."""
    badness = misranking(records)
    order = sorted(
        range(len(records)),
        key=lambda i: (-badness[i], records[i].score if records[i].anomalous else -records[i].score,
                       records[i].relative),
    )
    return [(records[i], float(badness[i])) for i in order[:count]]


def _draw_outline(picture: Image.Image, mask_hw: np.ndarray) -> None:
    """Paint the ground truth's boundary in white over the image part of a heatmap (in place)."""
    edge = mask_hw & ~ndimage.binary_erosion(mask_hw, structure=np.ones((3, 3), dtype=bool), border_value=0)
    edge = ndimage.binary_dilation(edge, iterations=max(1, mask_hw.shape[1] // 400))
    pixels = np.asarray(picture).copy()
    height, width = mask_hw.shape
    pixels[:height, :width][edge] = OUTLINE_COLOUR
    picture.paste(Image.fromarray(pixels))


def heatmap_name(rank: int, record: ImageRecord) -> str:
    """``01_<defect>_<file name>.png``: the rank first, so a file browser lists them worst first."""
    return f"{rank:02d}_{record.defect}_{Path(record.relative).name}.png"


def write_worst_heatmaps(records: Sequence[ImageRecord], count: int, folder: Path, base: Path) -> list[dict]:
    """Write heatmaps of the ``count`` worst records into ``folder``; one entry per image for the report.

    ``base`` is the output folder the reported paths are relative to.
    """
    entries = []
    for rank, (record, badness) in enumerate(worst_records(records, count), start=1):
        entry = {"rank": rank, "image": record.relative, "defect": record.defect, "score": record.score,
                 "misranked": badness, "heatmap": None}
        try:
            image = load_image(record.path)
        except ImageError as exc:  # it was read minutes ago; say why there is no heatmap
            entry["heatmap_error"] = str(exc)
        else:
            path = folder / heatmap_name(rank, record)
            # the folder holds a class name, the name a defect: both come from the dataset
            confined_path(base, os.path.relpath(path, base), f"worst heatmap in {base}")
            picture = overlay(image, upsample_map(record.grid_map, image.height, image.width))
            if record.mask is not None:
                _draw_outline(picture, load_mask(record.mask, image.size))
            write_png(path, picture)
            entry["heatmap"] = path.relative_to(base).as_posix()
        entries.append(entry)
    return entries
