"""The `vocabulary` prompt generator: fade's industrial vocabulary, composed template x state.

Registered like any third-party generator, through the entry point group
``fade.prompt_generators`` in setup.cfg.
"""
from __future__ import annotations

from fade_cli.prompting.prompt_set import PromptSet
from fade_cli.prompting import GeneratorOption, PromptGenerator
from fade_cli.prompting.composition import LOCAL_TEMPLATE, composed_prompt_set
from fade_cli.prompting.templates import builtin_template
from fade_cli.prompting.vocabulary import load_vocabulary

FAMILY_OPTION = GeneratorOption(
    "family", "Material / object family (repeatable) instead of the ones guessed from the class name.",
    multiple=True, choices=tuple(load_vocabulary().families), metavar="FAMILY")
AUGMENT_OPTION = GeneratorOption(
    "augment", "Add defect sentences with size and position words (a small scratch, a dent near the edge).",
    type=bool, default=False)


class VocabularyGenerator(PromptGenerator):
    name = "vocabulary"
    help = """Built-in industrial vocabulary: photo framings x normal / defect states (no model, instant).

    The class name picks material families (screw -> metal, pcb -> electronics,
    bottle -> glass, carpet -> textile, hazelnut -> food ...), whose defect words
    join the generic states; --family overrides the guess. `fade prompts
    generate object --local` gives the built-in segmentation set."""
    options = (
        FAMILY_OPTION,
        AUGMENT_OPTION,
        GeneratorOption("local", "Add descriptions of small regions (for anomaly maps), as the built-in "
                                 "segmentation set does.", type=bool, default=False),
    )

    def generate(self, class_name: str, *, family: tuple[str, ...], augment: bool, local: bool) -> PromptSet:
        extra = [builtin_template(LOCAL_TEMPLATE)] if local else []
        sources = [builtin_template("compositional"), *extra]
        return composed_prompt_set(class_name, families=family, augment=augment, sources=sources)
