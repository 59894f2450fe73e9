"""Prompt sets: two lists of sentences, ``normal`` and ``abnormal``.

On disk (and as the interchange format with other tools) a prompt set is JSON::

    {"normal": {"prompts": [...]}, "abnormal": {"prompts": [...]}, "meta": {...}}

``meta`` is optional and free-form (generators record how a set was made).
A prompt may hold the placeholder ``{classname}``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from fade_cli.core import strict_json
from fade_cli.core.errors import InputError
from fade_cli.io.files import read_text_file

PLACEHOLDER = "{classname}"
STATES = ("normal", "abnormal")


@dataclass(frozen=True)
class PromptSet:
    normal: tuple[str, ...]
    abnormal: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for state in STATES:
            if not getattr(self, state):
                raise InputError(f"prompt set has no {state} prompt")

    def filled(self, name: str) -> "PromptSet":
        """Replace ``{classname}`` by ``name`` (underscores become spaces)."""
        word = name.replace("_", " ")
        return PromptSet(
            normal=tuple(p.replace(PLACEHOLDER, word) for p in self.normal),
            abnormal=tuple(p.replace(PLACEHOLDER, word) for p in self.abnormal),
            meta=self.meta,
        )

    def to_json_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {state: {"prompts": list(getattr(self, state))} for state in STATES}
        if self.meta:
            data["meta"] = self.meta
        return data

    def to_json(self) -> str:
        return strict_json.dumps(self.to_json_dict(), indent=2, sort_keys=False) + "\n"

    def digest(self) -> str:
        """A hash of the sentences only (not of meta): same prompts, same digest."""
        payload = strict_json.dumps([list(self.normal), list(self.abnormal)])
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def prompt_set_from_dict(data: Any, source: str = "prompt set") -> PromptSet:
    """Validate the JSON structure and build a :class:`PromptSet`."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a JSON object with 'normal' and 'abnormal'")
    lists = {}
    for state in STATES:
        entry = data.get(state)
        prompts = entry.get("prompts") if isinstance(entry, dict) else None
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise InputError(f"{source}: '{state}' must be {{\"prompts\": [list of strings]}}")
        cleaned = tuple(p.strip() for p in prompts if p.strip())
        if not cleaned:
            raise InputError(f"{source}: no {state} prompt")
        lists[state] = cleaned
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    return PromptSet(normal=lists["normal"], abnormal=lists["abnormal"], meta=meta)


def load_prompt_set(path: Union[str, Path]) -> PromptSet:
    path = Path(path)
    text = read_text_file(path, "prompts file")
    return prompt_set_from_dict(strict_json.loads(text, f"prompts file {path}"), source=str(path))


def builtin_prompt_set(name: str) -> PromptSet:
    """A prompt set shipped in the package's ``prompts`` folder, by file stem."""
    from importlib import resources

    resource = resources.files("fade_cli.prompts").joinpath(f"{name}.json")
    return prompt_set_from_dict(json.loads(resource.read_text(encoding="utf-8")), source=f"built-in {name}")


def default_prompt_sets() -> tuple[PromptSet, PromptSet]:
    """The built-in (classification, segmentation) prompt sets."""
    return builtin_prompt_set("default_classification"), builtin_prompt_set("default_segmentation")


def with_default_prompts(
    cls_prompts: Optional[PromptSet], seg_prompts: Optional[PromptSet]
) -> tuple[PromptSet, PromptSet]:
    """The given (classification, segmentation) sets, the built-in default in place of a missing one."""
    if cls_prompts is not None and seg_prompts is not None:
        return cls_prompts, seg_prompts
    default_cls, default_seg = default_prompt_sets()
    return (
        cls_prompts if cls_prompts is not None else default_cls,
        seg_prompts if seg_prompts is not None else default_seg,
    )
