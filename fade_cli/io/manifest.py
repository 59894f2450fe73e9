"""The record of what fade wrote into an output folder, so that ``--overwrite`` removes exactly that.

``OUT/.fade-written`` lists, one JSON string per line, the paths (relative to
OUT) of the files fade runs wrote there. A line is appended, with one
``write`` on a file opened for appending, just before a file is renamed into
place (:func:`fade_cli.io.atomic.atomic_write`), so a run killed at any moment
leaves a record of every file it may have written; at worst the last line is
cut short and is ignored. Removing a listed file that is not there is harmless.

A command records while it writes (:func:`recording_writes`); files written in
other processes (Ray workers) are not recorded here, which is why
:func:`remove_written` also takes the files the caller knows to be fade's (the
fixed names, the files its results rows name). Folders written by a fade older
than this record have no manifest: the caller's known files are all that is
removed then, never a file that is not provably fade's.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Optional

from fade_cli.io.folder_lock import MARKER

MANIFEST = ".fade-written"

_lock = threading.Lock()  # the writer threads of a run record at the same time
_recording: dict[str, Optional[int]] = {}  # absolute folder -> its manifest opened for appending (opened lazily)


@contextlib.contextmanager
def recording_writes(folder: Path, only_if_recorded: bool = False) -> Iterator[None]:
    """While inside, every file atomic_write puts under ``folder`` is listed in its manifest.

    The manifest is created with the first file, so a run that writes nothing leaves none.
    ``only_if_recorded``: record only into a manifest that exists (a report added to a run folder).
    """
    key = os.path.abspath(folder)
    if only_if_recorded and not os.path.isfile(os.path.join(key, MANIFEST)):
        yield
        return
    with _lock:
        _recording[key] = None
    try:
        yield
    finally:
        with _lock:
            fd = _recording.pop(key, None)
        if fd is not None:
            os.close(fd)


def record_written(path: Path) -> None:
    """List ``path`` in the manifest of the recorded folder it lies in (none: nothing to do).

    Raises OSError when the record cannot be written: a file fade cannot record must not be written.
    """
    if not _recording:
        return
    absolute = os.path.abspath(path)
    with _lock:
        folders = [folder for folder in _recording if absolute.startswith(folder + os.sep)]
        if not folders:
            return
        folder = max(folders, key=len)
        if _recording[folder] is None:
            _recording[folder] = os.open(os.path.join(folder, MANIFEST), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        relative = PurePosixPath(*Path(absolute[len(folder) + 1:]).parts).as_posix()
        os.write(_recording[folder], (json.dumps(relative, ensure_ascii=True) + "\n").encode("ascii"))


def written_files(folder: Path) -> Optional[list[str]]:
    """The paths the manifest of ``folder`` lists (None: no manifest, the folder predates it)."""
    try:
        text = (folder / MANIFEST).read_bytes().decode("ascii", "replace")
    except FileNotFoundError:
        return None
    paths = []
    for line in text.split("\n"):
        with contextlib.suppress(ValueError):  # a line cut short by a kill
            entry = json.loads(line)
            if isinstance(entry, str):
                paths.append(entry)
    return paths


def remove_written(folder: Path, known: Iterable[str] = ()) -> None:
    """Remove the files the manifest of ``folder`` lists, and ``known`` ones (relative paths), then empty the manifest.

    Only files are removed, never a folder with anything left in it: the user's own files stay,
    and so do the folders that hold them. Raises OSError when a file cannot be removed.
    """
    listed = written_files(folder) or []
    emptied: set[Path] = set()
    for relative in dict.fromkeys([*listed, *known]):
        path = _inside(folder, relative)
        if path is None or path.is_dir() and not path.is_symlink():
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            emptied.update(path.parents)
    for path in sorted((p for p in emptied if folder in p.parents), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: something of the user's is in it
            os.rmdir(path)
    if listed:
        os.truncate(folder / MANIFEST, 0)


def _inside(folder: Path, relative: str) -> Optional[Path]:
    """``folder / relative`` if ``relative`` names a file strictly inside ``folder`` (no ``..``, not absolute)."""
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or any(part in ("..", ".") for part in parts):
        return None
    if parts in ((MANIFEST,), (MARKER,)):
        return None
    return folder.joinpath(*parts)
