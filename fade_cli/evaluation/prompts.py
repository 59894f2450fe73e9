"""Prompt sets of an evaluation, once per class name.

Each class's name goes into its prompts, and a prompt generator
(``--prompt-generator``) may write a different set for each class, so the sets
come from a :data:`PromptSource` called with the class name. Sets and their
encoded classifiers are kept per name: a dataset's classes are encoded once
each, and once in all when ``--class`` names them all the same.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from fade_cli.config import EngineConfig
from fade_cli.engine.detector import encode_prompt_sets
from fade_cli.backbone.model import LoadedModel
from fade_cli.prompting.prompt_set import PromptSet, with_default_prompts

# class name -> (classification set, segmentation set); None means the built-in default.
PromptSource = Callable[[str], tuple[Optional[PromptSet], Optional[PromptSet]]]


def fixed_prompts(cls_prompts: Optional[PromptSet] = None, seg_prompts: Optional[PromptSet] = None) -> PromptSource:
    """The same sets for every class (``{classname}`` is still filled per class)."""
    return lambda name: (cls_prompts, seg_prompts)


class ClassPrompts:
    """Prompt sets and classifiers per class name, from a :data:`PromptSource`."""

    def __init__(self, source: PromptSource, loaded: LoadedModel):
        self.source = source
        self.loaded = loaded
        self._sets: dict[str, tuple[PromptSet, PromptSet]] = {}
        self._classifiers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def sets(self, name: str) -> tuple[PromptSet, PromptSet]:
        """(classification, segmentation) sets of class ``name``, built-in defaults filled in."""
        if name not in self._sets:
            self._sets[name] = with_default_prompts(*self.source(name))
        return self._sets[name]

    def classifiers(self, config: EngineConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """The two (2, D) classifiers for ``config.class_name``, encoded on first use."""
        name = config.class_name
        if name not in self._classifiers:
            self._classifiers[name] = encode_prompt_sets(self.loaded, config, *self.sets(name))
        return self._classifiers[name]

    def describe(self) -> dict[str, dict[str, dict]]:
        """Per class name used so far: each set's hash (of its sentences) and size."""
        return {
            name: {"classification": _describe(cls_set), "segmentation": _describe(seg_set)}
            for name, (cls_set, seg_set) in self._sets.items()
        }


def _describe(prompts: PromptSet) -> dict:
    return {"sha256": prompts.digest(), "normal": len(prompts.normal), "abnormal": len(prompts.abnormal)}
