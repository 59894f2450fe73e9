"""The prompt generator interface: what a plugin implements.

A generator turns a class name (``screw``, ``weld``, ``pcb``) and a few options
into a :class:`~fade_cli.prompting.prompt_set.PromptSet`. Every generator, the built-in
ones included, is found the same way (see :mod:`fade_cli.prompting.registry`),
so the built-ins prove this interface::

    from fade_cli.prompting.prompt_set import PromptSet
    from fade_cli.prompting import GeneratorOption, PromptGenerator

    class Shouting(PromptGenerator):
        name = "shouting"
        help = "Two sentences, the second one in capitals."
        options = (GeneratorOption("word", "The defect word.", default="crack"),)

        def generate(self, class_name, *, word):
            return PromptSet(normal=("a photo of the {classname}.",),
                             abnormal=(f"A {word.upper()} ON THE {{classname}}.",))

The command line turns each :class:`GeneratorOption` into a flag
(``word`` -> ``--word``; a ``bool`` option -> ``--word/--no-word``), fills in
defaults, checks types and choices, and calls ``generate`` with every option as
a keyword argument. The returned set is then cleaned (whitespace, empty lines,
duplicates), checked (both lists non-empty) and stamped with a ``meta`` block,
so a generator only has to produce sentences.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from fade_cli.prompting.prompt_set import PromptSet

OPTION_TYPES = (str, int, float, bool, Path)
# Option names the `fade prompts generate` command itself uses; a generator may not take them.
RESERVED_OPTION_NAMES = frozenset({"class_name", "generator", "out", "overwrite", "plugins_dir", "quiet", "help"})
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_OPTION_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class GeneratorOption:
    """One option of a generator.

    ``name`` is a Python identifier (``llm_model``); the flag is ``--llm-model``.
    ``type`` is one of ``str``, ``int``, ``float``, ``bool`` (an on/off flag)
    or ``pathlib.Path`` (an existing file). ``multiple`` options may be given
    several times and reach ``generate`` as a tuple. ``choices`` limits a
    ``str`` option to fixed values.
    """

    name: str
    help: str
    type: type = str
    default: Any = None
    multiple: bool = False
    required: bool = False
    choices: Optional[tuple[str, ...]] = None
    metavar: Optional[str] = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


class PromptGenerator:
    """Base class of prompt generators (subclassing it is optional; the attributes are the contract).

    Attributes:
        name: how users pick it (``--generator NAME``): lower case, digits, ``-`` or ``_``.
        help: what it does; the first line is the summary in ``fade prompts generators``.
        options: the :class:`GeneratorOption` it accepts.
        version: the generator's own version, recorded in the output's ``meta``.
    """

    name: str = ""
    help: str = ""
    options: tuple[GeneratorOption, ...] = ()
    version: str = "1"

    def generate(self, class_name: str, **options: Any) -> PromptSet:
        """Write the prompt set for ``class_name``.

        Args:
            class_name: the part, as the user typed it (``metal_nut``). Sentences
                should say ``{classname}`` where the part is named, so that the
                engine can fill in the class name or ``object`` per stage.
            **options: one keyword per declared option, defaults filled in.

        Returns:
            A :class:`PromptSet`. Its ``meta`` may add facts needed to
            regenerate the set (e.g. resolved families); fade adds the
            generator name, class name, options and versions itself.

        Raises:
            fade_cli.core.errors.InputError: for bad option values (shown to the user
                as is, exit code 2). Any other exception is reported as a
                failure of this generator.
        """
        raise NotImplementedError


def interface_problems(generator: Any) -> list[str]:
    """What is wrong with an object that claims to be a generator (empty list: nothing)."""
    problems = []
    name = getattr(generator, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(f"name must be lower-case letters, digits, '-' or '_', not {name!r}")
    if not isinstance(getattr(generator, "help", None), str):
        problems.append("help must be a string")
    if not callable(getattr(generator, "generate", None)):
        problems.append("it has no generate() method")
    options = getattr(generator, "options", None)
    if not isinstance(options, (tuple, list)) or not all(isinstance(o, GeneratorOption) for o in options):
        problems.append("options must be a tuple of GeneratorOption")
        return problems
    for option in options:
        problems.extend(_option_problems(option))
    names = [option.name for option in options]
    problems.extend(f"option {name!r} is declared twice" for name in sorted({n for n in names if names.count(n) > 1}))
    return problems


def _option_problems(option: GeneratorOption) -> list[str]:
    problems = []
    if not _OPTION_NAME.match(option.name):
        problems.append(f"option name {option.name!r} is not a lower-case identifier")
    if option.name in RESERVED_OPTION_NAMES:
        problems.append(f"option name {option.name!r} is reserved by fade")
    if option.type not in OPTION_TYPES:
        problems.append(f"option {option.name!r} has unsupported type {option.type!r}")
    if option.choices is not None and option.type is not str:
        problems.append(f"option {option.name!r} has choices but is not a str option")
    return problems
