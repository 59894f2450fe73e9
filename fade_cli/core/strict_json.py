"""The one way fade reads and writes JSON: strict, and bounded when the text comes from a file.

Writing: :func:`dumps` never writes ``NaN`` or ``Infinity`` (which strict JSON readers,
``jq`` and most databases reject); a non-finite number reaching it is a bug upstream and
raises ``ValueError``.

Reading: every file fade parses is untrusted input, whatever wrote it. :func:`loads`
refuses ``NaN``/``Infinity`` and numbers that overflow to them, integers with more than
``MAX_INT_DIGITS`` digits and nesting deeper than ``MAX_DEPTH``, each as an
:class:`~fade_cli.core.errors.InputError` naming the file. No torch, no click: cheap to import.
"""
from __future__ import annotations

import json
import math
from typing import Any, Union

from fade_cli.core.errors import InputError

# fade's own files nest a handful of levels; anything deeper is not one of them.
MAX_DEPTH = 32
# Longer integers are refused while parsing (converting them costs quadratic time); shorter ones reach the
# field checks, which bound each value and name the field.
MAX_INT_DIGITS = 1000


class _Refused(ValueError):
    """A value the parser hooks refuse; turned into an InputError naming the file."""


def dumps(value: Any, **options: Any) -> str:
    """``json.dumps`` that refuses non-finite floats; ``options`` as for ``json.dumps``."""
    options.setdefault("ensure_ascii", False)
    return json.dumps(value, allow_nan=False, **options)


def loads(text: Union[str, bytes], source: str, what: str = "JSON") -> Any:
    """Parse ``text`` read from ``source`` (a file name, for messages), within fade's limits."""
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_int=_bounded_int, parse_float=_finite_float)
    except _Refused as exc:
        raise InputError(f"{source}: {exc}") from None
    except RecursionError:
        raise InputError(f"{source}: {what} nested too deeply (more than {MAX_DEPTH} levels)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{source} is not valid {what}: {exc}") from exc
    if _depth(data) > MAX_DEPTH:
        raise InputError(f"{source}: {what} nested too deeply (more than {MAX_DEPTH} levels)")
    return data


def _refuse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a number fade accepts (only finite numbers)")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"integer with {len(text.lstrip('-'))} digits is too large ({text[:12]}...)")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:24]} is out of range (it overflows to infinity)")
    return value


def _depth(data: Any) -> int:
    """How deeply ``data`` nests lists and objects, without recursion (a hostile file may nest thousands deep)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, dict)):
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH:
                return depth
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return deepest
