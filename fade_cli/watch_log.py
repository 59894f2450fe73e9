"""The on-disk records of `fade watch`: the results log and the state of files already scored.

Both are append-only JSON-lines files, written one whole line at a time and
flushed to disk; a line torn by a power cut is cut off when they are opened.
See :mod:`fade_cli.watch` for the order of the writes and the recovery on start.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np
from PIL import Image

from fade_cli.engine.result import Detection
from fade_cli.errors import InputError
from fade_cli.io.atomic import OutputError, atomic_write, describe_write_failure
from fade_cli.io.images import escape_undecodable
from fade_cli.io.outputs import ImageWriter, ResultRow, json_line, write_run_info

RESULTS_FILE = "results.jsonl"
STATE_FILE = "watch-state.jsonl"


class Signature(NamedTuple):
    """What identifies one version of a file: same path, size and modification time = same file."""

    size: int
    mtime_ns: int


def signature(path: Path) -> Optional[Signature]:
    """The file's signature, or None when it vanished meanwhile."""
    try:
        stat = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return Signature(stat.st_size, stat.st_mtime_ns)


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


def last_line(path: Path) -> Optional[str]:
    """The last line of a text file (read from the end: results logs grow for months)."""
    if not path.exists():
        return None
    with open(path, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, end - 65536))
        lines = handle.read().splitlines()
    return lines[-1].decode("utf-8") if lines else None


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

    def _output_name(self, relative: str) -> str:
        if relative not in self._names:
            name, number = relative, 1
            while any((self.out_dir / kind / f"{name}{ext}").exists()
                      for kind, ext in (("maps", ".npy"), ("heatmaps", ".png"), ("masks", ".png"))):
                number += 1
                name = f"{relative}.{number}"
            self._names[relative] = name
        return self._names[relative]


class WatchState:
    """The files already scored: an append-only log, compacted on start."""

    def __init__(self, path: Path):
        self.path = path
        drop_torn_tail(path)
        self.done: dict[str, Signature] = {}
        if path.exists():
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                relative, sig = self._parse(line, number)
                self.done[relative] = sig

    def _parse(self, line: str, number: int) -> tuple[str, Signature]:
        try:
            entry = json.loads(line)
            return entry["path"], Signature(int(entry["size"]), int(entry["mtime_ns"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{self.path} line {number} is damaged; fix or remove that line") from exc

    def contains(self, relative: str, sig: Signature) -> bool:
        return self.done.get(relative) == sig

    def record(self, relative: str, sig: Signature) -> None:
        _append_line(self.path, _state_line(relative, sig))
        self.done[relative] = sig

    def keep_only(self, relatives: set[str]) -> None:
        """Forget files that are gone (moved away or deleted), rewriting the log atomically."""
        if set(self.done) <= relatives:
            return
        self.done = {rel: sig for rel, sig in self.done.items() if rel in relatives}
        lines = "".join(_state_line(rel, sig) + "\n" for rel, sig in self.done.items())
        atomic_write(self.path, lambda handle: handle.write(lines.encode("utf-8")))


def _state_line(relative: str, sig: Signature) -> str:
    """One state entry; a file name that is not valid UTF-8 is kept exactly, as JSON escapes."""
    return escape_undecodable(json.dumps({"path": relative, "size": sig.size, "mtime_ns": sig.mtime_ns},
                                         ensure_ascii=False))


