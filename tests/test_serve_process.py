"""The real `fade serve` process: start on a free loopback port, wait for /readyz, answer, drain on SIGTERM."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")

from conftest import GOLDEN, QUERIES, TINY_MODEL_ARGS  # noqa: E402
from test_serve_api import bank_file, run  # noqa: E402,F401  (bank_file: the fixture)

pytestmark = pytest.mark.slow  # real fade serve processes


def start_serve(*args: str, **popen: Any) -> tuple[subprocess.Popen, str]:
    """Start `fade serve --port 0`, and return it with its URL (from its first line on stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "fade_cli", "serve", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ), **popen)
    line = proc.stderr.readline()
    found = re.search(r"Listening on (http://127\.0\.0\.1:\d+)", line)
    if found is None:
        proc.kill()
        raise AssertionError(f"no URL in {line!r}: {proc.communicate(timeout=30)}")
    return proc, found.group(1)


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, proc.communicate()
        status = httpx.get(f"{url}/readyz").status_code
        if status == 200:
            return
        assert status == 503 and time.monotonic() < deadline
        time.sleep(0.2)


def wait_until_queued(url: str, images: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while f"fade_queue_depth {float(images)}" not in httpx.get(f"{url}/metrics").text:
        assert time.monotonic() < deadline, "the requests never reached the queue"
        time.sleep(0.05)


def test_serve_answers_then_sigterm_drains_the_queue_and_exits_0(bank_file):
    # Requests wait up to 20 s for companions: the SIGTERM arrives while they are queued, and a drain
    # scores them at once.
    proc, url = start_serve("--bank", str(bank_file), "--max-wait-ms", "20000", "--max-batch", "8",
                            "--drain-timeout", "60", *TINY_MODEL_ARGS)
    try:
        wait_ready(url, proc)
        body = (QUERIES / "good_a.png").read_bytes()
        first = httpx.post(f"{url}/v1/detect", content=body, timeout=60)
        assert first.status_code == 200 and first.json()["bank"] == "widget"
        with ThreadPoolExecutor(3) as pool:
            pending = [pool.submit(httpx.post, f"{url}/v1/detect", content=body, timeout=60) for _ in range(3)]
            wait_until_queued(url, 3)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            answers = [future.result() for future in pending]
        assert [a.status_code for a in answers] == [200] * 3
        assert {a.json()["score"] for a in answers} == {first.json()["score"]}
        assert {a.json()["timings"]["batch_size"] for a in answers} == {3}
        assert time.monotonic() - signalled < 15  # not held for the 20 s wait
        assert proc.wait(timeout=60) == 0
        stderr = proc.stderr.read()
        assert "Stopped: every accepted request was answered." in stderr and "Traceback" not in stderr
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_model_that_cannot_load_ends_the_process_with_its_exit_code(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    proc, url = start_serve("--weights", str(broken), "--model-config", str(GOLDEN / "model" / "fade-golden.json"),
                            "--device", "cpu", "--scales", "240", "--cls-size", "240")
    try:
        assert proc.wait(timeout=180) == 2  # found while loading, behind the open port: still a usage error
        stderr = proc.stderr.read()
        assert "not a usable open_clip checkpoint" in stderr and "Traceback" not in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_network_address_without_a_token_is_refused():
    result = run(["serve", "--host", "0.0.0.0", *TINY_MODEL_ARGS])
    assert result.exit_code == 2
    assert "--token-file" in result.output and "--insecure" in result.output


def test_an_address_in_use_is_a_clear_error(bank_file):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run(["serve", "--bank", bank_file, "--port", str(taken.getsockname()[1]), *TINY_MODEL_ARGS])
    assert result.exit_code == 2 and "cannot listen on 127.0.0.1" in result.output


def test_an_archive_another_run_holds_is_refused(bank_file, tmp_path):
    from fade_cli.io.folder_lock import output_folder_lock

    with output_folder_lock(tmp_path / "archive", command="fade serve --archive archive"):
        result = run(["serve", "--bank", bank_file, "--port", "0", "--archive", tmp_path / "archive",
                      *TINY_MODEL_ARGS])
    assert result.exit_code == 2 and "fade serve --archive archive" in result.output
