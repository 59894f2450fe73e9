"""Thresholds from good references alone: the statistic and what is recorded of it.

Each reference is scored against a memory bank of the *other* references, exactly
as ``fade detect`` would score a new photo. Those scores are what good parts look
like to the engine; a defect should score above all of them. The statistic is

    image threshold = min(1, margin x the highest reference score)
    pixel threshold = min(1, margin x the highest map value over all references)

with ``margin`` 1.1 by default. Leave-one-out scores are slightly pessimistic (a
bank of N-1 references, not N), which errs towards fewer false rejects. The scoring
itself is in ``leave_one_out.py``; this module does not import torch.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

from fade_cli.core.errors import InputError
from fade_cli.core.validation import Fields, check_finite, is_finite_number

STATISTIC = "max_times_margin"
DEFAULT_MARGIN = 1.1
MIN_REFERENCES = 2
SOURCES = ("calibrated", "given")


@dataclass(frozen=True)
class Calibration:
    """Leave-one-out scores of the references and the thresholds taken from them."""

    margin: float
    files: tuple[str, ...]
    image_scores: tuple[float, ...]
    pixel_maxima: tuple[float, ...]
    statistic: str = STATISTIC

    @property
    def image_threshold(self) -> float:
        return min(1.0, self.margin * max(self.image_scores))

    @property
    def pixel_threshold(self) -> float:
        return min(1.0, self.margin * max(self.pixel_maxima))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(image_threshold=self.image_threshold, pixel_threshold=self.pixel_threshold)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}

    @classmethod
    def from_dict(cls, data: Any, source: str = "calibration") -> "Calibration":
        """A calibration read from a file (a bank), every field checked: finite scores, one per file."""
        fields = Fields(data, source, "calibration")
        fields.text("statistic", choices=(STATISTIC,))
        files = fields.items("files", min_length=1)
        image_scores = fields.items("image_scores", min_length=1)
        pixel_maxima = fields.items("pixel_maxima", min_length=1)
        if not len(files) == len(image_scores) == len(pixel_maxima):
            raise InputError(f"{source}: field calibration: files, image_scores and pixel_maxima differ in length")
        margin = fields.number("margin", minimum=0.0)
        if margin == 0:
            raise fields.fail("margin", "a positive number", margin)
        return cls(
            margin=margin,
            files=tuple(fields.text(f"files[{i}]", value) for i, value in enumerate(files)),
            image_scores=tuple(_finite(fields, f"image_scores[{i}]", value) for i, value in enumerate(image_scores)),
            pixel_maxima=tuple(_finite(fields, f"pixel_maxima[{i}]", value) for i, value in enumerate(pixel_maxima)),
        )


def _finite(fields: Fields, name: str, value: Any) -> float:
    if not is_finite_number(value):
        raise fields.fail(name, "a finite number", value)
    return float(value)


@dataclass(frozen=True)
class Thresholds:
    """Image and pixel thresholds, each with where it came from: "calibrated" or "given"."""

    image: Optional[float] = None
    pixel: Optional[float] = None
    image_source: Optional[str] = None
    pixel_source: Optional[str] = None

    def __post_init__(self) -> None:
        check_finite(self.image, "the image threshold")
        check_finite(self.pixel, "the pixel threshold")

    @classmethod
    def from_dict(cls, data: Any, source: str = "thresholds") -> "Thresholds":
        """Thresholds read from a file (a bank): finite numbers or null, each with its origin."""
        fields = Fields(data, source, "thresholds")
        fields.unknown(("image", "pixel", "image_source", "pixel_source"))
        return cls(
            image=fields.number("image", default=None, optional=True),
            pixel=fields.number("pixel", default=None, optional=True),
            image_source=fields.text("image_source", None, optional=True, choices=SOURCES),
            pixel_source=fields.text("pixel_source", None, optional=True, choices=SOURCES),
        )

    def given_over(self, fallback: "Thresholds") -> "Thresholds":
        """These thresholds, the ones a person gave, each marked "given"; a missing one is ``fallback``'s,
        with its origin."""
        return Thresholds(
            image=self.image if self.image is not None else fallback.image,
            pixel=self.pixel if self.pixel is not None else fallback.pixel,
            image_source="given" if self.image is not None else fallback.image_source,
            pixel_source="given" if self.pixel is not None else fallback.pixel_source,
        )


def calibrated(calibration: Optional[Calibration]) -> Thresholds:
    """The thresholds of a calibration, marked "calibrated" (none without a calibration)."""
    if calibration is None:
        return Thresholds()
    return Thresholds(calibration.image_threshold, calibration.pixel_threshold, "calibrated", "calibrated")


def choose_thresholds(calibration: Optional[Calibration], given: Thresholds = Thresholds()) -> Thresholds:
    """Thresholds the user gave win; the calibrated ones fill the rest (none without a calibration)."""
    return given.given_over(calibrated(calibration))


def check_margin(margin: float) -> None:
    if not margin > 0:
        raise InputError(f"the calibration margin must be positive, not {margin}")


def describe_thresholds(thresholds: Thresholds, calibration: Optional[Calibration]) -> str:
    """One line for people: each threshold, where it came from, and the statistic behind the calibrated ones."""
    parts = []
    for name, value, origin in (("image", thresholds.image, thresholds.image_source),
                                ("pixel", thresholds.pixel, thresholds.pixel_source)):
        parts.append(f"{name} threshold {value:.4f} ({origin})" if value is not None else f"no {name} threshold")
    text = ", ".join(parts)
    if calibration is not None:
        text += (f"; statistic: {calibration.margin:g} x max over {len(calibration.files)} leave-one-out "
                 f"reference scores (max image score {max(calibration.image_scores):.4f}, "
                 f"max pixel {max(calibration.pixel_maxima):.4f})")
    return text


def check_calibrated_thresholds(calibration: Calibration, thresholds: Thresholds) -> list[str]:
    """Refuse a calibrated threshold that can never be reached; warnings for one that judges references NG.

    Scores and map values are at most 1, so a threshold clamped from above 1 would let every image
    pass. A margin below 1 puts the threshold under the references' own scores: good parts NG.
    Thresholds the user gave are theirs and not judged here.
    """
    warnings = []
    for name, scores, origin in (("image", calibration.image_scores, thresholds.image_source),
                                 ("pixel", calibration.pixel_maxima, thresholds.pixel_source)):
        if origin != "calibrated":
            continue
        highest = max(scores)
        wanted = calibration.margin * highest
        if wanted > 1.0:
            raise InputError(
                f"the calibrated {name} threshold would be {wanted:.4f} (margin {calibration.margin:g} x the highest "
                f"reference {name} score {highest:.4f}), above 1, the highest score there is: no image could ever be "
                f"NG. Use a margin of at most {_largest_margin(highest)}, or give the {name} threshold")
        above = sum(score >= wanted for score in scores)
        if above:
            warnings.append(
                f"the calibrated {name} threshold {wanted:.4f} (margin {calibration.margin:g}) is at or below the "
                f"{name} score of {above} of the {len(scores)} good references (highest {highest:.4f}): good parts "
                "like them will be judged NG; a margin above 1 keeps the threshold above them")
    return warnings


def _largest_margin(highest: float) -> str:
    """1 / ``highest`` rounded down (rounded up, it would still give a threshold above 1)."""
    return f"{math.floor(1000.0 / highest) / 1000:g}"
