"""Reading a run's output folder (``fade detect``, ``fade watch`` or ``fade eval``) for its report.

The files were written by fade, but they are read as untrusted input: every
field is checked for its type and range, and an error names the file, the line
and the field. An interrupted detect run is read from ``results.partial.jsonl``;
an unfinished last line (a crash during an append) is left out.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from fade_cli.core.errors import InputError
from fade_cli.io.files import confined_path, read_file_bytes
from fade_cli.io.outputs import PARTIAL_FILE, RUN_FILE_LIMIT, ResultRow
from fade_cli.io.thumbnails import THUMBNAILS_DIR

RESULTS_FILE = "results.jsonl"
WATCH_STATE_FILE = "watch-state.jsonl"
METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.csv"
CURVES_FILE = "curves.json"
GOOD = "good"
DEFECTIVE = "defective"
# Generous bounds on what a results file may hold; a larger one is not a fade run.
MAX_LINE_CHARS = 1_000_000
MAX_ROWS = 2_000_000
JSON_FILE_LIMIT = 1 << 30  # metrics.json, curves.json
# The folder a row's ``path`` names pictures in: a path that leaves it would have its thumbnails written elsewhere.
_IMAGE_THUMBNAILS = f"{THUMBNAILS_DIR}/image"
_RUN_FILE_FIELDS = ("map_path", "heatmap_path", "mask_path")

_TEXT_FIELDS = ("path", "verdict", "map_path", "heatmap_path", "mask_path", "error")
_SCORE_FIELDS = ("score", "language_score", "vision_score")
_VERDICTS = (None, "OK", "NG")


@dataclass
class Row(ResultRow):
    """One image of a run as the report shows it: a results row (paths relative to the run folder,
    posix), its sub-folder or class, and what is known beyond it."""

    group: str = ""
    label: Optional[str] = None  # GOOD / DEFECTIVE when the ground truth is known
    defect: Optional[str] = None
    seed: Optional[int] = None
    source: Optional[Path] = None  # the original image file, where known


@dataclass
class RunData:
    """What a report is made of: the rows, and for an eval run its metrics and curves."""

    kind: str  # "detect", "watch" or "eval"
    run_dir: Path
    rows: list[Row]
    complete: bool = True
    metrics: Optional[dict] = None  # metrics.json, as read
    curves: list[dict] = field(default_factory=list)  # curves.json "runs"


def load_run(run_dir: Path, images_root: Optional[Path] = None) -> RunData:
    """Read the run in ``run_dir``; ``images_root`` is where a detect/watch run's images are (optional)."""
    if not run_dir.is_dir():
        raise InputError(f"{run_dir} is not a folder")
    # exists(), not is_file(): a FIFO or a folder in a run file's place is named as such when it is read.
    if (run_dir / METRICS_FILE).exists():
        return _load_eval(run_dir)
    results, complete = run_dir / RESULTS_FILE, True
    if not results.exists():
        results, complete = run_dir / PARTIAL_FILE, False
    if not results.exists():
        raise InputError(f"{run_dir} holds no results of fade detect, watch or eval "
                         f"({RESULTS_FILE}, {PARTIAL_FILE} or {METRICS_FILE})")
    kind = "watch" if (run_dir / WATCH_STATE_FILE).exists() else "detect"
    folder = images_root is not None and images_root.is_dir()
    rows = [_detect_row(record, results, number, images_root, folder, run_dir)
            for number, record in _json_lines(results)]
    _label_from_folders(rows)
    return RunData(kind, run_dir, rows, complete=complete)


def _json_lines(path: Path):
    """(line number, object) of each line; an unfinished last line is skipped."""
    text = read_file_bytes(path, "results file", RUN_FILE_LIMIT).decode("utf-8", errors="surrogateescape")
    lines = text.split("\n")
    torn_tail = not text.endswith("\n")
    if len(lines) > MAX_ROWS:
        raise InputError(f"{path} has more than {MAX_ROWS} lines")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_CHARS:
            raise InputError(f"{path}, line {number}: longer than {MAX_LINE_CHARS} characters")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if torn_tail and number == len(lines):
                return  # a run stopped in the middle of writing this line
            raise InputError(f"{path}, line {number}: not JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise InputError(f"{path}, line {number}: not a JSON object")
        yield number, record


def _detect_row(record: dict, file: Path, number: int, images_root: Optional[Path], root_is_folder: bool,
                run_dir: Path) -> Row:
    where = f"{file}, line {number}"
    values: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        values[name] = _text(record.get(name), where, name, required=name == "path")
    for name in _SCORE_FIELDS:
        values[name] = _score(record.get(name), where, name)
    if values["verdict"] not in _VERDICTS:
        raise InputError(f"{where}: verdict must be OK or NG, not {values['verdict']!r}")
    regions = record.get("regions")
    if regions is not None:
        regions = [_region(region, where) for region in _list(regions, where, "regions")]
    path = values["path"]
    row = Row(group=folder_of(path), regions=regions, **values)
    try:
        _check_row_path(run_dir, path, where, "path")
        for name in _RUN_FILE_FIELDS:
            if values[name] is not None:
                confined_path(run_dir, values[name], f"{where}: {name}")
        # one file given: the run's only image
        row.source = confined_path(images_root, path, f"{where}: path") if root_is_folder else images_root
    except InputError as exc:
        _refuse_paths(row, exc)
    return row


def _check_row_path(run_dir: Path, path: str, where: str, name: str) -> None:
    """A row's image path names its thumbnails in the run folder: it must stay inside their folder."""
    confined_path(run_dir / _IMAGE_THUMBNAILS, path, f"{where}: {name}")


def _refuse_paths(row: Row, exc: InputError) -> None:
    """A row whose paths lead out of their folders: an error row whose files are never read nor written."""
    row.error = f"{row.error}; {exc}" if row.error else str(exc)
    row.source = row.map_path = row.heatmap_path = row.mask_path = None


def folder_of(path: str) -> str:
    """The sub-folder of a relative path ('' at the top)."""
    return path.rpartition("/")[0]


def _label_from_folders(rows: list[Row]) -> None:
    """Ground truth from the folder names: a folder named ``good`` beside folders of other names."""
    def is_good(row: Row) -> bool:
        return GOOD in row.path.split("/")[:-1]

    good = [is_good(row) for row in rows]
    if any(good) and not all(good):
        for row, row_good in zip(rows, good):
            row.label = GOOD if row_good else DEFECTIVE


def _load_eval(run_dir: Path) -> RunData:
    metrics_file = run_dir / METRICS_FILE
    metrics = _json_file(metrics_file)
    for key in ("runs", "classes", "mean", "metrics"):
        if key not in metrics:
            raise InputError(f"{metrics_file}: no {key!r}: not a report of fade eval")
    root = _dataset_root(metrics, metrics_file)
    scores_file = run_dir / SCORES_FILE
    if not scores_file.exists():
        raise InputError(f"{run_dir} has {METRICS_FILE} but no {SCORES_FILE}")
    rows = [_eval_row(record, scores_file, number, root, run_dir) for number, record in _csv_rows(scores_file)]
    curves_file = run_dir / CURVES_FILE
    curves = _json_file(curves_file).get("runs", []) if curves_file.exists() else []
    curves = [_curve_entry(entry, curves_file) for entry in _list(curves, str(curves_file), "runs")]
    return RunData("eval", run_dir, rows, complete=metrics.get("complete", True) is not False,
                   metrics=metrics, curves=curves)


def _json_file(path: Path) -> dict:
    try:
        document = json.loads(read_file_bytes(path, "run file", JSON_FILE_LIMIT).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise InputError(f"{path}: not a JSON object")
    return document


def _dataset_root(metrics: dict, where: Path) -> Optional[Path]:
    dataset = metrics.get("dataset")
    root = dataset.get("root") if isinstance(dataset, dict) else None
    return Path(_text(root, str(where), "dataset.root")) if root is not None else None


def _csv_rows(path: Path):
    text = read_file_bytes(path, "scores file", RUN_FILE_LIMIT).decode("utf-8", errors="surrogateescape")
    for number, record in enumerate(csv.DictReader(io.StringIO(text, newline="")), start=2):
        if number > MAX_ROWS:
            raise InputError(f"{path} has more than {MAX_ROWS} rows")
        yield number, record


def _eval_row(record: dict, file: Path, number: int, root: Optional[Path], run_dir: Path) -> Row:
    where = f"{file}, line {number}"
    path = _text(record.get("image"), where, "image", required=True)
    label = record.get("label")
    if label not in ("0", "1"):
        raise InputError(f"{where}: label must be 0 or 1, not {label!r}")
    seed_text = record.get("seed") or ""
    if seed_text and not seed_text.isdigit():
        raise InputError(f"{where}: seed must be a whole number, not {seed_text!r}")
    class_name = _text(record.get("class"), where, "class", required=True)
    row = Row(
        path=path,
        group=class_name,
        score=_score(_csv_float(record.get("score"), where, "score"), where, "score"),
        language_score=_score(_csv_float(record.get("language_score"), where, "language_score"), where,
                              "language_score"),
        vision_score=_score(_csv_float(record.get("vision_score"), where, "vision_score"), where, "vision_score"),
        label=DEFECTIVE if label == "1" else GOOD,
        defect=_text(record.get("defect"), where, "defect"),
        seed=int(seed_text) if seed_text else None,
    )
    try:
        _check_row_path(run_dir, path, where, "image")
        row.source = confined_path(root, path, f"{where}: image") if root is not None else None
    except InputError as exc:
        _refuse_paths(row, exc)
    return row


def _csv_float(value: Optional[str], where: str, name: str) -> Optional[float]:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        raise InputError(f"{where}: {name} is not a number: {value!r}") from None


def _curve_entry(entry: Any, where: Path) -> dict:
    if not isinstance(entry, dict):
        raise InputError(f"{where}: a run entry is not an object")
    checked = {"class": _text(entry.get("class"), str(where), "class", required=True), "seed": entry.get("seed")}
    if checked["seed"] is not None and not isinstance(checked["seed"], int):
        raise InputError(f"{where}: seed must be a whole number")
    for kind, (x_name, y_name) in {"roc": ("fpr", "tpr"), "pr": ("recall", "precision"),
                                   "pro": ("fpr", "pro")}.items():
        curve = entry.get(kind)
        if curve is None:
            checked[kind] = None
            continue
        if not isinstance(curve, dict):
            raise InputError(f"{where}: {kind} of {checked['class']} is not an object")
        xs, ys = (_numbers(curve.get(name), where, f"{kind}.{name}") for name in (x_name, y_name))
        if len(xs) != len(ys):
            raise InputError(f"{where}: {kind} of {checked['class']}: {x_name} and {y_name} differ in length")
        checked[kind] = {x_name: xs, y_name: ys}
    return checked


def _numbers(values: Any, where: Path, name: str) -> list[float]:
    items = _list(values, str(where), name)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in items):
        raise InputError(f"{where}: {name} must hold finite numbers")
    return [float(v) for v in items]


def _text(value: Any, where: str, name: str, required: bool = False) -> Optional[str]:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise InputError(f"{where}: {name} must be {'a non-empty' if required else 'a'} string")
    return value


def _score(value: Any, where: str, name: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{where}: {name} must be a finite number, not {value!r}")
    return float(value)


def _list(value: Any, where: str, name: str) -> list:
    if not isinstance(value, list):
        raise InputError(f"{where}: {name} must be a list")
    return value


def _region(region: Any, where: str) -> dict:
    if not isinstance(region, dict):
        raise InputError(f"{where}: a region must be an object")
    bbox = region.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int) and v >= 0 for v in bbox)):
        raise InputError(f"{where}: a region's bbox must be four non-negative whole numbers")
    return {"bbox": bbox, "area": _score(region.get("area"), where, "area"),
            "peak": _score(region.get("peak"), where, "peak")}
