"""Reading the small files fade parses (prompt sets, templates, banks, model configs) as untrusted input.

A FIFO, a device or a socket is named as what it is and never opened: reading a FIFO
blocks until something writes to it, and ``/dev/zero`` never ends. A file larger than
the limit of its kind is refused before it is read into memory.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional, Union

from fade_cli.errors import InputError

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
        with open(path, "rb") as handle:
            return handle.read()  # a regular file of at most `limit` bytes, checked above
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def read_text_file(path: Union[str, Path], what: str, limit: int = TEXT_FILE_LIMIT) -> str:
    """:func:`read_file_bytes` decoded as UTF-8."""
    try:
        return read_file_bytes(path, what, limit).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"cannot read {what} {path}: not UTF-8 text ({exc})") from exc
