"""`fade serve`: an HTTP inspection service that keeps the model loaded and batches concurrent requests."""
from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TextIO

import click

from fade_cli.bank.calibration import DEFAULT_MARGIN, Thresholds
from fade_cli.cli.exit_codes import FAILURE, OK, PIPE_CLOSED
from fade_cli.cli.help_sections import sectioned
from fade_cli.cli.options import engine_options, pop_engine_options
from fade_cli.cli.console import stderr_console
from fade_cli.cli.stopping import silence_stream
from fade_cli.core.errors import FadeError, InputError
from fade_cli.io.files import read_text_file

SERVE_EXIT_CODES_HELP = """\b
Exit codes:
  0    stopped by SIGTERM, SIGHUP or Ctrl-C, every accepted request answered
  2    usage or input error (bad option, bank, token file, address in use, archive folder of another run)
  3    failure (the model or a library cannot be loaded; the drain timeout cut requests: they got 503)
  141  stderr cannot be written (closed pipe, full disk): drained and stopped"""

# The top-level modules of the serve extra (setup.cfg) and of what they import.
SERVE_EXTRA_MODULES = {"fastapi", "uvicorn", "starlette", "pydantic", "prometheus_client", "multipart",
                       "python_multipart"}
TOKEN_FILE_LIMIT = 4096  # a bearer token is tens of bytes


@click.command(epilog=SERVE_EXIT_CODES_HELP, **sectioned(
    Everyday=("bank_paths", "refs", "class_name", "threshold", "pixel_threshold", "calibrate", "margin", "host", "port",
              "token_file", "insecure", "archive", "quiet"),
    Limits_and_timeouts=("max_batch", "max_wait_ms", "max_queue", "timeout_s", "max_bytes", "max_pixels",
                         "max_pixels_in_flight", "max_connections", "keep_alive_s", "header_timeout_s",
                         "body_timeout_s", "drain_timeout")))
@click.option("--bank", "bank_paths", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Saved reference bank to serve (repeatable); its file stem is its name in ?bank=.")
@click.option("--refs", type=click.Path(path_type=Path), help="Without --bank: folder of known-good images (few-shot).")
@click.option("--threshold", type=float, help="Image threshold for verdicts (wins over the banks').")
@click.option("--pixel-threshold", type=float, help="Pixel threshold for defect regions (wins over the banks').")
@click.option("--calibrate", is_flag=True, help="With --refs: thresholds from the references (leave-one-out).")
@click.option("--margin", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_MARGIN, show_default=True,
              help="With --calibrate: threshold = margin x the highest leave-one-out reference score.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; one that is not loopback needs --token-file (or --insecure).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="TCP port (0: a free one).")
@click.option("--max-batch", type=click.IntRange(min=1),
              help="Most images in one forward pass [default: --batch-size's: 8 on a GPU, 1 on a CPU, where "
                   "batches gain nothing].")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Longest a request waits for others to share its forward pass.")
@click.option("--max-queue", type=click.IntRange(min=1), default=64, show_default=True,
              help="Most images waiting for the model; beyond it requests get 503 with Retry-After.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds a request may wait for the model (queue and forward pass) before a 504.")
@click.option("--max-bytes", type=click.IntRange(min=1), default=32 * 1024 * 1024, show_default=True,
              help="Largest request body; larger ones get 413.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=50_000_000, show_default=True,
              help="Largest image (width x height); larger ones get 413, judged from the header before decoding.")
@click.option("--max-pixels-in-flight", type=click.IntRange(min=1),
              help="Most decoded pixels of all requests at once (judged from the headers before decoding): beyond "
                   "it 503, a request alone over it 413 [default: what a quarter of the memory holds, at 8 bytes "
                   "a pixel, and at least --max-pixels].")
@click.option("--max-connections", type=click.IntRange(min=1),
              help="Most connections open at once; at the cap, the connection idle longest is closed, and when none "
                   "is idle requests get 503 [default: from the open-file limit (ulimit -n), leaving 1/8 of it "
                   "for the process].")
@click.option("--keep-alive", "keep_alive_s", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, help="Seconds an idle connection stays open after an answer.")
@click.option("--header-timeout", "header_timeout_s", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="Seconds from a connection opening (or its previous answer) until the "
                                      "request's headers must be complete.")
@click.option("--body-timeout", "body_timeout_s", type=click.FloatRange(min=0, min_open=True), default=60.0,
              show_default=True, help="Seconds from the headers until the request's body must be complete (408).")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File holding a bearer token that every request but /healthz and /readyz must send.")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without --token-file.")
@click.option("--archive", type=click.Path(file_okay=False, path_type=Path),
              help="Keep every request's image and its result row here (images/, results.jsonl).")
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="On SIGTERM/Ctrl-C: seconds to finish the requests in flight before exiting.")
@click.option("-q", "--quiet", is_flag=True, help="No status messages on stderr.")
@engine_options
@click.pass_context
def serve(ctx: click.Context, quiet: bool, **params: Any) -> None:
    """Serve POST /v1/detect over HTTP with the model kept loaded (see docs/serve.md).

    Requests that arrive together are scored in one forward pass; each answer is
    the row `fade detect` would write for that image, plus timings. The model
    loads after the port is open: GET /readyz answers 200 once it is warm.

    \b
      fade serve --bank screw.fadebank --bank nut.fadebank --port 8080
      curl --data-binary @part.png 'http://127.0.0.1:8080/v1/detect?bank=screw'
      fade serve --refs ./good --class screw --calibrate --port 8080
    """
    # SIGHUP stops serve as SIGTERM does: the `fade` group takes both (cli.stopping.sigterm_as_interrupt).
    with _Stderr.guarding() as stderr:
        try:
            code = _serve(ctx, quiet=quiet, stderr=stderr, **params)
        except KeyboardInterrupt:  # a stop signal before the server took the signals over: no request was taken
            stderr.say(quiet, "Stopped before serving.")
            code = OK
        except FadeError:
            if not stderr.lost:
                raise
            code = PIPE_CLOSED  # the error cannot be told: the exit code says why
    ctx.exit(PIPE_CLOSED if stderr.lost and code == OK else code)


def _serve(ctx: click.Context, bank_paths: tuple[Path, ...], refs: Optional[Path], threshold: Optional[float],
           pixel_threshold: Optional[float], calibrate: bool, margin: float, host: str, port: int,
           max_batch: Optional[int], max_wait_ms: float, max_queue: int, timeout_s: float, max_bytes: int,
           max_pixels: int, max_pixels_in_flight: Optional[int], max_connections: Optional[int],
           keep_alive_s: float, header_timeout_s: float, body_timeout_s: float, token_file: Optional[Path],
           insecure: bool, archive: Optional[Path], drain_timeout: float, quiet: bool, stderr: "_Stderr",
           **kwargs: Any) -> int:
    """Set up, serve until stopped, and return the exit code."""
    try:
        from fade_cli.runs.serve.app import ApiSettings, create_app
        from fade_cli.runs.serve.server import bind_socket, is_loopback, run_server, url_of
    except (ImportError, OSError) as exc:
        raise _import_failure(exc) from exc
    from fade_cli.runs.serve.admission import default_pixels_in_flight
    from fade_cli.runs.serve.archive import Archive, refuse_foreign_folder
    from fade_cli.runs.serve.connections import ConnectionLimits, check_max_connections, default_max_connections
    from fade_cli.runs.serve.service import InspectionService, ServiceSettings

    given = Thresholds(image=threshold, pixel=pixel_threshold)
    options = pop_engine_options(kwargs)
    console = stderr_console()
    token = _read_token(token_file) if token_file is not None else None
    if token is None and not insecure and not is_loopback(host):
        raise InputError(f"--host {host} is reachable from other machines: give --token-file (or --insecure "
                         "to serve without a token)")
    load_banks = _bank_loader(ctx, options, bank_paths, refs, given, calibrate, margin, console)
    if max_connections is not None:
        try:
            check_max_connections(max_connections)
        except ValueError as exc:
            raise InputError(f"--max-connections: {exc}") from None
    limits = ConnectionLimits(max_connections or default_max_connections(), keep_alive_s=keep_alive_s,
                              header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s)
    settings = ServiceSettings(max_batch=max_batch, max_wait_s=max_wait_ms / 1000, max_queue=max_queue,
                               timeout_s=timeout_s, max_pixels=max_pixels, drain_timeout_s=drain_timeout,
                               max_pixels_in_flight=max_pixels_in_flight or default_pixels_in_flight(max_pixels))
    sock = bind_socket(host, port)
    url = url_of(sock)
    if archive is not None:
        from fade_cli.io.folder_lock import output_folder_lock

        # One writer per audit trail; a folder holding another command's run is refused before it is touched.
        ctx.with_resource(output_folder_lock(archive, refuse=lambda: refuse_foreign_folder(archive)))
    service = InspectionService(load_banks, settings, archive=Archive(archive) if archive is not None else None)
    stderr.on_lost = service.request_stop
    service.on_ready = lambda: stderr.say(quiet, f"Ready: serving {', '.join(sorted(service.banks))} on {url}")
    stderr.say(quiet, f"Listening on {url}; loading the model (GET /readyz answers 200 once ready)")
    if stderr.lost:
        sock.close()
        return PIPE_CLOSED
    api = ApiSettings(max_bytes=max_bytes, token=token, body_timeout_s=body_timeout_s)
    finished = run_server(create_app(service, api), service, sock, drain_timeout, limits)
    code = _stopped(service, drain_timeout, quiet, stderr)
    if not finished:
        # The worker is still loading the model or inside a forward pass: torch aborts (SIGABRT) a process whose
        # interpreter shuts down around such a thread, so end without that shutdown. Nothing is left to save:
        # the archive's writes are done, and the kernel releases the folder lock.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _stopped(service, drain_timeout: float, quiet: bool, stderr: "_Stderr") -> int:
    """Say how the service stopped; the exit code: FAILURE when the drain timeout cut requests short,
    PIPE_CLOSED when stderr could not be written, else OK."""
    if service.cut_requests:
        stderr.say(False, f"Stopped: the drain timeout ({drain_timeout:g} s) passed with "
                          f"{service.cut_requests} request(s) unanswered; they got 503.")
        return FAILURE
    if stderr.lost:
        return PIPE_CLOSED
    if not service.was_ready:
        stderr.say(quiet, "Stopped before the model was ready; no request was accepted.")
    else:
        stderr.say(quiet, "Stopped: every accepted request was answered.")
    return OK


class _Stderr(io.TextIOBase):
    """sys.stderr while serve runs. A write that fails (a closed pipe, a full disk) raises nothing: it marks the
    output lost and asks the service to drain and stop (``on_lost``), which then exits PIPE_CLOSED."""

    def __init__(self, stream: TextIO):
        super().__init__()
        self.stream = stream
        self.lost = False
        self.on_lost: Callable[[], None] = lambda: None

    @classmethod
    @contextlib.contextmanager
    def guarding(cls) -> Iterator["_Stderr"]:
        guard = cls(sys.stderr)
        sys.stderr = guard
        try:
            yield guard
        finally:
            sys.stderr = guard.stream

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.stream.encoding

    @property
    def errors(self) -> Optional[str]:  # type: ignore[override]
        return self.stream.errors

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return not self.lost and self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def write(self, text: str) -> int:
        self._guarded(lambda: (self.stream.write(text), self.stream.flush()))
        return len(text)

    def flush(self) -> None:
        self._guarded(self.stream.flush)

    def say(self, quiet: bool, text: str) -> None:
        if not quiet:
            self.write(text + "\n")

    def _guarded(self, action: Callable[[], Any]) -> None:
        if self.lost:
            return
        try:
            action()
        except (OSError, ValueError):  # ValueError: the stream was closed
            self.lost = True
            silence_stream(self.stream)  # what is still buffered goes nowhere: Python's exit flushes it
            self.on_lost()


def _import_failure(exc: BaseException) -> FadeError:
    """Why serve's modules cannot be imported: the serve extra is not installed, or a library failed to load."""
    missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
    if missing and missing.split(".")[0] in SERVE_EXTRA_MODULES:
        return InputError(f"fade serve needs the serve extra ({missing} is missing): pip install 'fade[serve]'")
    # torch (or another library) is installed but cannot load: an address-space limit (ulimit -v), a broken
    # install, a missing system library. Saying "install the extra" would send the user the wrong way.
    return FadeError(f"fade serve cannot start: a library it needs failed to load: {type(exc).__name__}: {exc}")


def _read_token(path: Path) -> str:
    # A regular file, read with a bound: a FIFO would hang the start before the port opens, /dev/zero never ends.
    token = read_text_file(path, "--token-file", limit=TOKEN_FILE_LIMIT).strip()
    if not token or any(ch.isspace() for ch in token):
        raise InputError(f"--token-file {path} must hold one token: no spaces, not empty")
    return token


def _bank_loader(ctx, options, bank_paths, refs, given: Thresholds, calibrate, margin,
                 console) -> Callable[[], list]:
    """Checks the banks (or the options) now, before the port opens; the returned loader loads the model."""
    from fade_cli.cli.engine_setup import load_run_bank, read_run_setup
    from fade_cli.io.images import require_images

    if options["roi_dir"] is not None:
        raise InputError("--roi-dir finds each image's mask by its path; uploads have none: serve a bank with its ROI "
                         "or give --roi")
    if bank_paths:
        if refs is not None or calibrate:
            raise InputError("--bank already holds the references and thresholds: drop --refs and --calibrate")
        named = {}
        for path in bank_paths:
            if path.stem in named:
                raise InputError(f"two banks are named {path.stem!r} ({named[path.stem][0]} and {path}): "
                                 "rename one file, the name is its stem")
            named[path.stem] = (path, *load_run_bank(ctx, path, options, None, False))
            if named[path.stem][1].regions is not None and named[path.stem][1].regions.roi is None:
                raise InputError(f"the bank {path} was built with per-image ROI masks (--roi-dir); fade serve "
                                 "needs a bank with one ROI")
        return lambda: _served_banks(named, given, console)
    setup = read_run_setup(ctx, options, refs, None, calibrate)
    if calibrate and refs is None:
        raise InputError("--calibrate needs --refs: the good images to calibrate on")
    ref_files = require_images(refs) if refs is not None else []
    return lambda: [_served_from_options(setup, ref_files, given, calibrate, margin, console)]


def _served_banks(named: dict, given: Thresholds, console) -> list:
    from fade_cli.cli.engine_setup import bank_thresholds, engines_for_banks
    from fade_cli.core.memory import guard_engine_failures
    from fade_cli.runs.serve.service import ServedBank

    entries = [(bank, config, str(path)) for path, bank, config in named.values()]
    engines = guard_engine_failures(lambda: engines_for_banks(entries, console, quiet=True))
    return [ServedBank(name, engine, bank_thresholds(bank, str(path), given).thresholds, str(path))
            for (name, (path, bank, _)), engine in zip(named.items(), engines)]


def _served_from_options(setup, ref_files, given: Thresholds, calibrate, margin, console):
    from fade_cli.cli.engine_setup import start_engine
    from fade_cli.runs.serve.service import ServedBank

    engine, chosen = start_engine(setup, ref_files, given, console, True, calibrate, margin)
    return ServedBank(setup.config.class_name.replace(" ", "_"), engine, chosen.thresholds,
                      "--refs" if ref_files else "--class")
