"""How `fade serve` starts and stops: drain timeout, SIGHUP, stops while loading, lost stderr, refusals at start.

The real process on a free loopback port (see test_serve_process.py), each test bounded in time.
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")

from conftest import QUERIES, TINY_MODEL_ARGS  # noqa: E402
from test_serve_api import bank_file, run  # noqa: E402,F401  (bank_file: the fixture)
from test_serve_process import start_serve, wait_ready, wait_until_queued  # noqa: E402


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def large_png(side: int = 4000) -> bytes:
    """A smooth image of side x side pixels: small as a PNG, slow to answer with a full-size heatmap."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    pixels = np.stack([np.add.outer(ramp, ramp) / 2] * 3, axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_requests_the_drain_timeout_cuts_get_a_json_503_and_the_exit_code_says_so(bank_file):
    # Each answer is a 16-megapixel heatmap: far more than a drain timeout of 0 s leaves.
    proc, url = start_serve("--bank", str(bank_file), "--max-wait-ms", "60000", "--max-batch", "8",
                            "--drain-timeout", "0", *TINY_MODEL_ARGS)
    try:
        wait_ready(url, proc)
        body = large_png()
        with ThreadPoolExecutor(4) as pool:
            pending = [pool.submit(httpx.post, f"{url}/v1/detect?heatmap=png", content=body, timeout=120)
                       for _ in range(4)]
            wait_until_queued(url, 4)
            proc.send_signal(signal.SIGTERM)
            answers = [future.result() for future in pending]
        assert [a.status_code for a in answers] == [503] * 4
        assert all(a.headers["content-type"] == "application/json" and "Retry-After" in a.headers for a in answers)
        assert all("drain timeout" in a.json()["detail"] for a in answers)
        assert proc.wait(timeout=60) == 3  # documented: not every accepted request was answered
        stderr = proc.stderr.read()
        assert "4 request(s) unanswered" in stderr
        assert "every accepted request was answered" not in stderr and "Traceback" not in stderr
    finally:
        stop(proc)


def test_an_upload_the_drain_timeout_cuts_gets_a_503_and_the_exit_code_says_so(bank_file):
    import re
    import socket

    proc, url = start_serve("--bank", str(bank_file), "--drain-timeout", "1", *TINY_MODEL_ARGS)
    try:
        wait_ready(url, proc)
        host, port = re.fullmatch(r"http://(.+):(\d+)", url).groups()
        with socket.create_connection((host, int(port)), timeout=60) as client:
            # A slow client: it declared 100 kB and sent 40 bytes when the stop comes.
            client.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: fade\r\nContent-Length: 100000\r\n\r\n" + b"\x89PNG" * 10)
            assert httpx.get(f"{url}/healthz").status_code == 200  # the loop has read the upload's headers too
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            answer = b""
            while chunk := client.recv(65536):  # the server closes the connection after its answer
                answer += chunk
            answer = answer.decode("latin-1")
        assert answer.startswith("HTTP/1.1 503") and "drain timeout" in answer
        assert proc.wait(timeout=60) == 3
        stderr = proc.stderr.read()
        assert "1 request(s) unanswered" in stderr and "every accepted request was answered" not in stderr
    finally:
        stop(proc)


def test_sighup_drains_like_sigterm(bank_file):
    proc, url = start_serve("--bank", str(bank_file), "--max-wait-ms", "60000", "--max-batch", "8",
                            "--drain-timeout", "60", *TINY_MODEL_ARGS)
    try:
        wait_ready(url, proc)
        body = (QUERIES / "good_a.png").read_bytes()
        with ThreadPoolExecutor(3) as pool:
            pending = [pool.submit(httpx.post, f"{url}/v1/detect", content=body, timeout=60) for _ in range(3)]
            wait_until_queued(url, 3)
            proc.send_signal(signal.SIGHUP)
            answers = [future.result() for future in pending]
        assert [a.status_code for a in answers] == [200] * 3
        assert proc.wait(timeout=60) == 0
        assert "Stopped: every accepted request was answered." in proc.stderr.read()
    finally:
        stop(proc)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_while_the_model_loads_is_a_clean_stop(bank_file, sig):
    proc, _ = start_serve("--bank", str(bank_file), *TINY_MODEL_ARGS)
    try:
        proc.send_signal(sig)  # at once: before the server takes the signals over, or while the model loads
        assert proc.wait(timeout=60) == 0
        stderr = proc.stderr.read()
        assert "Stopped before" in stderr and "Traceback" not in stderr
    finally:
        stop(proc)


def test_a_stderr_that_cannot_be_written_stops_serve_with_141(bank_file):
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "fade_cli", "serve", "--port", "0", "--bank", str(bank_file),
                                 *TINY_MODEL_ARGS], stdout=subprocess.DEVNULL, stderr=full, timeout=120)
    assert result.returncode == 141


def test_a_stderr_closed_while_serving_drains_and_stops_with_141(bank_file):
    proc, url = start_serve("--bank", str(bank_file), *TINY_MODEL_ARGS)
    try:
        proc.stderr.close()  # the reader of the log went away: the next line ("Ready: ...") cannot be written
        assert proc.wait(timeout=120) == 141
    finally:
        stop(proc)


@pytest.mark.parametrize("kind", ["fifo", "device", "too large"])
def test_a_token_file_that_is_not_a_small_regular_file_is_refused_before_listening(bank_file, tmp_path, kind):
    token = tmp_path / "token"
    if kind == "fifo":
        os.mkfifo(token)  # reading it would wait for a writer forever
    elif kind == "device":
        token = "/dev/zero"  # reading it would never end
    else:
        with open(token, "wb") as handle:
            handle.truncate(10 << 20)  # ten megabytes of NUL: not a token
    result = run(["serve", "--bank", bank_file, "--port", "0", "--token-file", token, *TINY_MODEL_ARGS])
    assert result.exit_code == 2
    assert {"fifo": "FIFO", "device": "character device", "too large": "bytes"}[kind] in result.output


BLOCK_IMPORT = """
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            raise {error}
        return None

sys.meta_path.insert(0, Refuse())
from fade_cli.cli import main
sys.argv = ["fade", "serve", "--port", "0", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("module, error, code, words", [
    ("torch", 'ImportError("libtorch_cpu.so: failed to map segment from shared object", name="torch._C")', 3,
     "failed to load: ImportError: libtorch_cpu.so: failed to map segment"),
    ("torch", 'OSError("libgomp.so.1: cannot open shared object file")', 3, "failed to load: OSError: libgomp"),
    ("fastapi", 'ModuleNotFoundError("No module named \'fastapi\'", name="fastapi")', 2,
     "needs the serve extra (fastapi is missing)"),
])
def test_an_import_failure_says_what_failed(bank_file, module, error, code, words):
    result = subprocess.run([sys.executable, "-c", BLOCK_IMPORT.format(module=module, error=error),
                             "--bank", str(bank_file), *TINY_MODEL_ARGS], capture_output=True, text=True, timeout=120)
    assert result.returncode == code, result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr
    if module == "torch":
        assert "serve extra" not in result.stderr


def test_an_archive_is_never_another_commands_run_folder(bank_file, tmp_path):
    detect_run = tmp_path / "run1"
    detect_run.mkdir()
    (detect_run / "results.jsonl").write_text('{"path": "a.png"}\n{"path": "b.png"}\n')
    (detect_run / "results.csv").write_text("path\na.png\nb.png\n")
    watch_out = tmp_path / "watched"
    watch_out.mkdir()
    (watch_out / "watch-state.jsonl").write_text("")
    for folder in (detect_run, watch_out):
        result = run(["serve", "--bank", bank_file, "--port", "0", "--archive", folder, *TINY_MODEL_ARGS])
        assert result.exit_code == 2 and "holds results of another run" in result.output
    assert (detect_run / "results.jsonl").read_text().count("\n") == 2


def test_an_archive_is_marked_and_a_watch_refuses_it(tmp_path):
    from fade_cli.core.errors import InputError
    from fade_cli.runs.serve.archive import Archive
    from fade_cli.runs.watch import FolderWatcher

    Archive(tmp_path / "archive")
    assert (tmp_path / "archive" / "serve-archive.txt").is_file()
    Archive(tmp_path / "archive")  # an archive is appended to across restarts
    (tmp_path / "incoming").mkdir()
    with pytest.raises(InputError, match="holds results of another run"):
        FolderWatcher(tmp_path / "incoming", tmp_path / "archive")


def test_an_archive_written_before_archives_were_marked_is_still_one(tmp_path):
    from fade_cli.runs.serve.archive import Archive

    older = tmp_path / "archive"
    (older / "images" / "2024-01-01").mkdir(parents=True)
    (older / "results.jsonl").write_text('{"path": "2024-01-01/a.png"}\n')
    Archive(older)
    assert (older / "serve-archive.txt").is_file()


def test_a_cut_still_answers_a_request_whose_row_is_being_archived_and_cuts_the_others():
    import asyncio
    import threading

    from fade_cli.runs.serve.service import Cut, InspectionService, ServiceSettings, _finish_even_if_cancelled

    service = InspectionService(lambda: [], ServiceSettings(drain_timeout_s=1))
    archived = threading.Event()

    def keep_row() -> None:
        time.sleep(0.3)
        archived.set()

    async def archiving() -> str:
        await _finish_even_if_cancelled(asyncio.get_running_loop().run_in_executor(None, keep_row))
        return "answered"

    async def main() -> None:
        being_archived = asyncio.ensure_future(service.unless_cut(archiving()))
        waiting = asyncio.ensure_future(service.unless_cut(asyncio.sleep(60)))
        await asyncio.sleep(0.05)
        service.cut()
        assert await being_archived == "answered" and archived.is_set()
        with pytest.raises(Cut, match="drain timeout of 1 s"):
            await waiting

    asyncio.run(main())
    assert service.cut_requests == 1
