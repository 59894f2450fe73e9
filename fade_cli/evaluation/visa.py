"""The VisA layout: ROOT/split_csv/1cls.csv lists every image.

Columns ``object, split, label, image, mask``: split is ``train`` or ``test``,
label ``normal`` or ``anomaly``, and image / mask are paths relative to ROOT
(mask empty for normal images). Reference shots come from the class's
``train`` + ``normal`` rows.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional, Sequence

from fade_cli.errors import InputError
from fade_cli.evaluation.samples import GOOD, ClassSplit, TestSample
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
    if not csv_path.is_file():
        raise InputError(f"missing {csv_path} (the VisA layout lists its images in split_csv/1cls.csv)")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{csv_path} lacks the column(s) {', '.join(missing)} (expected {', '.join(COLUMNS)})")
            rows = [(index + 2, {k: (row[k] or "").strip() for k in COLUMNS}) for index, row in enumerate(reader)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read {csv_path}: {exc}") from exc
    for line, row in rows:
        if row["split"] not in SPLITS:
            raise InputError(f"{csv_path} line {line}: unexpected split {row['split']!r} (expected train or test)")
        if row["label"] not in LABELS:
            raise InputError(f"{csv_path} line {line}: unexpected label {row['label']!r} (expected normal or anomaly)")
    return rows


def _existing(root: Path, relative: str, csv_path: Path, line: int) -> Path:
    path = root / relative
    if not path.is_file():
        raise InputError(f"missing {path} (listed in {csv_path} line {line})")
    return path


def _load_class(root: Path, csv_path: Path, name: str, rows: list[tuple[int, dict[str, str]]]) -> ClassSplit:
    samples, train = [], []
    for line, row in rows:
        path = _existing(root, row["image"], csv_path, line)
        defect = LABELS[row["label"]]
        if row["split"] == "train":
            if defect == GOOD:
                train.append(ImageFile(path, Path(row["image"]).as_posix()))
            continue
        mask = _existing(root, row["mask"], csv_path, line) if defect != GOOD and row["mask"] else None
        samples.append(TestSample(path, Path(row["image"]).as_posix(), defect, mask))
    if not samples:
        raise InputError(f"{csv_path}: class {name!r} has no test row")
    samples.sort(key=lambda s: s.relative)
    train.sort(key=lambda f: f.relative)
    return ClassSplit(name, tuple(samples), tuple(train), f"the train/normal rows of {name!r} in {csv_path}")
