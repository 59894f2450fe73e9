"""Finding and decoding input images.

Decoding follows what a person sees: EXIF orientation applied, greyscale,
palette, CMYK, 16-bit and alpha images turned into 8-bit RGB. A file that cannot
be decoded raises :class:`ImageError` for that file only, with a message that
says why (empty, truncated, not an image, permission denied, symbolic link loop).

Memory: a decoded image is held once, as 8-bit RGB; no full-size copy is made
when the file already decodes to upright RGB. The engine only ever sees the
resized copies it asks for (``fade_cli.engine.preprocess``).
"""
from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fade_cli.core.errors import ImageError, InputError
from fade_cli.io.files import special_file_kind
from fade_cli.io.folder_lock import is_fade_output

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
# Large inspection photos are legitimate; only refuse sizes that look like decompression bombs.
MAX_PIXELS = 400_000_000
# fade checks the pixel count itself (check_pixel_count), from the header, before decoding. PIL's own check
# only warns between its limit and twice it, and catching that warning needs warnings.catch_warnings(),
# which is process-wide state and not safe in the decoding threads.
Image.MAX_IMAGE_PIXELS = None

# Called with a one-line message when discovery has to skip something (an unreadable sub-folder).
SkipHandler = Callable[[str], None]
Excluded = Union[None, Path, Iterable[Optional[Path]]]


@dataclass(frozen=True)
class ImageFile:
    """An input image: where it is, and its path relative to the input root (used for outputs)."""

    path: Path
    relative: str


def escape_undecodable(text: str) -> str:
    """``text`` with the bytes of a file name that is not valid UTF-8 as backslash escapes.

    Python keeps such bytes as lone surrogates, which no UTF-8 writer accepts; this
    makes names safe to print and to write into results, and a JSON reader gets the
    exact name back.
    """
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def discover_images(root: Path, exclude: Excluded = None, on_skip: Optional[SkipHandler] = None) -> list[ImageFile]:
    """All image files under ``root`` (or ``root`` itself), sorted by relative path.

    Symlinked folders are followed once; loops are skipped. ``exclude`` (a path
    or several: the output folder, a --move-to folder) is never scanned. A
    sub-folder that cannot be read is reported to ``on_skip`` (default: a Python
    warning) and the rest is still found, so one bad folder does not stop a run.
    """
    _check_root(root)
    if root.is_file():
        if not is_image_file(root):
            raise InputError(f"{root} is not an image file ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return [ImageFile(root, root.name)]
    report = on_skip or (lambda message: warnings.warn(message, stacklevel=3))
    files = [ImageFile(p, p.relative_to(root).as_posix()) for p in _walk(root, exclude, report) if is_image_file(p)]
    return sorted(files, key=lambda f: f.relative)


def require_images(root: Path, exclude: Excluded = None, on_skip: Optional[SkipHandler] = None) -> list[ImageFile]:
    """:func:`discover_images`, raising a helpful :class:`InputError` when nothing is found."""
    files = discover_images(root, exclude, on_skip)
    if not files:
        raise InputError(_no_images_message(root, exclude))
    return files


def _check_root(root: Path) -> None:
    if root.is_symlink() and not root.exists():
        raise InputError(f"{root} is a broken symbolic link or a symbolic link loop")
    if not root.exists():
        raise InputError(f"no such file or folder: {root}")
    if root.is_dir() and not os.access(root, os.R_OK | os.X_OK):
        raise InputError(f"cannot read folder {root}: permission denied")


def _as_paths(exclude: Excluded) -> list[Path]:
    if exclude is None:
        return []
    if isinstance(exclude, (str, os.PathLike)):
        return [Path(exclude)]
    return [Path(path) for path in exclude if path is not None]


def _walk(root: Path, exclude: Excluded, report: SkipHandler, outputs: Optional[list[str]] = None) -> Iterator[Path]:
    """Every file under ``root``, each real folder visited once, excluded folders left out.

    Output folders of fade runs below ``root`` are left out too (their heatmaps are not product
    photos), each reported once; ``outputs`` collects the excluded and output folders passed.
    """
    excluded = {os.path.realpath(path) for path in _as_paths(exclude)}
    seen: set[str] = set()
    passed = outputs if outputs is not None else []

    def unreadable(exc: OSError) -> None:
        report(f"skipped folder {exc.filename}: {_reason(exc)}")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
        real = os.path.realpath(dirpath)
        if real in seen or real in excluded:
            if real in excluded:
                passed.append(dirpath)
            dirnames[:] = []
            continue
        if dirpath != os.fspath(root) and is_fade_output(Path(dirpath)):
            report(f"skipped folder {dirpath}: it is the output folder of a fade run")
            passed.append(dirpath)
            seen.add(real)
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _no_images_message(root: Path, exclude: Excluded) -> str:
    """Say whether the folder is empty or holds only other kinds of files, and which kinds are read."""
    outputs: list[str] = []
    others = sorted(p.relative_to(root).as_posix() for p in _walk(root, exclude, lambda _: None, outputs))
    kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
    if not others and outputs:
        shown = ", ".join(os.path.relpath(folder, root) for folder in outputs[:3])
        return f"no image files under {root} outside fade's output folders ({shown}), which are never read as input"
    if not others:
        return f"no image files under {root}: the folder is empty"
    shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
    return f"no image files under {root}: it holds {len(others)} other file(s) ({shown}); fade reads {kinds}"



def load_image(path: Path) -> Image.Image:
    """Decode one image to 8-bit RGB as displayed (EXIF orientation applied)."""
    try:
        _check_plain_file(path)
    except OSError as exc:
        raise ImageError(f"{path}: {_reason(exc)}") from exc
    return _decode(path, str(path))


def decode_image_bytes(data: bytes, label: str, max_pixels: Optional[int] = None) -> Image.Image:
    """:func:`load_image` for an image held in memory (an upload); ``label`` names it in errors.

    ``max_pixels`` refuses larger images from their header, before any pixel is decoded.
    """
    if not data:
        raise ImageError(f"{label}: empty file (0 bytes)")
    return _decode(io.BytesIO(data), label, max_pixels)


def _decode(source: Union[Path, io.BytesIO], label: str, max_pixels: Optional[int] = None) -> Image.Image:
    try:
        with Image.open(source) as opened:
            check_pixel_count(opened, label)
            if max_pixels is not None and opened.width * opened.height > max_pixels:
                raise ImageError(f"{label}: {opened.width}x{opened.height} is over the limit of {max_pixels} pixels")
            opened.load()
            ImageOps.exif_transpose(opened, in_place=True)
            image = to_rgb8(opened, label)
    except UnidentifiedImageError as exc:
        raise ImageError(f"{label}: not a readable image (unknown format or not an image)") from exc
    except OSError as exc:
        raise ImageError(f"{label}: {_reason(exc)}") from exc
    except (SyntaxError, ValueError) as exc:
        raise ImageError(f"{label}: cannot decode image ({exc})") from exc
    # A memory-mapped image would break if the file changed under it: keep a private copy.
    return image.copy() if image.readonly else image


def _check_plain_file(path: Path) -> None:
    """Refuse, without opening them, files that are not regular files: a FIFO would block the run."""
    status = os.stat(path)
    kind = special_file_kind(status.st_mode)
    if kind is not None:
        raise ImageError(f"{path}: {kind}, not an image file")
    if status.st_size == 0 and stat.S_ISREG(status.st_mode):
        raise ImageError(f"{path}: empty file (0 bytes)")


def check_pixel_count(image: Image.Image, path: Path) -> None:
    """Refuse a decompression bomb from its header (PIL reads the size when it opens a file, not the pixels)."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageError(f"{path}: image too large ({width} x {height} = {width * height} pixels, more than "
                         f"{MAX_PIXELS}; a decompression bomb guard)")


_OS_REASONS = {
    errno.ENOENT: "file not found (deleted, or a broken symbolic link)",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ELOOP: "symbolic link loop",
    errno.EISDIR: "is a folder",
    errno.ENAMETOOLONG: "file name too long",
}


def describe_os_error(exc: OSError) -> str:
    """A short, user-facing reason for an operating-system error on one file or folder."""
    return _OS_REASONS.get(exc.errno, str(exc.strerror or exc))


def _reason(exc: OSError) -> str:
    """A short, user-facing reason for an operating-system or decoder error."""
    if exc.errno in _OS_REASONS:
        return describe_os_error(exc)
    if "truncated" in str(exc).lower():
        return f"truncated image ({exc})"
    return f"cannot decode image ({exc.strerror or exc})"


def to_rgb8(image: Image.Image, path: Optional[Path] = None) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, scaling 16- and 32-bit data instead of clipping it.

    An image that is already RGB is returned as it is (no copy). In a float image,
    NaN pixels become black and infinities the extremes of the finite values; an
    image without a single finite pixel is an :class:`ImageError`.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            array = _finite_pixels(array, path)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        if image.mode == "F":
            peak = max(float(array.max()), 1e-12) if array.max() > 1.0 else 1.0
        grey = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    # Alpha is dropped, keeping the colour under it: what PIL's RGB conversion, and so the
    # published pipeline, does (FADE_SPEC section 1: "decode to RGB").
    if image.mode == "P" and "transparency" in image.info:
        # The same colours, without the UserWarning PIL prints for a palette with transparency
        # converted straight to RGB (it leaked onto the terminal, unasked).
        image = image.convert("RGBA")
    return image.convert("RGB")


def _finite_pixels(array: np.ndarray, path: Optional[Path]) -> np.ndarray:
    finite = np.isfinite(array)
    if finite.all():
        return array
    if not finite.any():
        raise ImageError(f"{path or 'image'}: a float image without a single finite pixel value (all NaN or infinite)")
    values = array[finite]
    return np.nan_to_num(array, nan=0.0, posinf=float(values.max()), neginf=min(0.0, float(values.min())))
