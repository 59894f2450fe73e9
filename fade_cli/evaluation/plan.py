"""What an evaluation runs: its settings, and the (class, seed) runs with their drawn references.

Kept free of torch, so a malformed dataset or too few good images are reported
at once, before the model is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from fade_cli.config import MutualSettings
from fade_cli.evaluation.samples import ClassSplit
from fade_cli.evaluation.shots import choose_references
from fade_cli.io.images import ImageFile
from fade_cli.core.memory import check_map_size

DEFAULT_EVAL_SIZE = 448


@dataclass(frozen=True)
class EvalSettings:
    """How the benchmark is run. ``prompt_class`` None: each class's own name goes into the prompts.

    ``mutual``: zero-shot by mutual scoring of each class's test images (docs/mutual.md).
    """

    shots: int = 0
    seeds: tuple[int, ...] = (0,)
    eval_size: int = DEFAULT_EVAL_SIZE
    quantize_8bit: bool = False
    prompt_class: Optional[str] = None
    mutual: Optional[MutualSettings] = None

    def __post_init__(self) -> None:
        check_map_size(self.eval_size, 1, "--eval-size")  # each image's map and mask at eval size

    def run_seeds(self) -> tuple[Optional[int], ...]:
        """Zero-shot is deterministic: one run without a seed."""
        return (None,) if self.shots == 0 else self.seeds


@dataclass(frozen=True)
class PlannedRun:
    split: ClassSplit
    seed: Optional[int]
    references: tuple[ImageFile, ...]

    @property
    def label(self) -> str:
        return self.split.name if self.seed is None else f"{self.split.name} seed {self.seed}"


def plan_runs(dataset: Sequence[ClassSplit], settings: EvalSettings) -> list[PlannedRun]:
    """Every (class, seed) run with its drawn references; fails before any compute if shots are short."""
    return [
        PlannedRun(split, seed, tuple(choose_references(split, settings.shots, seed or 0)))
        for split in dataset
        for seed in settings.run_seeds()
    ]
