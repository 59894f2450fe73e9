"""Errors that reach the user as one clear message and a documented exit code.

The CLI maps each class to an exit code (see ``fade_cli.cli.exit_codes``); the
library raises them so that programs calling the engine get the same messages.
"""
from __future__ import annotations


class FadeError(Exception):
    """Base class: the message is meant for the person running fade."""

    exit_code = 3


class InputError(FadeError):
    """Bad input from the user: a missing folder, a malformed prompts file, a bad config."""

    exit_code = 2


class ModelError(FadeError):
    """The model cannot be built or its weights cannot be found."""

    exit_code = 3


class ImageError(FadeError):
    """One image cannot be read; the run reports it and goes on."""

    exit_code = 2


class FadeWarning(UserWarning):
    """Something the user should know that does not stop the run (the CLI prints it as ``warning: ...``)."""
