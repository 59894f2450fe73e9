"""The options of mutual scoring (`--mutual`, docs/mutual.md), shared by `detect` and `eval`.

Nothing here imports torch.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import click

from fade_cli.config import (
    DEFAULT_MUTUAL_DEGREES,
    DEFAULT_MUTUAL_FRACTION,
    DEFAULT_MUTUAL_GROUP,
    MIN_MUTUAL_GROUP,
    MutualSettings,
)
from fade_cli.cli.options import FiniteFloat, add_options, refuse_without
from fade_cli.core.errors import InputError

# Wider windows average nearly the whole image at any practical size (4096 pixels at patch 14: a 292-patch grid).
MAX_DEGREE = 301


def _degrees(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if not parts or not all(part.isdecimal() and 0 < int(part) <= MAX_DEGREE for part in parts):
        raise click.BadParameter(f"{value!r} is not a comma-separated list of window sizes from 1 to {MAX_DEGREE}")
    degrees = tuple(dict.fromkeys(int(part) for part in parts))
    if any(r % 2 == 0 for r in degrees):
        raise click.BadParameter(f"window sizes must be odd (centred on the patch): {value!r}")
    return degrees


MUTUAL_OPTION_NAMES = ("mutual", "mutual_fraction", "mutual_degrees", "mutual_group", "mutual_rescore")
MUTUAL_OPTIONS = [
    click.option("--mutual", is_flag=True,
                 help="Zero-shot from the run itself: score every image against the other images of the run "
                      "(mutual scoring after MuSc, docs/mutual.md). Not with reference images or a bank."),
    click.option("--mutual-fraction", type=FiniteFloat(0, 1, min_open=True), default=DEFAULT_MUTUAL_FRACTION,
                 show_default=True,
                 help="With --mutual: a patch's score is the mean distance to its closest matches in this share of "
                      "the other images (at least one image)."),
    click.option("--mutual-degrees", callback=_degrees, default=",".join(map(str, DEFAULT_MUTUAL_DEGREES)),
                 show_default=True,
                 help="With --mutual: odd window sizes r; patch features are averaged over r x r windows, each r "
                      "scored, the maps averaged."),
    click.option("--mutual-group", type=click.IntRange(min=MIN_MUTUAL_GROUP), default=DEFAULT_MUTUAL_GROUP,
                 show_default=True,
                 help="With --mutual: the most images compared with each other; a longer run is cut into balanced "
                      "groups of at most this many (by file path). Cost per image grows with it."),
    click.option("--mutual-rescore", type=click.IntRange(min=1), metavar="K",
                 help="With --mutual: average each image's vision score with those of its K most similar images "
                      "(class-token similarity) [default: off]."),
]


def mutual_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the mutual-scoring options (`detect`, `eval`)."""
    return add_options(command, MUTUAL_OPTIONS)


def pop_mutual_settings(ctx: click.Context, kwargs: dict[str, Any]) -> Optional[MutualSettings]:
    """The mutual settings of the run (None without --mutual); a --mutual-* option without --mutual is refused."""
    values = {name: kwargs.pop(name) for name in MUTUAL_OPTION_NAMES}
    if not values["mutual"]:
        refuse_without(ctx, MUTUAL_OPTION_NAMES[1:], "--mutual", "set up mutual scoring only")
        return None
    return MutualSettings(fraction=values["mutual_fraction"], degrees=values["mutual_degrees"],
                          group=values["mutual_group"], rescore=values["mutual_rescore"])


def refuse_with_mutual(mutual: Optional[MutualSettings], conflicting: dict[str, bool]) -> None:
    """Mutual scoring is zero-shot: refuse the options that bring references (exit 2)."""
    given = [flag for flag, present in conflicting.items() if present]
    if mutual is not None and given:
        raise InputError(f"--mutual scores the images against each other, with no reference image; it cannot be "
                         f"combined with {', '.join(given)}")
