"""Cleaning and checking generated sentences: one place, used for every generator.

Generators may return sloppy text (a model's output, a template with stray
blank lines); what leaves fade is always normalised, de-duplicated and has
both a normal and an abnormal sentence.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

from fade_cli.core.errors import InputError
from fade_cli.prompting.prompt_set import STATES, PromptSet

_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([.,;:!?])")


def normalise_sentence(text: str) -> str:
    """Collapse runs of whitespace (newlines, tabs) to one space, trim, and drop spaces before punctuation."""
    return _SPACE_BEFORE_PUNCTUATION.sub(r"\1", _SPACES.sub(" ", text)).strip()


def duplicate_key(sentence: str) -> str:
    """Sentences with the same key say the same thing to the text encoder (CLIP's tokenizer lower-cases)."""
    return normalise_sentence(sentence).casefold()


def clean_sentences(sentences: Iterable[str]) -> tuple[str, ...]:
    """Normalise every sentence, drop empty ones and later duplicates; the order of first occurrence is kept."""
    kept: dict[str, str] = {}
    for sentence in sentences:
        text = normalise_sentence(sentence)
        if text:
            kept.setdefault(duplicate_key(text), text)
    return tuple(kept.values())


def duplicate_groups(sentences: Iterable[str]) -> list[tuple[str, int]]:
    """(first spelling, count) for every sentence that occurs more than once, in order of first occurrence."""
    counts: dict[str, list[Any]] = {}
    for sentence in sentences:
        key = duplicate_key(sentence)
        if key:
            counts.setdefault(key, [normalise_sentence(sentence), 0])[1] += 1
    return [(text, count) for text, count in counts.values() if count > 1]


def cleaned_prompt_set(prompt_set: PromptSet, source: str) -> PromptSet:
    """The set with both lists cleaned; an error naming ``source`` when a list ends up empty."""
    lists = {state: clean_sentences(getattr(prompt_set, state)) for state in STATES}
    for state, sentences in lists.items():
        if not sentences:
            raise InputError(f"{source} produced no {state} prompt")
    return PromptSet(normal=lists["normal"], abnormal=lists["abnormal"], meta=prompt_set.meta)
