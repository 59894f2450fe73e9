"""Labelled datasets on disk: the layouts ``mvtec``, ``visa`` and ``folder``.

Every layout becomes a list of :class:`~fade_cli.evaluation.samples.ClassSplit`:
the class's test images with their labels and masks, and its good training
images (where reference shots are drawn from). A malformed layout raises
:class:`InputError` naming the first missing or unexpected path. A defective
image without a mask is not an error: it counts for image metrics and is
reported as missing for pixel metrics.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from fade_cli.core.errors import InputError
from fade_cli.evaluation.mvtec import load_mvtec
from fade_cli.evaluation.samples import ClassSplit
from fade_cli.evaluation.visa import VISA_SPLIT_CSV, load_visa

LAYOUTS = ("mvtec", "visa", "folder")
DEFAULT_MASK_SUFFIX = "_mask"


def detect_layout(root: Path) -> str:
    """``visa`` when ROOT/split_csv/1cls.csv exists, else ``mvtec``."""
    return "visa" if (root / VISA_SPLIT_CSV).is_file() else "mvtec"


def load_dataset(
    root: Path, layout: str, classes: Optional[Sequence[str]] = None, mask_suffix: str = DEFAULT_MASK_SUFFIX
) -> list[ClassSplit]:
    """Read a dataset in one of :data:`LAYOUTS`; ``classes`` selects classes (default: all, sorted)."""
    if not root.is_dir():
        raise InputError(f"dataset folder not found: {root}")
    if layout == "visa":
        return load_visa(root, classes)
    if layout in ("mvtec", "folder"):
        return load_mvtec(root, classes, mask_suffix, strict=layout == "mvtec")
    raise InputError(f"unknown dataset layout {layout!r} (choose from {', '.join(LAYOUTS)})")
