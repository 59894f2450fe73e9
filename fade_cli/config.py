"""Engine settings: one dataclass, two published presets.

Every number of the published method lives here once; the CLI, the engine and
the tests read it from here. Importing this module must stay cheap (no torch):
`fade --help` imports it.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal, Optional

from fade_cli.core.errors import InputError
from fade_cli.core.naming import named
from fade_cli.core.validation import check_finite

DEFAULT_MODEL = "ViT-B-16-plus-240"
DEFAULT_PRETRAINED = "laion400m_e31"
DEFAULT_TEXT_TEMPLATE = "a photo of a {}."
DEFAULT_SEG_SIZES = (240, 448, 896)
DEFAULT_CLS_SIZE = 240
# No ViT runs at a side this large on any machine; the real bound, from memory, is checked before a run.
MAX_INPUT_SIZE = 1 << 16
# Self-self attention iterations: the paper uses 1; each one costs a pass through the GEM blocks.
MAX_GEM_ITERS = 100
FEATURE_KINDS = ("clip", "gem")
IMAGE_SCORE_KINDS = ("language", "vision", "mean")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]{1,3})?|mps")

# What the engine computes in; ``auto`` (fade_cli.engine.precision) resolves to one of these on each machine.
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
REQUESTABLE_PRECISIONS = ("auto", *PRECISIONS)

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
# Mutual scoring (docs/mutual.md): each image's bank is the other images of the run, which is the few-shot
# situation (nearest patches of other, mostly normal images), so it takes the few-shot settings FADE published
# for that distance. Not re-tuned: that needs pretrained weights.
MUTUAL = VisionPreset(feature="clip", multiplier=3.5, weight=0.85, use_query=False, image_score="mean")

# MuSc (Li et al., ICLR 2024, arXiv 2401.16753): the published fraction of other images and window sizes.
DEFAULT_MUTUAL_FRACTION = 0.3
DEFAULT_MUTUAL_DEGREES = (1, 3, 5)
DEFAULT_MUTUAL_GROUP = 200
# Balanced groups of at most 3 images never leave one image alone (2 would: 3 images -> 2 + 1).
MIN_MUTUAL_GROUP = 3


@dataclass(frozen=True)
class MutualSettings:
    """How images are scored against the other images of their run (``--mutual``, docs/mutual.md).

    ``fraction``: share of the other images whose distances are averaged (at least one image).
    ``degrees``: odd window sizes r of the neighbourhood aggregation; each is scored, the maps averaged.
    ``group``: images compared with each other at most; a longer run is split into balanced groups.
    ``rescore``: smooth each vision score with its k most similar images' (None: off).
    ``store_fp16``: keep the patch features in float16 between the two passes (half the memory).
    """

    fraction: float = DEFAULT_MUTUAL_FRACTION
    degrees: tuple[int, ...] = DEFAULT_MUTUAL_DEGREES
    group: int = DEFAULT_MUTUAL_GROUP
    rescore: Optional[int] = None
    store_fp16: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"the mutual fraction must be in (0, 1], not {self.fraction}")
        if not self.degrees or any(r < 1 or r % 2 == 0 for r in self.degrees):
            raise ValueError(f"mutual degrees must be odd window sizes of at least 1, not {self.degrees}")
        if self.group < MIN_MUTUAL_GROUP:
            raise ValueError(f"a mutual group holds at least {MIN_MUTUAL_GROUP} images, not {self.group}")
        if self.rescore is not None and self.rescore < 1:
            raise ValueError(f"--mutual-rescore takes at least 1 neighbour, not {self.rescore}")


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

    def __post_init__(self) -> None:
        # NaN compares False with everything: a NaN setting would pass every range check and judge all OK.
        for name in ("gem_temperature", "vision_multiplier", "vision_weight"):
            check_finite(getattr(self, name), f"the engine setting {name}")
        check_device_name(self.device)

    def preset(self, has_references: bool, mutual: bool = False) -> VisionPreset:
        """The published preset for this run (mutual scoring: :data:`MUTUAL`) with the user's overrides applied."""
        base = MUTUAL if mutual else FEW_SHOT if has_references else ZERO_SHOT
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

    def replace(self, **changes: Any) -> "EngineConfig":
        return dataclasses.replace(self, **changes)


def check_device_name(name: str) -> None:
    """Refuse devices the engine cannot run on (``meta``, ``xla``, typos) before torch meets them."""
    if not isinstance(name, str) or not DEVICE_PATTERN.fullmatch(name):
        raise InputError(f"{named('device')} {name!r} is not a device fade runs on: use auto, cpu, cuda, cuda:N or mps")


def parse_sizes(text: str) -> tuple[int, ...]:
    """Parse ``"240,448,896"`` into sizes, rejecting anything that is not a positive int."""
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdecimal() or not 0 < int(part) <= MAX_INPUT_SIZE:
            raise ValueError(f"not an image size from 1 to {MAX_INPUT_SIZE}: {part!r}")
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
    "MUTUAL",
    "MutualSettings",
    "PRECISIONS",
    "VisionPreset",
    "ZERO_SHOT",
    "parse_sizes",
]
