"""Watching a folder: score images as they arrive, once each, across restarts.

A file is taken when it is complete: its size and modification time have not
changed for ``settle_s`` seconds (and at least two polls). Hidden files (a name
or folder starting with ``.``) are never taken, so writers that upload under a
hidden temporary name and rename are always safe.

Per file, in this order: its map/heatmap files are written, a pending entry goes
to ``OUT/watch-state.jsonl``, its row is appended to ``OUT/results.jsonl``
(flushed to disk), the file is recorded in the state (path and
:class:`~fade_cli.runs.watch_log.Identity`: size, times, inode, SHA-256 of the
content), then it is moved to ``move_to`` if asked. A file whose identity is in
the state under its path is never scored again; a new file under an old name
(even with an old time) is. On start, the state is repaired: a pending entry is
settled (see :class:`~fade_cli.runs.watch_log.WatchState`), unfinished moves are done,
and entries of files no longer there are forgotten. An entry of the folder that
cannot be looked at (a symbolic link loop, a broken link) gets one warning.

The folder itself may go away while watched (a share unmounted, a tool that
removes and recreates it): each poll first checks it, warns once when it cannot
be watched (gone, now a file, unreadable, or leading to the output folder),
waits for it, and says when it is back. Files in the folder that comes back are
judged by the state as any other: a file whose content was scored under the
same path is not scored again, one with new content is.

A move to another file system copies under a temporary hidden name in the target
folder (``.fade-move-<hash>.part``), flushes it to disk, renames it to its final
name and only then removes the original: a moved file is never visible under its
final name before it is complete. A restart removes such temporaries and does the
move again; an original whose complete copy was already renamed into place (a
stop between that rename and the removal) is removed, not copied twice.

    watcher = FolderWatcher(Path("incoming"), Path("results"), move_to=Path("done"))
    watch_folder(engine, watcher, ResultsLog(Path("results")), Thresholds(image=0.6))
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator, Optional

from fade_cli.bank.calibration import Thresholds
from fade_cli.core.errors import InputError
from fade_cli.io.images import ImageFile, describe_os_error, discover_images
from fade_cli.io.outputs import ResultRow
from fade_cli.runs.watch_log import RESULTS_FILE, STATE_FILE, Identity, ResultsLog, Signature, WatchState, content_sha256
from fade_cli.runs.watch_log import refuse_results_of_other_runs, signature

Warn = Callable[[str], None]

__all__ = ["FolderWatcher", "ResultsLog", "StabilityTracker", "watch_folder"]


class StabilityTracker:
    """Says when a file stopped changing: the same signature for ``settle_s`` seconds, over two polls or more."""

    def __init__(self, settle_s: float, clock: Callable[[], float] = time.monotonic):
        self.settle_s = settle_s
        self.clock = clock
        self._since: dict[str, tuple[Signature, float]] = {}

    def update(self, candidates: dict[str, tuple[ImageFile, Signature]]) -> list[tuple[ImageFile, Signature]]:
        """Files whose signature is unchanged since ``settle_s`` ago; files that went away are forgotten."""
        now = self.clock()
        since, ready = {}, []
        for relative, (file, sig) in candidates.items():
            previous = self._since.get(relative)
            since[relative] = previous if previous is not None and previous[0] == sig else (sig, now)
            if previous is not None and previous[0] == sig and now - previous[1] >= self.settle_s:
                ready.append((file, sig))
        self._since = since
        return ready

    @property
    def waiting(self) -> int:
        """Files being followed: seen, and not gone since the last update."""
        return len(self._since)


class FolderWatcher:
    """Finds the complete, not yet scored images of a folder, and records them once scored.

    ``out_dir`` holds the results and the state; it and ``move_to`` may lie inside
    ``folder`` (they are never scanned). ``warn`` receives one-line messages about
    problems that do not stop the watch (an unreadable sub-folder, a failed move, the
    folder gone); ``notice`` (default: ``warn``) hears when the folder is back.
    """

    def __init__(self, folder: Path, out_dir: Path, settle_s: float = 2.0, move_to: Optional[Path] = None,
                 warn: Optional[Warn] = None, clock: Callable[[], float] = time.monotonic,
                 notice: Optional[Warn] = None):
        self.folder = folder
        self.out_dir = out_dir
        self.move_to = move_to
        self.warn = warn or (lambda message: warnings.warn(message, stacklevel=2))
        self.notice = notice or self.warn
        self.tracker = StabilityTracker(settle_s, clock)
        self.waiting = 0
        self._warned: set[str] = set()
        self._taken: dict[str, Identity] = {}
        self._digests: dict[tuple[str, Signature], Optional[str]] = {}
        _check_folders(folder, out_dir, move_to)
        _check_out(out_dir)
        self._missing: Optional[str] = None  # why the folder cannot be watched now, once said
        self._seen_as = _folder_identity(folder)
        self.state = WatchState(out_dir / STATE_FILE, out_dir / RESULTS_FILE)
        self._recover()

    def poll(self) -> list[ImageFile]:
        """One look at the folder: the files that are complete and not scored yet, oldest first.

        Nothing while the folder cannot be watched (see the module docstring)."""
        files = self._discover()
        if files is None:
            self.tracker.update({})
            self.waiting = 0
            return []
        candidates = {}
        for file in files:
            sig = None if _hidden(file.relative) else self._signature(file)
            if sig is not None and not self._scored(file.relative, sig):
                candidates[file.relative] = (file, sig)
        ready = self.tracker.update(candidates)
        self.waiting = len(candidates) - len(ready)
        self._taken.update((file.relative, Identity.of(sig, self._sha256(file.relative, sig))) for file, sig in ready)
        return [file for file, sig in sorted(ready, key=lambda item: (item[1].mtime_ns, item[0].relative))]

    def _discover(self) -> Optional[list[ImageFile]]:
        """The folder's image files, or None (with a warning when that is news) when it cannot be watched."""
        problem = _folder_problem(self.folder, self.out_dir, self.move_to)
        if problem is None:
            skipped: list[str] = []
            try:
                files = discover_images(self.folder, exclude=[self.out_dir, self.move_to], on_skip=skipped.append)
            except InputError:  # it went in the instant between the check and the walk
                files = []
            # Gone during the walk: its sub-folders were unreadable because of that, not worth a warning each.
            problem = _folder_problem(self.folder, self.out_dir, self.move_to)
            if problem is None:
                for message in skipped:
                    self._warn_once(message)
        if problem is not None:
            if problem != self._missing:
                self.warn(f"cannot watch {self.folder}: {problem}; waiting for it to come back "
                          "(files put into it are scored then)")
            self._missing = problem
            return None
        self._say_if_back()
        return files

    def _say_if_back(self) -> None:
        """A notice when the folder is usable again, or was replaced by another between two polls."""
        now = _folder_identity(self.folder)
        replaced = now != self._seen_as
        if self._missing is not None or replaced:
            link = f" (a symbolic link to {os.path.realpath(self.folder)})" if os.path.islink(self.folder) else ""
            if self._missing is None:
                self.notice(f"{self.folder} was replaced by another folder{link}; watching that one")
            else:  # whether it is the same folder cannot be told: a new one may get the inode of the old
                self.notice(f"{self.folder} is back{link}; watching it again")
        self._missing, self._seen_as = None, now

    def before_row(self, relative: str, results_size: int) -> None:
        """Note that the row of a taken file is about to be appended to results now ``results_size`` bytes long."""
        self.state.begin(relative, self._taken[relative], results_size)

    def mark_done(self, relative: str) -> None:
        """Record a scored file (after its row is in the results), then move it if asked."""
        self.state.record(relative, self._taken.pop(relative))
        if self.move_to is not None:
            self._move(relative)

    def _signature(self, file: ImageFile) -> Optional[Signature]:
        """The file's signature; None, with a warning once, for an entry that cannot be looked at."""
        try:
            sig = signature(file.path)
        except OSError as exc:
            self._warn_once(f"skipped {file.path}: {describe_os_error(exc)}")
            return None
        if sig is None and os.path.islink(file.path):
            self._warn_once(f"skipped {file.path}: a broken symbolic link (its target is missing); "
                            "it is scored once the target appears")
        return sig

    def _scored(self, relative: str, sig: Signature) -> bool:
        return self.state.contains(relative, sig, lambda: self._sha256(relative, sig))

    def _sha256(self, relative: str, sig: Signature) -> Optional[str]:
        """The content's SHA-256, read once per version of a file."""
        key = (relative, sig)
        if key not in self._digests:
            self._digests[key] = content_sha256(self.folder / relative)
        return self._digests[key]

    def _recover(self) -> None:
        """Repair the state after a stop: see the module docstring."""
        present = {rel for rel in self.state.done if self._still_there(rel)}
        if self.move_to is not None:
            for relative in self.state.done:  # a copy a stop cut short, whether or not its original is still here
                with contextlib.suppress(OSError):
                    os.unlink(_partial_copy(self.move_to / relative))
            for relative in sorted(present):
                self._move(relative, recovering=True)
            present = {rel for rel in present if self._still_there(rel)}
        self.state.keep_only(present)

    def _still_there(self, relative: str) -> bool:
        """Whether the file scored under ``relative`` is still in the folder (not a new file of that name)."""
        try:
            sig = signature(self.folder / relative)
        except OSError:
            return False
        return sig is not None and self._scored(relative, sig)

    def _move(self, relative: str, recovering: bool = False) -> None:
        source = self.folder / relative
        target = _free_name(self.move_to / relative)
        try:
            if recovering and self._already_moved(relative):
                os.unlink(source)  # stopped after its copy was complete, before the original was removed
                return
            target.parent.mkdir(parents=True, exist_ok=True)
            _move_file(source, target)
        except OSError as exc:
            self.warn(f"cannot move {source} to {target}: {exc.strerror or exc}; it stays, and is not scored again")

    def _already_moved(self, relative: str) -> bool:
        """Whether the last file moved under this name holds exactly the scored content of ``relative``."""
        identity = self.state.done[relative]
        last = _last_taken_name(self.move_to / relative)
        if last is None or identity.sha256 is None:
            return False
        try:
            if os.stat(last).st_size != identity.size:
                return False
        except OSError:
            return False
        return content_sha256(last) == identity.sha256

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            self.warn(message)


def _check_folders(folder: Path, out_dir: Path, move_to: Optional[Path]) -> None:
    if not folder.exists():
        raise InputError(f"no such folder: {folder}")
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder: fade watch watches a folder")
    real = os.path.realpath(folder)
    if os.path.realpath(out_dir) == real:
        raise InputError("--out must not be the watched folder itself (a sub-folder is fine)")
    if move_to is not None and os.path.realpath(move_to) in (real, os.path.realpath(out_dir)):
        raise InputError("--move-to must differ from the watched folder and from --out")


def _check_out(out_dir: Path) -> None:
    """Results of a `fade detect` run are never appended to; an empty state marks a watch's output folder."""
    state = out_dir / STATE_FILE
    refuse_results_of_other_runs(out_dir, STATE_FILE, "--out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        state.touch()
    except OSError as exc:
        raise InputError(f"cannot create output folder {out_dir}: {exc.strerror or exc}") from exc


def _folder_problem(folder: Path, out_dir: Path, move_to: Optional[Path]) -> Optional[str]:
    """Why ``folder`` cannot be watched now (gone, a file, unreadable...), or None when it can."""
    try:
        mode = os.stat(folder).st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(folder) else "it is gone"
    except OSError as exc:
        return describe_os_error(exc)
    if not stat.S_ISDIR(mode):
        return "it is no longer a folder (a file of that name is there)"
    real = os.path.realpath(folder)
    if real in {os.path.realpath(path) for path in (out_dir, move_to) if path is not None}:
        return f"it now leads to {real}, where the results or the moved files go"
    try:
        with os.scandir(folder) as entries:
            next(entries, None)
    except OSError as exc:
        return f"cannot read it ({describe_os_error(exc)})"
    return None


def _folder_identity(folder: Path) -> Optional[tuple[int, int]]:
    """Which folder ``folder`` is now (device and inode): one removed and created again is another."""
    try:
        found = os.stat(folder)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _move_file(source: Path, target: Path) -> None:
    """Rename; across file systems, copy to a temporary name beside ``target``, flush, rename, then remove ``source``.

    The file never shows under ``target`` before it is complete (see the module docstring).
    """
    try:
        os.rename(source, target)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    partial = _partial_copy(target.parent / source.name)
    try:
        shutil.copyfile(source, partial)
        shutil.copystat(source, partial)  # keep the times, as a rename does
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.rename(partial, target)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    _fsync_folder(target.parent)  # the rename is on disk before the original goes
    os.unlink(source)


def _partial_copy(target: Path) -> Path:
    """The temporary name of a copy to ``target``: hidden, short whatever the name, the same after a restart."""
    digest = hashlib.sha256(os.fsencode(target.name)).hexdigest()[:16]
    return target.parent / f".fade-move-{digest}.part"


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot sync a folder; the rename is done anyway
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


def _free_name(path: Path) -> Path:
    """``path``, or ``name.2.png``, ``name.3.png``... when it is taken: a moved file never replaces another."""
    # os.path.lexists is False, not an error, for a name too long: the move then says so
    return next(candidate for candidate in _numbered(path) if not os.path.lexists(candidate))


def _last_taken_name(path: Path) -> Optional[Path]:
    """The last of ``path``, ``name.2.png``... before the first free one: where the latest move to ``path`` went."""
    last = None
    for candidate in _numbered(path):
        if not os.path.lexists(candidate):
            return last
        last = candidate
    return last


def _numbered(path: Path) -> Iterator[Path]:
    yield path
    number = 2
    while True:
        yield path.with_name(f"{path.stem}.{number}{path.suffix}")
        number += 1


def watch_folder(
    engine,
    watcher: FolderWatcher,
    output: ResultsLog,
    thresholds: Thresholds = Thresholds(),
    on_row: Optional[Callable[[ResultRow], None]] = None,
    interval_s: float = 1.0,
    stop_when_idle: bool = False,
    max_polls: Optional[int] = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Poll, score what is complete, sleep; returns the number of files scored.

    Runs until interrupted (KeyboardInterrupt), or after ``max_polls`` polls, or
    (``stop_when_idle``) at the first poll that finds nothing to score or wait for.
    """
    from fade_cli.runs.runner import run_detection

    scored = 0
    sink = _RecordedLog(output, watcher)

    def finished(row: ResultRow) -> None:
        nonlocal scored
        watcher.mark_done(row.path)
        scored += 1
        if on_row is not None:
            on_row(row)

    polls = 0
    while max_polls is None or polls < max_polls:
        files = watcher.poll()
        polls += 1
        if files:
            run_detection(engine, files, sink, thresholds, finished)
        elif stop_when_idle and watcher.waiting == 0:
            break
        if max_polls is None or polls < max_polls:
            sleep(interval_s)
    return scored


class _RecordedLog:
    """The results log as :func:`run_detection` sees it: each row announced to the state before it is appended."""

    def __init__(self, log: ResultsLog, watcher: FolderWatcher):
        self.log = log
        self.watcher = watcher
        self.writer_threads = log.writer_threads
        self.write_image = log.write_image
        self.write_mask = log.write_mask

    def add(self, row: ResultRow) -> None:
        self.watcher.before_row(row.path, self.log.size())
        self.log.add(row)
