"""The `fade` command line: a thin layer over the library.

Sub-commands are imported only when they run, so `fade --help` and
`fade --version` answer without importing torch.
"""
from __future__ import annotations

import importlib
import logging
import importlib.util
import os
import warnings
from typing import Any, Optional

import click

from fade_cli import __version__
from fade_cli.cli.exit_codes import EXIT_CODES_HELP, FAILURE, PIPE_CLOSED, Terminated, stop_exit_code
from fade_cli.cli.stopping import (
    OutputStreamFailed,
    flush_standard_streams,
    guard_standard_streams,
    sigterm_as_interrupt,
    silence_stdout,
)
from fade_cli.core.errors import FadeError, FadeWarning
from fade_cli.core.naming import settings_named_as_flags
from fade_cli.core.memory import MEMORY_HINT

# ctx.meta key of the command line as typed (a list: "fade", then the arguments).
COMMAND_LINE_KEY = "fade.command_line"

# name -> (module, attribute, one-line help shown by `fade --help`)
COMMANDS = {
    "detect": ("fade_cli.cli.detect_cmd", "detect", "Score images, write heatmaps and maps (zero- or few-shot)."),
    "prompts": ("fade_cli.cli.prompts_cmd", "prompts", "Generate and inspect prompt sets."),
    "eval": ("fade_cli.cli.eval_cmd", "eval_command", "Benchmark metrics on MVTec-AD, VisA or labelled folders."),
    "bank": ("fade_cli.cli.bank_cmd", "bank", "Build and inspect saved reference banks."),
    "models": ("fade_cli.cli.models_cmd", "models", "List, download and locate model weights."),
    "watch": ("fade_cli.cli.watch_cmd", "watch", "Process images as they arrive in a folder."),
    "report": ("fade_cli.cli.report_cmd", "report", "Write the offline HTML report of a run (gallery, threshold, curves)."),
    "serve": ("fade_cli.cli.serve_cmd", "serve", "Serve detection over HTTP, the model kept warm (needs the serve extra)."),
}


class ReportedError(click.ClickException):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class LazyGroup(click.Group):
    """A group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, (module, _, _) in COMMANDS.items() if importlib.util.find_spec(module) is not None]

    def make_context(self, info_name: Optional[str], args: list[str], parent: Optional[click.Context] = None,
                     **extra: Any) -> click.Context:
        """Keeps the command line as given (before parsing) in ``ctx.meta``: a run records it in run.json."""
        ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta[COMMAND_LINE_KEY] = ["fade", *args]
        return ctx

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        if name not in COMMANDS or name not in self.list_commands(ctx):
            return None
        module, attribute, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attribute)

    def invoke(self, ctx: click.Context):
        """Library errors become one message and their documented exit code, never a traceback."""
        try:
            with sigterm_as_interrupt(), settings_named_as_flags():
                return super().invoke(ctx)
        except FadeError as exc:
            raise ReportedError(str(exc), exc.exit_code) from exc
        except KeyboardInterrupt as exc:
            # Commands that score images catch Ctrl-C and SIGTERM themselves to save what is done; this is
            # the rest (model loading, light commands).
            click.echo("Stopped (SIGTERM)." if isinstance(exc, Terminated) else "Interrupted.", err=True)
            raise click.exceptions.Exit(stop_exit_code(exc)) from None
        except BrokenPipeError as exc:
            silence_stdout(exc)
            if isinstance(exc, OutputStreamFailed) and exc.stream == "stdout":
                click.echo(f"Stopped: {exc}.", err=True)
            raise click.exceptions.Exit(PIPE_CLOSED) from None
        except MemoryError as exc:
            raise ReportedError(f"out of memory; {MEMORY_HINT}", FAILURE) from exc

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fade")
def cli() -> None:
    """fade: zero-shot and few-shot visual anomaly detection (FADE).

    Point it at a folder of product photos, optionally with a few known-good
    photos (--refs), and get per-image anomaly scores, OK/NG verdicts and
    heatmaps, with no training.

    \b
      fade detect ./images --class screw --out run1             # zero-shot
      fade detect ./images --refs ./good --class screw --out run1  # few-shot
    """


def main() -> None:
    """Console entry point."""
    _keep_library_logs_off_the_terminal()
    warnings.showwarning = _show_warning
    guard_standard_streams()
    try:
        cli()
        code = 0
    except OutputStreamFailed:  # outside any command: help, usage errors, click's own messages
        code = PIPE_CLOSED
    except SystemExit as exc:
        code = exc.code
    # Flushed here, not by Python after the exit, whose failure would be a traceback and exit 120.
    raise SystemExit(code if flush_standard_streams() else PIPE_CLOSED)


# Libraries that give their loggers a stderr handler of their own when imported, at the level these say.
_LIBRARY_VERBOSITY_ENV = ("HF_HUB_VERBOSITY", "TRANSFORMERS_VERBOSITY")


def _keep_library_logs_off_the_terminal() -> None:
    """open_clip, huggingface_hub and urllib3 log download retries and failures, which fade reports itself.

    Scoped, not ``logging.disable``: records that reach the root logger go to a null handler only while
    nobody has configured logging (it keeps Python's last-resort handler and open_clip's ``basicConfig``
    off stderr); huggingface_hub and transformers start at CRITICAL unless their variables say otherwise.
    A program that runs the CLI in-process keeps its own handlers and levels.
    """
    if not logging.root.handlers:
        logging.root.addHandler(logging.NullHandler())
    for variable in _LIBRARY_VERBOSITY_ENV:
        os.environ.setdefault(variable, "critical")


_python_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """fade's own warnings as one ``warning:`` line, like the CLI's other warnings; others as Python shows them."""
    if issubclass(category, FadeWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)
