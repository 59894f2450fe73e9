"""One run at a time per output folder: an OS lock, a marker, and the clean-up of a killed run's temporaries.

Every command that writes into an ``--out`` folder holds :func:`output_folder_lock`
for as long as it runs::

    with output_folder_lock(out, "fade detect ./images --out run1"):
        ...  # write into out

The lock is ``flock`` on ``OUT/.fade-output``: the kernel releases it when the
process ends, however it ends (kill -9, a power cut), so it is never stale. A
second run into a held folder is refused with :class:`OutputFolderBusy` (exit 2)
naming the holder: its pid, its command line and when it started, which the
holder writes into the file. The file stays after the run: it marks the folder
as fade's output, so :func:`is_fade_output` lets discovery skip it (a run's
heatmaps are never scored as product photos). A run that created the folder and
wrote nothing into it (the model failed to load) removes it again, with the
parent folders it created, so a failed first run leaves no trace. Once the lock is held no other
fade run writes there, so the temporary files a killed run left behind are
removed (:func:`remove_stale_temporaries`).

A command that writes one file (a bank, a prompt set, a report page) holds
:func:`single_output_file` instead: the same lock on a side file, which also
refuses an existing file unless it may be replaced.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from fade_cli.core import strict_json
from fade_cli.core.errors import InputError

MARKER = ".fade-output"
# What atomic_write names its temporaries (fade_cli.io.atomic), and what earlier versions named them (mkstemp).
TEMPORARY_NAME = re.compile(r"\.fade-[0-9a-f]{12}\.tmp")
LEGACY_TEMPORARY_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp", re.DOTALL)
# Files by which an output folder written before the marker existed is still recognised.
LEGACY_RESULT_FILES = ("results.jsonl", "results.partial.jsonl", "watch-state.jsonl", "metrics.json")
LEGACY_OUTPUT_FOLDERS = ("heatmaps", "maps", "masks", "worst")


@dataclass(frozen=True)
class Holder:
    """The run holding a folder, as it described itself."""

    pid: Optional[int]
    command: str
    started: str

    def describe(self) -> str:
        return f"pid {self.pid if self.pid is not None else '?'}, `{self.command}`, started {self.started}"


class OutputFolderBusy(InputError):
    """Another fade run is writing into the output folder."""

    def __init__(self, folder: Path, holder: Optional[Holder]):
        who = holder.describe() if holder is not None else "holder unknown"
        super().__init__(f"{folder} is in use by another fade run ({who}); wait for it to end or choose another folder")
        self.folder = folder
        self.holder = holder


@contextlib.contextmanager
def output_folder_lock(folder: Path, command: Optional[str] = None,
                       refuse: Optional[Callable[[], None]] = None) -> Iterator[None]:
    """Hold ``folder`` (created if needed) for this process; refuse if another run holds it.

    ``refuse`` (checks that raise when the folder must not be used, such as earlier results)
    runs after the check for another holder, so that a busy folder is reported as busy, and
    before anything is created, so that a refused run leaves no trace; it runs again once the
    lock is held. Also removes the temporary files a killed run left in the folder.
    ``command`` (default: this process's command line) is shown to a run that is refused.
    """
    if (folder / MARKER).is_file():
        with _open_marker(folder) as probe:
            if not _try_lock(probe, folder):
                raise OutputFolderBusy(folder, _read_holder(probe))
    if refuse is not None:
        refuse()
    created = _missing_folders(folder)
    handle = _locked_marker(folder)
    try:
        if refuse is not None:
            refuse()  # another run may have finished in the folder since the first check
        _describe_self(handle, command)
        remove_stale_temporaries(folder)
        yield
    finally:
        _remove_if_untouched(folder, created)
        handle.close()  # releases the lock


class OutputFileBusy(InputError):
    """Another fade run is writing the same output file."""

    def __init__(self, path: Path, holder: Optional[Holder]):
        who = holder.describe() if holder is not None else "holder unknown"
        super().__init__(f"{path} is being written by another fade run ({who}); wait for it to end or choose "
                         "another name")


@contextlib.contextmanager
def single_output_file(path: Path, overwrite: bool, command: Optional[str] = None) -> Iterator[None]:
    """Hold ``path``, one output file, while inside: refused when another run writes it, or when it exists
    and ``overwrite`` is false. The file itself is written with :func:`fade_cli.io.atomic.atomic_write`.

    The lock is ``flock`` on a side file beside it (:func:`_side_lock_file`), removed on the way out: a killed
    run's lock goes with its process, and the side file it leaves is taken over by the next run.
    """
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name")
    side = _side_lock_file(path)
    handle = _locked_side_file(path, side)
    try:
        _describe_self(handle, command)
        if os.path.lexists(path) and not overwrite:
            raise InputError(f"{path} already exists; choose another name or pass --overwrite")
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(side)  # while still held: a run waiting on this inode sees it is no longer the lock
        handle.close()


def _side_lock_file(path: Path) -> Path:
    """``.fade-<12 hex digits>.lock`` beside ``path``: of a fixed, short length, it fits wherever the name fits."""
    digest = hashlib.sha256(os.fsencode(path.name)).hexdigest()[:12]
    return path.with_name(f".fade-{digest}.lock")


def _locked_side_file(path: Path, side: Path):
    while True:
        try:
            side.parent.mkdir(parents=True, exist_ok=True)
            handle = os.fdopen(os.open(side, os.O_RDWR | os.O_CREAT, 0o666), "r+", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from exc
        try:
            if not _try_lock(handle, side.parent):
                raise OutputFileBusy(path, _read_holder(handle))
            if _is_current(handle, side):
                return handle
        except BaseException:
            handle.close()
            raise
        handle.close()  # the run before removed it between our open and our lock: again


def _locked_marker(folder: Path):
    """The marker, opened and locked; raises OutputFolderBusy when another run holds it."""
    while True:
        handle = _open_marker(folder)
        try:
            if not _try_lock(handle, folder):
                raise OutputFolderBusy(folder, _read_holder(handle))
            if _is_current(handle, folder / MARKER):
                return handle
        except BaseException:
            handle.close()
            raise
        handle.close()  # a run that wrote nothing removed the folder between our open and our lock: again


def _is_current(handle, path: Path) -> bool:
    """Whether ``handle`` is still the file named ``path`` (not one removed since it was opened)."""
    try:
        named = os.stat(path)
    except OSError:
        return False
    opened = os.fstat(handle.fileno())
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    for path in (folder, *folder.parents):
        if os.path.lexists(path):
            break
        missing.append(path)
    return missing


def _remove_if_untouched(folder: Path, created: list[Path]) -> None:
    """Remove the folders this run created when it wrote nothing but the marker (call holding the lock)."""
    if not created:
        return
    with contextlib.suppress(OSError):
        if os.listdir(folder) != [MARKER]:
            return
        os.unlink(folder / MARKER)
        for path in created:
            os.rmdir(path)  # refuses a folder that is not empty: something else was written there


def _try_lock(handle, folder: Path) -> bool:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:  # a file system without locks (ENOLCK): refusing beats two runs clobbering each other
        raise InputError(f"cannot lock the output folder {folder}: {exc.strerror or exc}; "
                         "choose an output folder on a file system with locks (a local disk)") from exc
    return True


def is_fade_output(folder: Path) -> bool:
    """Whether ``folder`` is the output folder of a fade run (marked, or laid out as older versions left it)."""
    try:
        if (folder / MARKER).is_file():
            return True
        return (any((folder / name).is_file() for name in LEGACY_RESULT_FILES)
                and any((folder / name).is_dir() for name in LEGACY_OUTPUT_FOLDERS))
    except OSError:
        return False


def remove_stale_temporaries(folder: Path) -> int:
    """Delete fade's temporary files under ``folder`` (left by a killed run); returns how many.

    Call only while holding the folder's lock: the temporaries of a live run look the same.
    """
    removed = 0
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            if TEMPORARY_NAME.fullmatch(name) or LEGACY_TEMPORARY_NAME.fullmatch(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
    return removed


def _open_marker(folder: Path):
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Opened without truncating: the holder's description must stay readable until we hold the lock.
        fd = os.open(folder / MARKER, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise InputError(f"cannot create output folder {folder}: {exc.strerror or exc}") from exc
    return os.fdopen(fd, "r+", encoding="utf-8")


def _describe_self(handle, command: Optional[str]) -> None:
    if command is None:
        command = " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]) if sys.argv else "?"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    text = strict_json.dumps({"pid": os.getpid(), "command": command, "started": started}, ensure_ascii=True)
    with contextlib.suppress(OSError):  # the lock holds without it; only a refused run's message is poorer
        handle.seek(0)
        handle.truncate()
        handle.write(text + "\n")
        handle.flush()


def _read_holder(handle) -> Optional[Holder]:
    try:
        handle.seek(0)
        entry = json.loads(handle.read(4096))
        pid = entry.get("pid")
        return Holder(pid if isinstance(pid, int) else None, str(entry.get("command", "?")),
                      str(entry.get("started", "?")))
    except (OSError, ValueError, AttributeError):
        return None
