"""Commands that write one output file (`bank build`, `prompts generate --out`, `report --out`): an existing
file is replaced only with --overwrite, and two runs writing the same file at once are refused, never both
"Wrote" with one file silently replacing the other."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import GOLDEN, QUERIES, TINY_MODEL_ARGS
from fade_cli.cli import cli

REFS = GOLDEN / "images" / "refs2"
ARGS = [*TINY_MODEL_ARGS, "--scales", "240", "--cls-size", "240",
        "--cls-prompts", GOLDEN / "prompts" / "cls.json", "--seg-prompts", GOLDEN / "prompts" / "seg.json"]
BUILD_ARGS = ["--class", "widget", "-q", *ARGS]

# Holds one output file as a run writing it does, until killed.
HOLD_SCRIPT = """
import sys, time
from pathlib import Path
from fade_cli.io.folder_lock import single_output_file
with single_output_file(Path(sys.argv[1]), True, "fade bank build ./good --out " + sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def run(args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def holder(lock_holders):
    """start(path) -> a process holding the lock of ``path`` (see HOLD_SCRIPT)."""
    return functools.partial(lock_holders, HOLD_SCRIPT)


@pytest.fixture(scope="module")
def detect_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    result = run(["detect", QUERIES, "--out", out, "--no-report", "-q", *TINY_MODEL_ARGS, "--scales", "240",
                  "--cls-size", "240"])
    assert result.exit_code == 0, result.output
    return out


def command_writing(kind: str, path: Path, detect_run: Path) -> list:
    return {
        "bank": ["bank", "build", REFS, "--out", path, *BUILD_ARGS],
        "prompts": ["prompts", "generate", "screw", "--out", path, "-q"],
        "report": ["report", detect_run, "--out", path, "-q"],
    }[kind]


@pytest.mark.parametrize("kind", ["bank", "prompts", "report"])
def test_a_file_being_written_by_another_run_is_refused_and_a_killed_writer_leaves_no_stale_lock(
        tmp_path, holder, detect_run, kind):
    path = tmp_path / f"out.{kind}"
    process = holder(path)
    refused = run(command_writing(kind, path, detect_run))
    assert refused.exit_code == 2, refused.output
    assert "being written by another fade run" in refused.output and f"pid {process.pid}" in refused.output
    assert "Wrote" not in refused.output and not path.exists()
    process.kill()  # as kill -9: no clean-up ran
    process.wait()
    done = run(command_writing(kind, path, detect_run))
    assert done.exit_code == 0, done.output
    assert path.is_file() and sorted(os.listdir(tmp_path)) == [path.name]  # the side lock file is gone too


@pytest.mark.parametrize("kind", ["bank", "prompts", "report"])
def test_an_existing_file_is_replaced_only_with_overwrite(tmp_path, detect_run, kind):
    path = tmp_path / f"out.{kind}"
    path.write_text("someone's file")
    refused = run(command_writing(kind, path, detect_run))
    assert refused.exit_code == 2 and "already exists" in refused.output and "--overwrite" in refused.output
    assert path.read_text() == "someone's file"
    replaced = run([*command_writing(kind, path, detect_run), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert path.read_bytes() != b"someone's file"


def test_the_report_of_a_run_in_its_own_folder_is_replaced_without_overwrite(detect_run):
    for _ in range(2):
        result = run(["report", detect_run, "-q"])
        assert result.exit_code == 0, result.output
    assert (detect_run / "report.html").is_file()


def test_two_bank_builds_of_one_file_at_once_one_is_refused(tmp_path):
    path = tmp_path / "widget.fadebank"
    command = [sys.executable, "-m", "fade_cli", "bank", "build", str(REFS), "--out", str(path),
               *map(str, BUILD_ARGS)]
    builds = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"}) for _ in range(2)]
    outputs = [build.communicate(timeout=600) for build in builds]
    codes = sorted(build.returncode for build in builds)
    assert codes == [0, 2], outputs
    assert sum("Wrote" in stdout for stdout, _ in outputs) == 1
    refusal = next(stderr for (_, stderr), build in zip(outputs, builds) if build.returncode == 2)
    assert "being written by another fade run" in refusal or "already exists" in refusal
    assert "Traceback" not in refusal
    assert json.loads(subprocess.run([sys.executable, "-m", "fade_cli", "bank", "info", str(path), "--format", "json"],
                                     capture_output=True, text=True, timeout=120).stdout)["config"]
