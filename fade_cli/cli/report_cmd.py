"""`fade report`: the offline HTML page of a run of `fade detect`, `fade watch` or `fade eval`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click
from rich.console import Console

from fade_cli.cli.help_sections import sectioned
from fade_cli.cli.options import FiniteFloat

REPORT_EXIT_CODES_HELP = """\b
Exit codes:
  0    report written
  2    RUN_DIR holds no run, or a malformed results file; --out exists (without --overwrite) or is being
       written by another fade run
  3    the report could not be written (disk full, permissions)"""


@click.command(epilog=REPORT_EXIT_CODES_HELP, **sectioned(
    Everyday=("out", "overwrite", "images_root", "threshold"), Outputs=("quiet",)))
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="The HTML file to write [default: RUN_DIR/report.html]; thumbnails stay in RUN_DIR/thumbnails/.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing --out file (RUN_DIR/report.html, the run's own page, is always replaced).")
@click.option("--images", "images_root", type=click.Path(exists=True, path_type=Path),
              help="Where a detect or watch run's images are (the IMAGES it was given): the detail view shows them "
                   "at full resolution, and missing thumbnails are made from them.")
@click.option("--threshold", type=FiniteFloat(), help="A what-if threshold for the explorer to start at [default: the run's own verdicts, none if it made none].")
@click.option("-q", "--quiet", is_flag=True, help="Hide the progress bar only: rows, warnings and errors still print.")
def report(run_dir: Path, out: Optional[Path], overwrite: bool, images_root: Optional[Path],
           threshold: Optional[float], quiet: bool) -> None:
    """Write RUN_DIR/report.html: one self-contained page to open offline in a browser.

    A gallery of every image (highest score first, image or heatmap, filters),
    a threshold explorer (slider, histogram, OK/NG counts and, when the ground
    truth is known, TP/FP/TN/FN), a detail view (arrow keys, Esc) and, for
    `fade eval` runs, the metrics table, ROC/PR/PRO curves and worst images.
    Works on interrupted runs too. Zip RUN_DIR to send it on.

    \b
      fade report runs/cookie
      fade report runs/station --images ./incoming --out station.html
    """
    from fade_cli.cli.console import progress_bar, stderr_console
    from fade_cli.report.build import REPORT_FILE, write_report
    from fade_cli.report.runs import load_run
    from fade_cli.io.folder_lock import single_output_file
    from fade_cli.io.manifest import recording_writes

    console = stderr_console()
    page = out if out is not None else run_dir / REPORT_FILE
    run = load_run(run_dir, images_root)
    # The run's manifest lists the page and thumbnails too, so that a later --overwrite of the run removes them.
    with single_output_file(page, overwrite or out is None), recording_writes(run_dir, only_if_recorded=True), \
            progress_bar(console, quiet, total=len(run.rows), description="Thumbnails") as advance:
        path = write_report(run, page, threshold, advance)
    console.print(f"Report: {path}", markup=False, highlight=False, soft_wrap=True)


def report_after_run(run_dir: Path, console: Console, images_root: Optional[Path] = None) -> None:
    """The report at the end of `fade detect --out` / `fade eval --out`; its path on stderr.

    The run's own results are already saved: a report that cannot be written is a warning, not a failure.
    It shows the run's verdicts as decided (its threshold is in run.json), not a threshold given to the page.
    """
    from fade_cli.cli.console import print_warning
    from fade_cli.core.errors import FadeError
    from fade_cli.report.build import build_report

    try:
        path = build_report(run_dir, images_root=images_root)
    except (FadeError, OSError) as exc:
        print_warning(console, f"no report written: {exc}")
        return
    console.print(f"Report: {path}", markup=False, highlight=False, soft_wrap=True)
