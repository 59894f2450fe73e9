"""Pluggable prompt generation: turn a class name into a prompt set.

* :mod:`~fade_cli.prompting.interface`: the generator contract (:class:`PromptGenerator`,
  :class:`GeneratorOption`) that every plugin, built-in or not, implements;
* :mod:`~fade_cli.prompting.registry`: discovery through the entry point group
  ``fade.prompt_generators`` and a local plugins folder;
* :mod:`~fade_cli.prompting.generation`: running a generator with checked options,
  cleaning its output and stamping the ``meta`` block;
* :mod:`~fade_cli.prompting.cleaning`, :mod:`~fade_cli.prompting.progress`;
* :mod:`~fade_cli.prompting.vocabulary`, :mod:`~fade_cli.prompting.templates`,
  :mod:`~fade_cli.prompting.composition`: the shipped vocabulary and Jinja2 templates;
* :mod:`~fade_cli.prompting.llm`, :mod:`~fade_cli.prompting.llm_parse`: a local
  language model as a sentence writer (needs ``pip install fade[llm]``).

The generators themselves live in ``plugins/`` (installed as ``fade_cli.plugins``).
Importing this package imports neither torch nor transformers.
"""
from fade_cli.prompting.interface import GeneratorOption, PromptGenerator
from fade_cli.prompting.progress import ProgressReporter, current_reporter, reporting_to
from fade_cli.prompting.registry import (
    DEFAULT_GENERATOR,
    ENTRY_POINT_GROUP,
    PLUGINS_DIR_ENV,
    BrokenPlugin,
    GeneratorRegistry,
    discover_generators,
)
from fade_cli.prompting.generation import generate_prompt_set, run_generator

__all__ = [
    "BrokenPlugin",
    "DEFAULT_GENERATOR",
    "ENTRY_POINT_GROUP",
    "GeneratorOption",
    "GeneratorRegistry",
    "PLUGINS_DIR_ENV",
    "ProgressReporter",
    "PromptGenerator",
    "current_reporter",
    "discover_generators",
    "generate_prompt_set",
    "reporting_to",
    "run_generator",
]
