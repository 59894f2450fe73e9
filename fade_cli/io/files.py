"""Reading the small files fade parses (prompt sets, templates, banks, model configs) as untrusted input.

A FIFO, a device or a socket is named as what it is and never opened: reading a FIFO
blocks until something writes to it, and ``/dev/zero`` never ends. A file larger than
the limit of its kind is refused before it is read into memory.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath
from typing import Optional, Union

from fade_cli.core.errors import InputError

# Prompt sets, templates and configs are kilobytes; a generous bound keeps a wrong file from filling memory.
TEXT_FILE_LIMIT = 64 << 20


def special_file_kind(mode: int) -> Optional[str]:
    """What a file that is neither a regular file nor a folder is, for messages; None for those two."""
    kinds = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), None)


def require_regular_file(path: Union[str, Path], what: str) -> os.stat_result:
    """The file's status, after refusing anything but a regular file (without opening it)."""
    try:
        status = os.stat(path)
    except FileNotFoundError as exc:
        raise InputError(f"{what} not found: {path}") from exc
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(status.st_mode):
        raise InputError(f"{what} {path} is a folder, not a file")
    kind = special_file_kind(status.st_mode)
    if kind is not None:
        raise InputError(f"{what} {path} is {kind}, not a regular file")
    return status


def read_file_bytes(path: Union[str, Path], what: str, limit: int = TEXT_FILE_LIMIT) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; anything else is an InputError naming ``what``."""
    status = require_regular_file(path, what)
    if status.st_size > limit:
        raise InputError(f"{what} {path} is {status.st_size} bytes, more than the {limit} a {what} may have")
    try:
        # O_NONBLOCK: a FIFO swapped in after the check above must not block the open; fstat then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as handle:
            kind = special_file_kind(os.fstat(handle.fileno()).st_mode)
            if kind is not None:
                raise InputError(f"{what} {path} is {kind}, not a regular file")
            # Read what the file held when checked (a read of `limit` bytes would allocate them at once),
            # then, only if it grew since, on up to the limit.
            data = handle.read(status.st_size + 1)
            if len(data) > status.st_size:
                data += handle.read(limit + 1 - len(data))
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise InputError(f"{what} {path} is more than the {limit} bytes a {what} may have")
    return data


def read_text_file(path: Union[str, Path], what: str, limit: int = TEXT_FILE_LIMIT) -> str:
    """:func:`read_file_bytes` decoded as UTF-8."""
    try:
        return read_file_bytes(path, what, limit).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"cannot read {what} {path}: not UTF-8 text ({exc})") from exc


def confined_path(root: Union[str, Path], relative: str, what: str) -> Path:
    """``root / relative`` for a path read from a file (a results row, a split CSV): refused unless it stays inside ``root``.

    ``relative`` must be relative and free of ``..``; with symbolic links resolved (in ``root`` too) the
    file must still lie inside ``root``. ``what`` names the file and the field for the message
    (``"results.jsonl, line 3: heatmap_path"``). Returns the path as joined, not resolved, so messages
    show the names the user knows.
    """
    if not isinstance(relative, str) or not relative or "\0" in relative:
        raise InputError(f"{what}: {relative!r} is not a usable path")
    parts = PurePosixPath(relative.replace(os.sep, "/")).parts
    if os.path.isabs(relative) or relative.startswith("/"):
        raise InputError(f"{what}: {relative!r} is an absolute path; only paths inside {root} are read or written")
    if ".." in parts:
        raise InputError(f"{what}: {relative!r} goes up with '..'; only paths inside {root} are read or written")
    real_root = os.path.realpath(root)
    joined = Path(root) / relative
    real = os.path.realpath(joined)
    if os.path.commonpath([real_root, real]) != real_root:
        raise InputError(f"{what}: {relative!r} leads outside {root} (to {real}, through a symbolic link)")
    return joined
