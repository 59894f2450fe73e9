"""Exit codes that shell scripts on inspection stations rely on, and the rules that choose them."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:  # the CLI's entry point imports this module: nothing heavy at run time
    from fade_cli.io.outputs import ResultRow

OK = 0  # done, and no image judged NG
NG = 1  # done, at least one image judged NG (needs --threshold)
USAGE = 2  # usage or input error: bad option, missing folder, malformed file, output folder in use
FAILURE = 3  # failure while running: model cannot be loaded, out of memory, disk full
NOT_INSPECTED = 4  # done with a threshold, no image NG, but some image(s) could not be read or scored
INTERRUPTED = 130  # Ctrl-C (SIGINT); commands that score images save the finished results first
# stdout or stderr cannot be written: closed early (`| head`), disk full, I/O error; stopped like an
# interruption, finished results saved (141 = 128 + SIGPIPE, the code of a closed pipe)
PIPE_CLOSED = 141
TERMINATED = 143  # SIGTERM (a service manager, `docker stop`): stopped like Ctrl-C, finished results saved

EXIT_CODES_HELP = """\b
Exit codes:
  0    done, no image NG
  1    done, at least one image NG (with --threshold)
  2    usage or input error (also: --out in use by another run)
  3    failure while running (model, memory, disk)
  4    done, no image NG, but some image(s) not inspected (unreadable)
  130  interrupted (Ctrl-C); finished results are saved
  141  stdout/stderr cannot be written (closed early as by | head, disk
       full); finished results are saved
  143  stopped by SIGTERM; finished results are saved"""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so that every command stops on it as on Ctrl-C."""


def stop_exit_code(stop: BaseException) -> int:
    """The exit code of a run stopped early by ``stop`` (Ctrl-C, SIGTERM, or stdout/stderr not writable)."""
    if isinstance(stop, Terminated):
        return TERMINATED
    if isinstance(stop, BrokenPipeError):
        return PIPE_CLOSED
    return INTERRUPTED


def run_exit_code(rows: Iterable["ResultRow"], with_threshold: bool) -> int:
    """The exit code of a finished scoring run: NG wins over "not inspected" (a row without a score)."""
    rows = list(rows)
    if any(row.verdict == "NG" for row in rows):
        return NG
    if with_threshold and any(row.score is None for row in rows):
        return NOT_INSPECTED
    return OK
