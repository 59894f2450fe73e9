"""The output folder of a run: results tables, raw maps and heatmaps.

Layout (sub-folders of the input are mirrored; the full input file name is
kept, so ``a.png`` and ``a.jpg`` never collide)::

    OUT/results.csv  OUT/results.jsonl
    OUT/maps/<relative path>.npy       float32 map
    OUT/heatmaps/<relative path>.png   image with the map overlaid
    OUT/masks/<relative path>.png      binary defect mask (0/255), with a pixel threshold
    OUT/thumbnails/...                 small pictures for the report (:mod:`fade_cli.io.thumbnails`)
    OUT/run.json                       how the engine ran: fade version, device, model, precision and why

With a pixel threshold, ``regions`` lists the defects of an image: 8-connected
areas of the mask, each ``{"bbox": [x0, y0, x1, y1], "area": pixels, "peak": max
map value}`` (``bbox`` as PIL's crop box: x1, y1 exclusive). In results.csv that
list is one JSON-encoded cell.

Every file is written under a temporary name and renamed into place, so a
crash, a full disk or Ctrl-C never leaves a half-written file. Rows are also
appended to ``results.partial.jsonl`` as images finish, so an interrupted run
keeps what it did: a later run refuses that folder, finishes the run
(``resumed=`` rows from :func:`rows_to_resume`) or, with ``overwrite``, removes
what the earlier run wrote, as its manifest ``.fade-written`` lists
(:func:`clear_previous_outputs`), and nothing else. ``run-settings.json`` holds what the run was
asked, for a resume to compare. Callers hold the folder's lock
(:mod:`fade_cli.io.folder_lock`) while writing.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
from PIL import Image

from fade_cli.core import strict_json
from fade_cli.engine.result import Detection
from fade_cli.core.errors import InputError
from fade_cli.io.atomic import OutputError, atomic_write, describe_write_failure
from fade_cli.io.files import read_file_bytes
from fade_cli.io.heatmap import overlay, upsample_map
from fade_cli.io.images import escape_undecodable
from fade_cli.io.manifest import record_written, remove_written, written_files
from fade_cli.io.thumbnails import image_thumbnail_path, map_thumbnail_path, write_thumbnails
from fade_cli.core.memory import check_map_size

# Results and state files of a run are read whole; one larger than this is not a fade run's.
RUN_FILE_LIMIT = 4 << 30

RESULT_FILES = ("results.csv", "results.jsonl")
RUN_INFO_FILE = "run.json"
PARTIAL_FILE = "results.partial.jsonl"
SETTINGS_FILE = "run-settings.json"  # what the run was asked to do: a --resume must ask the same
RUN_FILES = (*RESULT_FILES, PARTIAL_FILE)
REPORT_FILE = "report.html"  # written by fade_cli.report, with the pictures in thumbnails/
RUN_OUTPUT_FILES = (*RUN_FILES, SETTINGS_FILE, RUN_INFO_FILE, REPORT_FILE)  # the fixed names of a detect run's files
PNG_COMPRESS_LEVEL = 1


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
    mask_path: Optional[str] = None
    regions: Optional[list[dict]] = None
    error: Optional[str] = None
    roi: Optional[dict] = None  # the inspection region used ({"file", "sha256"}); runs without one have no such field

    def to_dict(self) -> dict:
        values = asdict(self)
        if values["roi"] is None:
            del values["roi"]
        return values


FIELDS = [name for name in ResultRow.__dataclass_fields__ if name != "roi"]


# Characters that JSON leaves raw but Python's str.splitlines (and other readers) take for line breaks.
_LINE_BREAKS_JSON_KEEPS = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_ESCAPE_LINE_BREAKS = str.maketrans(_LINE_BREAKS_JSON_KEEPS)


def json_text(value: Any) -> str:
    """``value`` as one line of JSON whatever file names it holds.

    Names that are not valid UTF-8 become JSON escapes (never a crash), and so do the
    characters that are line breaks to some readers (U+0085, U+2028, U+2029), so that
    a line is a line to every reader of a JSON-lines file.
    """
    return escape_undecodable(strict_json.dumps(value)).translate(_ESCAPE_LINE_BREAKS)


def json_line(row: ResultRow) -> str:
    """One row as a JSON line (see :func:`json_text`)."""
    return json_text(row.to_dict())


def read_json_lines(path: Path) -> list[str]:
    """The lines of a JSON-lines file, split at newlines only (never at U+2028 or the like inside a name)."""
    text = read_file_bytes(path, "JSON-lines file", RUN_FILE_LIMIT).decode("utf-8", "surrogateescape")
    return [line for line in text.split("\n") if line.strip()]


def csv_cells(row: ResultRow) -> dict:
    """A row's CSV cells: empty for missing values, undecodable file names shown with backslash escapes."""
    def cell(value):
        if value is None:
            return ""
        if isinstance(value, (list, dict)):
            return strict_json.dumps(value, separators=(",", ":"), ensure_ascii=True)
        return escape_undecodable(value) if isinstance(value, str) else value
    return {key: cell(value) for key, value in row.to_dict().items()}


def csv_bytes(fields: Sequence[str], rows: Iterable[dict[str, Any]]) -> bytes:
    """A CSV file's content: a header of ``fields``, then one line per row (missing values empty)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row.get(key) for key in fields})
    return buffer.getvalue().encode("utf-8")


def rows_to_csv(rows: Iterable[ResultRow]) -> bytes:
    rows = list(rows)
    fields = FIELDS + (["roi"] if any(row.roi is not None for row in rows) else [])
    return csv_bytes(fields, (csv_cells(row) for row in rows))


def rows_to_jsonl(rows: Iterable[ResultRow]) -> bytes:
    return "".join(json_line(row) + "\n" for row in rows).encode("utf-8")


def refuse_existing_results(out_dir: Path, names: Iterable[str] = RUN_FILES, what: str = "results",
                            resumable: bool = True) -> None:
    """Raise if ``out_dir`` already holds any of ``names`` (a run's results, an eval report): no silent overwrite.

    The partial results of an interrupted run count: a new run must not truncate them.
    """
    existing = [name for name in names if (out_dir / name).exists()]
    if existing:
        interrupted = " of an interrupted run" if PARTIAL_FILE in existing else ""
        ways = "pass --resume to finish it, or --overwrite" if interrupted and resumable else "pass --overwrite"
        raise InputError(f"{out_dir} already holds {what}{interrupted} ({', '.join(existing)}); "
                         f"choose another --out or {ways}")


def clear_previous_outputs(out_dir: Path, fixed_names: Iterable[str],
                           named_by_results: Callable[[Path, set[str]], Iterable[str]]) -> None:
    """Remove what earlier fade runs wrote into ``out_dir`` (``--overwrite``), and nothing else.

    Removed: the files its manifest lists (:mod:`fade_cli.io.manifest`), and the files that fade's own
    results name at the paths fade gives them (``named_by_results(out_dir, fade's files)``: files Ray
    workers wrote are not in the manifest). A folder written by a fade older than the manifest has
    none: then ``fixed_names`` (the command's own result files) count as fade's files. A file of the
    user's beside them, or in maps/ or masks/, stays.
    """
    listed = written_files(out_dir)
    fade_files = set(fixed_names) if listed is None else set(listed)
    try:
        known = [*(fade_files if listed is None else ()), *named_by_results(out_dir, fade_files)]
        remove_written(out_dir, known)
    except OSError as exc:
        raise OutputError(f"cannot remove the earlier results in {out_dir}: {describe_write_failure(exc)}",
                          exc.errno) from exc


def json_entries(path: Path) -> Iterator[dict]:
    """The JSON objects of a JSON-lines file that is there; lines that are not one (cut short by a kill) are skipped.

    A file that is not there (or not a regular file: read_json_lines refuses it) has none."""
    with contextlib.suppress(OSError, InputError):
        for line in read_json_lines(path):
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    yield entry


def files_named_by_rows(out_dir: Path, fade_files: set[str]) -> Iterator[str]:
    """The files that the rows of fade's results in ``out_dir`` name where fade writes them (maps, heatmaps,
    masks, thumbnails of each row's image): a path a row gives elsewhere is not provably fade's."""
    for name in ("results.jsonl", PARTIAL_FILE):
        if name not in fade_files:
            continue
        for entry in json_entries(out_dir / name):
            relative = entry.get("path")
            if not isinstance(relative, str):
                continue
            own = {"map_path": f"maps/{relative}.npy", "heatmap_path": f"heatmaps/{relative}.png",
                   "mask_path": f"masks/{relative}.png"}
            yield from (path for key, path in own.items() if entry.get(key) == path)
            yield from (image_thumbnail_path(relative), map_thumbnail_path(relative))


def write_run_info(out_dir: Path, info: dict[str, Any]) -> None:
    """OUT/run.json: how the results were computed (``FadeEngine.run_info``) and by which fade."""
    from fade_cli import __version__

    # escape_undecodable: the command line may name a file whose name is not UTF-8
    text = escape_undecodable(json.dumps({"fade_version": __version__, **info}, indent=2, ensure_ascii=False)) + "\n"
    atomic_write(out_dir / RUN_INFO_FILE, lambda handle: handle.write(text.encode("utf-8")))


def write_png(path: Path, picture: Image.Image) -> None:
    """Save a PNG atomically, at zlib level 1: 3 to 4 times faster than PIL's default level 6 for
    files 5 to 20 % larger, which keeps heatmap writing off the critical path of a GPU run."""
    atomic_write(path, lambda handle: picture.save(handle, format="PNG", compress_level=PNG_COMPRESS_LEVEL))


class ImageWriter:
    """Writes the files of each image (map, heatmap, mask) into ``out_dir``.

    :class:`RunOutput` (``fade detect``) and the results log of ``fade watch`` add
    the results tables on top of it. Calls for different images may run in
    ``writer_threads`` threads at once: each writes only its own files.
    """

    # PNG encoding (zlib) and the numpy work release the GIL, so threads scale.
    writer_threads = min(8, os.cpu_count() or 1)

    def __init__(
        self,
        out_dir: Path,
        map_size: Optional[int] = None,
        save_maps: bool = True,
        save_heatmaps: bool = True,
        save_thumbnails: bool = False,
    ):
        check_map_size(map_size if save_maps else None, self.writer_threads)
        self.out_dir = out_dir
        self.map_size = map_size
        self.save_maps = save_maps
        self.save_heatmaps = save_heatmaps
        self.save_thumbnails = save_thumbnails

    def write_image(self, relative: str, image: Image.Image, detection: Detection) -> tuple[Optional[str], Optional[str]]:
        """Save the map, the heatmap (and the thumbnails) of one image; returns the map's and the heatmap's
        paths relative to the output folder."""
        map_rel = heat_rel = None
        # The image-size map serves both files; it is computed once (a 40-megapixel photo's map is 160 MB).
        at_image_size = None
        if self.save_heatmaps or (self.save_maps and not self.map_size):
            at_image_size = upsample_map(detection.anomaly_map, image.height, image.width)
        if self.save_maps:
            map_rel = f"maps/{relative}.npy"
            saved = upsample_map(detection.anomaly_map, self.map_size, self.map_size) if self.map_size else at_image_size
            atomic_write(self.out_dir / map_rel, lambda handle: np.save(handle, saved, allow_pickle=False))
            del saved
        if self.save_heatmaps:
            heat_rel = f"heatmaps/{relative}.png"
            picture = overlay(image, at_image_size)
            del at_image_size
            write_png(self.out_dir / heat_rel, picture)
        if self.save_thumbnails:  # from the decoded image in memory: no second decode for the report
            write_thumbnails(self.out_dir, relative, image, detection.anomaly_map)
        return map_rel, heat_rel

    def write_mask(self, relative: str, mask_hw: np.ndarray) -> str:
        """Save a boolean defect mask as a 0/255 PNG; returns its path relative to the output folder."""
        mask_rel = f"masks/{relative}.png"
        picture = Image.fromarray(mask_hw.astype(np.uint8) * 255)  # 2-D uint8: mode L
        write_png(self.out_dir / mask_rel, picture)
        return mask_rel


class RunOutput(ImageWriter):
    """Writes one run's outputs into ``out_dir``; refuses to clobber earlier results unless asked.

    ``overwrite``: what earlier runs wrote (results, maps, heatmaps, masks; not the user's
    files beside them) is removed first, so no stale file is left beside the new rows. ``resumed``: the rows
    of an interrupted run (from :func:`rows_to_resume`) are kept and the run adds the
    rest; the final results are those of one uninterrupted run. ``settings`` (what the
    run was asked, as JSON values) are saved for a later ``--resume`` to compare.
    """

    def __init__(
        self,
        out_dir: Path,
        overwrite: bool = False,
        map_size: Optional[int] = None,
        save_maps: bool = True,
        save_heatmaps: bool = True,
        save_thumbnails: bool = False,
        resumed: Optional[list[ResultRow]] = None,
        settings: Optional[dict[str, Any]] = None,
        run_info: Optional[dict[str, Any]] = None,
    ):
        super().__init__(out_dir, map_size, save_maps, save_heatmaps, save_thumbnails)
        self.run_info = run_info
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create output folder {out_dir}: {exc.strerror or exc}") from exc
        self.resumed = resumed is not None
        self.rows: list[ResultRow] = list(resumed or [])
        if overwrite and not self.resumed:
            clear_previous_outputs(out_dir, RUN_OUTPUT_FILES, files_named_by_rows)
        elif not self.resumed:
            refuse_existing_results(out_dir)
        if settings is not None:
            atomic_write(out_dir / SETTINGS_FILE, lambda handle: handle.write((json_text(settings) + "\n").encode()))
        if self.rows:  # the rows kept, written whole (a crash now loses none of them); the run appends to them
            atomic_write(out_dir / PARTIAL_FILE, lambda handle: handle.write(rows_to_jsonl(self.rows)))
        try:
            record_written(out_dir / PARTIAL_FILE)
            self._partial = open(out_dir / PARTIAL_FILE, "a" if self.rows else "w", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot write {out_dir / PARTIAL_FILE}: {describe_write_failure(exc)}",
                              exc.errno) from exc

    def add(self, row: ResultRow) -> None:
        """Record a finished image (also appended to the partial file at once)."""
        self.rows.append(row)
        try:
            self._partial.write(json_line(row) + "\n")
            self._partial.flush()
        except OSError as exc:
            raise OutputError(f"cannot write {self.out_dir / PARTIAL_FILE}: {describe_write_failure(exc)}",
                              exc.errno) from exc

    def finish(self) -> None:
        """Write results.csv and results.jsonl atomically and drop the partial file.

        If that fails (a full disk), the partial file is kept: it holds every finished row.
        """
        if self.resumed:
            self.rows.sort(key=lambda row: row.path)  # the order of an uninterrupted run: files sorted by path
        try:
            self._partial.close()
            atomic_write(self.out_dir / "results.jsonl", lambda h: h.write(rows_to_jsonl(self.rows)))
            atomic_write(self.out_dir / "results.csv", lambda h: h.write(rows_to_csv(self.rows)))
            if self.run_info is not None:
                write_run_info(self.out_dir, self.run_info)
        except (OSError, OutputError) as exc:
            reason = describe_write_failure(exc) if isinstance(exc, OSError) else str(exc)
            kept = self.out_dir / PARTIAL_FILE
            raise OutputError(f"{reason}; the {len(self.rows)} finished row(s) are kept in {kept}") from exc
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.out_dir / PARTIAL_FILE)


def rows_to_resume(out_dir: Path, relatives: Iterable[str], settings: Optional[dict[str, Any]] = None) -> list[ResultRow]:
    """The scored rows an earlier run left in ``out_dir`` (``--resume``), for the images in ``relatives``.

    Read from results.partial.jsonl (an interrupted run), else results.jsonl (a finished one).
    Rows without a score (unreadable images) are left out: those images are tried again. With
    ``settings``, the earlier run must have been asked the same (InputError naming what differs).
    """
    _check_same_settings(out_dir, settings)
    source = next((out_dir / name for name in (PARTIAL_FILE, "results.jsonl") if (out_dir / name).is_file()), None)
    if source is None:
        return []
    wanted = set(relatives)
    return [row for row in _read_rows(source) if row.path in wanted and row.score is not None]


def _read_rows(path: Path) -> list[ResultRow]:
    try:
        lines = read_file_bytes(path, "results file", RUN_FILE_LIMIT).decode("utf-8").split("\n")
    except (InputError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path} to resume: {exc}") from exc
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        lines.pop()  # cut short by a kill: that image is scored again
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
            rows.append(ResultRow(**{key: entry.get(key) for key in (*FIELDS, "roi")}))
        except (ValueError, TypeError, AttributeError) as exc:
            raise InputError(f"{path} line {number} is not a result row; cannot resume from it "
                             "(remove the line, or start again with --overwrite)") from exc
        if not isinstance(rows[-1].path, str) or not (rows[-1].score is None or isinstance(rows[-1].score, (int, float))):
            raise InputError(f"{path} line {number} is not a result row; cannot resume from it")
    return rows


def _check_same_settings(out_dir: Path, settings: Optional[dict[str, Any]]) -> None:
    path = out_dir / SETTINGS_FILE
    if settings is None or not path.is_file():
        return
    try:
        previous = json.loads(read_file_bytes(path, "settings file").decode("utf-8"))
    except (InputError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}; cannot tell what the interrupted run was asked") from exc
    if not isinstance(previous, dict):
        raise InputError(f"{path} is damaged; cannot tell what the interrupted run was asked")
    differ = sorted(key for key in set(previous) | set(settings) if previous.get(key) != settings.get(key))
    if differ:
        raise InputError(f"--resume continues a run with the same options, but these differ from the interrupted "
                         f"run's ({path}): {', '.join(differ)}")
