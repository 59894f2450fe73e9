"""Ground-truth masks: decoded whatever their format, resized to the eval size, binarised at 0.5.

Masks in the wild come as 8-bit grey with 0/255 or 0/1, as palette images, as
colour images, and as RGBA or palette-with-transparency images where the defect
is painted in the alpha channel and the colours mean nothing (the cookie data's
originals: a grey conversion of those is NOT the mask). The rule, in order:

1. If the image has an alpha channel that is not constant, the alpha is the mask.
2. Otherwise the brightest channel of the colours (grey for grey images).
3. Values are divided by their range: 1 when no value exceeds 1 (0/1 masks),
   else the bit depth's maximum (255, or 65535 for 16-bit).

The resulting [0, 1] mask is resized to the eval size (PIL bilinear, antialiased
when shrinking, like torchvision's Resize on a PIL image) and binarised at > 0.5.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from fade_cli.core.errors import ImageError, InputError
from fade_cli.io.files import require_regular_file
from fade_cli.io.images import check_pixel_count

_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I", "F")
# A mask whose aspect ratio differs more than this from its image's does not belong to it.
ASPECT_TOLERANCE = 0.02


def load_mask(
    path: Path, size: Union[int, tuple[int, int]], image_size: Optional[tuple[int, int]] = None
) -> np.ndarray:
    """The mask in ``path`` as a bool array, True on the defect: (size, size), or (height, width)
    for ``size=(width, height)``.

    With ``image_size`` (width, height of its image) a mask of another shape is
    refused: sizes may differ (both are resized), aspect ratios may not.
    """
    image = _open(path)
    if image_size is not None:
        _check_fits(image.size, image_size, path)
    fraction = mask_fraction(image)
    target = (size, size) if isinstance(size, int) else size
    resized = Image.fromarray(fraction, mode="F").resize(target, Image.Resampling.BILINEAR)
    return np.asarray(resized) > 0.5


def _check_fits(mask_size: tuple[int, int], image_size: tuple[int, int], path: Path) -> None:
    ratio = (mask_size[0] / mask_size[1]) / (image_size[0] / image_size[1])
    if abs(ratio - 1.0) > ASPECT_TOLERANCE:
        raise InputError(
            f"mask {path} is {mask_size[0]}x{mask_size[1]} but its image is {image_size[0]}x{image_size[1]}: "
            f"it does not belong to that image"
        )


def mask_fraction(image: Image.Image) -> np.ndarray:
    """A decoded mask as float32 (H, W) in [0, 1] (before resizing), following the module's rule."""
    alpha = _varying_alpha(image)
    if alpha is not None:
        return alpha.astype(np.float32) / 255.0
    if image.mode in _HIGH_DEPTH_MODES:
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") else 255.0
        return _scaled(values, peak)
    if image.mode == "1":
        return np.asarray(image, dtype=np.float32)
    if image.mode == "L":
        return _scaled(np.asarray(image, dtype=np.float64), 255.0)
    colours = np.asarray(image.convert("RGB"), dtype=np.float64)
    return _scaled(colours.max(axis=2), 255.0)


def _scaled(values: np.ndarray, peak: float) -> np.ndarray:
    """Divide by the range: 1 for 0/1 masks, else ``peak`` (or the maximum, for unusual float data)."""
    top = float(values.max()) if values.size else 0.0
    scale = 1.0 if top <= 1.0 else max(peak, top)
    return (values / scale).astype(np.float32)


def _varying_alpha(image: Image.Image):
    """The 8-bit alpha channel when the image has one and it is not constant, else None."""
    has_alpha = image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return None
    alpha = np.asarray(image.convert("RGBA"))[:, :, 3]
    return alpha if alpha.min() != alpha.max() else None


def _open(path: Path) -> Image.Image:
    require_regular_file(path, "mask")  # before PIL opens it: a FIFO would block
    try:
        with Image.open(path) as opened:
            check_pixel_count(opened, path)
            opened.load()
            return opened.copy()
    except ImageError as exc:
        raise InputError(f"cannot read mask {exc}") from exc
    except FileNotFoundError as exc:
        raise InputError(f"mask not found: {path}") from exc
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot read mask {path}: {exc}") from exc
