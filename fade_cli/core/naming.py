"""How messages name a setting: as the library calls it (``vision_weight``) or, under the command line, by its
option (``--vision-weight``). The library raises the same errors either way; only the names differ."""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

# The settings whose command-line option is not --NAME-WITH-DASHES.
OPTIONS_NOT_NAMED_AFTER_THEM = {"class_name": "--class"}

_NAMING: contextvars.ContextVar[str] = contextvars.ContextVar("fade_setting_naming", default="setting")


def flag_of(name: str) -> str:
    """The command-line option of the setting ``name``."""
    return OPTIONS_NOT_NAMED_AFTER_THEM.get(name, "--" + name.replace("_", "-"))


def named(name: str) -> str:
    """``name`` in the library, its option (:func:`flag_of`) within :func:`settings_named_as_flags`."""
    return flag_of(name) if _NAMING.get() == "flag" else name


@contextlib.contextmanager
def settings_named_as_flags() -> Iterator[None]:
    """Within it, messages name settings by their command-line options (the CLI runs its commands so)."""
    token = _NAMING.set("flag")
    try:
        yield
    finally:
        _NAMING.reset(token)
