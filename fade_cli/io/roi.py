"""Inspection regions (ROI): where in a camera frame the part is, and how a frame is cut to it.

An ROI is a PNG mask (white = inspect, black = ignore) or a small JSON file of shapes::

    {"units": "relative",                      # or "pixels" (the default)
     "size": [1920, 1080],                     # optional, pixels only: the frame the shapes were drawn on
     "include": [{"rect": [0.1, 0.2, 0.9, 0.8]}, {"polygon": [[0.5, 0.1], [0.7, 0.3], [0.3, 0.3]]}],
     "exclude": [{"rect": [0.4, 0.4, 0.5, 0.5]}]}

A rectangle is ``[x0, y0, x1, y1]`` (x1, y1 exclusive); relative coordinates are fractions of
the frame's width and height. A mask, or pixel shapes with a ``size``, of another size than a
frame is scaled to it when the aspect ratios agree within 1 %; otherwise the frame cannot be
inspected (:class:`RegionError`, the run's row for that image says both sizes).

For each frame a :class:`FrameRegion` says which pixels are inspected and which box of the
frame the model sees (the ROI's bounding box plus a margin, or the whole frame without
cropping); it maps the engine's maps back to the frame (0 outside the ROI). A region that
covers the whole frame is no region: the frame is scored exactly as without an ROI.
No torch, no click.
"""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from PIL import Image, ImageDraw

from fade_cli.core import strict_json
from fade_cli.core.errors import ImageError, InputError
from fade_cli.io.files import read_file_bytes
from fade_cli.io.images import MAX_PIXELS
from fade_cli.core.validation import Fields, is_finite_number

# A mask is a picture of a frame: tens of megabytes at most; a JSON of shapes is kilobytes.
MAX_ROI_BYTES = 64 << 20
MAX_SHAPES = 1000
MAX_POLYGON_POINTS = 10000
MAX_COORDINATE = 1e6
ASPECT_TOLERANCE = 0.01
DEFAULT_MARGIN = 0.05
# The size JSON shapes in relative units are drawn at to check that they cover something, and the largest
# canvas pixel shapes are drawn on for that check.
_CHECK_SIZE = 1000
_CHECK_SIDE = 4096
_MAX_CANVAS_PIXELS = MAX_PIXELS  # no frame is larger
_CACHED_SIZES = 8
_DIM = 0.35  # brightness of the ignored area in heatmaps
_OUTLINE = np.array([0, 255, 255], dtype=np.uint8)


class RegionError(ImageError):
    """One frame cannot be inspected with the ROI (its size does not fit, its mask is missing): an error row."""


@dataclass(frozen=True)
class Shape:
    kind: str  # "rect" or "polygon"
    points: tuple[tuple[float, float], ...]  # rect: two corners


@dataclass(frozen=True, eq=False)
class Roi:
    """A parsed ROI: a mask, or include/exclude shapes. ``content`` is the file's bytes (what a bank stores)."""

    name: str
    content: bytes
    mask: Optional[np.ndarray] = None  # (H, W) bool, for a PNG
    units: str = "pixels"
    size: Optional[tuple[int, int]] = None  # (width, height) the mask or the pixel shapes were drawn on
    include: tuple[Shape, ...] = ()
    exclude: tuple[Shape, ...] = ()
    # Masks by frame size, drawn once: every frame of a camera has the same size.
    _masks: dict = field(default_factory=dict, compare=False, repr=False)

    @functools.cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    def describe(self) -> dict[str, str]:
        """What a results row and run.json say about the ROI used."""
        return {"file": self.name, "sha256": self.sha256}

    def mask_at(self, width: int, height: int) -> np.ndarray:
        """The (height, width) bool mask of this ROI on a frame of that size (:class:`RegionError` if it cannot fit);
        read-only, shared by the frames of that size."""
        mask = self._masks.get((width, height))
        if mask is None:
            mask = self._drawn_at(width, height)
            mask.flags.writeable = False
            if len(self._masks) < _CACHED_SIZES:
                self._masks[(width, height)] = mask
        return mask

    def _drawn_at(self, width: int, height: int) -> np.ndarray:
        if self.size is not None and self.size != (width, height):
            _check_aspect(self.size, (width, height))
        if self.mask is not None:
            return self.mask.copy() if self.size == (width, height) else _scaled_mask(self.mask, width, height)
        scale_x, scale_y = (width, height) if self.units == "relative" else (1.0, 1.0)
        if self.units == "pixels" and self.size is not None:
            scale_x, scale_y = width / self.size[0], height / self.size[1]
        return _rasterised(self.include, self.exclude, width, height, scale_x, scale_y)


def load_roi(path: Union[str, os.PathLike], name: Optional[str] = None) -> Roi:
    """Read and check an ROI file (PNG mask or JSON shapes) as untrusted input; an empty ROI is refused."""
    content = read_file_bytes(path, "ROI file", limit=MAX_ROI_BYTES)
    return roi_from_bytes(content, name or os.fspath(path))


def roi_from_bytes(content: bytes, name: str) -> Roi:
    """:func:`load_roi` for content already read (a bank's stored ROI)."""
    roi = _json_roi(content, name) if content.lstrip()[:1] == b"{" else _mask_roi(content, name)
    if not _covers_something(roi):
        raise InputError(f"{name}: the ROI is empty (it selects no pixel); mark the part to inspect")
    return roi


def _mask_roi(content: bytes, name: str) -> Roi:
    from fade_cli.io.images import decode_image_bytes

    try:
        image = decode_image_bytes(content, name)
    except ImageError as exc:
        raise InputError(f"ROI mask {exc} (give a PNG mask or a JSON file of shapes)") from exc
    mask = np.asarray(image.convert("L")) >= 128
    return Roi(name, content, mask=mask, size=(image.width, image.height))


def _json_roi(content: bytes, name: str) -> Roi:
    fields = Fields(strict_json.loads(content, name, "ROI"), name)
    fields.unknown(("units", "size", "include", "exclude"))
    units = fields.text("units", default="pixels", choices=("pixels", "relative"))
    size = fields._get("size", None)
    if size is not None:
        if units == "relative":
            raise fields.fail("size", "absent with relative units", size)
        if not (isinstance(size, list) and len(size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_COORDINATE for v in size)):
            raise fields.fail("size", "[width, height] in pixels", size)
        size = (size[0], size[1])
        if size[0] * size[1] > _MAX_CANVAS_PIXELS:
            raise fields.fail("size", f"a frame of at most {_MAX_CANVAS_PIXELS} pixels", size)
    include = _shapes(fields, "include", units, min_length=1)
    exclude = _shapes(fields, "exclude", units, min_length=0)
    return Roi(name, content, units=units, size=size, include=include, exclude=exclude)


def _shapes(fields: Fields, name: str, units: str, min_length: int) -> tuple[Shape, ...]:
    entries = fields.items(name, min_length=min_length) if min_length else fields.items(name, default=[])
    if len(entries) > MAX_SHAPES:
        raise fields.fail(name, f"a list of at most {MAX_SHAPES} shapes", f"{len(entries)} shapes")
    return tuple(_shape(Fields(entry, fields.source, f"{name}[{number}]"), units)
                 for number, entry in enumerate(entries))


def _shape(fields: Fields, units: str) -> Shape:
    fields.unknown(("rect", "polygon"))
    if len(fields.data) != 1:
        raise fields.fail("", "one shape, one of {\"rect\": [x0, y0, x1, y1]} or {\"polygon\": [[x, y], ...]}", fields.data)
    kind, value = next(iter(fields.data.items()))
    limit = 1.0 if units == "relative" else MAX_COORDINATE
    if kind == "rect":
        if not (isinstance(value, list) and len(value) == 4 and all(_coordinate(v, units, limit) for v in value)
                and value[0] < value[2] and value[1] < value[3]):
            raise fields.fail(kind, f"[x0, y0, x1, y1] with x0 < x1, y0 < y1 ({_range(units)})", value)
        return Shape(kind, ((value[0], value[1]), (value[2], value[3])))
    if not (isinstance(value, list) and 3 <= len(value) <= MAX_POLYGON_POINTS and all(
            isinstance(p, list) and len(p) == 2 and all(_coordinate(v, units, limit) for v in p) for p in value)):
        raise fields.fail(kind, f"a list of 3 to {MAX_POLYGON_POINTS} [x, y] points ({_range(units)})", value)
    return Shape(kind, tuple((p[0], p[1]) for p in value))


def _coordinate(value: Any, units: str, limit: float) -> bool:
    low = 0.0 if units == "relative" else -limit
    return is_finite_number(value) and low <= value <= limit


def _range(units: str) -> str:
    return "fractions from 0 to 1" if units == "relative" else f"pixels within +-{MAX_COORDINATE:g}"


def _covers_something(roi: Roi) -> bool:
    if roi.mask is not None:
        return bool(roi.mask.any())
    if roi.units == "relative":
        return bool(roi.mask_at(_CHECK_SIZE, _CHECK_SIZE).any())
    if roi.size is not None:
        return bool(roi.mask_at(*roi.size).any())
    # Pixel shapes without a frame size: drawn on a canvas that holds all of them, shrunk to a bounded size (a
    # shape too thin to show there is not called empty: each frame's region is checked again).
    extent = max((max(x, y) for shape in roi.include for x, y in shape.points), default=0.0)
    side = max(1.0, extent + 1)
    scale = min(1.0, _CHECK_SIDE / side)
    drawn = _rasterised(roi.include, roi.exclude, int(side * scale) + 1, int(side * scale) + 1, scale, scale)
    return bool(drawn.any()) or (scale < 1.0 and extent > 0)


def _check_aspect(drawn: tuple[int, int], frame: tuple[int, int]) -> None:
    ratio = (drawn[0] / drawn[1]) / (frame[0] / frame[1])
    if abs(ratio - 1.0) > ASPECT_TOLERANCE:
        raise RegionError(f"the ROI is {drawn[0]}x{drawn[1]} but the frame is {frame[0]}x{frame[1]}: their aspect "
                          "ratios differ by more than 1 %, so the ROI cannot be scaled to the frame")


def _scaled_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    picture = Image.fromarray(mask.astype(np.uint8) * 255, "L")
    return np.asarray(picture.resize((width, height), Image.BILINEAR)) >= 128


def _rasterised(include: tuple[Shape, ...], exclude: tuple[Shape, ...], width: int, height: int, scale_x: float,
                scale_y: float) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for shapes, fill in ((include, 255), (exclude, 0)):
        for shape in shapes:
            points = [(x * scale_x, y * scale_y) for x, y in shape.points]
            if shape.kind == "rect":
                (x0, y0), (x1, y1) = points
                # Pixel edges: [x0, x1) covers the pixels whose centres lie inside.
                box = (round(x0), round(y0), round(x1) - 1, round(y1) - 1)
                if box[2] >= box[0] and box[3] >= box[1]:
                    draw.rectangle(box, fill=fill)
            else:
                draw.polygon(points, fill=fill)
    return np.asarray(canvas) >= 128


@dataclass(frozen=True, eq=False)
class FrameRegion:
    """One frame's region: its mask, and the box (left, top, right, bottom) of the frame the model sees."""

    mask: np.ndarray  # (H, W) bool at the frame's size
    box: tuple[int, int, int, int]
    source: dict[str, str]  # which ROI: {"file", "sha256"}

    @property
    def whole_frame(self) -> bool:
        return bool(self.mask.all())

    @property
    def crop_mask(self) -> np.ndarray:
        """The mask inside the box: which of the model's input pixels are inspected."""
        left, top, right, bottom = self.box
        return self.mask[top:bottom, left:right]

    def cut(self, image: Image.Image) -> Image.Image:
        """The part of the frame the model sees."""
        if self.box == (0, 0, image.width, image.height):
            return image
        return image.crop(self.box)

    def to_frame(self, map_gg: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """A map of the box (any grid) as a (H, W) float32 map of the frame, 0 outside the ROI."""
        from fade_cli.io.heatmap import upsample_map

        if map_gg is None:
            return None
        left, top, right, bottom = self.box
        frame = np.zeros(self.mask.shape, dtype=np.float32)
        frame[top:bottom, left:right] = upsample_map(map_gg, bottom - top, right - left)
        frame[~self.mask] = 0.0
        return frame

    def framed(self, detection: Any) -> Any:
        """A detection on the box, its maps moved to the frame (scores unchanged)."""
        return replace(detection, anomaly_map=self.to_frame(detection.anomaly_map),
                       language_map=self.to_frame(detection.language_map),
                       vision_map=self.to_frame(detection.vision_map), fused_map=self.to_frame(detection.fused_map))

    def shown(self, image: Image.Image) -> Image.Image:
        """The frame as heatmaps show it: the ignored area dimmed, the ROI outlined."""
        from scipy import ndimage

        pixels = np.array(image.convert("RGB"))
        pixels[~self.mask] = (pixels[~self.mask] * _DIM).astype(np.uint8)
        width = max(1, min(self.mask.shape) // 200)
        inner = ndimage.binary_erosion(self.mask, iterations=width, border_value=1)
        pixels[self.mask & ~inner] = _OUTLINE
        return Image.fromarray(pixels, "RGB")


def frame_region(mask: np.ndarray, source: dict[str, str], margin: float, crop: bool, label: str) -> FrameRegion:
    """The region of a frame from its mask: the box is the ROI's bounding box plus ``margin`` of its size on each
    side (within the frame), or the whole frame without ``crop``."""
    height, width = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise RegionError(f"{label}: the ROI selects no pixel of this {width}x{height} frame")
    if not crop:
        return FrameRegion(mask, (0, 0, width, height), source)
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    pad_x, pad_y = round(margin * (right - left)), round(margin * (bottom - top))
    box = (max(0, left - pad_x), max(0, top - pad_y), min(width, right + pad_x), min(height, bottom + pad_y))
    return FrameRegion(mask, box, source)


@dataclass(frozen=True)
class RegionPlan:
    """How a run inspects its frames: one ROI for all, or a folder of per-image masks; the margin; cropping."""

    roi: Optional[Roi] = None
    folder: Optional[Path] = None  # masks under the same relative path as each image (any image suffix or .png)
    margin: float = DEFAULT_MARGIN
    crop: bool = True

    def describe(self) -> dict[str, Any]:
        """What run.json says about the regions used."""
        where = self.roi.describe() if self.roi is not None else {"folder": os.fspath(self.folder)}
        return {**where, "margin": self.margin, "crop": self.crop}

    def region_for(self, relative: str, width: int, height: int, label: str) -> FrameRegion:
        """The region of the frame ``relative`` (its path under the input folder); :class:`RegionError` when the
        frame cannot be inspected (the ROI does not fit its size, its mask is missing or empty)."""
        roi = self.roi if self.roi is not None else self._mask_of(relative, label)
        try:
            mask = roi.mask_at(width, height)
        except RegionError as exc:
            raise RegionError(f"{label}: {exc}") from exc
        return frame_region(mask, roi.describe(), self.margin, self.crop, label)

    def _mask_of(self, relative: str, label: str) -> Roi:
        if self.folder is None:
            raise RegionError(f"{label}: the regions are per image, but no folder of masks was given")
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise RegionError(f"{label}: its ROI mask is looked up by a path under the image folder, not {relative}")
        path = self.folder / relative
        candidates = [path, path.with_suffix(".png")]
        found = next((candidate for candidate in candidates if candidate.is_file()), None)
        if found is None:
            raise RegionError(f"{label}: no ROI mask for it in {self.folder} (looked for {relative} and "
                              f"{Path(relative).with_suffix('.png')}); it was not inspected")
        try:
            return load_roi(found, name=os.fspath(Path(relative).with_suffix(found.suffix)))
        except InputError as exc:
            raise RegionError(f"{label}: {exc}") from exc


def region_plan(roi: Optional[Union[str, os.PathLike, Roi]] = None, folder: Optional[Union[str, os.PathLike]] = None,
                margin: float = DEFAULT_MARGIN, crop: bool = True) -> Optional[RegionPlan]:
    """The plan for an ROI file (or parsed ROI) or a mask folder; None when neither is given (the whole frame)."""
    if roi is not None and folder is not None:
        raise InputError("give one ROI for all images or a folder of per-image masks, not both")
    if roi is None and folder is None:
        return None
    if not 0.0 <= margin <= 1.0:
        raise InputError(f"the ROI margin must be from 0 to 1 (a fraction of the region's size), not {margin}")
    if folder is not None and not Path(folder).is_dir():
        raise InputError(f"ROI mask folder not found: {folder}")
    parsed = roi if isinstance(roi, Roi) or roi is None else load_roi(roi)
    return RegionPlan(parsed, Path(folder) if folder is not None else None, margin, crop)


def plan_to_dict(plan: RegionPlan) -> dict[str, Any]:
    """How a bank stores a plan: the ROI file's content itself (never its path), or that regions are per image."""
    import base64

    stored: dict[str, Any] = {"margin": plan.margin, "crop": plan.crop}
    if plan.roi is not None:
        stored["roi"] = {"file": plan.roi.name, "sha256": plan.roi.sha256,
                         "content": base64.b64encode(plan.roi.content).decode("ascii")}
    else:
        stored["per_image"] = True
    return stored


def plan_from_dict(data: Any, source: str) -> RegionPlan:
    """A plan read from a bank (untrusted: checked field by field, the ROI parsed as an ROI file is)."""
    import base64
    import binascii

    fields = Fields(data, source, "region")
    fields.unknown(("margin", "crop", "roi", "per_image"))
    margin = fields.number("margin", 0.0, 1.0)
    crop = fields.flag("crop")
    if fields.flag("per_image", default=False):
        return RegionPlan(None, None, margin, crop)
    roi = fields.object("roi")
    roi.unknown(("file", "sha256", "content"))
    try:
        content = base64.b64decode(roi.text("content"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise roi.fail("content", "base64 text", "...") from exc
    parsed = roi_from_bytes(content, roi.text("file"))
    if parsed.sha256 != roi.text("sha256"):
        raise roi.fail("sha256", "the SHA-256 of the stored ROI", roi.text("sha256"))
    return RegionPlan(parsed, None, margin, crop)
