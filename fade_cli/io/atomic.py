"""Writing a file so that it is either complete or absent: a temporary name, then a rename.

No torch here: light commands (prompt generation, bank info) use it too.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import secrets
from pathlib import Path
from typing import Callable, Optional

from fade_cli.core.errors import FadeError
from fade_cli.io.manifest import record_written


class OutputError(FadeError):
    """Writing results failed (disk full, permissions); ``errno`` says why when the OS said so."""

    exit_code = 3

    def __init__(self, message: str, errno_code: Optional[int] = None):
        super().__init__(message)
        self.errno = errno_code

    @property
    def stops_the_run(self) -> bool:
        """A failure of the whole output folder (full, read-only, broken disk), not of one file's name."""
        return self.errno is None or self.errno in _FOLDER_WIDE_ERRORS


# Write failures that every later write would meet too: the run stops (exit 3) rather than turning every
# image into an error row. Others (a file name too long, a sub-folder not writable) concern one file.
_FOLDER_WIDE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


# Temporary names are short and of a fixed length, whatever the final name: they fit wherever it fits
# (a 250-byte file name leaves no room for a prefix and a suffix). fade_cli.io.folder_lock recognises them.
_TEMPORARY_ATTEMPTS = 100


def _temporary_name() -> str:
    return f".fade-{secrets.token_hex(6)}.tmp"


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write through a temporary file in the same folder, then rename it over ``path``.

    Any OSError on the way (creating the folder or the temporary file included) is an :class:`OutputError`.
    """
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = _create_temporary(path.parent)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        record_written(path)  # before it is in place: a kill now still leaves it on record
        os.replace(tmp_name, path)
    except BaseException as exc:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {describe_write_failure(exc)}", exc.errno) from exc
        raise


def _create_temporary(folder: Path) -> tuple[int, str]:
    """A new file under a fresh temporary name; the mode is the usual one for new files (umask applies)."""
    for _ in range(_TEMPORARY_ATTEMPTS):
        name = os.path.join(folder, _temporary_name())
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(folder))


def describe_write_failure(exc: OSError) -> str:
    """Why a write failed, for the user; a full disk says so plainly."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full (no space left on device); free some space and run again"
    return str(exc.strerror or exc)
