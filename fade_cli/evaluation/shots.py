"""Seeded choice of the k reference shots of a class.

The draw is a seeded hash order: every good training image gets the key
``sha256("<seed>:<relative path>")`` and the k smallest keys win. It is the same
on every machine and every library version (no dependence on a random number
generator's algorithm), does not depend on the order files are listed in, and is
nested: the 1-shot draw of a seed is the first image of its 2-shot draw.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

from fade_cli.core.errors import InputError
from fade_cli.evaluation.samples import ClassSplit
from fade_cli.io.images import ImageFile


def draw_key(seed: int, relative: str) -> str:
    return hashlib.sha256(f"{seed}:{relative}".encode("utf-8")).hexdigest()


def choose_references(split: ClassSplit, shots: int, seed: int) -> list[ImageFile]:
    """The ``shots`` good training images of ``split`` drawn with ``seed``, in draw order."""
    if shots <= 0:
        return []
    available: Sequence[ImageFile] = split.train_good
    if len(available) < shots:
        raise InputError(
            f"class {split.name!r}: --shots {shots} needs {shots} good training image(s), "
            f"but {split.train_source} holds {len(available)}"
        )
    return sorted(available, key=lambda f: draw_key(seed, f.relative))[:shots]
