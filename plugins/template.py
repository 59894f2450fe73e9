"""The `template` prompt generator: your own Jinja2 templates over fade's vocabulary.

Registered like any third-party generator, through the entry point group
``fade.prompt_generators`` in setup.cfg.
"""
from __future__ import annotations

from pathlib import Path

from fade_cli.prompting.prompt_set import PromptSet
from fade_cli.prompting import GeneratorOption, PromptGenerator
from fade_cli.prompting.composition import composed_prompt_set
from fade_cli.prompting.templates import template_file
from fade_cli.plugins.vocabulary import AUGMENT_OPTION, FAMILY_OPTION


class TemplateGenerator(PromptGenerator):
    name = "template"
    help = """Jinja2 templates (--template FILE, repeatable) rendered with the class name and the vocabulary.

    A template writes one sentence per line under [normal] and [abnormal]
    headers. Variables: class_name, placeholder ("{classname}"), framings,
    normal_states, abnormal_states, defects, sizes, positions, families,
    augment, and each --var key=value. Without --template the built-in
    compositional template is used (the same sentences as `vocabulary`)."""
    options = (
        GeneratorOption("template", "Jinja2 template file (repeatable; outputs are concatenated).", type=Path,
                        multiple=True, metavar="FILE"),
        GeneratorOption("var", "Template variable as key=value (repeatable).", multiple=True, metavar="KEY=VALUE"),
        FAMILY_OPTION,
        AUGMENT_OPTION,
    )

    def generate(self, class_name: str, *, template: tuple[Path, ...], var: tuple[str, ...],
                 family: tuple[str, ...], augment: bool) -> PromptSet:
        sources = [template_file(path) for path in template]
        return composed_prompt_set(class_name, families=family, augment=augment, sources=sources, user_vars=var)
