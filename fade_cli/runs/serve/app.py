"""The HTTP API of `fade serve` (FastAPI): routes, limits, errors and the optional bearer token.

Every failure is an HTTP status and a JSON ``{"detail": "..."}`` that says why: 400 a
malformed request, 401 a missing or wrong token, 404 an unknown bank, 408 a body that did
not arrive in time, 413 a request over a limit (the message names it: body bytes, parts,
images, pixels), 422 an image that cannot be decoded, 503 (with Retry-After) while
starting, draining or when the queue or the pixels in flight are full, 504 when the model
did not answer within the timeout. Never a traceback. A client that went away is counted
as 499 in the metrics.
"""
from __future__ import annotations

import asyncio
import contextlib
import email.message
import hmac
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Literal, Optional

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from fade_cli import __version__
from fade_cli.core.errors import ImageError
from fade_cli.io.atomic import OutputError
from fade_cli.runs.serve.admission import Busy, TooLarge
from fade_cli.runs.serve.batcher import NotRunning, QueueFull
from fade_cli.runs.serve.service import READY, BankNotNamed, ClientGone, Cut, Extras, InspectionService, TimedOut
from fade_cli.runs.serve.service import UnknownBank, Upload

DEFAULT_MAX_BYTES = 32 * 1024 * 1024
RETRY_AFTER_S = "1"
CLIENT_CLOSED = 499  # nginx's code for a client that went away; only ever seen in the metrics
OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # the probes: answered without the token
CLOSE = {"Connection": "close"}  # refused while the client may still be sending: the rest is not read
DETECT_BODY = {
    "required": True,
    "description": "One image as the body (any format fade reads), or multipart/form-data with one file part "
                   "per image (several images: one answer each, in order).",
    "content": {
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object", "additionalProperties": {
            "type": "string", "format": "binary"}}},
    },
}


@dataclass
class ApiSettings:
    max_bytes: int = DEFAULT_MAX_BYTES
    token: Optional[str] = None
    body_timeout_s: Optional[float] = None  # the whole body must arrive within it (a slow sender holds a connection)


class Timings(BaseModel):
    decode_ms: float
    queue_ms: float
    model_ms: float
    total_ms: float
    batch_size: int


class Detection(BaseModel):
    """A results.jsonl row of `fade detect` (file paths null: nothing is written), its bank and timings."""

    path: str
    score: Optional[float] = None
    language_score: Optional[float] = None
    vision_score: Optional[float] = None
    verdict: Optional[Literal["OK", "NG"]] = None
    map_path: Optional[str] = None
    heatmap_path: Optional[str] = None
    mask_path: Optional[str] = None
    regions: Optional[list[dict[str, Any]]] = None
    error: Optional[str] = None
    bank: str
    timings: Timings
    heatmap_png: Optional[str] = None
    map_npy: Optional[str] = None


def create_app(service: InspectionService, settings: ApiSettings = ApiSettings()) -> FastAPI:
    """The ASGI app; its lifespan starts the service (loading runs in the background) and stops it."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="fade serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Visual anomaly detection (FADE) as a service: POST an image, get its score and verdict.")
    if settings.token is not None:
        # Outside the routing, so every path (the schema's, a route added later, an unknown one) is covered.
        app.add_middleware(RequireToken, token=settings.token)
        _document_bearer(app)
    app.add_middleware(CountRequests, service=service)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server's log"}, status_code=500)

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, exc: ClientDisconnect) -> Response:
        return Response(status_code=CLIENT_CLOSED)  # nobody reads it: it is for the metrics

    @app.get("/healthz", summary="The process is alive.")
    async def healthz() -> dict[str, str]:
        return {"status": service.state}

    @app.get("/readyz", summary="200 once the model and banks are loaded and warmed up; 503 while starting or draining.",
             responses={503: {"description": "starting, draining or failed"}})
    async def readyz() -> JSONResponse:
        ready = service.state == READY
        return JSONResponse({"status": service.state}, status_code=200 if ready else 503,
                            headers=None if ready else {"Retry-After": RETRY_AFTER_S})

    @app.get("/metrics", summary="Prometheus metrics (text format).",
             response_class=Response)
    async def metrics() -> Response:
        return Response(service.metrics.exposition(), media_type=service.metrics.content_type)

    @app.get("/v1/banks", summary="The banks served: name, class, model, thresholds.")
    async def banks() -> dict[str, list[dict[str, Any]]]:
        _require_ready(service)
        return {"banks": [served.describe() for served in service.banks.values()]}

    @app.post("/v1/detect", summary="Score one image (the body) or several (multipart).",
              response_model=None, openapi_extra={"requestBody": DETECT_BODY},
              responses={200: {"model": Detection, "description": "one image: its row; multipart: "
                                                                  "``{\"results\": [row, ...]}``"},
                         400: {}, 401: {}, 404: {}, 408: {}, 413: {}, 422: {}, 503: {}, 504: {}})
    async def detect(
        request: Request,
        bank: Optional[str] = Query(None, description="Bank name (see /v1/banks); optional when one is served."),
        name: str = Query("image", max_length=255, description="Label put in the row's path (raw body only)."),
        heatmap: Optional[Literal["png"]] = Query(None, description="png: add the heatmap, base64 PNG."),
        map: Optional[Literal["npy"]] = Query(None, description="npy: add the anomaly map at image size, "
                                                                "base64 .npy float32."),
    ) -> Any:
        started = time.monotonic()
        try:
            return await service.unless_cut(_detect(service, settings, request, bank, name,
                                                    Extras(heatmap == "png", map == "npy")))
        except Cut as exc:  # the drain timeout passed first
            raise HTTPException(503, str(exc), headers={"Retry-After": RETRY_AFTER_S}) from None
        finally:
            service.metrics.latency.observe(time.monotonic() - started)

    return app


async def _detect(service: InspectionService, settings: ApiSettings, request: Request, bank: Optional[str],
                  name: str, extras: Extras) -> Any:
    _require_ready(service)
    try:
        served = service.bank(bank)
    except UnknownBank as exc:
        raise HTTPException(404, str(exc)) from None
    except BankNotNamed as exc:
        raise HTTPException(400, str(exc)) from None
    body = await _read_body_in_time(request, settings.max_bytes, settings.body_timeout_s)
    multipart = request.headers.get("content-type", "").lower().startswith("multipart/form-data")
    uploads = await _multipart_uploads(request, body, service.settings.max_queue) if multipart else [Upload(name, body)]
    try:
        answers = await service.detect(served, uploads, extras, client_gone=lambda: _disconnected(request))
    except ImageError as exc:
        raise HTTPException(422, str(exc)) from None
    except TooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except (QueueFull, Busy, NotRunning) as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": RETRY_AFTER_S}) from None
    except TimedOut as exc:
        raise HTTPException(504, str(exc)) from None
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    except (OutputError, OSError) as exc:  # --archive: no answer goes out that the audit trail lacks
        raise HTTPException(500, f"the answer could not be archived: {exc}") from None
    except Exception as exc:  # the engine failed (out of memory...): this request fails, the server goes on
        raise HTTPException(500, f"the engine failed: {exc}") from None
    return {"results": answers} if multipart else answers[0]


def _require_ready(service: InspectionService) -> None:
    if service.state != READY:
        raise HTTPException(503, f"the service is {service.state}", headers={"Retry-After": RETRY_AFTER_S})


async def _read_body_in_time(request: Request, max_bytes: int, timeout_s: Optional[float]) -> bytes:
    """The body, or 408 when it has not all arrived within ``timeout_s`` (a client sending a byte a second)."""
    try:
        return await asyncio.wait_for(_read_body(request, max_bytes), timeout_s)
    except asyncio.TimeoutError:
        raise HTTPException(408, f"the body did not arrive within the body timeout of {timeout_s:g} s",
                            headers=CLOSE) from None


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it is known to pass ``max_bytes`` (declared or streamed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise HTTPException(413, f"the body ({declared} bytes) is over the limit of {max_bytes} bytes", headers=CLOSE)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPException(413, f"the body is over the limit of {max_bytes} bytes", headers=CLOSE)
        chunks.append(chunk)
    return b"".join(chunks)


async def _multipart_uploads(request: Request, body: bytes, max_files: int) -> list[Upload]:
    """One upload per file part, in order; a part that is not a file is refused, too many parts are 413."""
    parts = _count_parts(request.headers.get("content-type", ""), body)
    if parts > max_files:  # counted before parsing: each parsed part costs objects, not only its bytes
        raise HTTPException(413, f"{parts} parts in one request, over the limit of {max_files} images a request "
                                 "(the queue's length)")

    async def stream() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=max_files, max_fields=0)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise HTTPException(400, f"malformed multipart body: {exc.message}") from None
    try:
        uploads = [Upload(part.filename or field, await part.read()) for field, part in form.multi_items()]
    finally:
        await form.close()
    if not uploads:
        raise HTTPException(400, "the multipart body holds no file part")
    return uploads


def _count_parts(content_type: str, body: bytes) -> int:
    """How many parts a multipart body holds: its delimiters, less the closing one (0 without a boundary)."""
    header = email.message.Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        return 0
    return max(0, body.count(b"--" + boundary.encode("latin-1")) - 1)


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class RequireToken:
    """ASGI middleware: every path but the probes (OPEN_PATHS) needs ``Authorization: Bearer TOKEN``."""

    def __init__(self, app: Any, token: str):
        self.app = app
        self.token = token.encode("utf-8")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        refusal = JSONResponse({"detail": "a valid bearer token is needed (Authorization: Bearer TOKEN)"},
                               status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await refusal(scope, receive, send)

    def _authorized(self, scope: dict) -> bool:
        given = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, credentials = given.partition(b" ")
        # compare_digest even for a wrong scheme: the time taken says nothing about the token
        matches = hmac.compare_digest(credentials.strip(), self.token)
        return scheme.lower() == b"bearer" and matches


def _document_bearer(app: FastAPI) -> None:
    """The schema says which operations need the token (RequireToken enforces it)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path, operations in schema["paths"].items():
                for operation in operations.values():
                    operation["security"] = [] if path in OPEN_PATHS else [{"bearer": []}]
        return app.openapi_schema

    app.openapi = openapi


class CountRequests:
    """ASGI middleware: counts answers by route (the route's template, never the raw path) and status."""

    def __init__(self, app: Any, service: InspectionService):
        self.app = app
        self.service = service

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "other")
            self.service.metrics.requests.labels(route, str(status[0])).inc()
