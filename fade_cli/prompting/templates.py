"""Jinja2 prompt templates: rendering, helpers for English, and reading the rendered sections.

A template renders plain lines under two section headers::

    [normal]
    a photo of the flawless {classname}.
    [abnormal]
    {% for defect in defects %}
    a photo of the {classname} with {{ defect }}.
    {% endfor %}

Variables come from :func:`fade_cli.prompting.vocabulary.template_context`
plus the user's ``--var key=value``. Undefined variables are errors (Jinja2
``StrictUndefined``), so a typo never silently produces an empty sentence.
Templates run in Jinja2's sandbox. The shipped templates live in ``prompts/``.
"""
from __future__ import annotations

import contextlib
import re
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from fade_cli.core.errors import InputError
from fade_cli.io.files import read_text_file
from fade_cli.prompting.prompt_set import STATES, PromptSet

_SECTION = re.compile(r"^\[(normal|abnormal)\]$", re.IGNORECASE)
_ARTICLE = re.compile(r"\b([Aa]) ([A-Za-z][\w-]*)")
_SOUNDS_LIKE_CONSONANT = re.compile(r"^(uni|use|usu|uti|eu|one|once|ur)", re.IGNORECASE)
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Bounds of one template's rendering; the shipped templates render a few thousand characters in milliseconds.
MAX_OUTPUT_CHARS = 4_000_000
MAX_RENDER_SECONDS = 10
MAX_EXPONENT = 1000


@dataclass(frozen=True)
class TemplateSource:
    """A template's text and the label its errors carry (a file path, or ``built-in NAME``)."""

    label: str
    text: str


def builtin_template(name: str) -> TemplateSource:
    """A template shipped in ``prompts/`` (``compositional`` -> ``prompts/compositional.j2``)."""
    resource = resources.files("fade_cli.prompts").joinpath(f"{name}.j2")
    return TemplateSource(label=f"built-in template {name}", text=resource.read_text(encoding="utf-8"))


def template_file(path: Path) -> TemplateSource:
    return TemplateSource(label=str(path), text=read_text_file(path, "template"))


def fix_articles(text: str) -> str:
    """``a intact part`` -> ``an intact part``: a before a vowel sound becomes an (a rough English rule)."""

    def choose(match: re.Match) -> str:
        article, word = match.groups()
        vowel = word[0].lower() in "aeiou" and not _SOUNDS_LIKE_CONSONANT.match(word)
        return f"{article}n {word}" if vowel else match.group(0)

    return _ARTICLE.sub(choose, text)


def compose(framing: str, state: str) -> str:
    """Put a state into a framing's ``{}``: ``a photo of the {}.`` + ``intact {classname}``."""
    return fix_articles(framing.replace("{}", state, 1))


def sized(defect: str, size: str) -> str:
    """``a scratch`` + ``small`` -> ``a small scratch``; a mass noun: ``rust`` -> ``a small patch of rust``."""
    article, _, noun = defect.partition(" ")
    if article.lower() in ("a", "an") and noun:
        return fix_articles(f"a {size} {noun}")
    return fix_articles(f"a {size} patch of {defect}")


def parse_var(text: str) -> tuple[str, str]:
    """``key=value`` from ``--var``; the key must be a template variable name."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not _VAR_NAME.match(key):
        raise InputError(f"--var {text!r}: expected key=value with a name such as part_colour=red")
    return key, value


def user_variables(pairs: Iterable[str], context: Mapping[str, Any]) -> dict[str, str]:
    """``--var`` values as a dict; a key may not hide a vocabulary variable."""
    variables = dict(parse_var(pair) for pair in pairs)
    hidden = sorted(set(variables) & set(context))
    if hidden:
        raise InputError(f"--var {', '.join(hidden)}: already a vocabulary variable; pick another name")
    return variables


class _BoundedEnvironment(SandboxedEnvironment):
    """Jinja2's sandbox, with ``*`` and ``**`` bounded: ``"a" * 10**9`` or ``9**9**9`` would exhaust memory or time
    before the first line is rendered."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > MAX_EXPONENT:
            raise _TemplateLimit(f"an exponent of {right} is larger than {MAX_EXPONENT}")
        if operator == "*" and _repeat_length(left, right) > MAX_OUTPUT_CHARS:
            raise _TemplateLimit(f"a repetition longer than {MAX_OUTPUT_CHARS} items")
        return super().call_binop(context, operator, left, right)


class _TemplateLimit(Exception):
    """Rendering went past a bound (size or time)."""


def _repeat_length(left: Any, right: Any) -> int:
    for sequence, count in ((left, right), (right, left)):
        if isinstance(sequence, (str, list, tuple)) and isinstance(count, int):
            return len(sequence) * count
    return 0


def render(source: TemplateSource, variables: Mapping[str, Any]) -> str:
    """The template's text with ``variables``; every template error becomes one-line :class:`InputError` (exit 2).

    Rendering is bounded: at most ``MAX_OUTPUT_CHARS`` characters and ``MAX_RENDER_SECONDS`` seconds
    (nested loops over large ranges would otherwise run for days).
    """
    env = _BoundedEnvironment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True, autoescape=False)
    env.filters.update(compose=compose, sized=sized, articles=fix_articles)
    try:
        template = env.from_string(source.text)
        with _deadline(MAX_RENDER_SECONDS):
            return _bounded_output(template.generate(**variables))
    except jinja2.TemplateSyntaxError as exc:
        raise InputError(f"{source.label}:{exc.lineno}: {exc.message}") from exc
    except jinja2.UndefinedError as exc:
        raise InputError(f"{source.label}: {exc.message} (use --var name=value, or see docs/prompts.md for the "
                         "variables)") from exc
    except _TemplateLimit as exc:
        raise InputError(f"{source.label}: rendering stopped: {exc}; fade renders templates up to "
                         f"{MAX_OUTPUT_CHARS} characters in {MAX_RENDER_SECONDS} seconds") from exc
    except jinja2.TemplateError as exc:
        raise InputError(f"{source.label}: {exc}") from exc
    except RecursionError as exc:
        raise InputError(f"{source.label}{_template_line(exc)}: recursion too deep (a macro that calls "
                         "itself without end?)") from exc
    except Exception as exc:  # noqa: BLE001 - any error of the template's own code is the user's input error
        reason = "include, import and extends need files, which inline templates cannot use" \
            if "no loader" in str(exc) else f"{type(exc).__name__}: {exc}"
        raise InputError(f"{source.label}{_template_line(exc)}: {reason}") from exc


def _bounded_output(chunks: Iterable[str]) -> str:
    parts, total = [], 0
    for chunk in chunks:
        total += len(chunk)
        if total > MAX_OUTPUT_CHARS:
            raise _TemplateLimit(f"the output is longer than {MAX_OUTPUT_CHARS} characters")
        parts.append(chunk)
    return "".join(parts)


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Stop the code running in this thread after ``seconds``, signals or not (so also outside the main thread).

    A trace function, for this thread only, checks the clock on every line of the compiled
    template's code; a loop that renders nothing is stopped as surely as one that renders a lot.
    """
    end = time.monotonic() + seconds

    def check(frame, event, arg):
        if time.monotonic() > end:
            raise _TemplateLimit(f"it ran longer than {seconds:g} seconds")
        return check

    previous = sys.gettrace()
    sys.settrace(check)
    try:
        yield
    finally:
        sys.settrace(previous)


def _template_line(exc: BaseException) -> str:
    """``:N`` for the template line the error was raised on (Jinja2 maps its frames to template lines)."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return f":{line}" if line is not None else ""


def sections(source: TemplateSource, rendered: str) -> dict[str, list[str]]:
    """The rendered lines under ``[normal]`` and ``[abnormal]``; blank lines dropped."""
    found: dict[str, list[str]] = {state: [] for state in STATES}
    current = None
    for number, line in enumerate(rendered.splitlines(), start=1):
        text = line.strip()
        header = _SECTION.match(text)
        if header:
            current = header.group(1).lower()
        elif text and current is None:
            raise InputError(f"{source.label}: rendered line {number} is outside a [normal] or [abnormal] section: "
                             f"{text!r}")
        elif text:
            found[current].append(text)
    return found


def prompt_set_from_templates(sources: Iterable[TemplateSource], variables: Mapping[str, Any]) -> PromptSet:
    """Render every template and concatenate their sections, in order."""
    sources = list(sources)
    collected: dict[str, list[str]] = {state: [] for state in STATES}
    for source in sources:
        for state, lines in sections(source, render(source, variables)).items():
            collected[state].extend(lines)
    for state in STATES:
        if not collected[state]:
            labels = ", ".join(source.label for source in sources)
            raise InputError(f"{labels}: no line in a [{state}] section")
    return PromptSet(normal=tuple(collected["normal"]), abnormal=tuple(collected["abnormal"]))
