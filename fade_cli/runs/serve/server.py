"""Running the app under uvicorn on a socket fade binds itself, with a graceful drain on a stop signal.

Binding first means a port in use is a clear error (not a log line and exit 1), and
``--port 0`` picks a free port whose number is printed. On a stop signal (SIGTERM,
SIGINT, SIGHUP) or :meth:`InspectionService.request_stop` the service turns not-ready
at once, uvicorn stops accepting connections and waits for the requests in flight (the
queued ones are still scored). When the drain timeout passes first, the service cuts
what is left: each of those requests is answered 503 and counted
(``service.cut_requests``). uvicorn would re-raise the signal after its shutdown,
killing the process by it; the command chooses the exit code instead.
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import socket
import threading
from typing import Any, Iterator, Optional

import uvicorn

from fade_cli.core.errors import FadeError, InputError
from fade_cli.runs.serve.connections import ConnectionLimits, default_max_connections, uvicorn_settings
from fade_cli.runs.serve.service import InspectionService

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP: a closed terminal, `kill -HUP`
BACKLOG = 2048  # uvicorn's default
# After the cut, how long uvicorn waits for the 503s to go out before it cancels what is left (and closes).
CUT_GRACE_S = 5.0


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InputError(f"--host {host}: {exc.strerror}") from exc
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except (socket.gaierror, OSError) as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)  # connections wait in the backlog until uvicorn's loop accepts them
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class DrainingServer(uvicorn.Server):
    """uvicorn's server: drains the service on a stop, cuts it after the drain timeout, never re-raises the signal."""

    def __init__(self, config: uvicorn.Config, service: InspectionService, drain_timeout_s: float):
        super().__init__(config)
        self.service = service
        self.drain_timeout_s = drain_timeout_s

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.service.drain()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: Optional[list[socket.socket]] = None) -> None:
        self.service.drain()  # a stop asked for otherwise than by a signal drains the same way
        cut = asyncio.get_running_loop().call_later(self.drain_timeout_s, self.service.cut)
        try:
            await super().shutdown(sockets)
        finally:
            cut.cancel()

def run_server(app: Any, service: InspectionService, sock: socket.socket, drain_timeout_s: float,
               limits: Optional[ConnectionLimits] = None) -> bool:
    """Serve until a stop (signal or request) or a failed start; raises the loading error, if any.

    ``limits`` bound the connections (default: the open-file limit's cap and the default timeouts).
    True when the worker has ended; False when it is still loading the model or inside a
    forward pass (see :meth:`InspectionService.stop`).
    """
    limits = limits if limits is not None else ConnectionLimits(default_max_connections())
    config = uvicorn.Config(app, lifespan="on", timeout_graceful_shutdown=drain_timeout_s + CUT_GRACE_S,
                            access_log=False, log_config=None, server_header=False, **uvicorn_settings(limits))
    server = DrainingServer(config, service, drain_timeout_s)
    service.on_failure = lambda exc: setattr(server, "should_exit", True)
    service.on_stop_request = lambda: setattr(server, "should_exit", True)
    with sock:
        server.run(sockets=[sock])
    # The lifespan's shutdown stopped the service already, unless a second Ctrl-C forced the exit: then now.
    finished = service.stop(0)
    failure = service.failure
    if isinstance(failure, FadeError):
        raise failure
    if failure is not None:  # torch's and open_clip's own errors: still one message, never a traceback
        raise FadeError(f"the model could not be loaded: {type(failure).__name__}: {failure}") from failure
    return finished
