"""The audit trail of a service (``--archive DIR``): each request's image and its result row.

Layout, so that a shift can be re-scored (``fade detect DIR/images --bank ...``) or read
like any run's results::

    DIR/images/<YYYY-MM-DD>/<HHMMSS>-<request>-<n>-<name>.<ext>   the bytes the client sent
    DIR/results.jsonl                                              one row per image, detect's format

Each image is written atomically before its row is appended (one whole line, flushed to
disk), so every row names an image that is there. A row's ``path`` is relative to
``DIR/images``, as `fade detect DIR/images` would name it. The client's file name is
kept in the archived name only after reducing it to safe characters: no request can
name a path here.

``DIR/serve-archive.txt`` marks the folder as an archive: an archive is appended to across
restarts, and a folder holding another command's results (a `fade detect` run, a watch's
output) is refused, as `fade watch` refuses one (:func:`refuse_results_of_other_runs`).
"""
from __future__ import annotations

import dataclasses
import datetime
import io
import os
import re
import uuid
from pathlib import Path

from PIL import Image

from fade_cli.io.atomic import atomic_write
from fade_cli.io.images import decode_image_bytes
from fade_cli.io.outputs import ResultRow
from fade_cli.runs.watch_log import ARCHIVE_FILE, RESULTS_FILE, RUN_RESULT_FILES, ResultsLog, refuse_results_of_other_runs

IMAGES = "images"
# PIL formats kept as sent, under the extension `fade detect` looks for; anything else is kept as PNG.
KEPT_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}
UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME = 48


class Archive:
    """Keeps uploads and their rows under one folder (created if missing; appended to after a restart)."""

    def __init__(self, folder: Path):
        self.folder = folder
        refuse_foreign_folder(folder)
        self.log = ResultsLog(folder, save_maps=False, save_heatmaps=False)
        if not (folder / ARCHIVE_FILE).exists():
            text = "The audit trail of `fade serve --archive`: images/ and their rows in results.jsonl.\n"
            atomic_write(folder / ARCHIVE_FILE, lambda handle: handle.write(text.encode("utf-8")))

    def keep_all(self, uploads: list[tuple[str, bytes]], rows: list[ResultRow]) -> None:
        """Keep one request's images and rows, in order (called from one thread at a time)."""
        now = datetime.datetime.now()
        request = uuid.uuid4().hex[:12]
        for index, ((label, data), row) in enumerate(zip(uploads, rows)):
            data, extension = _as_kept(data)
            relative = f"{now:%Y-%m-%d}/{now:%H%M%S}-{request}-{index}-{_safe_name(label)}{extension}"
            atomic_write(self.folder / IMAGES / relative, lambda handle: handle.write(data))
            self.log.add(dataclasses.replace(row, path=relative))


def refuse_foreign_folder(folder: Path) -> None:
    """Refuse a folder holding another command's results (InputError); an archive, or a new folder, is fine."""
    if _is_unmarked_archive(folder):
        return
    refuse_results_of_other_runs(folder, ARCHIVE_FILE, "archive folder")


def _is_unmarked_archive(folder: Path) -> bool:
    """An archive written before archives were marked: results.jsonl and images/, and no other run's files."""
    others = [name for name in RUN_RESULT_FILES if name != RESULTS_FILE]
    return ((folder / RESULTS_FILE).is_file() and (folder / IMAGES).is_dir()
            and not any(os.path.lexists(folder / name) for name in others))


def _safe_name(label: str) -> str:
    stem = Path(label.replace("\\", "/")).stem
    return UNSAFE.sub("_", stem).strip("._")[:MAX_NAME] or "image"


def _as_kept(data: bytes) -> tuple[bytes, str]:
    """The bytes and extension to keep: as sent for the formats `fade detect` finds, else the decoded image as PNG."""
    with Image.open(io.BytesIO(data)) as opened:
        extension = KEPT_FORMATS.get(opened.format or "")
    if extension is not None:
        return data, extension
    buffer = io.BytesIO()
    decode_image_bytes(data, "upload").save(buffer, format="PNG")
    return buffer.getvalue(), ".png"
