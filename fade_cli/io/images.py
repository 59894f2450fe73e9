"""Finding and decoding input images.

Decoding follows what a person sees: EXIF orientation applied, greyscale,
palette, CMYK, 16-bit and alpha images turned into 8-bit RGB. A file that cannot
be decoded raises :class:`ImageError` for that file only.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fade_cli.errors import ImageError, InputError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
# Large inspection photos are legitimate; only refuse sizes that look like decompression bombs.
Image.MAX_IMAGE_PIXELS = 400_000_000


@dataclass(frozen=True)
class ImageFile:
    """An input image: where it is, and its path relative to the input root (used for outputs)."""

    path: Path
    relative: str


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def discover_images(root: Path, exclude: Optional[Path] = None) -> list[ImageFile]:
    """All image files under ``root`` (or ``root`` itself), sorted by relative path.

    Symlinked folders are followed once; loops are skipped. ``exclude`` (the
    output folder, when it lies inside the input) is never scanned.
    """
    if not root.exists():
        raise InputError(f"no such file or folder: {root}")
    if root.is_file():
        if not is_image_file(root):
            raise InputError(f"{root} is not an image file ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return [ImageFile(root, root.name)]
    if not os.access(root, os.R_OK | os.X_OK):
        raise InputError(f"cannot read folder {root}: permission denied")
    files = [ImageFile(p, p.relative_to(root).as_posix()) for p in _walk(root, exclude)]
    return sorted(files, key=lambda f: f.relative)


def _walk(root: Path, exclude: Optional[Path]) -> Iterator[Path]:
    seen: set[str] = set()
    excluded = os.path.realpath(exclude) if exclude else None
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen or real == excluded:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if is_image_file(path):
                yield path


def load_image(path: Path) -> Image.Image:
    """Decode one image to 8-bit RGB as displayed (EXIF orientation applied)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened)
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: file not found") from exc
    except PermissionError as exc:
        raise ImageError(f"{path}: permission denied") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{path}: not a readable image") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: cannot decode image ({exc})") from exc
    return to_rgb8(image)


def to_rgb8(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, scaling 16- and 32-bit data instead of clipping it."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        if image.mode == "F":
            peak = max(float(array.max()), 1e-12) if array.max() > 1.0 else 1.0
        grey = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas are shown on black, as most viewers of inspection images do.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
