"""Turning a language model's free text into clean prompt sentences.

Models number their lists, add a preamble ("Sure! Here are ..."), quote
sentences, run several sentences on one line and stop mid-sentence when the
token budget ends. Everything here is pure string work, tested on fixed model
outputs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from fade_cli.prompting.prompt_set import PLACEHOLDER
from fade_cli.prompting.cleaning import normalise_sentence

_LIST_MARKER = re.compile(r"^\s*(?:[-*•·]+|\(?\d{1,3}\s*[.):])\s*")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=\S)")
_PREAMBLE = re.compile(r"^(here (are|is)|sure\b|certainly\b|of course\b|note\b|okay\b|ok\b)", re.IGNORECASE)
_QUOTES = "\"'“”‘’`"
_TERMINAL = ".!?"


@dataclass(frozen=True)
class SentenceFilter:
    """What makes a sentence acceptable.

    ``keep_classname``: mentions of the class become ``{classname}`` (the engine
    fills in the class or ``object`` per stage); when False, a sentence that
    names the class is dropped, for prompt sets meant to stay class-free.
    """

    class_name: str
    keep_classname: bool = True
    min_words: int = 3
    max_words: int = 25

    def class_pattern(self) -> re.Pattern:
        words = self.class_name.replace("_", " ").strip()
        return re.compile(r"\b" + r"\s+".join(map(re.escape, words.split())) + r"(?:e?s)?\b", re.IGNORECASE)


def candidate_sentences(raw: str, truncated: bool = False) -> list[str]:
    """Every sentence in the model's text: list markers, quotes and preambles removed.

    ``truncated``: the model ran out of tokens, so an unfinished last line is dropped.
    """
    lines = raw.replace("\r", "").split("\n")
    if truncated and lines and not _ends_complete(lines[-1]):
        lines = lines[:-1]
    sentences = []
    for line in lines:
        body = _LIST_MARKER.sub("", line).strip().strip(_QUOTES).strip()
        if not body or body.endswith(":") or _PREAMBLE.match(body):
            continue
        sentences.extend(part.strip().strip(_QUOTES).strip() for part in _SENTENCE_BREAK.split(body))
    return [normalise_sentence(s) for s in sentences if s]


def accept(sentence: str, rules: SentenceFilter) -> Optional[str]:
    """The sentence as it goes into the set (class mentions handled, full stop added), or None to drop it."""
    if not any(char.isalpha() for char in sentence):
        return None
    if not rules.min_words <= len(sentence.split()) <= rules.max_words:
        return None
    pattern = rules.class_pattern()
    if pattern.search(sentence):
        if not rules.keep_classname:
            return None
        sentence = pattern.sub(PLACEHOLDER, sentence)
    if sentence[-1] not in _TERMINAL:
        sentence += "."
    return sentence


def parse_model_output(raw: str, rules: SentenceFilter, truncated: bool = False) -> list[str]:
    """The acceptable sentences of one model answer, in order (duplicates are removed later, across rounds)."""
    kept = (accept(sentence, rules) for sentence in candidate_sentences(raw, truncated))
    return [sentence for sentence in kept if sentence is not None]


def _ends_complete(line: str) -> bool:
    stripped = line.rstrip().rstrip(_QUOTES)
    return not stripped or stripped[-1] in _TERMINAL
