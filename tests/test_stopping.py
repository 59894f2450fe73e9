"""Exit codes of runs that stop early or leave images uninspected: SIGTERM, a closed stdout, unreadable images.

SIGTERM would end the test process itself if fade did not handle it, so those runs are subprocesses.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import QUERIES, TINY_MODEL_ARGS
from fade_cli.cli import cli
from fade_cli.cli.exit_codes import EXIT_CODES_HELP

pytestmark = pytest.mark.slow  # signals to fade processes while they load and score

NOT_INSPECTED, PIPE_CLOSED, TERMINATED = 4, 141, 143  # scripts rely on the numbers themselves

ARGS = TINY_MODEL_ARGS + ["--scales", "240", "--cls-size", "240", "--batch-size", "1"]
EXAMPLES = Path(__file__).parent.parent / "examples" / "cookie"

# Runs fade with a SIGTERM sent to itself at the moment named by sys.argv[1].
SIGTERM_SCRIPT = """
import os, signal, sys
when, argv = sys.argv[1], sys.argv[2:]

def stop():
    os.kill(os.getpid(), signal.SIGTERM)

if when == "third image":
    from fade_cli.engine.detector import FadeEngine
    real, calls = FadeEngine.detect_prepared, []
    def detect_prepared(self, pixels):
        calls.append(1)
        if len(calls) == 3:
            stop()
        return real(self, pixels)
    FadeEngine.detect_prepared = detect_prepared
elif when == "model loading":
    from fade_cli.engine.detector import FadeEngine
    def from_config(*args, **kwargs):
        stop()
        raise AssertionError("SIGTERM did not stop the run")
    FadeEngine.from_config = from_config
elif when == "second eval run":
    from fade_cli.evaluation.evaluate import Evaluator
    real, calls = Evaluator.evaluate, []
    def evaluate(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            stop()
        return real(self, *args, **kwargs)
    Evaluator.evaluate = evaluate
sys.argv = ["fade", *argv]
from fade_cli.cli import main
main()
"""


def fade_with_sigterm(when: str, args: list) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SIGTERM_SCRIPT, when, *map(str, args)], capture_output=True,
                          text=True, timeout=600)


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def test_sigterm_during_detect_saves_the_finished_rows_like_ctrl_c(tmp_path):
    out = tmp_path / "out"
    done = fade_with_sigterm("third image", ["detect", QUERIES, "--out", out, "-q", *ARGS])
    assert done.returncode == TERMINATED, done.stderr
    assert "Stopped by SIGTERM after 2 of 4 images" in done.stderr and "Traceback" not in done.stderr
    assert [row["path"] for row in rows_of(out / "results.jsonl")] == ["cracked_a.png", "cracked_b.png"]
    assert len((out / "results.csv").read_text().splitlines()) == 3
    assert not (out / "results.partial.jsonl").exists()


def test_sigterm_while_the_model_loads_stops_cleanly(tmp_path):
    done = fade_with_sigterm("model loading", ["detect", QUERIES, "--out", tmp_path / "out", *ARGS])
    assert done.returncode == TERMINATED, done.stderr
    assert "Stopped (SIGTERM)." in done.stderr and "Traceback" not in done.stderr


def test_sigterm_while_a_watch_loads_its_model_is_a_service_stop(tmp_path):
    (tmp_path / "in").mkdir()
    done = fade_with_sigterm("model loading", ["watch", tmp_path / "in", "--out", tmp_path / "out", *ARGS])
    assert done.returncode == 0, done.stderr
    assert "Stopped after scoring 0 image(s)" in done.stderr and "Traceback" not in done.stderr


def test_sigterm_during_eval_writes_the_report_marked_incomplete(tmp_path):
    out = tmp_path / "out"
    done = fade_with_sigterm("second eval run", ["eval", EXAMPLES, "--shots", "1", "--seeds", "0,1", "--out", out,
                                                  "-q", *ARGS])
    assert done.returncode == TERMINATED, done.stderr
    assert "Stopped by SIGTERM after 1 of 2 run(s)" in done.stderr
    report = json.loads((out / "metrics.json").read_text())
    assert "INTERRUPTED" in (out / "metrics.md").read_text() and '"complete": false' in json.dumps(report)


def test_a_stdout_closed_early_stops_like_an_interruption_not_as_ng(tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "fade_cli", "detect", str(QUERIES), "--out", str(out),
                                "--format", "jsonl", "-q", *ARGS], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # `| head -0`: the reader is gone before the first row
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == PIPE_CLOSED, stderr
    assert b"Traceback" not in stderr and b"stdout was closed" in stderr
    rows = rows_of(out / "results.jsonl")
    assert rows and rows[0]["path"] == "cracked_a.png"  # the row being printed is saved
    assert not (out / "results.partial.jsonl").exists()


def test_a_stdout_closed_early_is_never_exit_1_in_any_command():
    process = subprocess.Popen([sys.executable, "-m", "fade_cli", "models", "list", "--all"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == PIPE_CLOSED and b"Traceback" not in stderr


@pytest.fixture
def with_unreadable(tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(QUERIES, folder)
    (folder / "zz-broken.png").write_bytes(b"not an image")
    return folder


@pytest.mark.parametrize("threshold, exit_code", [("1.0", NOT_INSPECTED), ("0.0", 1)])
def test_an_image_not_inspected_has_its_own_exit_code_and_ng_wins(with_unreadable, threshold, exit_code):
    result = CliRunner().invoke(cli, ["detect", str(with_unreadable), "--threshold", threshold, "-q", *ARGS])
    assert result.exit_code == exit_code, result.output
    assert "not a readable image" in result.stderr


def test_watch_once_reports_images_not_inspected(with_unreadable, tmp_path):
    result = CliRunner().invoke(cli, ["watch", str(with_unreadable), "--out", str(tmp_path / "out"), "--once",
                                      "--settle", "0", "--threshold", "1.0", *ARGS])
    assert result.exit_code == NOT_INSPECTED, result.output


def test_every_exit_code_is_in_the_help():
    from fade_cli.cli import exit_codes

    assert (exit_codes.NOT_INSPECTED, exit_codes.PIPE_CLOSED, exit_codes.TERMINATED) == (4, 141, 143)
    for code in ("0", "1", "2", "3", "4", "130", "141", "143"):
        assert f"\n  {code} " in EXIT_CODES_HELP
    assert signal.SIGTERM + 128 == TERMINATED and signal.SIGPIPE + 128 == PIPE_CLOSED


# stdout or stderr that cannot be written (a full disk: /dev/full) stops a run as a closed pipe does.
def fade_into_dev_full(stream: str, args: list, script: str = "") -> subprocess.CompletedProcess:
    """Runs fade in a real process whose ``stream`` ("stdout" or "stderr") is /dev/full; the other is captured."""
    code = script or "from fade_cli.cli import main; main()"
    with open("/dev/full", "w") as full:
        streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, stream: full}
        return subprocess.run([sys.executable, "-c", code, *map(str, args)], text=True, timeout=600, **streams)


def argv_script(body: str) -> str:
    return f"import sys\nsys.argv = ['fade', *sys.argv[1:]]\n{body}"


@pytest.mark.parametrize("output_format", ["jsonl", "csv", "table"])
def test_a_full_stdout_stops_detect_with_141_and_the_rows_saved(tmp_path, output_format):
    out = tmp_path / "out"
    done = fade_into_dev_full("stdout", ["detect", QUERIES, "--out", out, "--format", output_format, "-q", *ARGS],
                              argv_script("from fade_cli.cli import main; main()"))
    assert done.returncode == PIPE_CLOSED, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    assert "stdout cannot be written (No space left on device)" in done.stderr
    rows = rows_of(out / "results.jsonl")
    assert rows and rows[0]["path"] == "cracked_a.png" and not (out / "results.partial.jsonl").exists()
    if output_format == "table":  # the table comes last: every row, and the report, are saved before it
        assert len(rows) == 4 and (out / "report.html").is_file()


def test_a_full_stderr_stops_detect_with_141_and_the_rows_saved(tmp_path):
    images = tmp_path / "in"
    shutil.copytree(QUERIES, images)
    (images / "cracked_c.png").write_bytes(b"not an image")  # its warning is the first line on stderr
    out = tmp_path / "out"
    # --class: no note on stderr before the first image (the broken image's warning must be the first line).
    done = fade_into_dev_full("stderr", ["detect", images, "--out", out, "--format", "jsonl", "-q", "--class", "widget",
                                         *ARGS],
                              argv_script("from fade_cli.cli import main; main()"))
    assert done.returncode == PIPE_CLOSED, done.stdout
    rows = rows_of(out / "results.jsonl")
    assert [row["path"] for row in rows] == ["cracked_a.png", "cracked_b.png", "cracked_c.png"]
    printed = [json.loads(line)["path"] for line in done.stdout.splitlines()]
    assert printed == ["cracked_a.png", "cracked_b.png"]  # stdout still works: the rows before the stop


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_full_stdout_or_stderr_stops_eval_with_141_after_the_report_is_written(tmp_path, stream):
    out = tmp_path / "eval"
    done = fade_into_dev_full(stream, ["eval", EXAMPLES, "--out", out, "-q", *ARGS],
                              argv_script("from fade_cli.cli import main; main()"))
    assert done.returncode == PIPE_CLOSED, (done.stdout, done.stderr)
    assert "Traceback" not in (done.stderr or "")
    assert json.loads((out / "metrics.json").read_text())["complete"] is not None
    assert (out / "report.html").is_file()


def test_a_full_stdout_stops_watch_with_141_and_the_rows_saved(tmp_path):
    images = tmp_path / "in"
    shutil.copytree(QUERIES, images)
    out = tmp_path / "out"
    done = fade_into_dev_full("stdout", ["watch", images, "--out", out, "--once", "--settle", "0", *ARGS],
                              argv_script("from fade_cli.cli import main; main()"))
    assert done.returncode == PIPE_CLOSED, done.stderr
    assert "Traceback" not in done.stderr and rows_of(out / "results.jsonl")


def test_output_left_in_the_buffer_until_exit_that_cannot_be_written_is_141_not_a_traceback():
    # Python's own last flush at exit would print "Exception ignored" and exit 120.
    script = argv_script("""
import click
from fade_cli.cli import LazyGroup, main

@click.command()
def unflushed():
    sys.stdout.write("left in the buffer until the process exits\\n")

LazyGroup.get_command = lambda self, ctx, name: unflushed
main()
""")
    done = fade_into_dev_full("stdout", ["unflushed"], script)
    assert done.returncode == PIPE_CLOSED and done.stderr == ""


def test_help_into_a_full_stdout_is_141():
    done = fade_into_dev_full("stdout", ["--help"], argv_script("from fade_cli.cli import main; main()"))
    assert done.returncode == PIPE_CLOSED and "Traceback" not in done.stderr
