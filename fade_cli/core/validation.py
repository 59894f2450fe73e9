"""Checking values read from untrusted places: bank headers, prompt files, model configs, caches, options.

:class:`Fields` reads one JSON object field by field; each wrong value is an
:class:`~fade_cli.core.errors.InputError` that names the file and the field, e.g.
``bank.fadebank: field config.cls_size must be an integer from 16 to 16384, not "x"``.
No torch, no click: cheap to import.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional

from fade_cli.core.errors import InputError

_MISSING = object()


def is_finite_number(value: Any) -> bool:
    """A real int or float (not a bool) that is neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_finite(value: Optional[float], what: str) -> None:
    """Refuse NaN and infinities (``None`` passes: "not set"); ``what`` names the option or field."""
    if value is not None and not is_finite_number(value):
        raise InputError(f"{what} must be a finite number, not {value!r}")


def shown(value: Any, limit: int = 40) -> str:
    """A value as a message quotes it, cut short: a hostile file may hold megabytes in one field."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Fields:
    """The fields of one JSON object from ``source``; ``prefix`` is the object's own path in the file."""

    def __init__(self, data: Any, source: str, prefix: str = ""):
        self.source = source
        self.prefix = prefix
        if not isinstance(data, Mapping):
            raise InputError(f"{source}: {self._where(None)} must be a JSON object, not {_kind(data)}")
        self.data = data

    def _where(self, name: Optional[str]) -> str:
        path = ".".join(part for part in (self.prefix, name) if part)
        return f"field {path}" if path else "the content"

    def fail(self, name: str, expected: str, value: Any) -> InputError:
        return InputError(f"{self.source}: {self._where(name)} must be {expected}, not {shown(value)}")

    def _get(self, name: str, default: Any) -> Any:
        value = self.data.get(name, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise InputError(f"{self.source}: {self._where(name)} is missing")
            return default
        return value

    def unknown(self, known: Iterable[str]) -> None:
        """Refuse fields other than ``known`` (a misspelt setting must not be silently dropped)."""
        extra = sorted(set(self.data) - set(known))
        if extra:
            raise InputError(f"{self.source}: unknown field(s) {', '.join(shown(name) for name in extra)}"
                             + (f" in {self.prefix}" if self.prefix else ""))

    def object(self, name: str, default: Any = _MISSING) -> "Fields":
        return Fields(self._get(name, default), self.source, ".".join(p for p in (self.prefix, name) if p))

    def integer(self, name: str, minimum: int, maximum: int, default: Any = _MISSING, optional: bool = False) -> Any:
        value = self._get(name, default)
        if value is None and optional:
            return None
        return self.check_integer(name, value, minimum, maximum)

    def check_integer(self, name: str, value: Any, minimum: int, maximum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise self.fail(name, f"an integer from {minimum} to {maximum}", value)
        return value

    def number(self, name: str, minimum: float = -math.inf, maximum: float = math.inf, default: Any = _MISSING,
               optional: bool = False) -> Any:
        value = self._get(name, default)
        if value is None and optional:
            return None
        if not is_finite_number(value) or not minimum <= value <= maximum:
            raise self.fail(name, _number_range(minimum, maximum), value)
        return float(value)

    def text(self, name: str, default: Any = _MISSING, optional: bool = False,
             choices: Optional[Iterable[str]] = None) -> Any:
        value = self._get(name, default)
        if value is None and optional:
            return None
        allowed = tuple(choices) if choices is not None else None
        if not isinstance(value, str) or (allowed is not None and value not in allowed):
            raise self.fail(name, f"one of {', '.join(allowed)}" if allowed else "a string", value)
        return value

    def flag(self, name: str, default: Any = _MISSING, optional: bool = False) -> Any:
        value = self._get(name, default)
        if value is None and optional:
            return None
        if not isinstance(value, bool):
            raise self.fail(name, "true or false", value)
        return value

    def items(self, name: str, default: Any = _MISSING, min_length: int = 0) -> list:
        value = self._get(name, default)
        if not isinstance(value, list) or len(value) < min_length:
            raise self.fail(name, f"a list{f' of at least {min_length}' if min_length else ''}", value)
        return value


def _number_range(minimum: float, maximum: float) -> str:
    if math.isinf(minimum) and math.isinf(maximum):
        return "a finite number"
    if math.isinf(maximum):
        return f"a finite number of at least {minimum:g}"
    if math.isinf(minimum):
        return f"a finite number of at most {maximum:g}"
    return f"a number from {minimum:g} to {maximum:g}"


def _kind(value: Any) -> str:
    names = {str: "a string", list: "a list", int: "a number", float: "a number", bool: "true/false"}
    return names.get(type(value), "null" if value is None else type(value).__name__)
