"""Engine settings: one dataclass, two published presets.

Every number of the published method lives here once; the CLI, the engine and
the tests read it from here. Importing this module must stay cheap (no torch):
`fade --help` imports it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Optional

DEFAULT_MODEL = "ViT-B-16-plus-240"
DEFAULT_PRETRAINED = "laion400m_e31"
DEFAULT_TEXT_TEMPLATE = "a photo of a {}."
DEFAULT_SEG_SIZES = (240, 448, 896)
DEFAULT_CLS_SIZE = 240

# What the engine computes in; ``auto`` (fade_cli.engine.precision) resolves to one of these on each machine.
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")

FeatureKind = Literal["clip", "gem"]
# How the image score is made: the language score, the vision score (max of the vision map), or their mean.
ImageScoreKind = Literal["language", "vision", "mean"]


@dataclass(frozen=True)
class VisionPreset:
    """How the vision-guided (memory bank) branch is configured."""

    feature: FeatureKind
    multiplier: float
    weight: float
    use_query: bool
    image_score: ImageScoreKind


# Published settings (FADE_SPEC sections 5 and 6).
ZERO_SHOT = VisionPreset(feature="gem", multiplier=80.0, weight=0.5, use_query=True, image_score="language")
FEW_SHOT = VisionPreset(feature="clip", multiplier=3.5, weight=0.85, use_query=False, image_score="mean")


@dataclass
class EngineConfig:
    """Everything that decides what the engine computes.

    ``None`` for a vision field means "take it from the preset that fits the
    run" (zero-shot without references, few-shot with them).
    """

    model: str = DEFAULT_MODEL
    pretrained: Optional[str] = DEFAULT_PRETRAINED
    weights: Optional[str] = None
    model_config: Optional[str] = None
    cache_dir: Optional[str] = None
    device: str = "auto"
    precision: Literal["fp32", "auto", "tf32", "bf16", "fp16"] = "fp32"  # auto: engine.precision decides

    class_name: str = "object"
    cls_size: int = DEFAULT_CLS_SIZE
    seg_sizes: tuple[int, ...] = DEFAULT_SEG_SIZES
    text_template: str = DEFAULT_TEXT_TEMPLATE
    cls_use_classname: bool = True
    seg_use_classname: bool = False

    gem_depth: int = 7
    gem_iters: int = 1
    gem_temperature: Optional[float] = None

    vision_feature: Optional[FeatureKind] = None
    vision_multiplier: Optional[float] = None
    vision_weight: Optional[float] = None
    use_query: Optional[bool] = None
    image_score: Optional[ImageScoreKind] = None

    batch_size: Optional[int] = None  # None: FadeEngine.batch_size picks one for the device
    compile: bool = False

    def preset(self, has_references: bool) -> VisionPreset:
        """The published preset for this run with the user's overrides applied."""
        base = FEW_SHOT if has_references else ZERO_SHOT
        return VisionPreset(
            feature=self.vision_feature or base.feature,
            multiplier=base.multiplier if self.vision_multiplier is None else self.vision_multiplier,
            weight=base.weight if self.vision_weight is None else self.vision_weight,
            use_query=base.use_query if self.use_query is None else self.use_query,
            image_score=self.image_score or base.image_score,
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["seg_sizes"] = list(self.seg_sizes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EngineConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown engine setting(s): {', '.join(unknown)}")
        values = dict(data)
        if "seg_sizes" in values:
            values["seg_sizes"] = tuple(int(s) for s in values["seg_sizes"])
        return cls(**values)

    def replace(self, **changes: Any) -> "EngineConfig":
        return dataclasses.replace(self, **changes)


def parse_sizes(text: str) -> tuple[int, ...]:
    """Parse ``"240,448,896"`` into sizes, rejecting anything that is not a positive int."""
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) <= 0:
            raise ValueError(f"not a positive image size: {part!r}")
        sizes.append(int(part))
    if not sizes:
        raise ValueError("no image size given")
    return tuple(sizes)


__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PRETRAINED",
    "DEFAULT_TEXT_TEMPLATE",
    "EngineConfig",
    "FEW_SHOT",
    "PRECISIONS",
    "VisionPreset",
    "ZERO_SHOT",
    "parse_sizes",
]
