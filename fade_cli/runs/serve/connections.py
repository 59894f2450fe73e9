"""Bounding the connections of `fade serve`: read deadlines, an idle timeout and a cap below the file limit.

uvicorn closes a kept-alive connection that stays idle after an answer (``timeout_keep_alive``)
and answers 503 beyond ``limit_concurrency``, but a connection that never sends a request, or
sends it a byte at a time, stays open for ever: a thousand of them exhaust the process's
open files, and then no request gets in. :class:`GuardedH11Protocol` is uvicorn's h11
protocol with what it lacks:

- a head deadline: a request's headers must be complete ``header_timeout_s`` after the
  connection opened (or after the previous answer on it);
- a body deadline: the body must be complete ``body_timeout_s`` after the headers (the app
  answers 408 first where it reads the body; this closes a connection whose body nobody reads);
- a cap: at ``max_connections`` open, a new connection first closes the connection that has
  waited longest for a request head (idle, or a slow sender); when none is waiting, every
  request gets uvicorn's 503 until connections close. Past a hard ceiling (the cap and a
  margin, within the file limit) a new connection is closed at once.
"""
from __future__ import annotations

import asyncio
import functools
import itertools
from dataclasses import dataclass
from typing import Any, Optional

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    import resource
except ImportError:  # Windows: no file limit to read
    resource = None  # type: ignore[assignment]

DEFAULT_KEEP_ALIVE_S = 5.0  # uvicorn's default
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 60.0  # a 32 MiB body at 1 MB/s takes 32 s
MAX_HEADER_BYTES = 16 * 1024  # h11's incomplete-event bound: larger request heads are refused (400)
FALLBACK_FILE_LIMIT = 1024
BODY_GRACE_S = 1.0  # the app's own 408 comes first where it reads the body
TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
             b"content-length: %d\r\n\r\n%s")


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a connection may idle or take to send a request, and how many may be open at once."""

    max_connections: int
    keep_alive_s: float = DEFAULT_KEEP_ALIVE_S
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S

    @property
    def ceiling(self) -> int:
        """Open connections beyond which a new one is closed unanswered (the cap and a margin for 503s)."""
        return self.max_connections + overflow_margin(self.max_connections)


def overflow_margin(max_connections: int) -> int:
    """Connections past the cap that are still accepted, to be answered 503 rather than dropped."""
    return max(8, max_connections // 8)


def file_limit() -> int:
    """The process's soft limit of open files (RLIMIT_NOFILE)."""
    if resource is None:
        return FALLBACK_FILE_LIMIT
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def reserved_files(limit: int) -> int:
    """Files kept for the process itself: weights, banks, the archive, pipes, libraries."""
    return max(64, limit // 8)


def default_max_connections(limit: Optional[int] = None) -> int:
    """The largest cap whose ceiling leaves the reserved files free under the open-file limit."""
    usable = (limit if limit is not None else file_limit()) - reserved_files(limit or file_limit())
    cap = max(1, usable * 8 // 9)
    while cap > 1 and cap + overflow_margin(cap) > usable:
        cap -= 1
    return cap


def check_max_connections(max_connections: int, limit: Optional[int] = None) -> None:
    """ValueError when ``max_connections`` (with its margin) would not fit the open-file limit."""
    limit = limit if limit is not None else file_limit()
    usable = limit - reserved_files(limit)
    needed = max_connections + overflow_margin(max_connections)
    if needed > usable:
        raise ValueError(f"{max_connections} connections need {needed} open files with the margin for 503 answers, "
                         f"but the open-file limit is {limit} ({reserved_files(limit)} kept for the process): "
                         f"at most {default_max_connections(limit)}, or raise the limit (ulimit -n, LimitNOFILE=)")


def uvicorn_settings(limits: ConnectionLimits) -> dict[str, Any]:
    """The keyword arguments of ``uvicorn.Config`` that apply ``limits``."""
    return {
        "http": functools.partial(GuardedH11Protocol, limits=limits, waiting={}),
        "timeout_keep_alive": limits.keep_alive_s,
        # uvicorn counts the connection asking too: N + 1 lets N connections be served
        "limit_concurrency": limits.max_connections + 1,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
    }


HEAD, BODY = "head", "body"


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a head deadline, a body deadline and the connection cap."""

    def __init__(self, *args: Any, limits: ConnectionLimits, waiting: dict[GuardedH11Protocol, None], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.limits = limits
        # The server's connections waiting for a request head, longest-waiting first (a dict keeps the order
        # they were added in): the ones a new connection at the cap closes, found without a scan.
        self.waiting = waiting
        self._phase: Optional[str] = None  # HEAD: waiting for a request's headers; BODY: for its body
        self._head_started = False  # bytes of the awaited head arrived: a timeout gets a 408, not silence
        self._deadline: Optional[asyncio.TimerHandle] = None

    # --- uvicorn's hooks --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self._make_room():
            transport.abort()
            return
        self._follow_reading()

    def data_received(self, data: bytes) -> None:
        if self._phase == HEAD:
            self._head_started = True
        super().data_received(data)
        self._follow_reading()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow_reading()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._cancel_deadline()
        self._phase = None
        self.waiting.pop(self, None)
        super().connection_lost(exc)

    # --- the cap ----------------------------------------------------------------------------------
    def _make_room(self) -> bool:
        """Back under the cap by closing the connections that have waited longest for a request; False past
        the hard ceiling (this connection is to be dropped)."""
        excess = len(self.connections) - self.limits.max_connections
        for other in list(itertools.islice(self.waiting, max(0, excess))):
            other._expire()
        return len(self.connections) <= self.limits.ceiling

    # --- the deadlines ----------------------------------------------------------------------------
    def _follow_reading(self) -> None:
        """Start the deadline of the phase the connection entered (a phase's deadline never restarts)."""
        phase = self._reading_phase()
        if phase == self._phase:
            return
        self._cancel_deadline()
        self._phase, self._head_started = phase, False
        self.waiting.pop(self, None)
        if phase == HEAD:
            self.waiting[self] = None
            self._deadline = self.loop.call_later(self.limits.header_timeout_s, self._expire)
        elif phase == BODY:
            self._deadline = self.loop.call_later(self.limits.body_timeout_s + BODY_GRACE_S, self._expire)

    def _reading_phase(self) -> Optional[str]:
        if self.transport is None or self.transport.is_closing():
            return None
        if self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE:
            return HEAD
        if self.conn.their_state is h11.SEND_BODY:
            return BODY
        return None  # the request is in, being answered: the app's timeouts apply

    def _expire(self) -> None:
        """The phase's deadline passed: a 408 where part of a request came and no answer started, then close."""
        phase, self._phase = self._phase, None
        self._cancel_deadline()
        self.waiting.pop(self, None)
        if self.transport.is_closing():
            return
        if phase == HEAD and self._head_started:
            detail = (b'{"detail": "the request headers did not arrive within the header timeout of %g s"}'
                      % self.limits.header_timeout_s)
            self.transport.write(TIMED_OUT % (len(detail), detail))
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        self.transport.close()
        self.connections.discard(self)  # no longer counted against the cap (uvicorn discards it again when lost)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
