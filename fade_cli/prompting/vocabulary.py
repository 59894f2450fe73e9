"""The industrial vocabulary shipped in ``prompts/vocabulary.json``: loading it, and picking families for a part.

The vocabulary is data (framings, normal and abnormal states, defects by
material family, sizes, positions, a map from part names to families); the
sentences are composed by the Jinja2 templates in ``prompts/`` (see
:mod:`fade_cli.prompting.templates`), so the ``vocabulary`` and ``template``
generators share one source.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Iterable, Optional

from fade_cli.core.errors import InputError

VOCABULARY_FILE = "vocabulary.json"
VOCABULARY_FORMAT = "fade-vocabulary"
_MAX_PART_WORDS = 3


@dataclass(frozen=True)
class Family:
    """Defects and normal states of one material or object family (metal, textile, electronics...)."""

    name: str
    surface: str
    normal: tuple[str, ...]
    defects: tuple[str, ...]


@dataclass(frozen=True)
class Vocabulary:
    version: int
    framings: tuple[str, ...]
    normal_states: tuple[str, ...]
    abnormal_states: tuple[str, ...]
    defects: tuple[str, ...]
    local_normal: tuple[str, ...]
    local_abnormal: tuple[str, ...]
    sizes: tuple[str, ...]
    positions: tuple[str, ...]
    families: dict[str, Family]
    parts: dict[str, tuple[str, ...]]  # part name -> family names, in vocabulary order

    def families_for(self, class_name: str) -> tuple[str, ...]:
        """The families a part name suggests (``metal_nut`` -> metal), in vocabulary order; may be empty.

        Longest known phrases win (``pipe_fryum`` is food, not a metal pipe);
        trailing digits and a plural ``s`` are ignored (``pcb3``, ``screws``).
        """
        words = normalised_part_name(class_name).split()
        found: set[str] = set()
        start = 0
        while start < len(words):
            for length in range(min(_MAX_PART_WORDS, len(words) - start), 0, -1):
                families = self._lookup(" ".join(words[start:start + length]))
                if families is not None:
                    found.update(families)
                    start += length
                    break
            else:
                start += 1
        return tuple(name for name in self.families if name in found)

    def _lookup(self, phrase: str) -> Optional[tuple[str, ...]]:
        if phrase in self.parts:
            return self.parts[phrase]
        if phrase.endswith("s") and phrase[:-1] in self.parts:
            return self.parts[phrase[:-1]]
        return None

    def check_families(self, names: Iterable[str]) -> tuple[str, ...]:
        """The given family names in vocabulary order; an error naming the valid ones for an unknown name."""
        names = tuple(names)
        unknown = [name for name in names if name not in self.families]
        if unknown:
            raise InputError(f"unknown family {', '.join(unknown)} (known: {', '.join(self.families)})")
        return tuple(name for name in self.families if name in names)


def normalised_part_name(class_name: str) -> str:
    """``Metal_Nut2`` -> ``metal nut``: lower case, separators as spaces, trailing digits dropped."""
    text = re.sub(r"[_\-/]+", " ", class_name.lower())
    return " ".join(re.sub(r"\d+$", "", word) for word in text.split() if re.sub(r"\d+$", "", word))


@functools.lru_cache(maxsize=1)
def load_vocabulary() -> Vocabulary:
    """The shipped vocabulary (read once per process)."""
    text = resources.files("fade_cli.prompts").joinpath(VOCABULARY_FILE).read_text(encoding="utf-8")
    return vocabulary_from_dict(json.loads(text))


def vocabulary_from_dict(data: dict[str, Any]) -> Vocabulary:
    if data.get("format") != VOCABULARY_FORMAT:
        raise InputError(f"not a fade vocabulary (format {data.get('format')!r})")
    families = {
        name: Family(name=name, surface=entry["surface"], normal=tuple(entry["normal"]), defects=tuple(entry["defects"]))
        for name, entry in data["families"].items()
    }
    parts: dict[str, list[str]] = {}
    for family, names in data["parts"].items():
        for part in names:
            parts.setdefault(part, []).append(family)
    return Vocabulary(
        version=int(data["version"]),
        framings=tuple(data["framings"]),
        normal_states=tuple(data["states"]["normal"]),
        abnormal_states=tuple(data["states"]["abnormal"]),
        defects=tuple(data["defects"]),
        local_normal=tuple(data["local"]["normal"]),
        local_abnormal=tuple(data["local"]["abnormal"]),
        sizes=tuple(data["sizes"]),
        positions=tuple(data["positions"]),
        families=families,
        parts={part: tuple(names) for part, names in parts.items()},
    )


def resolve_families(vocabulary: Vocabulary, class_name: str, requested: Iterable[str]) -> tuple[str, ...]:
    """``--family`` values when given, else the families the class name suggests."""
    requested = tuple(requested)
    return vocabulary.check_families(requested) if requested else vocabulary.families_for(class_name)


def template_context(vocabulary: Vocabulary, class_name: str, family_names: Iterable[str]) -> dict[str, Any]:
    """The variables every template sees: the generic vocabulary merged with the chosen families.

    ``normal_states`` / ``abnormal_states`` / ``defects`` hold the generic entries
    first, then each family's (an abnormal family state is ``{classname} with <defect>``);
    ``families`` lists the chosen :class:`Family` objects for templates that want them.
    """
    chosen = [vocabulary.families[name] for name in family_names]
    family_defects = [defect for family in chosen for defect in family.defects]
    return {
        "class_name": class_name,
        "placeholder": "{classname}",
        "framings": list(vocabulary.framings),
        "normal_states": _unique([*vocabulary.normal_states, *(s for family in chosen for s in family.normal)]),
        "abnormal_states": _unique([*vocabulary.abnormal_states, *(f"{{classname}} with {d}" for d in family_defects)]),
        "defects": _unique([*vocabulary.defects, *family_defects]),
        "local_normal": list(vocabulary.local_normal),
        "local_abnormal": list(vocabulary.local_abnormal),
        "sizes": list(vocabulary.sizes),
        "positions": list(vocabulary.positions),
        "families": chosen,
    }


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
