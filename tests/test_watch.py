"""`fade watch`: complete files only, each scored once across restarts, --move-to, and the command line.

The watcher is driven with a fake clock and a fake sleep, so no test waits for
real time and every loop stops after a fixed number of polls.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import GOLDEN, MODEL_CONFIG, QUERIES, TINY_MODEL_ARGS, WEIGHTS
from fade_cli.cli import cli
from fade_cli.core.errors import InputError
from fade_cli.io.outputs import ResultRow
from fade_cli.runs.watch import FolderWatcher, ResultsLog, StabilityTracker, watch_folder
from fade_cli.runs.watch_log import STATE_FILE, Signature, drop_torn_tail

ARGS = TINY_MODEL_ARGS + ["--scales", "240", "--cls-size", "240"]


@pytest.fixture(scope="module")
def engine():
    from fade_cli.config import EngineConfig
    from fade_cli.engine import FadeEngine

    config = EngineConfig(model_config=str(MODEL_CONFIG), weights=str(WEIGHTS), device="cpu",
                          seg_sizes=(240,), cls_size=240)
    return FadeEngine.from_config(config)


class FakeTime:
    """A clock that only moves when the watcher sleeps; ``on_sleep`` hooks run at each sleep."""

    def __init__(self):
        self.now = 1000.0
        self.on_sleep = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        for hook in self.on_sleep:
            hook(self.now)


def picture(path: Path, shade: int = 90) -> None:
    """A small grey photo: 30 pixels high, no more than 8-fold from the 240 pixels the model takes (else its row warns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (shade, shade, shade)).save(path)


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text("utf-8").splitlines()]


def state_of(out: Path) -> list[dict]:
    """The files recorded as scored (not the entries announcing a row about to be appended)."""
    entries = [json.loads(line) for line in (out / STATE_FILE).read_text("utf-8").split("\n") if line]
    return [entry for entry in entries if "pending_at" not in entry]


def start(folder: Path, out: Path, clock: FakeTime, settle_s: float = 0.0, move_to=None, warn=None, notice=None):
    """What a (re)start of the watch does: open the results log, then the watcher (which repairs the state)."""
    said = {} if notice is None else {"notice": notice}
    watcher = FolderWatcher(folder, out, settle_s=settle_s, move_to=move_to, warn=warn, clock=clock, **said)
    return watcher, ResultsLog(out)


def test_a_growing_file_is_scored_once_it_stops_changing(engine, tmp_path):
    folder, out, clock = tmp_path / "in", tmp_path / "out", FakeTime()
    folder.mkdir()
    source = tmp_path / "photo.png"
    picture(source)
    data = source.read_bytes()
    chunks = [data[: len(data) // 3], data[len(data) // 3 : 2 * len(data) // 3], data[2 * len(data) // 3 :]]
    target = folder / "photo.png"
    target.write_bytes(chunks[0])
    written = {"done_at": None}

    def keep_writing(now):  # the camera writes a chunk every 2 s, with a new modification time
        if now in (1002.0, 1004.0):
            with open(target, "ab") as handle:
                handle.write(chunks[1 if now == 1002.0 else 2])
            os.utime(target, ns=(int(now * 1e9), int(now * 1e9)))
            written["done_at"] = now

    clock.on_sleep.append(keep_writing)
    scored_at = []
    watcher, log = start(folder, out, clock, settle_s=3.0)
    count = watch_folder(engine, watcher, log, on_row=lambda row: scored_at.append(clock.now),
                         interval_s=1.0, max_polls=12, sleep=clock.sleep)

    assert count == 1
    [row] = rows_of(out)
    assert row["path"] == "photo.png" and row["error"] is None and 0.0 <= row["score"] <= 1.0
    assert scored_at[0] >= written["done_at"] + 3.0  # never before it was complete and settled


def test_stability_needs_the_same_signature_for_the_settle_time():
    clock = FakeTime()
    tracker = StabilityTracker(settle_s=2.0, clock=clock)
    entry = lambda size: {"a.png": ("FILE", Signature(size, 7))}  # noqa: E731
    assert tracker.update(entry(10)) == []  # first sight
    clock.now += 5
    assert tracker.update(entry(20)) == []  # grew: the clock starts again
    clock.now += 1
    assert tracker.update(entry(20)) == []  # only 1 s unchanged
    clock.now += 1
    assert tracker.update(entry(20)) == [("FILE", Signature(20, 7))]
    assert tracker.update({}) == [] and tracker.waiting == 0  # gone: forgotten


def test_restart_never_scores_a_file_twice(engine, tmp_path):
    folder, out, clock = tmp_path / "in", tmp_path / "out", FakeTime()
    picture(folder / "a.png")
    picture(folder / "sub dir" / "b.png", 120)
    watcher, log = start(folder, out, clock)
    assert watch_folder(engine, watcher, log, max_polls=3, sleep=clock.sleep) == 2

    watcher, log = start(folder, out, clock)  # restart
    assert watch_folder(engine, watcher, log, max_polls=3, sleep=clock.sleep) == 0
    picture(folder / "c.png", 150)
    assert watch_folder(engine, watcher, log, max_polls=3, sleep=clock.sleep) == 1

    assert sorted(row["path"] for row in rows_of(out)) == ["a.png", "c.png", "sub dir/b.png"]
    assert sorted(entry["path"] for entry in state_of(out)) == ["a.png", "c.png", "sub dir/b.png"]


def test_move_to_moves_scored_files_and_never_overwrites(engine, tmp_path):
    folder, out, done, clock = tmp_path / "in", tmp_path / "out", tmp_path / "done", FakeTime()
    picture(folder / "a.png")
    picture(folder / "bad.png")
    (folder / "bad.png").write_bytes(b"not an image")
    picture(folder / "sub" / "b.png")
    picture(done / "a.png", 200)  # a file of the same name moved there earlier
    watcher, log = start(folder, out, clock, move_to=done)
    assert watch_folder(engine, watcher, log, max_polls=3, sleep=clock.sleep) == 3

    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == []
    assert sorted(p.relative_to(done).as_posix() for p in done.rglob("*") if p.is_file()) == [
        "a.2.png", "a.png", "bad.png", "sub/b.png"]
    assert Image.open(done / "a.png").getpixel((0, 0)) == (200, 200, 200)  # the earlier one is untouched
    errors = {row["path"]: row["error"] for row in rows_of(out)}
    assert errors["a.png"] is None and "not a readable image" in errors["bad.png"]

    picture(folder / "a.png", 60)  # the camera's counter starts again: a new file, same name
    watcher, log = start(folder, out, clock, move_to=done)
    assert watch_folder(engine, watcher, log, max_polls=3, sleep=clock.sleep) == 1
    assert (done / "a.3.png").exists()
    heatmaps = sorted(row["heatmap_path"] for row in rows_of(out) if row["path"] == "a.png")
    assert heatmaps == ["heatmaps/a.png.2.png", "heatmaps/a.png.png"]  # both kept
    assert state_of(out) == [state_of(out)[-1]]  # moved files are forgotten at restart; the state stays small


def test_a_crash_between_the_row_and_the_state_is_repaired(tmp_path):
    folder, out, clock = tmp_path / "in", tmp_path / "out", FakeTime()
    picture(folder / "a.png")
    picture(folder / "b.png")
    watcher, log = start(folder, out, clock)
    watcher.poll()
    assert sorted(f.relative for f in watcher.poll()) == ["a.png", "b.png"]
    watcher.before_row("a.png", log.size())
    log.add(ResultRow(path="a.png", score=0.1))
    watcher.mark_done("a.png")
    watcher.before_row("b.png", log.size())
    log.add(ResultRow(path="b.png", score=0.2))  # ...and the power goes before b.png is recorded
    with open(out / "results.jsonl", "a") as handle:
        handle.write('{"path": "c.png", "sco')  # a torn line from another crash

    watcher, log = start(folder, out, clock)
    assert [row["path"] for row in rows_of(out)] == ["a.png", "b.png"]  # the torn line is cut off
    watcher.poll()
    assert watcher.poll() == [] and watcher.waiting == 0
    assert sorted(entry["path"] for entry in state_of(out)) == ["a.png", "b.png"]


def test_a_crash_before_the_row_is_appended_scores_the_file_again(tmp_path):
    folder, out, clock = tmp_path / "in", tmp_path / "out", FakeTime()
    picture(folder / "a.png")
    watcher, log = start(folder, out, clock)
    watcher.poll()
    assert [f.relative for f in watcher.poll()] == ["a.png"]
    watcher.before_row("a.png", log.size())  # ...and the power goes before the row is appended

    watcher, log = start(folder, out, clock)
    watcher.poll()
    assert [f.relative for f in watcher.poll()] == ["a.png"]
    assert state_of(out) == [] and "pending_at" not in (out / STATE_FILE).read_text()


def test_hidden_files_and_the_output_folder_inside_are_ignored(tmp_path):
    folder, clock = tmp_path / "in", FakeTime()
    picture(folder / ".upload-in-progress.png")
    picture(folder / ".cache" / "x.png")
    picture(folder / "ok.png")
    watcher, _ = start(folder, folder / "results", clock)
    picture(folder / "results" / "heatmaps" / "ok.png.png")
    watcher.poll()
    assert [f.relative for f in watcher.poll()] == ["ok.png"]


def test_results_of_another_run_and_bad_folders_are_refused(tmp_path):
    clock = FakeTime()
    (tmp_path / "in").mkdir()
    (tmp_path / "detect-run").mkdir()
    (tmp_path / "detect-run" / "results.csv").write_text("path\n")
    with pytest.raises(InputError, match="holds results of another run"):
        start(tmp_path / "in", tmp_path / "detect-run", clock)
    with pytest.raises(InputError, match="no such folder"):
        start(tmp_path / "nope", tmp_path / "out", clock)
    with pytest.raises(InputError, match="--move-to must differ"):
        start(tmp_path / "in", tmp_path / "out", clock, move_to=tmp_path / "in")


def test_torn_tail_is_dropped_and_whole_lines_kept(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c"')
    drop_torn_tail(path)
    assert path.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    drop_torn_tail(path)
    assert path.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    path.write_bytes(b"no newline at all")
    drop_torn_tail(path)
    assert path.read_bytes() == b""


def test_watch_command_with_a_bank_moves_files_and_resumes(tmp_path):
    bank = tmp_path / "widget.fadebank"
    built = CliRunner().invoke(cli, ["bank", "build", str(GOLDEN / "images" / "refs2"), "--out", str(bank),
                                     "--class", "widget", "--threshold", "0.0", "-q", *ARGS])
    assert built.exit_code == 0, built.output
    folder, out, done = tmp_path / "incoming", tmp_path / "results", tmp_path / "done"
    folder.mkdir()
    shutil.copy(QUERIES / "good_a.png", folder / "good a.png")
    shutil.copy(QUERIES / "cracked_a.png", folder / "cracked.png")
    args = ["watch", str(folder), "--bank", str(bank), "--out", str(out), "--move-to", str(done), "--once",
            "--settle", "0", "--interval", "0.05", "--device", "cpu"]

    first = CliRunner().invoke(cli, args, catch_exceptions=False)

    assert first.exit_code == 1, first.output  # --once: NG at threshold 0 from the bank
    printed = [json.loads(line) for line in first.stdout.splitlines()]
    assert sorted(row["path"] for row in printed) == ["cracked.png", "good a.png"]
    assert all(row["verdict"] == "NG" for row in printed) and printed == rows_of(out)
    assert sorted(p.name for p in done.iterdir()) == ["cracked.png", "good a.png"]
    again = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert again.exit_code == 0 and again.stdout == "" and len(rows_of(out)) == 2


@pytest.mark.parametrize("stop, exit_code", [("ctrl-c", 130), ("sigterm", 0)])
def test_watch_command_stops_cleanly(tmp_path, monkeypatch, stop, exit_code):
    import fade_cli.runs.watch

    def stopped(*args, **kwargs):
        if stop == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        raise KeyboardInterrupt

    monkeypatch.setattr(fade_cli.runs.watch, "watch_folder", stopped)
    (tmp_path / "in").mkdir()
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    result = CliRunner().invoke(cli, ["watch", str(tmp_path / "in"), "--out", str(tmp_path / "out"), *ARGS])
    assert result.exit_code == exit_code and "Stopped after scoring 0 image(s)" in result.stderr
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == previous


def test_full_disk_while_appending_a_row_leaves_no_half_line(tmp_path, monkeypatch):
    import errno

    import fade_cli.runs.watch_log
    from fade_cli.io.atomic import OutputError

    log = ResultsLog(tmp_path / "out")
    log.add(ResultRow(path="a.png", score=0.5))
    before = (tmp_path / "out" / "results.jsonl").read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fade_cli.runs.watch_log.os, "fsync", no_space)
    with pytest.raises(OutputError, match="the disk is full"):
        log.add(ResultRow(path="b.png", score=0.7))
    assert (tmp_path / "out" / "results.jsonl").read_bytes() == before


def bitmap(path: Path, shade: int) -> None:
    """A BMP: its size does not depend on its content, as with many camera formats."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (shade, shade, shade)).save(path, format="BMP")


@pytest.mark.parametrize("crashed_before_the_state", [False, True])
def test_a_new_file_under_a_finished_name_with_an_old_time_is_scored(engine, tmp_path, crashed_before_the_state):
    folder, out, clock = tmp_path / "in", tmp_path / "out", FakeTime()
    bitmap(folder / "a.bmp", 90)
    old = os.stat(folder / "a.bmp")
    watcher, log = start(folder, out, clock)
    assert watch_folder(engine, watcher, log, max_polls=3, sleep=clock.sleep) == 1
    if crashed_before_the_state:  # the power went after the row was appended, before the file was recorded
        lines = (out / STATE_FILE).read_bytes().split(b"\n")
        (out / STATE_FILE).write_bytes(b"\n".join(lines[:-2]) + b"\n" if len(lines) > 2 else b"")

    # `cp -p` / `rsync -a` / a camera counter starting again: another photo, same name, size and time.
    bitmap(tmp_path / "new.bmp", 200)
    os.utime(tmp_path / "new.bmp", ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(tmp_path / "new.bmp", folder / "a.bmp")
    assert os.stat(folder / "a.bmp").st_size == old.st_size

    watcher, log = start(folder, out, clock)
    assert watch_folder(engine, watcher, log, max_polls=3, sleep=clock.sleep) == 1
    assert [row["path"] for row in rows_of(out)] == ["a.bmp", "a.bmp"]
    watcher, log = start(folder, out, clock)  # ...and the new one is not scored twice either
    assert watch_folder(engine, watcher, log, max_polls=3, sleep=clock.sleep) == 0


def test_a_scored_file_copied_to_a_new_disk_is_not_scored_again(engine, tmp_path):
    folder, out, clock = tmp_path / "in", tmp_path / "out", FakeTime()
    bitmap(folder / "a.bmp", 90)
    watcher, log = start(folder, out, clock)
    assert watch_folder(engine, watcher, log, max_polls=3, sleep=clock.sleep) == 1
    shutil.copy2(folder / "a.bmp", tmp_path / "copy.bmp")  # same content: a new inode and change time
    os.replace(tmp_path / "copy.bmp", folder / "a.bmp")
    watcher, log = start(folder, out, clock)
    assert watch_folder(engine, watcher, log, max_polls=3, sleep=clock.sleep) == 0


def test_symlink_loops_and_dangling_links_are_warned_about_and_the_watch_goes_on(tmp_path):
    folder, clock, warnings = tmp_path / "in", FakeTime(), []
    picture(folder / "ok.png")
    os.symlink("loop.png", folder / "loop.png")
    os.symlink(tmp_path / "missing.png", folder / "dangling.png")
    watcher, _ = start(folder, tmp_path / "out", clock, warn=warnings.append)
    watcher.poll()
    assert [f.relative for f in watcher.poll()] == ["ok.png"]
    watcher.poll()
    assert len(warnings) == 2  # each said once, not at every poll
    assert any("loop.png: symbolic link loop" in message for message in warnings)
    assert any("dangling.png: a broken symbolic link" in message for message in warnings)


LINE_BREAK_NAMES = ["line\u2028sep.png", "para\u2029sep.png", "next\x85line.png", "cr\rname.png",
                    "vt\x0bff\x0cname.png", "fs\x1cgs\x1drs\x1ename.png", "nl\nname.png"]


def test_any_file_name_survives_the_state_and_the_results(engine, tmp_path):
    folder, out, clock = tmp_path / "in", tmp_path / "out", FakeTime()
    for name in LINE_BREAK_NAMES:
        picture(folder / name)
    watcher, log = start(folder, out, clock)
    assert watch_folder(engine, watcher, log, max_polls=3, sleep=clock.sleep) == len(LINE_BREAK_NAMES)

    watcher, log = start(folder, out, clock)  # the state is read back: nothing is damaged or scored again
    assert watch_folder(engine, watcher, log, max_polls=3, sleep=clock.sleep) == 0
    text = (out / "results.jsonl").read_text("utf-8")
    rows = [json.loads(line) for line in text.splitlines()]  # even a reader splitting at U+2028 gets whole rows
    assert sorted(row["path"] for row in rows) == sorted(LINE_BREAK_NAMES)
    assert sorted(entry["path"] for entry in state_of(out)) == sorted(LINE_BREAK_NAMES)


def test_a_name_too_long_for_its_heatmap_is_an_error_row_and_the_watch_goes_on(engine, tmp_path):
    folder, out, clock, done = tmp_path / "in", tmp_path / "out", FakeTime(), tmp_path / "done"
    long_name = "t" * 248 + ".png"  # 252 bytes: fits, but heatmaps/<name>.png (256) cannot exist
    picture(folder / long_name)
    picture(folder / "b.png")
    watcher, log = start(folder, out, clock, move_to=done)
    assert watch_folder(engine, watcher, log, max_polls=3, sleep=clock.sleep) == 2
    rows = {row["path"]: row for row in rows_of(out)}
    assert rows[long_name]["score"] is not None and "File name too long" in rows[long_name]["error"]
    assert rows["b.png"]["error"] is None and (done / long_name).exists()


class Said:
    """What the watcher said: warnings and notices apart."""

    def __init__(self):
        self.warnings, self.notices = [], []

    def watcher(self, folder: Path, out: Path, clock: FakeTime, **kwargs):
        return start(folder, out, clock, warn=self.warnings.append, notice=self.notices.append, **kwargs)


def test_a_folder_removed_and_created_again_is_watched_again(engine, tmp_path):
    folder, out, clock, said = tmp_path / "in", tmp_path / "out", FakeTime(), Said()
    bitmap(folder / "same.bmp", 90)
    bitmap(folder / "changed.bmp", 120)

    def remount(now):
        if now == 1003.0:
            shutil.rmtree(folder)
        if now == 1006.0:  # it comes back: a new folder (new inode) with the same names
            staging = tmp_path / "staging"
            bitmap(staging / "same.bmp", 90)  # the very file scored before: not scored again
            bitmap(staging / "changed.bmp", 200)  # same name and size, new content: scored
            bitmap(staging / "new.bmp", 30)
            os.rename(staging, folder)

    clock.on_sleep.append(remount)
    scored = []
    watcher, log = said.watcher(folder, out, clock)
    count = watch_folder(engine, watcher, log, on_row=lambda row: scored.append((row.path, clock.now)),
                         max_polls=10, sleep=clock.sleep)

    assert count == 4
    assert sorted(path for path, when in scored if when < 1003.0) == ["changed.bmp", "same.bmp"]
    assert sorted(path for path, when in scored if when > 1006.0) == ["changed.bmp", "new.bmp"]
    assert len(said.warnings) == 1 and f"cannot watch {folder}: it is gone; waiting" in said.warnings[0]
    assert said.notices == [f"{folder} is back; watching it again"]
    watcher, log = said.watcher(folder, out, clock)  # a restart: all three are known
    assert watch_folder(engine, watcher, log, max_polls=3, sleep=clock.sleep) == 0


def _unreadable(monkeypatch, folder):
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path) == os.fspath(folder):  # tests may run as root, for whom chmod 000 changes nothing
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return monkeypatch.undo


@pytest.mark.parametrize("change, message", [
    ("a file", "it is no longer a folder"),
    ("unreadable", "cannot read it (permission denied)"),
    ("a broken link", "a broken symbolic link"),
    ("a link to the results", f"it now leads to {{out}}, where the results or the moved files go"),
])
def test_a_folder_replaced_or_unreadable_is_waited_for_with_a_clear_message(tmp_path, monkeypatch, change, message):
    folder, out, elsewhere, clock, said = tmp_path / "in", tmp_path / "out", tmp_path / "else", FakeTime(), Said()
    picture(folder / "a.png")
    watcher, _ = said.watcher(folder, out, clock)
    restore = None
    if change == "unreadable":
        restore = _unreadable(monkeypatch, folder)
    else:
        shutil.rmtree(folder)
        if change == "a file":
            folder.write_bytes(b"not a folder")
        else:
            os.symlink(elsewhere if change == "a broken link" else out, folder)

    for _ in range(3):
        assert watcher.poll() == [] and watcher.waiting == 0
    message = message.format(out=os.path.realpath(out))
    assert len(said.warnings) == 1 and said.warnings[0].startswith(f"cannot watch {folder}: {message}")
    assert said.notices == []

    if restore is not None:
        restore()
    elif change == "a broken link":  # its target appears: a folder elsewhere, reached through the link
        picture(elsewhere / "b.png")
    else:
        folder.unlink()
        picture(folder / "b.png")
    watcher.poll()
    expected = ["a.png"] if change == "unreadable" else ["b.png"]
    assert [file.relative for file in watcher.poll()] == expected
    assert len(said.notices) == 1 and said.notices[0].startswith(f"{folder} is back")
    if change == "a broken link":
        assert f"a symbolic link to {os.path.realpath(elsewhere)}" in said.notices[0]
    assert len(said.warnings) == 1


# Runs the start of a watch's move across file systems (os.rename fails with EXDEV) and kills the process
# (SIGKILL: no clean-up of any kind) during the copy, or once the copy is complete, before the original goes.
KILLED_MOVE = """
import errno, os, shutil, signal, sys
from pathlib import Path
from fade_cli.io.outputs import ResultRow
from fade_cli.runs.watch import FolderWatcher, ResultsLog

folder, out, done, when = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
real_rename, real_unlink = os.rename, os.unlink

def other_disk(source, target, *args, **kwargs):
    if Path(source).parent == folder:
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    return real_rename(source, target, *args, **kwargs)

def killed_copy(source, target, *args, **kwargs):
    data = Path(source).read_bytes()
    with open(target, "wb") as handle:
        handle.write(data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)

def killed_unlink(path, *args, **kwargs):
    if Path(path).parent == folder:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_unlink(path, *args, **kwargs)

os.rename = other_disk
if when == "during the copy":
    shutil.copyfile = killed_copy
else:
    os.unlink = killed_unlink
watcher, log = FolderWatcher(folder, out, settle_s=0, move_to=done), ResultsLog(out)
watcher.poll()
[file] = watcher.poll()
watcher.before_row(file.relative, log.size())
log.add(ResultRow(path=file.relative, score=0.5))
watcher.mark_done(file.relative)
"""


@pytest.mark.parametrize("when", ["during the copy", "before the original is removed"])
def test_a_move_to_another_disk_killed_midway_is_completed_once_on_restart(tmp_path, monkeypatch, when):
    folder, out, done, clock = tmp_path / "in", tmp_path / "out", tmp_path / "done", FakeTime()
    bitmap(folder / "sub" / "a.bmp", 90)
    original = (folder / "sub" / "a.bmp").read_bytes()
    killed = subprocess.run([sys.executable, "-c", KILLED_MOVE, folder / "sub", out, done / "sub", when],
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if when == "during the copy":  # the half copy never shows under the final name
        assert [p.name for p in (done / "sub").iterdir() if not p.name.startswith(".")] == []

    real_rename = os.rename

    def other_disk(source, target, *args, **kwargs):
        if Path(source).parent == folder / "sub":
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "rename", other_disk)
    watcher, _ = start(folder / "sub", out, clock, move_to=done / "sub")  # the restart completes the move

    assert [p.name for p in (done / "sub").iterdir()] == ["a.bmp"]  # one complete copy, no temporary left
    assert (done / "sub" / "a.bmp").read_bytes() == original
    assert list((folder / "sub").iterdir()) == []
    watcher.poll()
    assert watcher.poll() == []

    monkeypatch.undo()  # the same file system: a move stays a rename (the same inode, no copy)
    bitmap(folder / "sub" / "b.bmp", 60)
    inode = os.stat(folder / "sub" / "b.bmp").st_ino
    watcher.poll()
    [file] = watcher.poll()
    watcher.before_row(file.relative, 0)
    watcher.mark_done(file.relative)
    assert os.stat(done / "sub" / "b.bmp").st_ino == inode


class WatchProcess:
    """`fade watch` in a subprocess, its output read as it comes; every wait is bounded."""

    def __init__(self, args: list):
        self.process = subprocess.Popen([sys.executable, "-m", "fade_cli", "watch", *map(str, args)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stdout, self.stderr = [], []
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list) -> None:
        for line in stream:
            lines.append(line)

    def wait_for(self, condition, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None, f"fade watch ended ({self.process.returncode}): {self.stderr}"
            assert time.monotonic() < deadline, f"timed out; stderr so far: {self.stderr}"
            time.sleep(0.05)

    def stop(self, signum: int, timeout: float = 60.0) -> int:
        self.process.send_signal(signum)
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(10)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def watching():
    started = []

    def run(args: list) -> WatchProcess:
        started.append(WatchProcess(args))
        return started[-1]

    yield run
    for process in started:
        process.kill()


def _arrive(source: Path, target: Path) -> None:
    """A file put into the folder as a careful uploader does: under a hidden name, then renamed."""
    hidden = target.with_name("." + target.name)
    shutil.copy(source, hidden)
    os.replace(hidden, target)


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM])
def test_sighup_and_sigterm_stop_a_watch_process_cleanly(tmp_path, watching, signum):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    _arrive(QUERIES / "good_a.png", folder / "a.png")
    watch = watching([folder, "--out", out, "--settle", "0", "--interval", "0.05", *ARGS])
    watch.wait_for(lambda: len(watch.stdout) == 1, timeout=300)  # the model loads first

    assert watch.stop(signum) == 0, watch.stderr  # not killed (-1 / 129): a normal end, like SIGTERM
    assert "Stopped after scoring 1 image(s)." in "".join(watch.stderr)
    assert [row["path"] for row in rows_of(out)] == ["a.png"] and [e["path"] for e in state_of(out)] == ["a.png"]


def test_a_watch_process_waits_for_its_folder_to_come_back(tmp_path, watching):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    _arrive(QUERIES / "good_a.png", folder / "a.png")
    watch = watching([folder, "--out", out, "--settle", "0", "--interval", "0.05", "-q", *ARGS])
    watch.wait_for(lambda: len(watch.stdout) == 1, timeout=300)

    shutil.rmtree(folder)
    watch.wait_for(lambda: any("cannot watch" in line for line in watch.stderr))
    folder.mkdir()
    _arrive(QUERIES / "good_a.png", folder / "a.png")  # the same file again: already scored
    _arrive(QUERIES / "cracked_a.png", folder / "b.png")
    watch.wait_for(lambda: len(watch.stdout) == 2)

    assert watch.stop(signal.SIGTERM) == 0, watch.stderr
    stderr = "".join(watch.stderr)
    assert f"cannot watch {folder}: it is gone" in stderr and f"{folder} is back; watching it again" in stderr
    assert [json.loads(line)["path"] for line in watch.stdout] == ["a.png", "b.png"]
