"""Composing sentences from the vocabulary with templates: what the vocabulary and template generators share."""
from __future__ import annotations

import hashlib
from typing import Iterable, Optional, Sequence

from fade_cli.prompting.prompt_set import PromptSet
from fade_cli.prompting.templates import TemplateSource, builtin_template, prompt_set_from_templates, user_variables
from fade_cli.prompting.vocabulary import load_vocabulary, resolve_families, template_context

DEFAULT_TEMPLATE = "compositional"
LOCAL_TEMPLATE = "local"


def composed_prompt_set(
    class_name: str,
    families: Iterable[str] = (),
    augment: bool = False,
    sources: Optional[Sequence[TemplateSource]] = None,
    user_vars: Iterable[str] = (),
) -> PromptSet:
    """Render ``sources`` (default: the built-in compositional template) with the vocabulary for ``class_name``.

    ``families`` overrides the families guessed from the class name; ``user_vars``
    are ``key=value`` strings. The set's meta records the resolved families, the
    vocabulary version and a digest of each template, so a file says what made it.
    """
    vocabulary = load_vocabulary()
    chosen = resolve_families(vocabulary, class_name, families)
    variables = {**template_context(vocabulary, class_name, chosen), "augment": augment}
    variables.update(user_variables(user_vars, variables))
    sources = list(sources) if sources else [builtin_template(DEFAULT_TEMPLATE)]
    composed = prompt_set_from_templates(sources, variables)
    meta = {
        "families": list(chosen),
        "vocabulary_version": vocabulary.version,
        "templates": [{"name": source.label, "sha256": _digest(source.text)} for source in sources],
    }
    return PromptSet(normal=composed.normal, abnormal=composed.abnormal, meta=meta)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
