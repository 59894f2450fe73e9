"""The output folder of a run: results tables, raw maps and heatmaps.

Layout (sub-folders of the input are mirrored; the full input file name is
kept, so ``a.png`` and ``a.jpg`` never collide)::

    OUT/results.csv  OUT/results.jsonl
    OUT/maps/<relative path>.npy       float32 map
    OUT/heatmaps/<relative path>.png   image with the map overlaid

Every file is written under a temporary name and renamed into place, so a
crash, a full disk or Ctrl-C never leaves a half-written file. Rows are also
appended to ``results.partial.jsonl`` as images finish, so an interrupted run
keeps what it did.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
from PIL import Image

from fade_cli.engine.result import Detection
from fade_cli.errors import FadeError, InputError
from fade_cli.io.heatmap import overlay, upsample_map

RESULT_FILES = ("results.csv", "results.jsonl")
PARTIAL_FILE = "results.partial.jsonl"


@dataclass
class ResultRow:
    """One line of results.csv / results.jsonl."""

    path: str
    score: Optional[float] = None
    language_score: Optional[float] = None
    vision_score: Optional[float] = None
    verdict: Optional[str] = None
    map_path: Optional[str] = None
    heatmap_path: Optional[str] = None
    error: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)


FIELDS = list(ResultRow.__dataclass_fields__)


class OutputError(FadeError):
    """Writing results failed (disk full, permissions)."""

    exit_code = 3


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write through a temporary file in the same folder, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise


def rows_to_csv(rows: Iterable[ResultRow]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.to_dict().items()})
    return buffer.getvalue().encode("utf-8")


def rows_to_jsonl(rows: Iterable[ResultRow]) -> bytes:
    return "".join(json.dumps(row.to_dict(), ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def refuse_existing_results(out_dir: Path) -> None:
    """Raise if ``out_dir`` already holds a run's results (no silent overwrite)."""
    existing = [name for name in RESULT_FILES if (out_dir / name).exists()]
    if existing:
        raise InputError(
            f"{out_dir} already holds results ({', '.join(existing)}); choose another --out or pass --overwrite"
        )


class RunOutput:
    """Writes one run's outputs into ``out_dir``; refuses to clobber earlier results unless asked."""

    def __init__(
        self,
        out_dir: Path,
        overwrite: bool = False,
        map_size: Optional[int] = None,
        save_maps: bool = True,
        save_heatmaps: bool = True,
    ):
        self.out_dir = out_dir
        self.map_size = map_size
        self.save_maps = save_maps
        self.save_heatmaps = save_heatmaps
        if not overwrite:
            refuse_existing_results(out_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            self._partial = open(out_dir / PARTIAL_FILE, "w", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot create output folder {out_dir}: {exc.strerror or exc}") from exc
        self.rows: list[ResultRow] = []

    def write_image(self, relative: str, image: Image.Image, detection: Detection) -> tuple[Optional[str], Optional[str]]:
        """Save the map and the heatmap of one image; returns their paths relative to the output folder."""
        map_rel = heat_rel = None
        if self.save_maps:
            map_rel = f"maps/{relative}.npy"
            size = (self.map_size, self.map_size) if self.map_size else (image.height, image.width)
            saved = upsample_map(detection.anomaly_map, *size)
            atomic_write(self.out_dir / map_rel, lambda handle: np.save(handle, saved, allow_pickle=False))
            del saved
        if self.save_heatmaps:
            heat_rel = f"heatmaps/{relative}.png"
            picture = overlay(image, upsample_map(detection.anomaly_map, image.height, image.width))
            atomic_write(self.out_dir / heat_rel, lambda handle: picture.save(handle, format="PNG"))
        return map_rel, heat_rel

    def add(self, row: ResultRow) -> None:
        """Record a finished image (also appended to the partial file at once)."""
        self.rows.append(row)
        try:
            self._partial.write(json.dumps(row.to_dict(), ensure_ascii=False) + "\n")
            self._partial.flush()
        except OSError as exc:
            raise OutputError(f"cannot write {self.out_dir / PARTIAL_FILE}: {exc.strerror or exc}") from exc

    def finish(self) -> None:
        """Write results.csv and results.jsonl atomically and drop the partial file."""
        self._partial.close()
        atomic_write(self.out_dir / "results.jsonl", lambda h: h.write(rows_to_jsonl(self.rows)))
        atomic_write(self.out_dir / "results.csv", lambda h: h.write(rows_to_csv(self.rows)))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.out_dir / PARTIAL_FILE)
