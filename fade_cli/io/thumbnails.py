"""Small pictures of a run for its report: the image, and its anomaly map in colour, long side 320 px.

Layout inside a run's output folder (the input's sub-folders mirrored, as for
heatmaps)::

    OUT/thumbnails/image/<relative path>.jpg            the image
    OUT/thumbnails/map/[seed<k>/]<relative path>.jpg    the map, coloured (eval: one per seed)

The map thumbnail is the colour map alone, at the image thumbnail's size: the
report lays it over the image at 50 % opacity, which is exactly the blend of the
heatmap PNGs, and lets the viewer change the opacity. ``fade detect`` writes
both from the decoded image while it is still in memory (in its writer threads),
so a report costs a fraction of the run; ``fade report`` makes the missing ones.
No torch here: resizing is PIL's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from fade_cli.io.atomic import atomic_write
from fade_cli.io.files import confined_path

THUMBNAIL_SIDE = 320
JPEG_QUALITY = 85
THUMBNAILS_DIR = "thumbnails"


def image_thumbnail_path(relative: str) -> str:
    """Where the image thumbnail of ``relative`` lives, relative to the output folder (posix)."""
    return f"{THUMBNAILS_DIR}/image/{relative}.jpg"


def map_thumbnail_path(relative: str, run: str = "") -> str:
    """Where the map thumbnail lives; ``run`` is eval's ``seed<k>`` sub-folder ('' for one run)."""
    return f"{THUMBNAILS_DIR}/map/{run}/{relative}.jpg" if run else f"{THUMBNAILS_DIR}/map/{relative}.jpg"


def thumbnail_size(width: int, height: int, side: int = THUMBNAIL_SIDE) -> tuple[int, int]:
    """(width, height) scaled so the long side is at most ``side`` (never enlarged), at least 1 x 1."""
    scale = min(1.0, side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def image_thumbnail(image: Image.Image) -> Image.Image:
    """An RGB copy of ``image`` with its long side at most 320 px."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return rgb.resize(thumbnail_size(*rgb.size), Image.Resampling.BILINEAR, reducing_gap=2.0)


def map_thumbnail(map_hw: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """The map (any grid, values in [0, 1]) resized to ``size`` (width, height) and coloured."""
    from fade_cli.io.heatmap import colorize

    resized = Image.fromarray(np.ascontiguousarray(map_hw, dtype=np.float32), mode="F").resize(
        size, Image.Resampling.BILINEAR)
    return Image.fromarray(colorize(np.asarray(resized)), mode="RGB")


def write_jpeg(path: Path, picture: Image.Image) -> None:
    atomic_write(path, lambda handle: picture.save(handle, format="JPEG", quality=JPEG_QUALITY))


def write_thumbnails(out_dir: Path, relative: str, image: Optional[Image.Image], map_hw: Optional[np.ndarray],
                     run: str = "", image_size: Optional[tuple[int, int]] = None) -> None:
    """Write the image thumbnail (when ``image`` is given) and the map thumbnail (when ``map_hw`` is).

    ``image_size`` is the full image's (width, height), needed for a map without its image.
    """
    if image is not None:
        write_jpeg(_inside(out_dir, image_thumbnail_path(relative)), image_thumbnail(image))
        image_size = image.size
    if map_hw is not None and image_size is not None:
        write_jpeg(_inside(out_dir, map_thumbnail_path(relative, run)),
                   map_thumbnail(map_hw, thumbnail_size(*image_size)))


def _inside(out_dir: Path, relative: str) -> Path:
    """A thumbnail's file, refused where its name (from an input's path) would lead out of the output folder."""
    return confined_path(out_dir, relative, f"thumbnail in {out_dir}")
