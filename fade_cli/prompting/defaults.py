"""The built-in prompt sets (``prompts/default_*.json``) are generator output, not hand-kept files.

``python -m fade_cli.prompting.defaults prompts`` rewrites them from the
vocabulary and the templates; a test checks that the shipped files equal what
:func:`default_prompt_set_builds` produces, so the data has one source.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from fade_cli.prompting.prompt_set import PromptSet
from fade_cli.prompting.generation import generate_prompt_set

# file stem -> (generator, class name, options). "object": no family is guessed, generic vocabulary only.
DEFAULT_SETS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "default_classification": ("vocabulary", "object", {}),
    "default_segmentation": ("vocabulary", "object", {"local": True}),
}


def default_prompt_set_builds() -> dict[str, Callable[[], PromptSet]]:
    """For each built-in file stem, how to make its prompt set."""
    return {stem: (lambda spec=spec: generate_prompt_set(spec[0], spec[1], spec[2])) for stem, spec in DEFAULT_SETS.items()}


def write_defaults(folder: Path) -> list[Path]:
    """Write every built-in set as ``folder/<stem>.json``; returns the paths."""
    written = []
    for stem, build in default_prompt_set_builds().items():
        path = folder / f"{stem}.json"
        path.write_text(build().to_json(), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_defaults(Path(sys.argv[1] if len(sys.argv) > 1 else "prompts")):
        print(written_path)
