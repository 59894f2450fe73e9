"""Anomaly maps to pictures: upsampling, a colour map, the overlay and its colour scale.

torch is imported when a map is first upsampled: the commands' ``--help`` imports this module.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Anchor colours of a perceptually ordered map (dark blue -> cyan -> yellow -> red),
# interpolated to 256 entries.
_ANCHORS = np.array(
    [
        [48, 18, 59],
        [65, 105, 225],
        [40, 190, 220],
        [90, 230, 110],
        [240, 220, 50],
        [250, 130, 30],
        [200, 30, 20],
    ],
    dtype=np.float64,
)
_POSITIONS = np.linspace(0.0, 1.0, len(_ANCHORS))
COLORMAP = np.stack(
    [np.interp(np.linspace(0, 1, 256), _POSITIONS, _ANCHORS[:, c]) for c in range(3)], axis=1
).astype(np.uint8)

OVERLAY_ALPHA = 0.5
SCALE_WIDTH_FRACTION = 0.06
COLORIZE_BAND_PIXELS = 1 << 20


def upsample_map(map_hw: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear (half-pixel centres, align_corners=False) resize of a grid map to (height, width), float32."""
    if map_hw.shape == (height, width):
        return map_hw.astype(np.float32, copy=False)
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(map_hw, dtype=np.float32))[None, None]
    resized = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)
    return resized[0, 0].numpy()


def colorize(map_hw: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 (H, W, 3); values outside are clipped.

    Works in bands of rows, so a large photo's map is never copied as floats or as indices.
    """
    colours = np.empty((*map_hw.shape, 3), dtype=np.uint8)
    rows = max(1, COLORIZE_BAND_PIXELS // max(1, map_hw.shape[-1]))
    for top in range(0, map_hw.shape[0], rows):
        band = map_hw[top : top + rows]
        colours[top : top + rows] = COLORMAP[np.clip(band * 255.0 + 0.5, 0, 255).astype(np.uint8)]
    return colours


def overlay(image: Image.Image, map_hw: np.ndarray) -> Image.Image:
    """The image with ``map_hw`` (at the image's size) blended over it, plus a colour scale on the right."""
    colours = Image.fromarray(colorize(map_hw), mode="RGB")
    blended = Image.blend(image if image.mode == "RGB" else image.convert("RGB"), colours, OVERLAY_ALPHA)
    del colours  # one image-sized buffer fewer while the canvas is built
    return _with_colour_scale(blended)


def _scale_widths(width: int) -> tuple[int, int]:
    """(colour bar, labels) widths beside an image ``width`` pixels wide."""
    bar_width = max(12, int(width * SCALE_WIDTH_FRACTION))
    return bar_width, max(28, bar_width * 2)


def overlay_image_width(canvas_width: int) -> int:
    """The width of the image inside an :func:`overlay` canvas ``canvas_width`` pixels wide."""
    for width in range(canvas_width, 0, -1):
        if width + sum(_scale_widths(width)) <= canvas_width:
            return width
    return canvas_width


def _with_colour_scale(image: Image.Image) -> Image.Image:
    width, height = image.size
    bar_width, label_width = _scale_widths(width)
    canvas = Image.new("RGB", (width + bar_width + label_width, height), (255, 255, 255))
    canvas.paste(image, (0, 0))
    gradient = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None].repeat(bar_width, axis=1)
    canvas.paste(Image.fromarray(colorize(gradient), mode="RGB"), (width, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    left = width + bar_width + 3
    for value in (1.0, 0.5, 0.0):
        y = int((1.0 - value) * (height - 12))
        draw.text((left, y), f"{value:.1f}", fill=(0, 0, 0), font=font)
    return canvas
