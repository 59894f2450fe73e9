"""Watching a folder: score images as they arrive, once each, across restarts.

A file is taken when it is complete: its size and modification time have not
changed for ``settle_s`` seconds (and at least two polls). Hidden files (a name
or folder starting with ``.``) are never taken, so writers that upload under a
hidden temporary name and rename are always safe.

Per file, in this order: its map/heatmap files are written, a pending entry goes
to ``OUT/watch-state.jsonl``, its row is appended to ``OUT/results.jsonl``
(flushed to disk), the file is recorded in the state (path and
:class:`~fade_cli.watch_log.Identity`: size, times, inode, SHA-256 of the
content), then it is moved to ``move_to`` if asked. A file whose identity is in
the state under its path is never scored again; a new file under an old name
(even with an old time) is. On start, the state is repaired: a pending entry is
settled (see :class:`~fade_cli.watch_log.WatchState`), unfinished moves are done,
and entries of files no longer there are forgotten. An entry of the folder that
cannot be looked at (a symbolic link loop, a broken link) gets one warning.

    watcher = FolderWatcher(Path("incoming"), Path("results"), move_to=Path("done"))
    watch_folder(engine, watcher, ResultsLog(Path("results")), threshold=0.6)
"""
from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

from fade_cli.errors import InputError
from fade_cli.io.images import ImageFile, describe_os_error, discover_images
from fade_cli.io.outputs import ResultRow
from fade_cli.watch_log import RESULTS_FILE, STATE_FILE, Identity, ResultsLog, Signature, WatchState, content_sha256
from fade_cli.watch_log import refuse_results_of_other_runs, signature

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
    problems that do not stop the watch (an unreadable sub-folder, a failed move).
    """

    def __init__(self, folder: Path, out_dir: Path, settle_s: float = 2.0, move_to: Optional[Path] = None,
                 warn: Optional[Warn] = None, clock: Callable[[], float] = time.monotonic):
        self.folder = folder
        self.out_dir = out_dir
        self.move_to = move_to
        self.warn = warn or (lambda message: warnings.warn(message, stacklevel=2))
        self.tracker = StabilityTracker(settle_s, clock)
        self.waiting = 0
        self._warned: set[str] = set()
        self._taken: dict[str, Identity] = {}
        self._digests: dict[tuple[str, Signature], Optional[str]] = {}
        _check_folders(folder, out_dir, move_to)
        _check_out(out_dir)
        self.state = WatchState(out_dir / STATE_FILE, out_dir / RESULTS_FILE)
        self._recover()

    def poll(self) -> list[ImageFile]:
        """One look at the folder: the files that are complete and not scored yet, oldest first."""
        candidates = {}
        for file in discover_images(self.folder, exclude=[self.out_dir, self.move_to], on_skip=self._warn_once):
            sig = None if _hidden(file.relative) else self._signature(file)
            if sig is not None and not self._scored(file.relative, sig):
                candidates[file.relative] = (file, sig)
        ready = self.tracker.update(candidates)
        self.waiting = len(candidates) - len(ready)
        self._taken.update((file.relative, Identity.of(sig, self._sha256(file.relative, sig))) for file, sig in ready)
        return [file for file, sig in sorted(ready, key=lambda item: (item[1].mtime_ns, item[0].relative))]

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
            for relative in sorted(present):
                self._move(relative)
            present = {rel for rel in present if self._still_there(rel)}
        self.state.keep_only(present)

    def _still_there(self, relative: str) -> bool:
        """Whether the file scored under ``relative`` is still in the folder (not a new file of that name)."""
        try:
            sig = signature(self.folder / relative)
        except OSError:
            return False
        return sig is not None and self._scored(relative, sig)

    def _move(self, relative: str) -> None:
        source = self.folder / relative
        target = _free_name(self.move_to / relative)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(os.fspath(source), os.fspath(target))
        except OSError as exc:
            self.warn(f"cannot move {source} to {target}: {exc.strerror or exc}; it stays, and is not scored again")

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


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


def _free_name(path: Path) -> Path:
    """``path``, or ``name.2.png``, ``name.3.png``... when it is taken: a moved file never replaces another."""
    number = 1
    candidate = path
    while os.path.lexists(candidate):  # False, not an error, for a name too long: the move then says so
        number += 1
        candidate = path.with_name(f"{path.stem}.{number}{path.suffix}")
    return candidate


def watch_folder(
    engine,
    watcher: FolderWatcher,
    output: ResultsLog,
    threshold: Optional[float] = None,
    pixel_threshold: Optional[float] = None,
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
    from fade_cli.runner import run_detection

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
            run_detection(engine, files, sink, threshold, finished, pixel_threshold)
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
