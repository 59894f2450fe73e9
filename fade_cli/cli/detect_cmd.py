"""`fade detect`: score a folder of images, zero-shot or few-shot."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Optional

import click

from fade_cli.cli.exit_codes import EXIT_CODES_HELP, NG, OK
from fade_cli.cli.options import (
    engine_config_from_options,
    engine_options,
    pop_engine_options,
    prompt_sets_from_options,
)
from fade_cli.cli.reporting import RowPrinter, progress_bar, stderr_console
from fade_cli.errors import FadeError, InputError


@click.command(epilog=EXIT_CODES_HELP)
@click.argument("images", type=click.Path(path_type=Path))
@click.option("--refs", type=click.Path(path_type=Path), help="Folder of known-good images: few-shot mode.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Output folder for results.csv/.jsonl, maps/ and heatmaps/.")
@click.option("--overwrite", is_flag=True, help="Replace results already in --out.")
@click.option("--threshold", type=float, help="Score at or above which an image is NG; gives verdicts and exit code 1.")
@click.option("--map-size", type=click.IntRange(min=1), help="Save maps as N x N [default: the image's own size].")
@click.option("--heatmaps/--no-heatmaps", default=True, show_default=True, help="Write heatmap images.")
@click.option("--maps/--no-maps", default=True, show_default=True, help="Write raw .npy maps.")
@click.option("--format", "output_format", type=click.Choice(["table", "jsonl", "csv"]), default="table",
              show_default=True, help="stdout: a table for people, or JSON lines / CSV for scripts.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@engine_options
@click.pass_context
def detect(ctx: click.Context, images: Path, refs: Optional[Path], out: Optional[Path], overwrite: bool,
           threshold: Optional[float], map_size: Optional[int], heatmaps: bool, maps: bool, output_format: str,
           quiet: bool, **kwargs: Any) -> None:
    """Score every image under IMAGES (a folder, searched recursively, or one file).

    Without --refs the run is zero-shot; with --refs it is few-shot, using the
    good images as a memory bank. Scores are in [0, 1]; higher is more anomalous.

    \b
      fade detect ./images --class screw --out run1
      fade detect ./images --refs ./good --class screw --threshold 0.5 --format jsonl
    """
    from fade_cli.io.images import discover_images
    from fade_cli.io.outputs import RunOutput, refuse_existing_results

    options = pop_engine_options(kwargs)
    config = engine_config_from_options(options)
    cls_prompts, seg_prompts = prompt_sets_from_options(options)
    files = discover_images(images, exclude=out)
    if not files:
        raise InputError(f"no image files under {images}")
    ref_files = discover_images(refs) if refs is not None else []
    if refs is not None and not ref_files:
        raise InputError(f"no image files under {refs}")
    if out is not None and not overwrite:
        refuse_existing_results(out)

    printer = RowPrinter(output_format, threshold is not None)
    console = stderr_console()
    engine = _build_engine(config, cls_prompts, seg_prompts, ref_files, console, quiet)
    output = RunOutput(out, overwrite=overwrite, map_size=map_size, save_maps=maps, save_heatmaps=heatmaps) if out else None
    summary_rows = []
    try:
        with progress_bar(console, quiet, total=len(files), description="Scoring") as advance:
            def on_row(row):
                summary_rows.append(row)
                if row.error:
                    console.print(f"[yellow]warning:[/] {row.error}", highlight=False)
                printer.row(row)
                advance()

            _run(engine, files, output, threshold, on_row)
    except KeyboardInterrupt:
        _finish(output)
        console.print(f"Interrupted after {len(summary_rows)} of {len(files)} images; their results are saved.")
        ctx.exit(130)
    except BaseException:
        _finish(output)
        raise
    _finish(output)
    printer.finish(summary_rows)
    if all(row.error for row in summary_rows):
        raise InputError("no image could be read")
    ctx.exit(NG if any(row.verdict == "NG" for row in summary_rows) else OK)


def _build_engine(config, cls_prompts, seg_prompts, ref_files, console, quiet):
    from fade_cli.engine import FadeEngine
    from fade_cli.runner import load_references

    with console.status("Loading model and encoding prompts...") if not quiet and console.is_terminal else contextlib.nullcontext():
        engine = _guard(lambda: FadeEngine.from_config(config, cls_prompts, seg_prompts))
    if ref_files:
        with progress_bar(console, quiet, total=None, description=f"Encoding {len(ref_files)} reference(s)"):
            _guard(lambda: load_references(engine, ref_files, config.batch_size))
    return engine


def _run(engine, files, output, threshold, on_row) -> None:
    from fade_cli.runner import run_detection

    _guard(lambda: run_detection(engine, files, output, threshold, on_row))


def _guard(action):
    """Turn torch's memory and runtime failures into a FadeError with exit code 3."""
    try:
        return action()
    except FadeError:
        raise
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            raise FadeError("out of memory; try --batch-size 1, fewer --scales or --device cpu") from exc
        raise FadeError(f"the engine failed: {exc}") from exc


def _finish(output) -> None:
    if output is not None:
        output.finish()


