"""A finished (or interrupted) run's rows and files -> report.html and its thumbnails.

The report reads what ``fade detect``, ``fade watch`` or ``fade eval`` wrote; it
knows nothing about the engine. Thumbnails the run already wrote (from the images
it had decoded) are used as they are; missing ones are made from the original
image when it can be found (``images_root``, or the dataset of an eval run) and
the saved map, else from the heatmap PNG.
"""
from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image

from fade_cli.core.errors import ImageError, InputError
from fade_cli.evaluation.outputs import HEADERS
from fade_cli.io.atomic import atomic_write
from fade_cli.io.files import confined_path, read_file_bytes, require_regular_file
from fade_cli.io.heatmap import COLORMAP, overlay_image_width
from fade_cli.io.images import MAX_PIXELS, load_image
from fade_cli.io.outputs import REPORT_FILE
from fade_cli.io.thumbnails import (
    THUMBNAILS_DIR,
    image_thumbnail,
    image_thumbnail_path,
    map_thumbnail,
    map_thumbnail_path,
    thumbnail_size,
    write_jpeg,
    write_thumbnails,
)
from fade_cli.report.header import run_header
from fade_cli.report.page import render_page
from fade_cli.report.runs import DEFECTIVE, Row, RunData, load_run

PAGE_FORMAT = 1
THUMBNAIL_THREADS = min(8, os.cpu_count() or 1)
HEATMAP_THUMBNAIL_DIR = f"{THUMBNAILS_DIR}/heatmap"
# A saved map is one float per pixel (at most float64) of an image within the pixel limit, plus the .npy header.
MAP_FILE_LIMIT = MAX_PIXELS * 8 + (1 << 16)


def build_report(
    run_dir: Path,
    out: Optional[Path] = None,
    images_root: Optional[Path] = None,
    threshold: Optional[float] = None,
    on_thumbnail: Optional[Callable[[], None]] = None,
) -> Path:
    """Write the report of the run in ``run_dir`` to ``out`` (default ``run_dir/report.html``); returns its path.

    ``threshold`` is where the threshold explorer starts (default: the run's own decisions; none for a run
    that made none). ``on_thumbnail`` is called once per row whose thumbnails were checked.
    """
    run = load_run(run_dir, images_root)
    return write_report(run, out if out is not None else run_dir / REPORT_FILE, threshold, on_thumbnail)


def write_report(run: RunData, out: Path, threshold: Optional[float] = None,
                 on_thumbnail: Optional[Callable[[], None]] = None) -> Path:
    """Make the run's missing thumbnails, then write its page to ``out``; returns ``out``."""
    files = make_missing_thumbnails(run, on_thumbnail)
    data = page_data(run, out.parent, threshold, files)
    page = render_page(data["title"], data)
    atomic_write(out, lambda handle: handle.write(page.encode("utf-8")))
    return out


def existing_files(run_dir: Path) -> set[str]:
    """The files under the run folder's picture folders, as posix paths relative to it (one walk, not a stat per row)."""
    found = set()
    for top in (THUMBNAILS_DIR, "heatmaps", "masks"):
        for folder, _, names in os.walk(run_dir / top):
            relative = Path(folder).relative_to(run_dir).as_posix()
            found.update(f"{relative}/{name}" for name in names)
    return found


def make_missing_thumbnails(run: RunData, on_thumbnail: Optional[Callable[[], None]] = None) -> set[str]:
    """Make the thumbnails rows lack, in threads (PIL releases the GIL while it decodes and resizes);
    returns the files then in the run's picture folders (see :func:`existing_files`)."""
    files = existing_files(run.run_dir)
    missing = [row for row in run.rows if row.error is None and not (
        image_thumbnail_path(row.path) in files and _map_thumbnail_of(row) in files)]
    if on_thumbnail is not None:
        for _ in range(len(run.rows) - len(missing)):
            on_thumbnail()

    def one(row: Row) -> None:
        _thumbnails_of(run, row, files)
        if on_thumbnail is not None:
            on_thumbnail()

    with ThreadPoolExecutor(max_workers=THUMBNAIL_THREADS) as pool:
        for _ in pool.map(one, missing):
            pass
    return existing_files(run.run_dir) if missing else files


def _map_thumbnail_of(row: Row) -> str:
    return map_thumbnail_path(row.path, "" if row.seed is None else f"seed{row.seed}")


def _heat_thumbnail_of(row: Row) -> str:
    return f"{HEATMAP_THUMBNAIL_DIR}/{row.path}.jpg"


def _thumbnails_of(run: RunData, row: Row, files: set[str]) -> None:
    has_image, has_map = image_thumbnail_path(row.path) in files, _map_thumbnail_of(row) in files
    image = _readable_source(row)
    if image is not None:
        write_thumbnails(run.run_dir, row.path, None if has_image else image, None)
        saved_map = _saved_map(run, row)
        if saved_map is not None and not has_map:
            write_jpeg(_thumbnail_file(run, _map_thumbnail_of(row)),
                       map_thumbnail(saved_map, thumbnail_size(*image.size)))
        return
    heatmap = _heatmap_picture(run, row) if _heat_thumbnail_of(row) not in files else None
    if heatmap is not None:  # no original: the heatmap (image and map blended) stands in for both
        write_jpeg(_thumbnail_file(run, _heat_thumbnail_of(row)), image_thumbnail(heatmap))


def _thumbnail_file(run: RunData, relative: str) -> Path:
    return confined_path(run.run_dir, relative, f"thumbnail of {run.run_dir}")


def _readable_source(row: Row) -> Optional[Image.Image]:
    if row.source is None or not row.source.is_file():
        return None
    try:
        return load_image(row.source)
    except ImageError:
        return None


def _saved_map(run: RunData, row: Row) -> Optional[np.ndarray]:
    if row.map_path is None or not (run.run_dir / row.map_path).is_file():
        return None
    try:
        data = read_file_bytes(run.run_dir / row.map_path, "saved map", MAP_FILE_LIMIT)
        saved = np.load(io.BytesIO(data), allow_pickle=False)
    except (InputError, OSError, ValueError, EOFError):
        return None
    return saved if saved.ndim == 2 and saved.dtype.kind == "f" else None


def _heatmap_picture(run: RunData, row: Row) -> Optional[Image.Image]:
    """The image part of a heatmap PNG (without its colour scale), or None."""
    if row.heatmap_path is None or not (run.run_dir / row.heatmap_path).is_file():
        return None
    try:
        picture = load_image(run.run_dir / row.heatmap_path)
    except ImageError:
        return None
    return picture.crop((0, 0, overlay_image_width(picture.width), picture.height))


def initial_threshold(rows: list[Row], given: Optional[float], recorded: Optional[float] = None
                      ) -> tuple[Optional[float], str]:
    """Where the threshold explorer starts, and why: the given value ("given"); else, for a run that made OK/NG
    decisions, the threshold it decided with ("run": as recorded, else a number between its highest OK and lowest
    NG score, None where its verdicts allow none); else nowhere ("none"): a run without verdicts shows none until
    a threshold is picked."""
    if given is not None:
        return given, "given"
    decided = [row for row in rows if row.verdict is not None and row.score is not None]
    if not decided:
        return None, "none"
    if recorded is not None:
        return recorded, "run"
    highest_ok = max((row.score for row in decided if row.verdict == "OK"), default=None)
    lowest_ng = min((row.score for row in decided if row.verdict == "NG"), default=None)
    if lowest_ng is None or (highest_ok is not None and highest_ok >= lowest_ng):
        return None, "run"  # all OK, or verdicts of several thresholds (a watch restarted with another)
    return short_threshold_between(highest_ok, lowest_ng), "run"


def short_threshold_between(low: Optional[float], high: float) -> float:
    """A threshold that decides as ``high`` does on scores at or below ``low`` and at or above ``high``, yet is no
    image's score: their midpoint, rounded to the fewest significant digits (3 or more) that keep it strictly
    between them. Without ``low`` (nothing scored below), a hundredth of ``high`` (or 0.001) below it stands in."""
    if low is None:
        low = high - max(abs(high) * 0.01, 1e-3)
    middle = (low + high) / 2
    for digits in range(3, 18):
        rounded = float(f"{middle:.{digits}g}")
        if low < rounded < high:
            return rounded
    return high  # two adjacent floats: nothing lies between them


def fitted_threshold(rows: list[Row]) -> Optional[dict]:
    """The what-if threshold of best F1 on the labelled rows (ground truth from folder names or a dataset):
    ``value`` lies between the lowest score it flags and the next lower score of any image; ``labelled`` is how
    many images it was fitted on. None without both labels."""
    scored = [row for row in rows if row.score is not None]
    best = best_f1_threshold(scored)
    if best is None:
        return None
    below = max((row.score for row in scored if row.score < best), default=None)
    return {"value": short_threshold_between(below, best), "labelled": sum(1 for row in scored if row.label)}


def best_f1_threshold(rows: list[Row]) -> Optional[float]:
    """The score that, as a threshold (NG at or above), gives the best F1 on labelled rows; None without both labels."""
    labelled = sorted(((row.score, row.label == DEFECTIVE) for row in rows if row.label), reverse=True)
    positives = sum(defective for _, defective in labelled)
    if positives == 0 or positives == len(labelled):
        return None
    best, best_f1, true_pos = None, -1.0, 0
    for index, (score, defective) in enumerate(labelled):
        true_pos += defective
        if index + 1 < len(labelled) and labelled[index + 1][0] == score:
            continue  # a threshold takes every row of the same score at once
        f1 = 2 * true_pos / (index + 1 + positives)
        if f1 > best_f1:
            best, best_f1 = score, f1
    return best


def page_data(run: RunData, report_dir: Path, threshold: Optional[float] = None,
              files: Optional[set[str]] = None) -> dict:
    """Everything the page shows, as JSON-ready values (paths relative to the report's folder).

    ``files`` are the run's pictures (:func:`existing_files`, scanned when not given).
    """
    header = run_header(run)
    recorded = header.pop("run_threshold")
    start, start_source = initial_threshold(run.rows, threshold, recorded)
    run_start, run_source = initial_threshold(run.rows, None, recorded)  # for "back to the run's verdicts"
    links = _Links(run.run_dir, report_dir, existing_files(run.run_dir) if files is None else files)
    return {
        "format": PAGE_FORMAT,
        "kind": run.kind,
        "title": _title(run),
        "run_dir": str(run.run_dir),
        "complete": run.complete,
        "threshold": start,
        "threshold_source": start_source,
        "run_threshold": run_start if run_source == "run" else None,
        "fitted": fitted_threshold(run.rows),
        "header": header,
        "colour_scale": [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in COLORMAP[::32].tolist() + [COLORMAP[-1].tolist()]],
        "has_labels": any(row.label for row in run.rows),
        "rows": [_row_data(run, row, links) for row in run.rows],
        "eval": _eval_data(run) if run.kind == "eval" else None,
    }


def _title(run: RunData) -> str:
    state = "" if run.complete else " (interrupted: finished images only)"
    return f"fade {run.kind}: {run.run_dir.resolve().name}{state}"


class _Links:
    """Paths as the page links them: relative to the report's folder (posix), for files that exist."""

    def __init__(self, run_dir: Path, report_dir: Path, files: set[str]):
        self.report_dir = report_dir.absolute()
        self.files = files
        self.folders: dict[str, str] = {}
        self.run_prefix = self._folder(str(run_dir.absolute()))

    def _folder(self, folder: str) -> str:
        if folder not in self.folders:
            relative = Path(os.path.relpath(folder, self.report_dir)).as_posix()
            self.folders[folder] = "" if relative == "." else relative + "/"
        return self.folders[folder]

    def run_file(self, relative: Optional[str]) -> Optional[str]:
        """A file of the run's picture folders, or None where it does not exist."""
        if relative is None or relative not in self.files:
            return None
        return self.run_prefix + relative

    def outside(self, path: Optional[Path]) -> Optional[str]:
        """Any other file (an original image), or None where it does not exist."""
        if path is None or not os.path.isfile(path):
            return None
        absolute = os.path.abspath(path)
        return self._folder(os.path.dirname(absolute)) + os.path.basename(absolute)


def _row_data(run: RunData, row: Row, links: _Links) -> dict:
    item = {
        "path": row.path,
        "group": row.group,
        "score": row.score,
        "language_score": row.language_score,
        "vision_score": row.vision_score,
        "error": row.error,
        "run_verdict": row.verdict,
        "label": row.label,
        "defect": row.defect,
        "seed": row.seed,
        "thumb": links.run_file(image_thumbnail_path(row.path)),
        "map_thumb": links.run_file(_map_thumbnail_of(row)),
        "heat_thumb": links.run_file(_heat_thumbnail_of(row)),
        "source": links.outside(row.source),
        "map_path": row.map_path,
        "heatmap": links.run_file(row.heatmap_path),
        "mask": links.run_file(row.mask_path),
        "regions": row.regions,
        "size": _mask_size(run, row),
    }
    return {key: value for key, value in item.items() if value is not None}


def _mask_size(run: RunData, row: Row) -> Optional[list[int]]:
    """The image's (width, height), read from its mask's header: where region boxes are drawn."""
    if row.mask_path is None or not row.regions:
        return None
    path = run.run_dir / row.mask_path
    try:
        require_regular_file(path, "mask")  # PIL would block on a FIFO
        with Image.open(path) as mask:
            return list(mask.size)
    except (InputError, OSError, ValueError):
        return None


def _eval_data(run: RunData) -> dict:
    metrics = run.metrics or {}
    return {
        "metrics": metrics.get("metrics", []),
        "headers": HEADERS,
        "classes": metrics.get("classes", {}),
        "mean": {key: metrics.get("mean", {}).get(key) for key in ("mean", "std")},
        "runs": [{"class": entry.get("class"), "seed": entry.get("seed"), "metrics": entry.get("metrics"),
                  "counts": entry.get("counts")} for entry in metrics.get("runs", []) if isinstance(entry, dict)],
        "curves": run.curves,
    }
