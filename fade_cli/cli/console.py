"""What the CLI prints: progress on stderr, results on stdout (a table, JSON lines or CSV)."""
from __future__ import annotations

import contextlib
import errno
import csv
import functools
import sys
from typing import Callable, Iterator, Optional

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.progress import TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from fade_cli.cli.stopping import OutputStreamFailed
from fade_cli.io.images import escape_undecodable
from fade_cli.io.outputs import FIELDS, ResultRow, csv_cells, json_line


class _Console(Console):
    """rich's Console, except that a closed pipe is not ``SystemExit(1)`` (exit 1 means NG).

    A closed stdout raises BrokenPipeError, which commands handle as an interruption
    (exit 141); so does stdout or stderr that cannot be written, when the streams are
    guarded (:class:`~fade_cli.cli.stopping.OutputStreamFailed`). An unguarded closed stderr only
    silences the messages.
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True
        failure = sys.exc_info()[1]
        if isinstance(failure, OutputStreamFailed):
            raise failure
        if not self.stderr:
            raise BrokenPipeError(errno.EPIPE, "stdout was closed")


def stderr_console() -> Console:
    return _Console(stderr=True)


def stdout_console() -> Console:
    """Where tables for people go."""
    return _Console()


def shows_progress(console: Console, quiet: bool) -> bool:
    """Progress bars and spinners are for a person at a terminal: not with --quiet, not into a log file."""
    return not quiet and console.is_terminal


@contextlib.contextmanager
def progress_bar(console: Console, quiet: bool, total: Optional[int], description: str) -> Iterator[Callable[[], None]]:
    """A rich progress bar on stderr; silent with --quiet or when stderr is not a terminal.

    Yields a function that advances the bar by one.
    """
    with progress_bars(console, quiet, [(description, total)]) as [advance]:
        yield advance


@contextlib.contextmanager
def progress_bars(
    console: Console, quiet: bool, tasks: list[tuple[str, Optional[int]]]
) -> Iterator[list[Callable[[], None]]]:
    """Several bars shown together (the passes of a run), one per (description, total); yields their advancers."""
    if not shows_progress(console, quiet):
        yield [lambda: None for _ in tasks]
        return
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    transient = any(total is None for _, total in tasks)
    with Progress(*columns, console=console, transient=transient) as progress:
        ids = [progress.add_task(description, total=total) for description, total in tasks]
        yield [functools.partial(progress.advance, task) for task in ids]


def print_warning(console: Console, message: str) -> None:
    """A 'warning:' line on stderr; file names in it are shown as they are, never read as markup."""
    console.print(Text.assemble(("warning: ", "yellow"), escape_undecodable(message)), highlight=False, soft_wrap=True)


def status_line(console: Console, quiet: bool, text: str) -> contextlib.AbstractContextManager:
    """A spinner with ``text`` on stderr while a slow step runs; nothing when quiet or not a terminal."""
    return console.status(text) if shows_progress(console, quiet) else contextlib.nullcontext()


def download_announcer(console: Console) -> Callable[[str], None]:
    """Says on stderr what is downloaded, even with --quiet: a long download must not look like a hang."""
    return lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True)


def _fmt(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.4f}"


class RowPrinter:
    """Streams rows to stdout as JSON lines or CSV, or prints one table at the end."""

    def __init__(self, output_format: str, with_verdict: bool):
        self.output_format = output_format
        self.with_verdict = with_verdict
        self._csv: Optional[csv.DictWriter] = None

    def row(self, row: ResultRow) -> None:
        if self.output_format == "jsonl":
            click.echo(json_line(row))
        elif self.output_format == "csv":
            if self._csv is None:
                self._csv = csv.DictWriter(sys.stdout, fieldnames=FIELDS, lineterminator="\n")
                self._csv.writeheader()
            self._csv.writerow(csv_cells(row))
            sys.stdout.flush()

    def finish(self, rows: list[ResultRow]) -> None:
        if self.output_format != "table":
            return
        table = Table(title=f"{len(rows)} image(s)")
        table.add_column("image", overflow="fold")
        table.add_column("score", justify="right")
        table.add_column("language", justify="right")
        table.add_column("vision", justify="right")
        if self.with_verdict:
            table.add_column("verdict")
        for row in rows:
            cells = [escape(csv_cells(row)["path"]), _fmt(row.score), _fmt(row.language_score), _fmt(row.vision_score)]
            if self.with_verdict:
                cells.append({"NG": "[bold red]NG[/]", "OK": "[green]OK[/]"}.get(row.verdict or "", ""))
            if row.error:
                cells[1] = "[red]error[/]"
            table.add_row(*cells)
        stdout_console().print(table)
