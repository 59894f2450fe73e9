"""`fade serve`: an HTTP inspection service that keeps the model loaded and batches concurrent requests."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import click

from fade_cli.bank.calibration import DEFAULT_MARGIN
from fade_cli.cli.options import engine_options, pop_engine_options
from fade_cli.cli.reporting import stderr_console
from fade_cli.errors import InputError

SERVE_EXIT_CODES_HELP = """\b
Exit codes:
  0    stopped by SIGTERM or Ctrl-C, every accepted request answered
  2    usage or input error (bad option, bank, token file, address in use)
  3    failure (the model cannot be loaded, the queue not drained in time)"""


@click.command(epilog=SERVE_EXIT_CODES_HELP)
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
              help="Largest image (width x height); larger ones get 422 before they are decoded.")
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
def serve(ctx: click.Context, bank_paths: tuple[Path, ...], refs: Optional[Path], threshold: Optional[float],
          pixel_threshold: Optional[float], calibrate: bool, margin: float, host: str, port: int,
          max_batch: Optional[int],
          max_wait_ms: float, max_queue: int, timeout_s: float, max_bytes: int, max_pixels: int,
          token_file: Optional[Path],
          insecure: bool, archive: Optional[Path], drain_timeout: float, quiet: bool, **kwargs: Any) -> None:
    """Serve POST /v1/detect over HTTP with the model kept loaded (see docs/serve.md).

    Requests that arrive together are scored in one forward pass; each answer is
    the row `fade detect` would write for that image, plus timings. The model
    loads after the port is open: GET /readyz answers 200 once it is warm.

    \b
      fade serve --bank screw.fadebank --bank nut.fadebank --port 8080
      curl --data-binary @part.png 'http://127.0.0.1:8080/v1/detect?bank=screw'
      fade serve --refs ./good --class screw --calibrate --port 8080
    """
    try:
        from fade_cli.serve.app import ApiSettings, create_app
        from fade_cli.serve.server import bind_socket, is_loopback, run_server, url_of
    except ImportError as exc:
        raise InputError(f"fade serve needs the serve extra ({exc.name} is missing): pip install 'fade[serve]'") from exc
    from fade_cli.serve.archive import Archive
    from fade_cli.serve.service import InspectionService, ServiceSettings

    options = pop_engine_options(kwargs)
    console = stderr_console()
    token = _read_token(token_file) if token_file is not None else None
    if token is None and not insecure and not is_loopback(host):
        raise InputError(f"--host {host} is reachable from other machines: give --token-file (or --insecure "
                         "to serve without a token)")
    load_banks = _bank_loader(ctx, options, bank_paths, refs, threshold, pixel_threshold, calibrate, margin, console)
    settings = ServiceSettings(max_batch=max_batch, max_wait_s=max_wait_ms / 1000, max_queue=max_queue,
                               timeout_s=timeout_s, max_pixels=max_pixels, drain_timeout_s=drain_timeout)
    sock = bind_socket(host, port)
    url = url_of(sock)
    if archive is not None:
        from fade_cli.io.folder_lock import output_folder_lock

        ctx.with_resource(output_folder_lock(archive))  # one writer per audit trail
    service = InspectionService(load_banks, settings, archive=Archive(archive) if archive is not None else None)
    say = (lambda text: None) if quiet else (lambda text: console.print(text, markup=False, highlight=False,
                                                                          soft_wrap=True))
    service.on_ready = lambda: say(f"Ready: serving {', '.join(sorted(service.banks))} on {url}")
    say(f"Listening on {url}; loading the model (GET /readyz answers 200 once ready)")
    run_server(create_app(service, ApiSettings(max_bytes=max_bytes, token=token)), service, sock, drain_timeout)
    say("Stopped: every accepted request was answered.")


def _read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read --token-file {path}: {exc}") from exc
    if not token or any(ch.isspace() for ch in token):
        raise InputError(f"--token-file {path} must hold one token: no spaces, not empty")
    return token


def _bank_loader(ctx, options, bank_paths, refs, threshold, pixel_threshold, calibrate, margin,
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
        return lambda: _served_banks(named, threshold, pixel_threshold, console)
    setup = read_run_setup(ctx, options, refs, None, calibrate)
    if calibrate and refs is None:
        raise InputError("--calibrate needs --refs: the good images to calibrate on")
    ref_files = require_images(refs) if refs is not None else []
    return lambda: [_served_from_options(setup, ref_files, threshold, pixel_threshold, calibrate, margin, console)]


def _served_banks(named: dict, threshold, pixel_threshold, console) -> list:
    from fade_cli.cli.engine_setup import bank_thresholds, engines_for_banks
    from fade_cli.memory import guard_engine_failures
    from fade_cli.serve.service import ServedBank

    entries = [(bank, config, str(path)) for path, bank, config in named.values()]
    engines = guard_engine_failures(lambda: engines_for_banks(entries, console, quiet=True))
    return [ServedBank(name, engine, bank_thresholds(bank, str(path), threshold, pixel_threshold).thresholds, str(path))
            for (name, (path, bank, _)), engine in zip(named.items(), engines)]


def _served_from_options(setup, ref_files, threshold, pixel_threshold, calibrate, margin, console):
    from fade_cli.bank.calibration import choose_thresholds
    from fade_cli.cli.engine_setup import start_engine
    from fade_cli.serve.service import ServedBank

    engine, chosen = start_engine(setup, ref_files, threshold, pixel_threshold, console, True, calibrate, margin)
    thresholds = chosen.thresholds if chosen is not None else choose_thresholds(None, threshold, pixel_threshold)
    return ServedBank(setup.config.class_name.replace(" ", "_"), engine, thresholds, "--refs" if ref_files else "--class")
