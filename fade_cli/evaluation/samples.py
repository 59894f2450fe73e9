"""What a dataset layout yields: test samples with labels and masks, and good training images."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from fade_cli.io.images import ImageFile

GOOD = "good"


@dataclass(frozen=True)
class TestSample:
    """One test image. ``relative`` is its path relative to the dataset root (posix);
    ``defect`` is ``good`` or the defect type; ``mask`` is None for good images and
    for defective images whose mask is missing."""

    __test__ = False  # not a pytest test class

    path: Path
    relative: str
    defect: str
    mask: Optional[Path]

    @property
    def anomalous(self) -> bool:
        return self.defect != GOOD


@dataclass(frozen=True)
class ClassSplit:
    """A class's test images and good training images; ``train_source`` says where the latter live."""

    name: str
    test: tuple[TestSample, ...]
    train_good: tuple[ImageFile, ...]
    train_source: str
