"""The on-disk records of `fade watch`: the results log and the state of files already scored.

Both are append-only JSON-lines files, written one whole line at a time and
flushed to disk; a line torn by a power cut is cut off when they are opened.
See :mod:`fade_cli.runs.watch` for the order of the writes and the recovery on start.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
from PIL import Image

from fade_cli.backbone.file_hash import read_sha256
from fade_cli.engine.result import Detection
from fade_cli.core.errors import InputError
from fade_cli.io.atomic import OutputError, atomic_write, describe_write_failure
from fade_cli.io.outputs import PARTIAL_FILE, RUN_INFO_FILE, ImageWriter, ResultRow, json_line, json_text
from fade_cli.io.outputs import read_json_lines, write_run_info

RESULTS_FILE = "results.jsonl"
STATE_FILE = "watch-state.jsonl"
ARCHIVE_FILE = "serve-archive.txt"  # marks the audit trail of `fade serve --archive` (fade_cli.runs.serve.archive)
# Files by which a folder holds the results of a run: `fade detect` (results, partial results, run.json),
# `fade eval` (metrics.json), and the marker of each kind of run that appends to its folder.
RUN_RESULT_FILES = (RESULTS_FILE, "results.csv", PARTIAL_FILE, RUN_INFO_FILE, "metrics.json", STATE_FILE, ARCHIVE_FILE)


class Signature(NamedTuple):
    """One version of a file as ``stat`` sees it; a file is complete when this stops changing."""

    size: int
    mtime_ns: int
    inode: int = 0
    ctime_ns: int = 0


class Identity(NamedTuple):
    """What the state records of a scored file: its signature and the SHA-256 of its content.

    A name and a modification time are not an identity: ``mv``, ``cp -p``, ``rsync -a`` and a
    camera counter starting again all bring a new file under an old name with an old time.
    """

    size: int
    mtime_ns: int
    inode: Optional[int]
    ctime_ns: Optional[int]
    sha256: Optional[str]

    @classmethod
    def of(cls, sig: Signature, sha256: Optional[str]) -> "Identity":
        return cls(sig.size, sig.mtime_ns, sig.inode, sig.ctime_ns, sha256)

    def matches(self, sig: Signature, content_sha256: Callable[[], Optional[str]]) -> bool:
        """Whether ``sig`` is this same file: same size and content (the same inode and change time prove it)."""
        if sig.size != self.size:
            return False
        if (self.inode, self.ctime_ns) == (sig.inode, sig.ctime_ns):
            return True  # the kernel sets ctime on every write and rename: no other file has both
        if self.sha256 is None:  # recorded by an older fade, or unreadable when scored
            return sig.mtime_ns == self.mtime_ns
        return content_sha256() == self.sha256


def signature(path: Path) -> Optional[Signature]:
    """The file's signature, or None when it vanished meanwhile; other OSErrors (a symbolic link loop) are raised."""
    try:
        stat = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return Signature(stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)


def content_sha256(path: Path) -> Optional[str]:
    """SHA-256 of the file's bytes, or None when it cannot be read."""
    try:
        return read_sha256(path)
    except OSError:
        return None


def refuse_results_of_other_runs(folder: Path, marker: str, option: str) -> None:
    """Refuse a folder holding another run's results; ``marker`` (a file) marks the folders of this kind of run.

    A watch and a serve archive append to their folder across restarts, each only to a
    folder of its own kind: never to a `fade detect` run's results, nor to each other's.
    """
    if os.path.lexists(folder / marker):
        return
    others = [name for name in RUN_RESULT_FILES if os.path.lexists(folder / name)]
    if others:
        raise InputError(f"{folder} holds results of another run ({', '.join(others)}); choose another {option}")


def drop_torn_tail(path: Path) -> None:
    """Cut an unfinished last line (a crash during an append) so every line is whole."""
    if not path.exists():
        return
    with open(path, "rb+") as handle:
        end = handle.seek(0, os.SEEK_END)
        keep = end
        while keep > 0:
            start = max(0, keep - 65536)
            handle.seek(start)
            chunk = handle.read(keep - start)
            if keep == end and chunk.endswith(b"\n"):
                return
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            keep = start
        handle.truncate(keep)


def _append_line(path: Path, line: str) -> None:
    """Append one line and flush it to disk; on failure the file is cut back, never left with half a line."""
    data = (line + "\n").encode("utf-8")
    try:
        with open(path, "ab") as handle:
            before = handle.tell()
            try:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            except OSError:
                handle.truncate(before)
                raise
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {describe_write_failure(exc)}") from exc


class ResultsLog(ImageWriter):
    """The outputs of a watch: maps/heatmaps/masks as ``fade detect`` writes them, rows appended to results.jsonl.

    A file name seen before (a camera counter starting again) gets its own output
    files (``maps/a.png.2.npy``), so earlier results are never overwritten.
    """

    def __init__(self, out_dir: Path, map_size: Optional[int] = None, save_maps: bool = True,
                 save_heatmaps: bool = True, run_info: Optional[dict[str, Any]] = None):
        """``run_info`` (``FadeEngine.run_info``) goes to OUT/run.json: how the watch started last."""
        super().__init__(out_dir, map_size, save_maps, save_heatmaps)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create output folder {out_dir}: {exc.strerror or exc}") from exc
        if run_info is not None:
            write_run_info(out_dir, run_info)
        self.path = out_dir / RESULTS_FILE
        drop_torn_tail(self.path)
        self._names: dict[str, str] = {}

    def write_image(self, relative: str, image: Image.Image, detection: Detection) -> tuple[Optional[str], Optional[str]]:
        return super().write_image(self._output_name(relative), image, detection)

    def write_mask(self, relative: str, mask_hw: np.ndarray) -> str:
        return super().write_mask(self._output_name(relative), mask_hw)

    def add(self, row: ResultRow) -> None:
        self._names.pop(row.path, None)
        _append_line(self.path, json_line(row))

    def size(self) -> int:
        """How long results.jsonl is now: where the next row will start."""
        try:
            return os.path.getsize(self.path)
        except FileNotFoundError:
            return 0

    def _output_name(self, relative: str) -> str:
        if relative not in self._names:
            name, number = relative, 1
            # os.path.exists, not Path.exists: a name too long for the file system is simply not there.
            while any(os.path.exists(self.out_dir / kind / f"{name}{ext}")
                      for kind, ext in (("maps", ".npy"), ("heatmaps", ".png"), ("masks", ".png"))):
                number += 1
                name = f"{relative}.{number}"
            self._names[relative] = name
        return self._names[relative]


class WatchState:
    """The files already scored: an append-only log, compacted on start.

    Before a file's row is appended to the results, a *pending* entry records the file and
    the size the results then had; once the row is in, a *done* entry follows. On open, a
    pending entry left by a crash is settled exactly: the results grew past that size (the
    row is in: the file is done) or not (it is scored again).
    """

    def __init__(self, path: Path, results: Path):
        self.path = path
        drop_torn_tail(path)
        self.done: dict[str, Identity] = {}
        pending = None
        if path.exists():
            for number, line in enumerate(read_json_lines(path), start=1):
                relative, identity, offset = self._parse(line, number)
                if offset is None:
                    self.done[relative] = identity
                    pending = None
                else:
                    pending = (relative, identity, offset)
        if pending is not None:
            relative, identity, offset = pending
            if results.exists() and os.path.getsize(results) > offset:
                self.done[relative] = identity
            self._rewrite()  # no pending entry stays behind to be misread later

    def _parse(self, line: str, number: int) -> tuple[str, Identity, Optional[int]]:
        try:
            entry = json.loads(line)
            identity = Identity(int(entry["size"]), int(entry["mtime_ns"]), _optional_int(entry.get("inode")),
                                _optional_int(entry.get("ctime_ns")), _optional_str(entry.get("sha256")))
            if not isinstance(entry["path"], str):
                raise TypeError("path")
            return entry["path"], identity, _optional_int(entry.get("pending_at"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"{self.path} line {number} is damaged; fix or remove that line") from exc

    def contains(self, relative: str, sig: Signature, content: Callable[[], Optional[str]]) -> bool:
        """Whether the file at ``relative`` with ``sig`` (and ``content()``, its SHA-256, if needed) was scored."""
        identity = self.done.get(relative)
        return identity is not None and identity.matches(sig, content)

    def begin(self, relative: str, identity: Identity, results_size: int) -> None:
        """Say that the row of this file is about to be appended to results that are ``results_size`` bytes long."""
        _append_line(self.path, _state_line(relative, identity, pending_at=results_size))

    def record(self, relative: str, identity: Identity) -> None:
        _append_line(self.path, _state_line(relative, identity))
        self.done[relative] = identity

    def keep_only(self, relatives: set[str]) -> None:
        """Forget files that are gone (moved away or deleted), rewriting the log atomically."""
        if set(self.done) <= relatives:
            return
        self.done = {rel: identity for rel, identity in self.done.items() if rel in relatives}
        self._rewrite()

    def _rewrite(self) -> None:
        lines = "".join(_state_line(rel, identity) + "\n" for rel, identity in self.done.items())
        atomic_write(self.path, lambda handle: handle.write(lines.encode("utf-8")))


def _optional_int(value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("not an integer")
    return value


def _optional_str(value: Any) -> Optional[str]:
    if value is not None and not isinstance(value, str):
        raise TypeError("not a string")
    return value


def _state_line(relative: str, identity: Identity, pending_at: Optional[int] = None) -> str:
    """One state entry; any file name (not valid UTF-8, with U+2028...) is kept exactly, as JSON escapes."""
    entry = {"path": relative, **identity._asdict()}
    if pending_at is not None:
        entry["pending_at"] = pending_at
    return json_text(entry)
