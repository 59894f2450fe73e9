"""Example prompt generator plugin, written as the guide for third parties: sentences from text files.

Its test, also a guide, is ``tests/test_example_plugin.py``; ``plugins/README.md``
walks through both. A generator is a class with a ``name``, a ``help`` text, a
tuple of ``options`` and a ``generate(class_name, **options)`` method that
returns a :class:`~fade_cli.prompting.prompt_set.PromptSet`. fade does the rest: it turns
the options into command-line flags, fills in defaults, checks types, cleans
the sentences (whitespace, blank lines, duplicates), refuses an empty list and
records a ``meta`` block so the file can be regenerated.

Two ways to make fade find it:

* in a package, an entry point in the group ``fade.prompt_generators``
  (pyproject.toml)::

      [project.entry-points."fade.prompt_generators"]
      textfile = "my_package.textfile:TextFileGenerator"

* without installing anything, copy this file into a folder and run
  ``fade prompts generators --plugins-dir FOLDER`` (or set
  ``FADE_PLUGINS_DIR=FOLDER``); a module in that folder lists its generator
  classes in ``PROMPT_GENERATORS``.

Then: ``fade prompts generate screw --generator textfile --normal-file ok.txt
--abnormal-file ng.txt --out screw.json``.
"""
from __future__ import annotations

from pathlib import Path

from fade_cli.core.errors import InputError
from fade_cli.prompting.prompt_set import PromptSet
from fade_cli.prompting import GeneratorOption, PromptGenerator


def read_sentences(path: Path) -> tuple[str, ...]:
    """One sentence per line; blank lines and lines starting with # are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        # InputError reaches the user as one line and exit code 2; any other exception
        # is reported as a failure of this generator (exit code 3).
        raise InputError(f"cannot read {path}: {exc}") from exc
    return tuple(line for line in lines if line.strip() and not line.lstrip().startswith("#"))


class TextFileGenerator(PromptGenerator):
    name = "textfile"
    # The first line is the summary in `fade prompts generators`.
    help = """Sentences from two plain text files, one per line (# starts a comment).

    Write {classname} where the part is named; with --name-to-placeholder the
    class name itself is turned into {classname}."""
    options = (
        GeneratorOption("normal_file", "Sentences describing good parts.", type=Path, required=True, metavar="FILE"),
        GeneratorOption("abnormal_file", "Sentences describing defects.", type=Path, required=True, metavar="FILE"),
        GeneratorOption("name_to_placeholder", "Replace the class name in the sentences by {classname}.", type=bool,
                        default=False),
    )
    version = "1"

    def generate(self, class_name: str, *, normal_file: Path, abnormal_file: Path,
                 name_to_placeholder: bool) -> PromptSet:
        normal, abnormal = read_sentences(normal_file), read_sentences(abnormal_file)
        if name_to_placeholder:
            word = class_name.replace("_", " ")
            normal = tuple(line.replace(word, "{classname}") for line in normal)
            abnormal = tuple(line.replace(word, "{classname}") for line in abnormal)
        if not normal or not abnormal:
            raise InputError(f"{normal_file if not normal else abnormal_file} has no sentence")
        # Anything in meta is kept in the output file, next to the generator name and options.
        return PromptSet(normal=normal, abnormal=abnormal, meta={"files": [normal_file.name, abnormal_file.name]})


# What fade looks for when this file sits in a plugins folder (entry points name the class directly).
PROMPT_GENERATORS = [TextFileGenerator]
