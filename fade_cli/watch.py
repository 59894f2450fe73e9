"""Watching a folder: score images as they arrive, once each, across restarts.

A file is taken when it is complete: its size and modification time have not
changed for ``settle_s`` seconds (and at least two polls). Hidden files (a name
or folder starting with ``.``) are never taken, so writers that upload under a
hidden temporary name and rename are always safe.

Per file, in this order: its map/heatmap files are written, its row is appended
to ``OUT/results.jsonl`` (flushed to disk), the file is recorded in
``OUT/watch-state.jsonl`` (``{"path", "size", "mtime_ns"}``), then it is moved to
``move_to`` if asked. A file whose path, size and modification time are in the
state is never scored again. On start, the state is repaired: a row written just
before a crash gets its state entry, unfinished moves are done, and entries of
files no longer there are forgotten.

    watcher = FolderWatcher(Path("incoming"), Path("results"), move_to=Path("done"))
    watch_folder(engine, watcher, ResultsLog(Path("results")), threshold=0.6)
"""
from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

from fade_cli.errors import InputError
from fade_cli.io.images import ImageFile, discover_images
from fade_cli.io.outputs import ResultRow
from fade_cli.watch_log import RESULTS_FILE, STATE_FILE, ResultsLog, Signature, WatchState, drop_torn_tail, last_line
from fade_cli.watch_log import signature

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
        self._taken: dict[str, Signature] = {}
        _check_folders(folder, out_dir, move_to)
        _check_out(out_dir)
        self.state = WatchState(out_dir / STATE_FILE)
        self._recover()

    def poll(self) -> list[ImageFile]:
        """One look at the folder: the files that are complete and not scored yet, oldest first."""
        candidates = {}
        for file in discover_images(self.folder, exclude=[self.out_dir, self.move_to], on_skip=self._warn_once):
            sig = None if _hidden(file.relative) else signature(file.path)
            if sig is not None and not self.state.contains(file.relative, sig):
                candidates[file.relative] = (file, sig)
        ready = self.tracker.update(candidates)
        self.waiting = len(candidates) - len(ready)
        self._taken.update((file.relative, sig) for file, sig in ready)
        return [file for file, sig in sorted(ready, key=lambda item: (item[1].mtime_ns, item[0].relative))]

    def mark_done(self, relative: str) -> None:
        """Record a scored file (after its row is in the results), then move it if asked."""
        self.state.record(relative, self._taken.pop(relative))
        if self.move_to is not None:
            self._move(relative)

    def _recover(self) -> None:
        """Repair the state after a stop: see the module docstring."""
        self._record_last_row()
        present = {rel for rel, sig in self.state.done.items() if signature(self.folder / rel) == sig}
        if self.move_to is not None:
            for relative in sorted(present):
                self._move(relative)
            present = {rel for rel in present if signature(self.folder / rel) is not None}
        self.state.keep_only(present)

    def _record_last_row(self) -> None:
        """A crash between appending a row and recording its file: record the file now."""
        results = self.out_dir / RESULTS_FILE
        drop_torn_tail(results)
        line = last_line(results)
        if line is None:
            return
        try:
            relative = json.loads(line)["path"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"the last line of {results} is not a result row; fix or remove it") from exc
        sig = signature(self.folder / relative)
        # Only if the file was there, unchanged, when the row was written (not a new file of the same name).
        if sig is not None and not self.state.contains(relative, sig) and sig.mtime_ns <= os.stat(results).st_mtime_ns:
            self.state.record(relative, sig)

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
    others = [name for name in (RESULTS_FILE, "results.csv") if (out_dir / name).exists()]
    if others and not state.exists():
        raise InputError(f"{out_dir} holds results of another run ({', '.join(others)}); choose another --out")
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
    while candidate.exists() or candidate.is_symlink():
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
            run_detection(engine, files, output, threshold, finished, pixel_threshold)
        elif stop_when_idle and watcher.waiting == 0:
            break
        if max_polls is None or polls < max_polls:
            sleep(interval_s)
    return scored
