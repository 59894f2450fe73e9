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

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from fade_cli.errors import InputError
from fade_cli.prompt_set import STATES, PromptSet

_SECTION = re.compile(r"^\[(normal|abnormal)\]$", re.IGNORECASE)
_ARTICLE = re.compile(r"\b([Aa]) ([A-Za-z][\w-]*)")
_SOUNDS_LIKE_CONSONANT = re.compile(r"^(uni|use|usu|uti|eu|one|once|ur)", re.IGNORECASE)
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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
    try:
        return TemplateSource(label=str(path), text=Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read template {path}: {exc}") from exc


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


def render(source: TemplateSource, variables: Mapping[str, Any]) -> str:
    """The template's text with ``variables``; Jinja2 errors become one-line :class:`InputError`."""
    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                               keep_trailing_newline=True, autoescape=False)
    env.filters.update(compose=compose, sized=sized, articles=fix_articles)
    try:
        return env.from_string(source.text).render(**variables)
    except jinja2.TemplateSyntaxError as exc:
        raise InputError(f"{source.label}:{exc.lineno}: {exc.message}") from exc
    except jinja2.UndefinedError as exc:
        raise InputError(f"{source.label}: {exc.message} (use --var name=value, or see docs/prompts.md for the "
                         "variables)") from exc
    except jinja2.TemplateError as exc:
        raise InputError(f"{source.label}: {exc}") from exc


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
