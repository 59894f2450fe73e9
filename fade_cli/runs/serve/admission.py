"""Admitting a request's images before any is decoded: their pixel counts from the headers, and a budget.

A PNG of a few kilobytes can declare tens of megapixels, so neither the body size nor the
queue length bounds the memory that decoding takes. PIL opens lazily: ``Image.open``
reads the header (format, size) and no pixel, so every image's size is known before the
first byte is decoded. A request is admitted only when its decoded pixels fit the budget
of pixels in flight; until it finishes its pixels count against the budget.
"""
from __future__ import annotations

import contextlib
import io
import os
import threading
from typing import Iterator, Optional

from PIL import Image, UnidentifiedImageError

from fade_cli.core.errors import ImageError
from fade_cli.io.images import MAX_PIXELS

# Peak memory of decoding one pixel: the decoder's buffer, the RGB copy and the EXIF-rotated copy
# (16 PNGs of 49 megapixels took 4.4 GB: 5.6 bytes a pixel), with some room.
BYTES_PER_DECODED_PIXEL = 8
MEMORY_SHARE_FOR_PIXELS = 4  # a quarter of the machine's memory; the model and the rest keep the others
FALLBACK_MEMORY_BYTES = 8 * 1024 ** 3


class TooLarge(Exception):
    """The request alone is over a limit: it can never be served as it is (HTTP 413)."""


class Busy(Exception):
    """The request fits the limits, but not next to the requests in flight now: retry later (HTTP 503)."""


def machine_memory_bytes() -> int:
    """Physical memory of the machine (a guess of 8 GiB where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return FALLBACK_MEMORY_BYTES


def default_pixels_in_flight(max_pixels_per_image: int) -> int:
    """A budget that fits the machine (a quarter of its memory), and never below one image at the limit."""
    fits = machine_memory_bytes() // MEMORY_SHARE_FOR_PIXELS // BYTES_PER_DECODED_PIXEL
    return max(max_pixels_per_image, fits)


def declared_pixels(data: bytes, label: str, max_pixels_per_image: Optional[int] = None) -> int:
    """Width x height from the image's header, without decoding it.

    Raises ImageError when it is no readable image, TooLarge when it is over the limit per image.
    """
    if not data:
        raise ImageError(f"{label}: empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
    except UnidentifiedImageError as exc:
        raise ImageError(f"{label}: not a readable image (unknown format or not an image)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{label}: cannot read the image header ({exc})") from exc
    limit = min(max_pixels_per_image or MAX_PIXELS, MAX_PIXELS)
    if width * height > limit:
        raise TooLarge(f"{label}: {width}x{height} is over the limit of {limit} pixels per image")
    return width * height


class PixelBudget:
    """The decoded pixels of the requests in flight, bounded by ``limit``."""

    def __init__(self, limit: Optional[int]):
        self.limit = limit
        self.in_flight = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Count ``pixels`` in flight while the block runs; TooLarge or Busy when they do not fit."""
        with self._lock:
            if self.limit is not None:
                if pixels > self.limit:
                    raise TooLarge(f"the request's images hold {pixels} pixels, over the limit of {self.limit} "
                                   "decoded pixels in flight")
                if self.in_flight + pixels > self.limit:
                    raise Busy(f"busy: the decoded pixels in flight are full ({self.in_flight} of {self.limit} "
                               f"held; this request needs {pixels})")
            self.in_flight += pixels
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= pixels
