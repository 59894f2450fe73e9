"""`fade watch`: score images as they arrive in a folder, each once, across restarts."""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any, Optional

import click

from fade_cli.bank.calibration import Thresholds
from fade_cli.cli.help_sections import sectioned
from fade_cli.cli.options import FiniteFloat, engine_options, pop_engine_options
from fade_cli.cli.exit_codes import OK, Terminated, run_exit_code, stop_exit_code
from fade_cli.cli.console import RowPrinter, print_warning, stderr_console
from fade_cli.cli.stopping import STOPS, silence_stdout
from fade_cli.io.images import escape_undecodable

WATCH_EXIT_CODES_HELP = """\b
Exit codes:
  0    stopped by SIGTERM or SIGHUP (a service stop, a closed terminal), or --once done and no image NG
  1    --once done, at least one image NG (with a threshold)
  2    usage or input error (bad option, missing folder, results of another run in --out, --out in use)
  3    failure while running (model, memory, disk full)
  4    --once done, no image NG, but some image(s) not inspected (with a threshold)
  130  stopped by Ctrl-C
  141  stopped because stdout was closed (| head)"""


@click.command(epilog=WATCH_EXIT_CODES_HELP, **sectioned(
    Everyday=("folder", "out", "refs", "class_name", "bank_path", "threshold", "move_to", "once"),
    Outputs=("pixel_threshold", "map_size", "heatmaps", "maps", "output_format", "quiet"),
    Speed_and_machine=("settle", "interval")))
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Output folder: results.jsonl (appended), watch-state.jsonl, heatmaps/, maps/.")
@click.option("--refs", type=click.Path(path_type=Path), help="Folder of known-good images: few-shot mode.")
@click.option("--bank", "bank_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Saved reference bank (`fade bank build`): model, settings, references and thresholds.")
@click.option("--move-to", type=click.Path(path_type=Path, file_okay=False),
              help="Move each scored file here (sub-folders mirrored; a name already there gets .2, .3...).")
@click.option("--threshold", type=FiniteFloat(), help="Score at or above which an image is NG.")
@click.option("--pixel-threshold", type=FiniteFloat(),
              help="Map value at or above which a pixel is defective: masks/ and defect regions for NG images.")
@click.option("--settle", type=FiniteFloat(min=0), default=2.0, show_default=True,
              help="Seconds a file's size and time must stay unchanged before it is scored.")
@click.option("--interval", type=FiniteFloat(min=0.05), default=1.0, show_default=True,
              help="Seconds between two looks at the folder.")
@click.option("--once", is_flag=True, help="Score what is in the folder (once complete), then exit.")
@click.option("--map-size", type=click.IntRange(min=1), help="Save maps as N x N [default: the image's own size].")
@click.option("--heatmaps/--no-heatmaps", default=True, show_default=True, help="Write heatmap images.")
@click.option("--maps/--no-maps", default=False, show_default=True,
              help="Write raw .npy maps (off by default: months of full-size float maps fill a disk).")
@click.option("--format", "output_format", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True,
              help="stdout: one line per scored image.")
@click.option("-q", "--quiet", is_flag=True, help="No status messages on stderr (warnings still appear).")
@engine_options
@click.pass_context
def watch(ctx: click.Context, folder: Path, out: Path, refs: Optional[Path], bank_path: Optional[Path],
          move_to: Optional[Path], threshold: Optional[float], pixel_threshold: Optional[float], settle: float,
          interval: float, once: bool, map_size: Optional[int], heatmaps: bool, maps: bool, output_format: str,
          quiet: bool, **kwargs: Any) -> None:
    """Score every image that arrives under FOLDER, once, and append its row to OUT/results.jsonl.

    A file is scored when complete: its size and modification time stayed the
    same for --settle seconds. Files whose name or folder starts with '.' are
    ignored, so a writer can upload under a hidden name and rename when done.
    OUT/watch-state.jsonl records the files scored (path, size, inode, times and
    SHA-256 of the content): after a restart nothing is scored twice, and a new
    file under an old name is scored. One watch (or other run) at a time may use
    --out: a second is refused. If FOLDER goes away (a share unmounted), the watch
    warns, waits for it and goes on when it is back. Runs until Ctrl-C, SIGTERM or
    SIGHUP (or --once).

    \b
      fade watch ./incoming --bank screw.fadebank --out ./results --move-to ./done
      fade watch ./incoming --refs ./good --class screw --threshold 0.6 --out ./results
      fade watch ./incoming --bank screw.fadebank --out ./results --once
    """
    from fade_cli.io.folder_lock import output_folder_lock
    from fade_cli.runs.watch import FolderWatcher, ResultsLog

    given = Thresholds(image=threshold, pixel=pixel_threshold)
    options = pop_engine_options(kwargs)
    console = stderr_console()
    warn = functools.partial(print_warning, console)
    ctx.with_resource(output_folder_lock(out))
    # Said even with -q: it answers the warning that the folder was gone.
    def notice(message: str) -> None:
        console.print(escape_undecodable(message), markup=False, highlight=False, soft_wrap=True)

    watcher = FolderWatcher(folder, out, settle_s=settle, move_to=move_to, warn=warn, notice=notice)
    rows = []
    try:  # from here on, a stop (SIGTERM while the model loads too) ends the watch the same way
        engine, thresholds = _engine(ctx, options, refs, bank_path, given, console, quiet)
        output = ResultsLog(out, map_size=map_size, save_maps=maps, save_heatmaps=heatmaps,
                            run_info=engine.run_info())
        printer = RowPrinter(output_format, thresholds.image is not None)

        def on_row(row) -> None:
            rows.append(row)
            if row.error:
                warn(row.error)
            printer.row(row)

        if not quiet:
            console.print(f"Watching {folder} (results in {out}); Ctrl-C to stop.", markup=False, highlight=False,
                          soft_wrap=True)
        _watch(engine, watcher, output, thresholds, on_row, interval, once)
    except STOPS as stop:
        if isinstance(stop, BrokenPipeError):
            silence_stdout()
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone: the results are saved anyway
            console.print(f"Stopped after scoring {len(rows)} image(s).", markup=False, highlight=False,
                          soft_wrap=True)
        # A service manager's stop (or a closed terminal: SIGHUP) is the normal end of a watch, not a failure.
        ctx.exit(OK if isinstance(stop, Terminated) else stop_exit_code(stop))
    if not quiet:
        console.print(f"Scored {len(rows)} image(s).", markup=False, highlight=False, soft_wrap=True)
    ctx.exit(run_exit_code(rows, thresholds.image is not None))


def _engine(ctx, options, refs, bank_path, given: Thresholds, console, quiet):
    """The engine and the thresholds of the watch: from a bank, or from the options (and --refs)."""
    from fade_cli.cli.engine_setup import read_run_setup, start_engine
    from fade_cli.io.images import require_images

    setup = read_run_setup(ctx, options, refs, bank_path, calibrate=False)
    ref_files = require_images(refs, on_skip=functools.partial(print_warning, console)) if refs is not None else []
    engine, chosen = start_engine(setup, ref_files, given, console, quiet)
    if chosen.report is not None and not quiet:
        console.print(chosen.report, markup=False, highlight=False, soft_wrap=True)
    return engine, chosen.thresholds


def _watch(engine, watcher, output, thresholds: Thresholds, on_row, interval, once) -> None:
    from fade_cli.core.memory import guard_engine_failures
    from fade_cli.runs.watch import watch_folder

    guard_engine_failures(lambda: watch_folder(engine, watcher, output, thresholds, on_row,
                                interval_s=interval, stop_when_idle=once))
