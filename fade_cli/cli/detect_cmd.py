"""`fade detect`: score a folder of images, zero-shot or few-shot."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Optional

import click
from rich.console import Console

from fade_cli.cli.help_sections import sectioned
from fade_cli.cli.exit_codes import EXIT_CODES_HELP, Terminated, run_exit_code, stop_exit_code
from fade_cli.bank.calibration import DEFAULT_MARGIN, Thresholds
from fade_cli.cli.engine_setup import RunSetup, given_engine_options, read_run_setup, start_engine
from fade_cli.cli.mutual_options import MUTUAL_OPTION_NAMES, mutual_options, pop_mutual_settings, refuse_with_mutual
from fade_cli.cli.options import FiniteFloat, engine_options, pop_engine_options, report_option
from fade_cli.cli.ray_options import RAY_OPTION_NAMES, pop_ray_settings, ray_options, start_ray
from fade_cli.cli.console import RowPrinter, print_warning, progress_bars, stderr_console
from fade_cli.cli.stopping import STOPS, OutputStreamFailed, silence_stdout
from fade_cli.core.errors import InputError
from fade_cli.settings import SCORE_NEUTRAL
from fade_cli.core.memory import guard_engine_failures


@click.command(epilog=EXIT_CODES_HELP, **sectioned(
    Everyday=("images", "refs", "class_name", "out", "threshold", "bank_path", "calibrate", "overwrite", "resume"),
    Outputs=("pixel_threshold", "margin", "map_size", "heatmaps", "maps", "output_format", "quiet", "report"),
    Mutual_scoring=MUTUAL_OPTION_NAMES, Ray_cluster=RAY_OPTION_NAMES))
@click.argument("images", type=click.Path(path_type=Path))
@click.option("--refs", type=click.Path(path_type=Path), help="Folder of known-good images: few-shot mode.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Output folder for results.csv/.jsonl, maps/ and heatmaps/.")
@click.option("--overwrite", is_flag=True,
              help="Replace results already in --out: the files earlier runs wrote there (results, maps, heatmaps, "
                   "masks) are removed; other files stay.")
@click.option("--resume", is_flag=True,
              help="Finish an interrupted run in --out: images with a scored row are not scored again.")
@click.option("--threshold", type=FiniteFloat(), help="Score at or above which an image is NG; gives verdicts and exit code 1.")
@click.option("--pixel-threshold", type=FiniteFloat(),
              help="Map value at or above which a pixel is defective: masks/ and defect regions for NG images.")
@click.option("--bank", "bank_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Saved reference bank (`fade bank build`): model, settings, references and thresholds.")
@click.option("--calibrate", is_flag=True,
              help="Set the thresholds from --refs alone (leave-one-out); --threshold/--pixel-threshold win.")
@click.option("--margin", type=FiniteFloat(min=0, min_open=True), default=DEFAULT_MARGIN, show_default=True,
              help="With --calibrate: threshold = margin x the highest leave-one-out reference score.")
@click.option("--map-size", type=click.IntRange(min=1), help="Save maps as N x N [default: the image's own size].")
@click.option("--heatmaps/--no-heatmaps", default=True, show_default=True, help="Write heatmap images.")
@click.option("--maps/--no-maps", default=True, show_default=True, help="Write raw .npy maps.")
@click.option("--format", "output_format", type=click.Choice(["table", "jsonl", "csv"]), default="table",
              show_default=True, help="stdout: a table for people, or JSON lines / CSV for scripts.")
@click.option("-q", "--quiet", is_flag=True, help="Hide the progress bar only: rows, warnings and errors still print.")
@report_option
@ray_options
@mutual_options
@engine_options
@click.pass_context
def detect(ctx: click.Context, images: Path, refs: Optional[Path], out: Optional[Path], overwrite: bool,
           threshold: Optional[float], map_size: Optional[int], heatmaps: bool, maps: bool, output_format: str,
           quiet: bool, pixel_threshold: Optional[float], bank_path: Optional[Path], calibrate: bool, margin: float,
           resume: bool, report: bool, **kwargs: Any) -> None:
    """Score every image under IMAGES (a folder, searched recursively, or one file).

    Without --refs the run is zero-shot; with --refs it is few-shot, using the
    good images as a memory bank. Scores are in [0, 1]; higher is more anomalous.

    With --bank the model, settings, references and thresholds come from a
    saved bank; engine options that contradict it are refused.

    \b
      fade detect ./images --class screw --out run1
      fade detect ./images --refs ./good --class screw --threshold 0.5 --format jsonl
      fade detect ./images --refs ./good --class screw --calibrate --out run1
      fade detect ./incoming --bank screw.fadebank --out run1
      fade detect ./batch --class screw --mutual --out run1    # zero-shot, images scored against each other
      fade detect /shared/archive --bank screw.fadebank --out /shared/rescored --ray --ray-gpus-per-worker 1
    """
    from fade_cli.io.folder_lock import output_folder_lock
    from fade_cli.io.manifest import recording_writes
    from fade_cli.io.images import require_images
    from fade_cli.io.input_checks import check_run_inputs
    from fade_cli.engine.mutual import require_mutual_batch
    from fade_cli.io.outputs import RunOutput, refuse_existing_results, rows_to_resume
    from fade_cli.runs.runner import run_detection

    given = Thresholds(image=threshold, pixel=pixel_threshold)
    options = pop_engine_options(kwargs)
    mutual = pop_mutual_settings(ctx, kwargs)
    ray = pop_ray_settings(ctx, kwargs)
    refuse_with_mutual(mutual, {"--refs": refs is not None, "--bank": bank_path is not None,
                                "--calibrate": calibrate, "--use-query": bool(options["use_query"]),
                                "--resume": resume, "--ray": ray is not None})
    setup = read_run_setup(ctx, options, refs, bank_path, calibrate)
    if ray is not None and setup.regions is not None:
        raise InputError("--ray does not take an inspection region yet: score with an ROI on this machine")
    if mutual is not None and setup.regions is not None:
        raise InputError("--mutual does not take an inspection region (--roi, --roi-dir)")
    if calibrate and refs is None:
        raise InputError("--calibrate needs --refs: the good images to calibrate on")
    if overwrite and resume:
        raise click.UsageError("--overwrite starts again and --resume continues: give one of them")
    if resume and out is None:
        raise click.UsageError("--resume continues the run in --out DIR; give --out")
    console = stderr_console()
    warn = functools.partial(print_warning, console)
    refuse_input_as_output(images, out)
    files = require_images(images, exclude=out, on_skip=warn)
    ref_files = require_images(refs, on_skip=warn) if refs is not None else []
    for message in check_run_inputs(images, files, refs, ref_files):
        warn(message)
    _note_silent_defaults(ctx, setup, out, output_format, console)
    if mutual is not None:
        require_mutual_batch(len(files))
    resumed = None
    if out is not None:
        earlier_results = None if overwrite or resume else functools.partial(refuse_existing_results, out)
        ctx.with_resource(output_folder_lock(out, refuse=earlier_results))
        ctx.with_resource(recording_writes(out))
        if resume:
            resumed = rows_to_resume(out, (file.relative for file in files), _settings(ctx.params))
    done = {row.path for row in resumed or []}
    todo = [file for file in files if file.relative not in done]
    if ray is not None:
        start_ray(ctx, ray, options["device"])

    engine, chosen = start_engine(setup, ref_files, given, console, quiet, calibrate, margin)
    thresholds = chosen.thresholds
    if chosen.report is not None:
        console.print(chosen.report, markup=False, highlight=False, soft_wrap=True)
    printer = RowPrinter(output_format, thresholds.image is not None)
    output = None
    if out is not None:
        output = RunOutput(out, overwrite=overwrite, map_size=map_size, save_maps=maps, save_heatmaps=heatmaps,
                           resumed=resumed, settings=_settings(ctx.params), save_thumbnails=report,
                           run_info={**engine.run_info(), **_run_record(ctx, thresholds)})
    if resumed:
        console.print(f"Resuming: {len(resumed)} of {len(files)} image(s) already scored in {out}.", markup=False,
                      highlight=False, soft_wrap=True)
    summary_rows = list(resumed or [])
    try:
        for row in summary_rows:
            printer.row(row)
        passes = [("Encoding", len(todo))] if mutual is not None else []
        with progress_bars(console, quiet, passes + [("Scoring", len(todo))]) as advancers:
            def on_row(row):
                summary_rows.append(row)
                if row.error:
                    print_warning(console, row.error)
                printer.row(row)
                advancers[-1]()

            on_encoded = advancers[0] if mutual is not None else None
            if ray is None:
                guard_engine_failures(lambda: run_detection(engine, todo, output, thresholds, on_row, mutual,
                                                            on_encoded))
            else:
                from fade_cli.runs.ray.ray_detect import run_detection_on_ray

                run_detection_on_ray(engine, todo, ray, output, thresholds, on_row)
    except STOPS as stop:
        _finish(output)
        _report(out, report, console, images)  # before stdout: it may be what cannot be written
        if isinstance(stop, BrokenPipeError):
            silence_stdout(stop)
        else:
            printer.finish(summary_rows)
        saved = f"; their results are in {out}" if out else ""
        console.print(f"{_stopped_by(stop)} after {len(summary_rows)} of {len(files)} images{saved}.", markup=False,
                      highlight=False, soft_wrap=True)
        ctx.exit(stop_exit_code(stop))
    except BaseException:
        _finish(output)
        raise
    _finish(output)
    _report(out, report, console, images)
    printer.finish(summary_rows)
    if all(row.score is None for row in summary_rows):
        raise InputError(_nothing_scored(summary_rows))
    ctx.exit(run_exit_code(summary_rows, thresholds.image is not None))


def _nothing_scored(rows) -> str:
    """Why no row has a score: nothing could be read, or (--mutual) too few images could."""
    from fade_cli.engine.mutual import ALONE_IN_GROUP, too_few_readable

    readable = sum(row.error == ALONE_IN_GROUP for row in rows)
    return too_few_readable(readable, len(rows)) if readable else "no image could be read"


def _note_silent_defaults(ctx: click.Context, setup: RunSetup, out: Optional[Path], output_format: str,
                          console: Console) -> None:
    """One line each for defaults that change what a run does without a word: the class name, no --out."""
    given = given_engine_options(ctx)
    own_prompts = "prompts" in given or {"cls_prompts", "seg_prompts"} <= given  # prompt files may not name it
    if setup.bank is None and "class_name" not in given and not own_prompts:
        _note(console, f'no --class: the prompts call the part "{setup.config.class_name}"; naming it '
                       "(--class screw) puts its name in every prompt, which usually scores defects better")
    if out is None:
        printed = "the table is" if output_format == "table" else "the results are"
        _note(console, f"no --out: only {printed} printed; anomaly maps, heatmaps, masks and the report are not "
                       "written (give --out DIR to keep them)")


def _note(console: Console, message: str) -> None:
    console.print(f"note: {message}", markup=False, highlight=False, soft_wrap=True)


def refuse_input_as_output(images: Path, out: Optional[Path]) -> None:
    """--out may lie inside the input folder (it is never read), but must not be that folder."""
    if out is not None and os.path.realpath(out) == os.path.realpath(images):
        raise InputError(f"--out {out} is the input folder itself; give another folder (a sub-folder is fine)")


# Options that do not change a run's results: a --resume may change them.
_RUNTIME_OPTIONS = {"out", "overwrite", "resume", "quiet", "output_format", "report", *SCORE_NEUTRAL,
                    *RAY_OPTION_NAMES}


def _settings(params: dict[str, Any]) -> dict[str, Any]:
    """What a run is asked, as JSON values, for a later --resume to compare (paths made absolute)."""
    def value(item):
        if isinstance(item, Path):
            return os.path.abspath(item)
        if isinstance(item, (tuple, list)):
            return [value(part) for part in item]
        return item
    return {name: value(item) for name, item in sorted(params.items()) if name not in _RUNTIME_OPTIONS}


def _run_record(ctx: click.Context, thresholds: Thresholds) -> dict[str, Any]:
    """What run.json adds to the engine's description for the report's header: the command line, when the run
    started, and the thresholds it decided with (after --calibrate or a bank: null when it made no verdicts)."""
    from datetime import datetime, timezone

    from fade_cli.cli import COMMAND_LINE_KEY

    return {"command": ctx.meta.get(COMMAND_LINE_KEY), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "threshold": thresholds.image, "pixel_threshold": thresholds.pixel}


def _stopped_by(stop: BaseException) -> str:
    if isinstance(stop, Terminated):
        return "Stopped by SIGTERM"
    if isinstance(stop, OutputStreamFailed):
        return f"Stopped: {stop}"
    if isinstance(stop, BrokenPipeError):
        return "Stopped: stdout was closed"
    return "Interrupted"


def _finish(output) -> None:
    if output is not None:
        output.finish()


def _report(out: Optional[Path], report: bool, console, images: Path) -> None:
    if out is not None and report:
        from fade_cli.cli.report_cmd import report_after_run

        report_after_run(out, console, images_root=images)
