"""Downloading the default model's weights: the line and bar, failing fast, nothing half-written kept.

A small HTTP server on loopback stands in for the Hugging Face hub (``HF_ENDPOINT`` points at it).
It answers the hub's HEAD and GET for the default model's weights file and can stall, serve a
short file, drop the connection or hang half-way. What it serves are random bytes: these tests are
about getting a file into the cache, never about loading it as a model.

The suite's autouse fixture sets HF_HUB_OFFLINE=1; the ``hub`` fixture here turns it off, for this
process (``huggingface_hub.constants``) and for the fade processes the tests start.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import QUERIES

pytestmark = pytest.mark.slow  # a fake hub, timeouts and killed downloads in subprocesses

MODEL, TAG = "ViT-B-16-plus-240", "laion400m_e31"
REPO = "timm/vit_base_patch16_plus_clip_240.laion400m_e31"
FILENAME = "open_clip_model.safetensors"  # open_clip's first choice for this tag
COMMIT = "a" * 40
# More than huggingface_hub's 10 MiB write chunk, so that a download stopped half-way has written some.
PAYLOAD = os.urandom(12 * 1024 * 1024)
HALF = 11 * 1024 * 1024
DOWNLOAD = [sys.executable, "-m", "fade_cli", "models", "download", MODEL, "--pretrained", TAG]


class FakeHub(ThreadingHTTPServer):
    """The hub's answers for one file. ``mode``: serve, stall (never answers), busy (HTTP 503),
    portal (a web page, not a hub: a captive portal or a proxy's login page), short (a shorter file
    than announced), drop_once (the first GET breaks off half-way), hang (the GET stops half-way)."""

    daemon_threads = True

    def __init__(self, mode: str = "serve"):
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.mode = mode
        self.requests: list[tuple[str, str, float]] = []
        self.release = threading.Event()  # ends stalls and hangs when the test is over

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def heads(hub: FakeHub) -> list[str]:
    """The HEAD requests the hub got (huggingface_hub also asks /api/agent-harnesses once a day, for telemetry)."""
    return [path for method, path, _ in hub.requests if method == "HEAD"]


def file_gets(hub: FakeHub) -> list[str]:
    return [path for method, path, _ in hub.requests if method == "GET" and path.endswith(FILENAME)]


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeHub

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def do_HEAD(self) -> None:
        self._record()
        if self.server.mode == "stall":
            self.server.release.wait(30)
            return
        if self.server.mode in ("busy", "portal"):
            self.send_response(503 if self.server.mode == "busy" else 200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if not self._is_the_file():
            self._not_found()
            return
        self.send_response(200)
        self._file_headers(len(PAYLOAD))
        self.end_headers()

    def do_GET(self) -> None:
        self._record()
        if not self._is_the_file():
            self._not_found()
            return
        start = int(self.headers.get("Range", "bytes=0-")[len("bytes="):].split("-")[0])
        body = PAYLOAD[start:]
        mode = self.server.mode
        if mode == "short":
            body = body[: len(body) // 2]
        self.send_response(206 if start else 200)
        self._file_headers(len(body))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.end_headers()
        if mode == "hang" or (mode == "drop_once" and len(file_gets(self.server)) == 1):
            self._write(body[:HALF])
            if mode == "hang":
                self.server.release.wait(30)
            self.close_connection = True
            return
        self._write(body)

    def _is_the_file(self) -> bool:
        return self.path == f"/{REPO}/resolve/main/{FILENAME}"

    def _record(self) -> None:
        self.server.requests.append((self.command, self.path, time.monotonic()))

    def _file_headers(self, length: int) -> None:
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(PAYLOAD).hexdigest()}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))

    def _not_found(self) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", "EntryNotFound")
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:  # the client went away (interrupted, killed)
            pass


def _point_hub_at(monkeypatch, endpoint: str) -> None:
    """Online, with the hub at ``endpoint``: here (the hub read its settings at import) and in subprocesses."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture
def hub(request, monkeypatch):
    """A running FakeHub in the mode given by ``@pytest.mark.parametrize("hub", [...], indirect=True)``."""
    server = FakeHub(getattr(request, "param", "serve"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _point_hub_at(monkeypatch, server.url)
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def refused(monkeypatch):
    """An endpoint on loopback where nothing listens: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _point_hub_at(monkeypatch, f"http://127.0.0.1:{port}")
    return f"http://127.0.0.1:{port}"


def cache() -> Path:
    return Path(os.environ["FADE_CACHE_DIR"])


def repo_folder() -> Path:
    return cache() / f"models--{REPO.replace('/', '--')}"


def cached_file():
    from fade_cli.backbone.cache import cached_weights

    return cached_weights(MODEL, TAG, str(cache()))


def leftovers() -> list[Path]:
    """The files under blobs/ and snapshots/: what a download left in the cache."""
    return sorted(p for sub in ("blobs", "snapshots") for p in (repo_folder() / sub).rglob("*") if not p.is_dir())


def fetch(**kwargs):
    from fade_cli.backbone.cache import fetch_weights

    return fetch_weights(MODEL, TAG, announce=lambda line: None, progress=False, **kwargs)


def import_before_timing() -> None:
    """Importing torch on a busy machine takes seconds: it must not count as waiting for the network."""
    import open_clip  # noqa: F401
    from huggingface_hub import file_download  # noqa: F401

    from fade_cli.backbone import model  # noqa: F401


def timed_failure():
    """The ModelError of a fetch, and the seconds it took."""
    from fade_cli.core.errors import ModelError

    import_before_timing()
    start = time.monotonic()
    with pytest.raises(ModelError) as caught:
        fetch()
    return str(caught.value), time.monotonic() - start


def assert_is_the_exit_3_paragraph(message: str) -> None:
    assert message.startswith(f"Cannot load the weights of {MODEL} (pretrained '{TAG}'): they are not in the cache at")
    assert str(cache()) in message and "fade models download" in message and "--weights FILE" in message


def test_refused_connection_fails_at_once_with_the_paragraph(refused):
    message, seconds = timed_failure()
    assert seconds < 2, f"took {seconds:.1f} s"  # the hub's retries with back-off took about a minute
    assert_is_the_exit_3_paragraph(message)
    assert f"the hub at {refused} cannot be reached" in message
    assert cached_file() is None and leftovers() == []


@pytest.mark.parametrize("hub", ["stall"], indirect=True)
def test_a_hub_that_never_answers_is_given_up_after_the_timeout_once(hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
    message, seconds = timed_failure()
    assert 1 <= seconds < 2.5, f"took {seconds:.1f} s"  # one wait, no retry
    assert len(heads(hub)) == 1
    assert_is_the_exit_3_paragraph(message)
    assert f"no answer from the hub at {hub.url} within 1 s" in message


@pytest.mark.parametrize("hub, answer", [
    ("busy", "answered: Server error '503 Service Unavailable'"),
    ("portal", "answered, but not as a Hugging Face hub does"),
], indirect=["hub"])
def test_a_hub_that_answers_with_an_error_fails_at_once(hub, answer):
    message, seconds = timed_failure()
    assert seconds < 2 and len(heads(hub)) == 1  # no retries with back-off
    assert_is_the_exit_3_paragraph(message)
    assert f"the hub at {hub.url} {answer}" in message


@pytest.mark.parametrize("hub", ["short"], indirect=True)
def test_a_short_file_is_refused_and_not_kept(hub):
    message, _ = timed_failure()
    assert_is_the_exit_3_paragraph(message)
    assert "the download from" in message and "Consistency check failed" in message
    assert cached_file() is None and leftovers() == []


@pytest.mark.parametrize("hub", ["drop_once"], indirect=True)
def test_a_dropped_connection_resumes_and_the_file_is_exact(hub):
    path = fetch()
    assert Path(path).read_bytes() == PAYLOAD
    assert len(file_gets(hub)) == 2  # the hub resumed the download where it broke off
    assert path == cached_file() and not list(repo_folder().rglob("*.incomplete"))


def test_offline_never_asks_the_hub(hub, monkeypatch):
    from click.testing import CliRunner
    from huggingface_hub import constants

    from fade_cli.cli import cli

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    message, seconds = timed_failure()
    assert "offline mode is on" in message and seconds < 1
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    result = CliRunner().invoke(cli, ["detect", str(QUERIES / "good_a.png"), "--offline", "--device", "cpu"])
    assert result.exit_code == 3 and "offline mode is on" in result.output
    assert hub.requests == []


def test_download_says_what_it_fetches_then_cached_weights_need_no_network(hub):
    first = subprocess.run(DOWNLOAD, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert Path(first.stdout.strip()).read_bytes() == PAYLOAD
    announce = first.stderr.splitlines()[0]
    assert announce == (f"Downloading the weights of {MODEL} ({TAG}), 13 MB, from "
                        f"{hub.url}/{REPO}/resolve/main/{FILENAME} into {cache()}")
    assert "%|" not in first.stderr  # stderr is not a terminal: no progress bar
    asked = len(hub.requests)
    assert fetch() == first.stdout.strip() and len(hub.requests) == asked  # from the cache, without a request


def _stderr_on_a_terminal(args) -> str:
    """Run fade with stderr on a pseudo-terminal (120 columns); what it wrote there."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the process closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    assert proc.wait(timeout=120) == 0
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("quiet", [False, True])
def test_the_progress_bar_shows_on_a_terminal_unless_quiet(hub, quiet):
    shown = _stderr_on_a_terminal(DOWNLOAD + (["--quiet"] if quiet else []))
    assert f"Downloading the weights of {MODEL}" in shown
    assert ("100%|" in shown) is not quiet


def test_detect_without_a_reachable_hub_prints_the_paragraph_at_once(refused):
    from click.testing import CliRunner

    from fade_cli.cli import cli

    import_before_timing()
    start = time.monotonic()
    result = CliRunner().invoke(cli, ["detect", str(QUERIES / "good_a.png"), "--device", "cpu"])
    seconds = time.monotonic() - start
    assert result.exit_code == 3
    assert "Cannot load the weights of ViT-B-16-plus-240" in result.output and "cannot be reached" in result.output
    assert "Retrying" not in result.output
    assert seconds < 5, f"took {seconds:.1f} s"


def _start_download_and_wait_half_way() -> subprocess.Popen:
    """A `fade models download` that has written part of the file (the hub then hangs)."""
    proc = subprocess.Popen(DOWNLOAD, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size for p in repo_folder().rglob("*.incomplete")):
        assert time.monotonic() < deadline and proc.poll() is None, "the download never started"
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("hub", ["hang"], indirect=True)
@pytest.mark.parametrize("stop, code, said", [
    (signal.SIGINT, 130, "Interrupted."),  # Ctrl-C
    (signal.SIGTERM, 143, "Stopped (SIGTERM)."),  # a service manager stopping a first run
])
def test_a_download_stopped_half_way_leaves_nothing(hub, stop, code, said):
    proc = _start_download_and_wait_half_way()
    proc.send_signal(stop)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == code and said in stderr
    assert leftovers() == [] and cached_file() is None


@pytest.mark.parametrize("hub", ["hang"], indirect=True)
def test_a_killed_download_is_not_taken_for_weights_and_is_redone(hub, monkeypatch):
    from huggingface_hub import constants

    proc = _start_download_and_wait_half_way()
    proc.kill()  # as a power cut would: the hub's own cleanup never runs
    proc.wait(timeout=30)
    partial = leftovers()
    assert [p.suffix for p in partial] == [".incomplete"] and 0 < partial[0].stat().st_size < len(PAYLOAD)
    assert cached_file() is None
    with monkeypatch.context() as offline:
        offline.setattr(constants, "HF_HUB_OFFLINE", True)
        assert "not in the cache" in timed_failure()[0]
    hub.mode = "serve"
    assert Path(fetch()).read_bytes() == PAYLOAD


@pytest.mark.parametrize("hf_hub", ["org/repo/", "org/repo/open_clip_pytorch_model.bin", "org/repo/weights.pth",
                                    "org/repo/weights.bin", "org/repo/weights.safetensors", "org/repo/weights.pt"])
def test_weights_are_looked_for_under_the_names_open_clip_tries(hf_hub):
    """fade's copy of open_clip's private candidate list (model_cache._hub_candidates) must follow open_clip's."""
    from fade_cli.backbone.cache import _hub_candidates
    from fade_cli.backbone.open_clip_import import open_clip_module

    open_clip_module()
    from open_clip.constants import HF_WEIGHTS_NAME
    from open_clip.pretrained import _get_safe_alternatives

    filename = os.path.basename(hf_hub) or HF_WEIGHTS_NAME
    assert _hub_candidates(hf_hub) == ("org/repo", [*_get_safe_alternatives(filename), filename])
