"""Output folders: one run at a time (an OS lock), earlier and partial results, --overwrite, --resume,
fade's own outputs never read as input, temporaries of killed runs, and names at the file system's limit."""
from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import GOLDEN, QUERIES, TINY_MODEL_ARGS, run_cli as run

MARKER = ".fade-output"  # the lock file and marker of an output folder (fade_cli.io.folder_lock.MARKER)
MANIFEST = ".fade-written"  # what fade wrote into an output folder (fade_cli.io.manifest.MANIFEST)

ARGS = TINY_MODEL_ARGS + ["--scales", "240", "--cls-size", "240", "--batch-size", "1"]
EXAMPLES = Path(__file__).parent.parent / "examples" / "cookie"

# Holds an output folder's lock in another process until killed, as a run in progress does.
HOLD_SCRIPT = """
import sys, time
from pathlib import Path
from fade_cli.io.folder_lock import output_folder_lock
with output_folder_lock(Path(sys.argv[1]), "fade detect ./line-2 --out " + sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").split("\n") if line]


@pytest.fixture
def holder(lock_holders):
    """start(path) -> a process holding the lock of ``path`` (see HOLD_SCRIPT)."""
    return functools.partial(lock_holders, HOLD_SCRIPT)


@pytest.mark.parametrize("command", [
    ["detect", QUERIES, *ARGS],
    ["watch", QUERIES, "--once", "--settle", "0", *ARGS],
    ["eval", EXAMPLES, *ARGS],
])
def test_a_folder_in_use_is_refused_naming_the_holder_and_kill_9_leaves_no_stale_lock(tmp_path, holder, command):
    out = tmp_path / "out"
    process = holder(out)
    refused = run([*command[:2], "--out", out, *command[2:]])
    assert refused.exit_code == 2, refused.output
    assert f"in use by another fade run (pid {process.pid}, `fade detect ./line-2 --out {out}`, started" \
        in refused.output
    assert sorted(p.name for p in out.iterdir()) == [MARKER]  # the refused run wrote nothing

    process.kill()  # kill -9: the kernel drops the lock with the process
    process.wait()
    if command[0] == "eval":
        return  # the whole evaluation takes minutes; being let in is what matters, and detect/watch show it
    again = run([*command[:2], "--out", out, *command[2:]])
    assert again.exit_code == 0, again.output


def test_the_lock_is_released_when_the_run_ends(tmp_path):
    from fade_cli.io.folder_lock import output_folder_lock

    out = tmp_path / "out"
    with output_folder_lock(out, "first"):
        pass
    with output_folder_lock(out, "second"):
        assert json.loads((out / MARKER).read_text())["command"] == "second"


def test_partial_results_of_an_interrupted_run_are_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    partial = '{"path": "cracked_a.png", "score": 0.7}\n'
    (out / "results.partial.jsonl").write_text(partial)
    result = run(["detect", QUERIES, "--out", out, *ARGS])
    assert result.exit_code == 2
    assert "already holds results of an interrupted run (results.partial.jsonl)" in result.output
    assert "--resume" in result.output and "--overwrite" in result.output
    assert (out / "results.partial.jsonl").read_text() == partial


USER_FILES = {"notes.txt": "the user's", "maps/mine.npy": "the user's map", "masks/mine.png": "the user's mask",
              "heatmaps/sub/kept.png": "the user's", "thumbnails/x.jpg": "the user's"}


def add_user_files(out: Path) -> None:
    for name, text in USER_FILES.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)


def files_in(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


@pytest.mark.parametrize("with_manifest", [True, False], ids=["manifest", "older-fade-folder"])
def test_overwrite_removes_what_the_earlier_run_wrote_and_keeps_the_users_files(tmp_path, with_manifest):
    out = tmp_path / "out"
    images = ("cracked_a.png", "cracked_b.png", "good_a.png", "good_b.png")
    first = run(["detect", QUERIES, "--out", out, "--threshold", "0", "--pixel-threshold", "0", "--report", "-q",
                 *ARGS])
    assert first.exit_code == 1, first.output
    assert (out / "masks/cracked_a.png.png").is_file() and (out / "maps/good_b.png.npy").is_file()
    if not with_manifest:  # as a fade older than the manifest left the folder
        (out / MANIFEST).unlink()
    add_user_files(out)
    result = run(["detect", QUERIES, "--out", out, "--overwrite", "--no-maps", "--no-report", "-q", *ARGS])
    assert result.exit_code == 0, result.output
    assert files_in(out) == sorted([MANIFEST, MARKER, *USER_FILES, *(f"heatmaps/{name}.png" for name in images),
                                    "results.csv", "results.jsonl", "run-settings.json", "run.json"])
    for name, text in USER_FILES.items():
        assert (out / name).read_text() == text
    assert not (out / "masks" / "cracked_a.png.png").exists() and not (out / "report.html").exists()
    # the manifest now lists this run's files only: a third --overwrite removes them and keeps the user's again
    listed = {json.loads(line) for line in (out / MANIFEST).read_text().splitlines()}
    assert listed - {"results.partial.jsonl"} == set(files_in(out)) - set(USER_FILES) - {MANIFEST, MARKER}


def test_overwrite_never_removes_files_named_like_fade_outputs_that_no_fade_run_wrote(tmp_path):
    out = tmp_path / "out"
    for name in ("maps/old.png.npy", "masks/old.png.png", "thumbnails/image/old.png.jpg", "other.csv"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("another tool's")
    (out / "results.jsonl").write_text("another tool's results, not rows\n")
    result = run(["detect", QUERIES, "--out", out, "--overwrite", "--no-maps", "--no-heatmaps", "-q", *ARGS])
    assert result.exit_code == 0, result.output
    for name in ("maps/old.png.npy", "masks/old.png.png", "thumbnails/image/old.png.jpg", "other.csv"):
        assert (out / name).read_text() == "another tool's"


def test_eval_overwrite_keeps_the_users_files_and_another_tools_results(tmp_path):
    out = tmp_path / "eval"
    args = ["eval", EXAMPLES, "--out", out, "--save-maps", "--save-worst", "1", "-q", *ARGS]
    first = run(args)
    assert first.exit_code == 0, first.output
    earlier = set(files_in(out))
    assert any(name.startswith("maps/") for name in earlier) and any(name.startswith("worst/") for name in earlier)
    add_user_files(out)
    (out / "results.csv").write_text("another tool's results")
    (out / "worst" / "mine.png").write_text("the user's")
    result = run(["eval", EXAMPLES, "--out", out, "--overwrite", "-q", *ARGS])
    assert result.exit_code == 0, result.output
    assert (out / "results.csv").read_text() == "another tool's results"
    assert (out / "worst" / "mine.png").read_text() == "the user's"
    for name, text in USER_FILES.items():
        assert (out / name).read_text() == text
    left = set(files_in(out))
    assert not any(name.startswith(("maps/", "worst/")) for name in left - set(USER_FILES) - {"worst/mine.png"})


def test_resume_scores_only_what_is_missing_and_gives_the_uninterrupted_results(tmp_path, monkeypatch):
    from fade_cli.engine.detector import FadeEngine

    real_detect = FadeEngine.detect_prepared
    calls = []

    def counted(self, pixels_by_size):
        calls.append(1)
        if stop_at and len(calls) == stop_at:
            raise KeyboardInterrupt
        return real_detect(self, pixels_by_size)

    monkeypatch.setattr(FadeEngine, "detect_prepared", counted)
    stop_at = 0
    whole = run(["detect", QUERIES, "--out", tmp_path / "whole", "--threshold", "0.5", "-q", *ARGS])
    assert whole.exit_code in (0, 1)

    out = tmp_path / "out"
    calls.clear()
    stop_at = 3
    assert run(["detect", QUERIES, "--out", out, "--threshold", "0.5", "-q", *ARGS]).exit_code == 130
    # A kill -9 leaves only the partial file: make it so, with a torn last line.
    (out / "results.csv").unlink()
    (out / "results.jsonl").rename(out / "results.partial.jsonl")
    with open(out / "results.partial.jsonl", "a") as handle:
        handle.write('{"path": "good_a.png", "sc')

    calls.clear()
    stop_at = 0
    resumed = run(["detect", QUERIES, "--out", out, "--threshold", "0.5", "--resume", "--format", "jsonl", "-q",
                   *ARGS])
    assert resumed.exit_code == whole.exit_code, resumed.output
    assert len(calls) == 2  # cracked_a and cracked_b were finished: only good_a and good_b are scored
    assert "Resuming: 2 of 4 image(s) already scored" in resumed.stderr
    expected, got = rows_of(tmp_path / "whole" / "results.jsonl"), rows_of(out / "results.jsonl")
    assert [row["path"] for row in got] == [row["path"] for row in expected]
    for mine, theirs in zip(got, expected):
        assert mine == {**theirs, "score": pytest.approx(theirs["score"], abs=1e-6),
                        "language_score": pytest.approx(theirs["language_score"], abs=1e-6),
                        "vision_score": pytest.approx(theirs["vision_score"], abs=1e-6)}
        assert (out / mine["map_path"]).is_file() and (out / mine["heatmap_path"]).is_file()
    assert len((out / "results.csv").read_text().splitlines()) == 5
    assert not (out / "results.partial.jsonl").exists()
    assert [row["path"] for row in map(json.loads, resumed.stdout.splitlines())] == [
        "cracked_a.png", "cracked_b.png", "good_a.png", "good_b.png"]


def test_resume_with_other_options_is_refused(tmp_path):
    out = tmp_path / "out"
    assert run(["detect", QUERIES / "good_a.png", "--out", out, "-q", *ARGS]).exit_code == 0
    result = run(["detect", QUERIES / "good_a.png", "--out", out, "--resume", "--threshold", "0.3", *ARGS])
    assert result.exit_code == 2 and "these differ from the interrupted run's" in result.output
    assert "threshold" in result.output


def test_out_equal_to_the_input_folder_says_so(tmp_path):
    shutil.copytree(QUERIES, tmp_path / "in")
    result = run(["detect", tmp_path / "in", "--out", tmp_path / "in", *ARGS])
    assert result.exit_code == 2 and "is the input folder itself" in result.output
    assert "empty" not in result.output


def test_output_folders_inside_the_input_are_never_scored(tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(QUERIES, folder)
    assert run(["detect", folder, "--out", folder / "run1", "-q", *ARGS]).exit_code == 0
    second = run(["detect", folder, "--out", folder / "run2", "-q", *ARGS])
    assert second.exit_code == 0, second.output
    assert [row["path"] for row in rows_of(folder / "run2" / "results.jsonl")] == [
        "cracked_a.png", "cracked_b.png", "good_a.png", "good_b.png"]
    assert "skipped folder" in second.stderr and "output folder of a fade run" in second.stderr

    only_outputs = tmp_path / "only"
    (only_outputs / "run1").mkdir(parents=True)
    shutil.copytree(folder / "run1", only_outputs / "run1", dirs_exist_ok=True)
    result = run(["detect", only_outputs, *ARGS])
    assert result.exit_code == 2 and "outside fade's output folders (run1)" in result.output


@pytest.mark.parametrize("command", ["detect", "watch"])
def test_temporaries_left_by_a_killed_run_are_removed_by_the_next(tmp_path, command):
    out = tmp_path / "out"
    (out / "heatmaps").mkdir(parents=True)
    (out / "watch-state.jsonl").write_text("")
    leftovers = [out / "heatmaps" / ".fade-0123456789ab.tmp", out / "heatmaps" / ".good_a.png.png.k3j4h5g6.tmp",
                 out / ".results.jsonl.a1b2c3d4.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    (out / "heatmaps" / "keep.tmp").write_text("not fade's")
    extra = ["--resume"] if command == "detect" else ["--once", "--settle", "0"]
    result = run([command, QUERIES / "good_a.png" if command == "detect" else QUERIES, "--out", out, *extra, "-q",
                  *ARGS])
    assert result.exit_code == 0, result.output
    assert not any(path.exists() for path in leftovers)
    assert (out / "heatmaps" / "keep.tmp").exists()


def test_a_file_name_of_238_bytes_or_more_is_scored_and_a_name_too_long_for_outputs_is_an_error_row(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    fits = "f" * 234 + ".png"  # 238 bytes: its heatmap name (242) fits, a longer temporary name did not
    too_long = "t" * 248 + ".png"  # 252 bytes: the file fits, its heatmap name (256) cannot exist
    shutil.copy(QUERIES / "good_a.png", folder / fits)
    shutil.copy(QUERIES / "cracked_a.png", folder / too_long)
    out = tmp_path / "out"
    result = run(["detect", folder, "--out", out, "--threshold", "1.0", "-q", *ARGS])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    rows = {row["path"]: row for row in rows_of(out / "results.jsonl")}
    assert rows[fits]["error"] is None and (out / rows[fits]["heatmap_path"]).is_file()
    assert rows[too_long]["score"] is not None and rows[too_long]["verdict"] == "OK"
    assert "output files were not written: " in rows[too_long]["error"]
    assert "File name too long" in rows[too_long]["error"]


def test_a_bank_file_name_at_the_limit_is_written(tmp_path):
    out = tmp_path / ("b" * 246 + ".fadebank")  # 255 bytes
    result = run(["bank", "build", GOLDEN / "images" / "refs2", "--out", out, "-q", *ARGS])
    assert result.exit_code == 0, result.output
    assert out.is_file() and [p.name for p in tmp_path.iterdir()] == [out.name]


@pytest.mark.parametrize("code, exit_code", [(errno.EROFS, 3), (errno.EPERM, 0)])
def test_creating_a_temporary_file_that_fails_is_a_message_or_an_error_row(tmp_path, monkeypatch, code, exit_code):
    real_open = os.open
    heatmaps = str(tmp_path / "out" / "heatmaps")

    def refusing(path, flags, *args, **kwargs):
        if str(path).startswith(heatmaps) and flags & os.O_CREAT:
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    result = run(["detect", QUERIES / "good_a.png", "--out", tmp_path / "out", "-q", *ARGS])
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    if code == errno.EROFS:
        assert "Read-only file system" in result.output
        assert rows_of(tmp_path / "out" / "results.jsonl") == []
    else:
        row = rows_of(tmp_path / "out" / "results.jsonl")[0]
        assert row["score"] is not None and "Operation not permitted" in row["error"]
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".tmp")]


def test_a_run_that_fails_before_writing_leaves_no_folder_behind(tmp_path):
    weights = tmp_path / "corrupt.pt"
    weights.write_bytes(b"not a checkpoint")
    out = tmp_path / "runs" / "line-2"
    args = [a if a != TINY_MODEL_ARGS[TINY_MODEL_ARGS.index("--weights") + 1] else weights for a in ARGS]
    result = run(["detect", QUERIES, "--out", out, *args])
    assert result.exit_code == 2 and "not a usable open_clip checkpoint" in result.output
    assert not (tmp_path / "runs").exists()  # the folder and the parent the run created are gone

    out.mkdir(parents=True)  # a folder that was there before the run stays, as found
    assert run(["detect", QUERIES, "--out", out, *args]).exit_code == 2
    assert out.is_dir()


def test_the_lock_keeps_a_folder_something_was_written_into(tmp_path):
    from fade_cli.io.folder_lock import output_folder_lock

    out = tmp_path / "out"
    with output_folder_lock(out, "first"):
        (out / "results.jsonl").write_text("")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "results.jsonl"]


def test_a_run_locking_a_marker_just_removed_by_a_run_that_wrote_nothing_locks_a_fresh_one(tmp_path, monkeypatch):
    from fade_cli.io import folder_lock

    out = tmp_path / "out"
    real_try_lock = folder_lock._try_lock
    removed = []

    def other_run_removes_the_folder_first(handle, folder):
        if not removed:  # the other run ends between our open of its marker and our lock
            os.unlink(folder / MARKER)
            os.rmdir(folder)
            removed.append(folder)
        return real_try_lock(handle, folder)

    monkeypatch.setattr(folder_lock, "_try_lock", other_run_removes_the_folder_first)
    with folder_lock.output_folder_lock(out, "second"):
        assert json.loads((out / MARKER).read_text())["command"] == "second"
        (out / "results.jsonl").write_text("")
    assert removed and (out / "results.jsonl").is_file()
