"""The real `fade serve` process under hostile connections: idle sockets, slow senders, more than the cap.

Loopback only, bounded in time and count: each check takes a few seconds.
"""
from __future__ import annotations

import os
import resource
import select
import socket
import sys
import time

import pytest

httpx = pytest.importorskip("httpx")

from conftest import QUERIES, TINY_MODEL_ARGS  # noqa: E402
from test_serve_api import bank_file  # noqa: E402,F401  (the fixture)
from test_serve_process import start_serve, wait_ready  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and RLIMIT_NOFILE")


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def stop(proc) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def open_files(proc) -> int:
    return len(os.listdir(f"/proc/{proc.pid}/fd"))


def trickle(sock: socket.socket, head: bytes, byte: bytes, limit_s: float) -> tuple[bytes, float]:
    """Send ``head``, then ``byte`` every 0.2 s until the server answers or closes; (its answer, seconds taken)."""
    started = time.monotonic()
    sock.sendall(head)
    while time.monotonic() - started < limit_s:
        readable, _, _ = select.select([sock], [], [], 0.2)
        if readable:
            taken = time.monotonic() - started
            return _until_closed(sock, sock.recv(65536)), taken
        try:
            sock.sendall(byte)
        except OSError:  # closed under us: what it answered is still to be read
            continue
    raise AssertionError(f"still open after {limit_s} s")


def _until_closed(sock: socket.socket, answer: bytes) -> bytes:
    """The rest of an answer the server sends in several packets (head, then body), up to its close."""
    sock.settimeout(5)
    while chunk := _received(sock):
        answer += chunk
    return answer


def _received(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:  # reset after the answer: it is complete
        return b""


@pytest.fixture(scope="module")
def strict_server(bank_file):
    proc, url = start_serve("--bank", str(bank_file), "--header-timeout", "1", "--body-timeout", "1",
                            "--keep-alive", "1", "--max-connections", "4", *TINY_MODEL_ARGS)
    try:
        wait_ready(url, proc)
        yield proc, url
    finally:
        stop(proc)


def test_idle_sockets_past_the_file_limit_do_not_lock_out_a_real_request(bank_file):
    # The issue: more idle sockets than the open-file limit, and every real request timed out.
    limit = 256

    def lower_file_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    proc, url = start_serve("--bank", str(bank_file), *TINY_MODEL_ARGS, preexec_fn=lower_file_limit)
    idle = []
    try:
        wait_ready(url, proc)
        idle = [socket.create_connection(address(url), timeout=5) for _ in range(limit + 50)]
        body = (QUERIES / "good_a.png").read_bytes()
        response = httpx.post(f"{url}/v1/detect", content=body, timeout=10)
        assert response.status_code == 200, response.text
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        assert open_files(proc) < limit
    finally:
        for sock in idle:
            sock.close()
        stop(proc)


def test_a_slow_header_sender_is_cut_while_others_are_served(strict_server):
    proc, url = strict_server
    with socket.create_connection(address(url), timeout=5) as slow:
        started = time.monotonic()
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200  # served meanwhile
        answer, taken = trickle(slow, b"", b"a", limit_s=5)
    assert answer.startswith(b"HTTP/1.1 408") and b"header timeout of 1 s" in answer
    assert 0.8 < time.monotonic() - started < 3


def test_a_slow_body_sender_gets_408_within_the_body_timeout(strict_server):
    proc, url = strict_server
    head = b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
    with socket.create_connection(address(url), timeout=5) as slow:
        answer, taken = trickle(slow, head, b"\x89", limit_s=5)
    assert answer.startswith(b"HTTP/1.1 408") and b"body timeout of 1 s" in answer
    assert 0.8 < taken < 3


def test_an_idle_connection_is_closed_after_the_keep_alive(strict_server):
    proc, url = strict_server
    with socket.create_connection(address(url), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        started, received = time.monotonic(), [b"?"]
        while received[-1]:  # the answer, then the end: closed by the server
            received.append(sock.recv(65536))
        assert b"".join(received[1:]).startswith(b"HTTP/1.1 200")
        assert 0.8 < time.monotonic() - started < 2.5


def test_idle_sockets_over_the_cap_give_way_and_busy_ones_get_503(strict_server):
    proc, url = strict_server
    idle = [socket.create_connection(address(url), timeout=5) for _ in range(12)]  # 3 x the cap of 4
    try:
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    finally:
        for sock in idle:
            sock.close()
    # Connections sending a body are not idle: with 4 of them, a fifth request is over the cap.
    head = b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
    busy = [socket.create_connection(address(url), timeout=5) for _ in range(4)]
    try:
        for sock in busy:
            sock.sendall(head)
        time.sleep(0.2)
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 503
    finally:
        for sock in busy:
            sock.close()
    deadline = time.monotonic() + 5
    while httpx.get(f"{url}/healthz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
