"""The VisA layout: ROOT/split_csv/1cls.csv lists every image.

Columns ``object, split, label, image, mask``: split is ``train`` or ``test``,
label ``normal`` or ``anomaly``, and image / mask are paths relative to ROOT
(mask empty for normal images). Reference shots come from the class's
``train`` + ``normal`` rows.

The CSV is input like any other: an image or mask path that is absolute, goes up
with ``..`` or leads out of ROOT through a symbolic link, or an object name that
is not a plain folder name, is an :class:`InputError` naming the line, the column
and the value (its outputs would otherwise be written outside ``--out``).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Optional, Sequence

from fade_cli.core.errors import InputError
from fade_cli.evaluation.samples import GOOD, ClassSplit, TestSample
from fade_cli.io.files import confined_path, read_text_file, require_regular_file
from fade_cli.io.images import ImageFile

VISA_SPLIT_CSV = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")
SPLITS = ("train", "test")
LABELS = {"normal": GOOD, "anomaly": "anomaly"}


def load_visa(root: Path, classes: Optional[Sequence[str]] = None) -> list[ClassSplit]:
    """Read ROOT/split_csv/1cls.csv into one :class:`ClassSplit` per object."""
    csv_path = root / VISA_SPLIT_CSV
    rows = _read_rows(csv_path)
    found = sorted({row["object"] for _, row in rows})
    names = list(classes) if classes else found
    for name in names:
        if name not in found:
            raise InputError(f"class {name!r} not found in {csv_path} (objects there: {', '.join(found) or 'none'})")
    return [_load_class(root, csv_path, name, [(n, r) for n, r in rows if r["object"] == name]) for name in names]


def _read_rows(csv_path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs, after checking the columns and the split and label values."""
    if not csv_path.exists():
        raise InputError(f"missing {csv_path} (the VisA layout lists its images in split_csv/1cls.csv)")
    text = read_text_file(csv_path, "VisA split file").removeprefix("\ufeff")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{csv_path} lacks the column(s) {', '.join(missing)} (expected {', '.join(COLUMNS)})")
        rows = [(index + 2, {k: (row[k] or "").strip() for k in COLUMNS}) for index, row in enumerate(reader)]
    except csv.Error as exc:
        raise InputError(f"cannot read {csv_path}: {exc}") from exc
    for line, row in rows:
        if not row["object"] or row["object"] in (".", "..") or "/" in row["object"] or "\\" in row["object"]:
            raise InputError(f"{csv_path} line {line}: object {row['object']!r} is not a class name "
                             "(a plain folder name, without '/' or '..', is expected)")
        if row["split"] not in SPLITS:
            raise InputError(f"{csv_path} line {line}: unexpected split {row['split']!r} (expected train or test)")
        if row["label"] not in LABELS:
            raise InputError(f"{csv_path} line {line}: unexpected label {row['label']!r} (expected normal or anomaly)")
    return rows


def _existing(root: Path, relative: str, csv_path: Path, line: int, column: str) -> Path:
    path = confined_path(root, relative, f"{csv_path} line {line}: {column}")
    if not path.exists():
        raise InputError(f"missing {path} (listed in {csv_path} line {line})")
    require_regular_file(path, f"{column} (listed in {csv_path} line {line})")
    return path


def _load_class(root: Path, csv_path: Path, name: str, rows: list[tuple[int, dict[str, str]]]) -> ClassSplit:
    samples, train = [], []
    for line, row in rows:
        path = _existing(root, row["image"], csv_path, line, "image")
        defect = LABELS[row["label"]]
        if row["split"] == "train":
            if defect == GOOD:
                train.append(ImageFile(path, Path(row["image"]).as_posix()))
            continue
        mask = _existing(root, row["mask"], csv_path, line, "mask") if defect != GOOD and row["mask"] else None
        samples.append(TestSample(path, Path(row["image"]).as_posix(), defect, mask))
    if not samples:
        raise InputError(f"{csv_path}: class {name!r} has no test row")
    samples.sort(key=lambda s: s.relative)
    train.sort(key=lambda f: f.relative)
    return ClassSplit(name, tuple(samples), tuple(train), f"the train/normal rows of {name!r} in {csv_path}")
