"""How much memory this machine has, the sizes that fit in it, and torch's failed allocations as fade errors.

A clear message instead of an OOM kill or a traceback. No torch here: the CLI checks ``--map-size``
while parsing options.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, TypeVar

from fade_cli.core.errors import FadeError, InputError

T = TypeVar("T")

# cgroup v2 and v1: a container's limit, usually far below the host's RAM.
CGROUP_LIMIT_FILES = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
# A float map, upsampled to N x N: the map, torch's interpolation output and the copy np.save writes.
MAP_BUFFERS = 3
MEMORY_HINT = "try --batch-size 1, fewer or smaller --scales, or --device cpu"
# How torch's allocators word a failed allocation (CUDA, and CPU torch's DefaultCPUAllocator).
OUT_OF_MEMORY_SIGNS = ("out of memory", "can't allocate memory", "enforce fail at alloc_cpu", "defaultcpuallocator")


def physical_memory_bytes() -> Optional[int]:
    """The RAM this process may use: the machine's, or its container's limit when smaller; None if unknown."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = None
    for name in CGROUP_LIMIT_FILES:
        try:
            text = Path(name).read_text().strip()
        except OSError:
            continue
        if text.isdecimal():
            total = int(text) if total is None else min(total, int(text))
    return total


def gigabytes(count: float) -> str:
    return f"{count / 1e9:.1f} GB"


def largest_fitting(limit: int, needs, start: int) -> int:
    """The largest size from ``start`` down whose ``needs(size)`` fits in ``limit`` bytes (0 if none)."""
    low, high = 0, start
    while low < high:
        middle = (low + high + 1) // 2
        if needs(middle) <= limit:
            low = middle
        else:
            high = middle - 1
    return low


def map_bytes(size: int, maps: int) -> int:
    return size * size * 4 * MAP_BUFFERS * maps


def check_map_size(size: Optional[int], maps: int, option: str = "--map-size") -> None:
    """Refuse a map size whose buffers (``maps`` images handled at once) cannot fit in half the RAM
    (the model, the images and the rest of the run need the other half)."""
    total = physical_memory_bytes()
    if size is None or total is None or map_bytes(size, maps) <= total // 2:
        return
    fitting = largest_fitting(total // 2, lambda s: map_bytes(s, maps), size)
    raise InputError(
        f"{option} {size}: {maps} map(s) of {size} x {size} at once need about "
        f"{gigabytes(map_bytes(size, maps))}, more than half of this machine's {gigabytes(total)} of memory; "
        f"use {option} {fitting} or less"
    )


def guard_engine_failures(action: Callable[[], T]) -> T:
    """Turn torch's memory and runtime failures into a FadeError with exit code 3."""
    try:
        return action()
    except FadeError:
        raise
    except RuntimeError as exc:
        if is_out_of_memory(exc):
            raise FadeError(f"out of memory; {MEMORY_HINT}") from exc
        raise FadeError(f"the engine failed: {exc}") from exc


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA says "out of memory"; CPU torch says "can't allocate memory" or "enforce fail at alloc_cpu.cpp"."""
    text = str(exc).lower()
    return any(sign in text for sign in OUT_OF_MEMORY_SIGNS)
