"""Writing a file so that it is either complete or absent: a temporary name, then a rename.

No torch here: light commands (prompt generation, bank info) use it too.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import tempfile
from pathlib import Path
from typing import Callable

from fade_cli.errors import FadeError


class OutputError(FadeError):
    """Writing results failed (disk full, permissions)."""

    exit_code = 3


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


_NEW_FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write through a temporary file in the same folder, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates owner-only files; results and banks are meant to be shared like any file.
        os.chmod(tmp_name, _NEW_FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {describe_write_failure(exc)}") from exc
        raise


def describe_write_failure(exc: OSError) -> str:
    """Why a write failed, for the user; a full disk says so plainly."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full (no space left on device); free some space and run again"
    return str(exc.strerror or exc)
