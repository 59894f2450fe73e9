"""Engine settings: one dataclass, two published presets.

Every number of the published method lives here once; the CLI, the engine and
the tests read it from here. Importing this module must stay cheap (no torch):
`fade --help` imports it.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from typing import Any, Literal, Optional

from fade_cli.errors import InputError
from fade_cli.validation import Fields, check_finite

DEFAULT_MODEL = "ViT-B-16-plus-240"
DEFAULT_PRETRAINED = "laion400m_e31"
DEFAULT_TEXT_TEMPLATE = "a photo of a {}."
DEFAULT_SEG_SIZES = (240, 448, 896)
DEFAULT_CLS_SIZE = 240
# No ViT runs at a side this large on any machine; the real bound, from memory, is checked before a run.
MAX_INPUT_SIZE = 1 << 16
# Self-self attention iterations: the paper uses 1; each one costs a pass through the GEM blocks.
MAX_GEM_ITERS = 100
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
FEATURE_KINDS = ("clip", "gem")
IMAGE_SCORE_KINDS = ("language", "vision", "mean")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]{1,3})?|mps")

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
    precision: Literal["fp32", "tf32", "bf16", "fp16"] = "fp32"

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
    def from_dict(cls, data: Any, source: str = "engine config") -> "EngineConfig":
        """A config read from a file (a bank): every field's type and range checked, the file named in errors."""
        fields = Fields(data, source, "config")
        fields.unknown(f.name for f in dataclasses.fields(cls))
        default = cls()
        text = functools.partial(_optional_field, fields.text)
        values = {
            "model": fields.text("model", default.model),
            "pretrained": text("pretrained", default.pretrained),
            "weights": text("weights", None),
            "model_config": text("model_config", None),
            "cache_dir": text("cache_dir", None),
            "device": _device_field(fields, default.device),
            "precision": fields.text("precision", default.precision, choices=PRECISIONS),
            "class_name": fields.text("class_name", default.class_name),
            "cls_size": fields.integer("cls_size", 1, MAX_INPUT_SIZE, default.cls_size),
            "seg_sizes": tuple(fields.check_integer("seg_sizes", size, 1, MAX_INPUT_SIZE)
                               for size in fields.items("seg_sizes", list(default.seg_sizes), min_length=1)),
            "text_template": fields.text("text_template", default.text_template),
            "cls_use_classname": fields.flag("cls_use_classname", default.cls_use_classname),
            "seg_use_classname": fields.flag("seg_use_classname", default.seg_use_classname),
            "gem_depth": fields.integer("gem_depth", 2, 1024, default.gem_depth),
            "gem_iters": fields.integer("gem_iters", 0, MAX_GEM_ITERS, default.gem_iters),
            "gem_temperature": fields.number("gem_temperature", default=None, optional=True),
            "vision_feature": fields.text("vision_feature", None, optional=True, choices=FEATURE_KINDS),
            "vision_multiplier": fields.number("vision_multiplier", default=None, optional=True),
            "vision_weight": fields.number("vision_weight", 0.0, 1.0, default=None, optional=True),
            "use_query": fields.flag("use_query", None, optional=True),
            "image_score": fields.text("image_score", None, optional=True, choices=IMAGE_SCORE_KINDS),
            "batch_size": fields.integer("batch_size", 1, 1 << 20, None, optional=True),
            "compile": fields.flag("compile", default.compile),
        }
        return cls(**values)

    def replace(self, **changes: Any) -> "EngineConfig":
        return dataclasses.replace(self, **changes)


def check_device_name(name: str) -> None:
    """Refuse devices the engine cannot run on (``meta``, ``xla``, typos) before torch meets them."""
    if not isinstance(name, str) or not DEVICE_PATTERN.fullmatch(name):
        raise InputError(f"--device {name!r} is not a device fade runs on: use auto, cpu, cuda, cuda:N or mps")


def _device_field(fields: Fields, default: str) -> str:
    device = fields.text("device", default)
    if not DEVICE_PATTERN.fullmatch(device):
        raise fields.fail("device", "auto, cpu, cuda, cuda:N or mps", device)
    return device


def _optional_field(read, name: str, default: Any) -> Any:
    return read(name, default, optional=True)


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
    "VisionPreset",
    "ZERO_SHOT",
    "parse_sizes",
]
