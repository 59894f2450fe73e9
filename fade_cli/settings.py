"""The one settings schema: every engine setting declared once.

Each :class:`Setting` says its name (the keyword of :class:`Settings` and of
``fade_cli.Detector``; the command line's option is the same name with dashes),
its kind, range and default, its help, and its role:

- ``stored``: a bank saves it; a run from a bank takes the bank's value and refuses another.
- ``preset``: stored too, and ``None`` means "the published preset of the run" (zero-shot or few-shot).
- ``model``: which model runs; a bank records the model's identity and checks it.
- ``prompts``: where the prompt sets come from; a bank stores the prompt sets themselves.
- ``runtime``: how this machine runs the engine (device, precision, batches, caches); never decides
  what a bank scores, always taken from the run.
- ``region``: where in each frame the engine looks (fade_cli.io.roi): an ROI, or a folder of per-image
  masks, the margin around it and whether the frame is cut to it. A bank stores the ROI itself; a run from
  a bank takes it and refuses another (a folder of per-image masks is given at each run).

The click options (:mod:`fade_cli.cli.options`), :class:`EngineConfig`'s checks of a
bank's settings, which settings a bank stores, and the settings a ``--resume`` compares
are all derived from :data:`SETTINGS`. Importing this module stays cheap (no torch,
no click): ``fade --help`` imports it.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from fade_cli.config import (
    DEFAULT_CLS_SIZE,
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    DEFAULT_SEG_SIZES,
    DEFAULT_TEXT_TEMPLATE,
    DEVICE_PATTERN,
    FEATURE_KINDS,
    IMAGE_SCORE_KINDS,
    MAX_GEM_ITERS,
    MAX_INPUT_SIZE,
    EngineConfig,
    parse_sizes,
)
from fade_cli.core.errors import InputError
from fade_cli.core.naming import flag_of, named
from fade_cli.core.validation import shown

ROLES = ("model", "stored", "preset", "prompts", "runtime", "region")


class SettingError(InputError):
    """A setting with a bad value; ``setting`` is its name (the CLI names its flag instead)."""

    def __init__(self, setting: str, message: str):
        super().__init__(message)
        self.setting = setting


@dataclass(frozen=True)
class Setting:
    """One engine setting: its name, how it is checked, its default, its help and its role."""

    name: str
    kind: str  # how a value is written and checked (_CHECKS); the CLI maps each kind to a click type
    default: Any
    help: str
    role: str
    field: Optional[str] = None  # the EngineConfig field it sets; None: not part of the engine's config
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: tuple[str, ...] = ()
    negatable: bool = False  # a flag with a --no- form
    short: Optional[str] = None  # a one-letter command-line alias, e.g. -v
    results_depend: bool = True  # False: scores are the same whatever its value (a bank never stores it)
    optional: bool = False  # None is allowed besides the default (no pretrained tag with a weights file)
    section: str = "Published method"  # where --help lists it (fade_cli.cli.help_sections)

    def __post_init__(self) -> None:
        # A typo in the schema would otherwise surface only when the setting is used.
        if self.role not in ROLES or self.kind not in _CHECKS:
            raise ValueError(f"setting {self.name}: unknown role {self.role!r} or kind {self.kind!r}")

    @property
    def flag(self) -> str:
        """The command-line option, e.g. ``--vision-weight`` (``--class`` for ``class_name``)."""
        return flag_of(self.name)

    def check(self, value: Any) -> Any:
        """``value`` as this setting holds it; a :class:`SettingError` naming the setting when it does not fit."""
        try:
            return _CHECKS[self.kind](self, value)
        except (TypeError, ValueError) as exc:
            raise SettingError(self.name, f"{named(self.name)}: {exc}") from exc


def _text(setting: Setting, value: Any) -> Optional[str]:
    if value is None and (setting.default is None or setting.optional):
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {shown(value)}")
    return value


def _path(setting: Setting, value: Any) -> Optional[str]:
    import os

    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"expected a file path, not {shown(value)}")
    return os.fspath(value)


def _in_range(setting: Setting, number: float) -> None:
    low = -math.inf if setting.minimum is None else setting.minimum
    high = math.inf if setting.maximum is None else setting.maximum
    if not low <= number <= high:
        raise ValueError(f"{shown(number)} is not in the range {_range_text(setting)}")


def _range_text(setting: Setting) -> str:
    low = "" if setting.minimum is None else f"{setting.minimum:g}"
    high = "" if setting.maximum is None else f"{setting.maximum:g}"
    return f"[{low}, {high}]" if low and high else f">= {low}" if low else f"<= {high}"


def _int(setting: Setting, value: Any) -> Optional[int]:
    if value is None and setting.default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, not {shown(value)}")
    _in_range(setting, value)
    return value


def _float(setting: Setting, value: Any) -> Optional[float]:
    if value is None and setting.default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, not {shown(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    _in_range(setting, value)
    return float(value)


def _choice(setting: Setting, value: Any) -> Optional[str]:
    if value is None and setting.default is None:
        return None
    if value not in setting.choices:
        raise ValueError(f"{shown(value)} is not one of {', '.join(setting.choices)}")
    return value


def _flag(setting: Setting, value: Any) -> Optional[bool]:
    if value is None and setting.kind == "optional_flag":
        return None
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, not {shown(value)}")
    return value


def _sizes(setting: Setting, value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        return parse_sizes(value)
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not value:
        raise TypeError(f"expected image sizes such as (240, 448), not {shown(value)}")
    return parse_sizes(",".join(str(size) if isinstance(size, int) and not isinstance(size, bool) else "x"
                                for size in value))


def _device(setting: Setting, value: Any) -> str:
    if not isinstance(value, str) or not DEVICE_PATTERN.fullmatch(value):
        raise ValueError(f"{shown(value)} is not a device fade runs on: use auto, cpu, cuda, cuda:N or mps")
    return value


_CHECKS: dict[str, Callable[[Setting, Any], Any]] = {
    "text": _text, "int": _int, "float": _float, "choice": _choice, "flag": _flag, "optional_flag": _flag,
    "sizes": _sizes, "file": _path, "folder": _path, "device": _device,
}

_PRESET = "[default: {zero} zero-shot, {few} few-shot and --mutual]."

SETTINGS: tuple[Setting, ...] = (
    Setting("model", "text", DEFAULT_MODEL, "open_clip ViT architecture.", "model", field="model", section="Model"),
    Setting("pretrained", "text", DEFAULT_PRETRAINED,
            "Pretrained tag, downloaded and cached by open_clip on a connected machine.", "model", field="pretrained", section="Model",
            optional=True),
    Setting("weights", "file", None, "Local checkpoint file (overrides --pretrained).", "model", field="weights", section="Model"),
    Setting("model_config", "file", None,
            "Custom architecture as an open_clip JSON config; its file stem is the model name.", "model",
            field="model_config", section="Model"),
    Setting("cache_dir", "folder", None,
            "Model cache folder [default: $FADE_CACHE_DIR, else the Hugging Face cache].", "runtime",
            field="cache_dir", section="Speed and machine",
            results_depend=False),
    Setting("device", "device", "auto", "auto, cpu, cuda or cuda:N.", "runtime", field="device",
            section="Speed and machine",
            results_depend=False),
    Setting("precision", "choice", "fp32",
            "fp32 reproduces the published numbers; auto is the choice for CPU stations: bf16 where the hardware computes it natively "
            "(CPUs with AMX or AVX512-BF16, GPUs with bf16), else fp32 (--verbose says why); tf32 is fp32 "
            "with TF32 matrix products on NVIDIA GPUs (fp32 elsewhere); bf16/fp16 as asked (slow on a "
            "CPU without bf16 instructions).", "runtime", field="precision", choices=("fp32", "auto", "tf32", "bf16", "fp16"),
            section="Speed and machine"),
    Setting("class_name", "text", "object", "Object name put into the prompts, e.g. screw (underscores become "
            "spaces).", "stored", field="class_name", section="Everyday"),
    Setting("scales", "sizes", DEFAULT_SEG_SIZES,
            "Segmentation input sizes, comma-separated. The published 240,448,896 gives the finest maps; 240,448 "
            "scores about 8x faster on a CPU (896 costs most) with coarser maps; 240 alone is faster still.", "stored",
            field="seg_sizes", section="Speed and machine"),
    Setting("cls_size", "int", DEFAULT_CLS_SIZE, "Input size for the image-level (classification) score.", "stored",
            field="cls_size", minimum=16, maximum=MAX_INPUT_SIZE),
    Setting("text_template", "text", DEFAULT_TEXT_TEMPLATE, "Wrapper put around every prompt; {} marks the prompt.",
            "stored", field="text_template"),
    Setting("prompts", "file", None, "Prompt set JSON for both stages.", "prompts", section="Prompts"),
    Setting("cls_prompts", "file", None, "Prompt set JSON for the image score.", "prompts", section="Prompts"),
    Setting("seg_prompts", "file", None, "Prompt set JSON for the anomaly map.", "prompts", section="Prompts"),
    Setting("prompt_generator", "text", None,
            "Generate the prompt sets for --class with this generator and its defaults (see `fade prompts "
            "generators`; local plugins from $FADE_PLUGINS_DIR); prompt files win over it.", "prompts",
            section="Prompts"),
    Setting("cls_classname", "flag", True, "Fill {classname} with --class in image-score prompts (else 'object').",
            "stored", field="cls_use_classname", negatable=True, section="Prompts"),
    Setting("seg_classname", "flag", False, "Fill {classname} with --class in map prompts (else 'object').",
            "stored", field="seg_use_classname", negatable=True, section="Prompts"),
    Setting("gem_depth", "int", 7, "GEM depth D: the last D-1 blocks get the GEM stream.", "stored",
            field="gem_depth", minimum=2, maximum=1024),
    Setting("gem_iters", "int", 1, "Self-self attention iterations.", "stored", field="gem_iters", minimum=0,
            maximum=MAX_GEM_ITERS),
    Setting("gem_temperature", "float", None, "Constant inverse temperature [default: per image].", "stored",
            field="gem_temperature"),
    Setting("vision_feature", "choice", None,
            "Patch features of the memory bank [default: gem zero-shot, clip few-shot and --mutual].", "preset",
            field="vision_feature", choices=FEATURE_KINDS),
    Setting("vision_multiplier", "float", None, "Vision map multiplier " + _PRESET.format(zero=80, few=3.5),
            "preset", field="vision_multiplier"),
    Setting("vision_weight", "float", None,
            "Weight of the vision map in the fusion " + _PRESET.format(zero=0.5, few=0.85), "preset",
            field="vision_weight", minimum=0, maximum=1),
    Setting("use_query", "optional_flag", None,
            "Add the query's own patches to the bank (2nd neighbour) [default: on zero-shot, off few-shot].",
            "preset", field="use_query", negatable=True),
    Setting("image_score", "choice", None,
            "Image score: the language score, the vision score (max of the vision map), or their mean "
            "[default: language zero-shot, mean few-shot and --mutual].", "preset", field="image_score",
            choices=IMAGE_SCORE_KINDS),
    Setting("batch_size", "int", None,
            "Images per forward pass [default: 8 on a GPU, 1 on a CPU]; results do not depend on it.", "runtime",
            field="batch_size", minimum=1, section="Speed and machine",
            results_depend=False),
    Setting("compile", "flag", False,
            "Compile the vision tower with torch.compile: faster on a GPU for long runs; the first batch "
            "at each size waits for the compilation (about a minute).", "runtime", field="compile",
            section="Speed and machine",
            results_depend=False),
    Setting("roi", "file", None,
            "Inspect only this region: a PNG mask (white = inspect) or a JSON file of rectangles and polygons "
            "(docs/regions.md). Maps are 0 outside it and nothing there raises the score.", "region",
            section="Inspection region"),
    Setting("roi_dir", "folder", None,
            "One ROI mask per image, under the same relative path (for parts that move); an image without its "
            "mask gets an error row.", "region", section="Inspection region"),
    Setting("roi_margin", "float", 0.05,
            "Context kept around the region's bounding box when cropping, as a fraction of its size.", "region",
            minimum=0, maximum=1, section="Inspection region"),
    Setting("crop", "flag", True,
            "With an ROI: cut the region's box from the frame before resizing, so the part gets the model's full "
            "resolution; --no-crop scores the whole frame and only masks.", "region", negatable=True,
            section="Inspection region"),
    Setting("verbose", "flag", False, "Say how the engine runs: device, precision and why it was chosen.",
            "runtime", short="-v", section="Speed and machine",
            results_depend=False),
    Setting("offline", "flag", False,
            "Never use the network: models must be in the cache (sets HF_HUB_OFFLINE=1).", "runtime",
            section="Speed and machine",
            results_depend=False),
)

SETTINGS_BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}
SETTING_NAMES: tuple[str, ...] = tuple(SETTINGS_BY_NAME)
# The engine config fields a bank never stores: this machine's choices that do not change the scores.
RUNTIME_FIELDS: tuple[str, ...] = tuple(s.field for s in SETTINGS if not s.results_depend and s.field)
# Settings whose value never changes a result (a --resume may change them).
SCORE_NEUTRAL: tuple[str, ...] = tuple(s.name for s in SETTINGS if not s.results_depend)


def names_with_role(*roles: str) -> tuple[str, ...]:
    """The settings of these roles, in schema order."""
    return tuple(setting.name for setting in SETTINGS if setting.role in roles)


def unknown_setting_error(name: str, known: Iterable[str] = SETTING_NAMES) -> SettingError:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return SettingError(name, f"unknown setting {name!r}{hint}")


def _settings_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    def default(setting: Setting) -> dataclasses.Field:
        return dataclasses.field(default=setting.default)

    return [(setting.name, Any, default(setting)) for setting in SETTINGS]


def _check_all(self: Any) -> None:
    for setting in SETTINGS:
        object.__setattr__(self, setting.name, setting.check(getattr(self, setting.name)))


def _engine_config(self: Any) -> EngineConfig:
    """The engine's config for these settings."""
    return EngineConfig(**{s.field: getattr(self, s.name) for s in SETTINGS if s.field is not None})


def _given(cls: type, **values: Any) -> Any:
    """Settings from keyword values, refusing unknown names with the closest known one."""
    for name in values:
        if name not in SETTINGS_BY_NAME:
            raise unknown_setting_error(name)
    return cls(**values)


def _replace(self: Any, **changes: Any) -> Any:
    for name in changes:
        if name not in SETTINGS_BY_NAME:
            raise unknown_setting_error(name)
    return dataclasses.replace(self, **changes)


def _to_dict(self: Any) -> dict[str, Any]:
    return {setting.name: _plain(getattr(self, setting.name)) for setting in SETTINGS}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# The dataclass is made from SETTINGS, so that a setting is never written out a second time.
Settings = dataclasses.make_dataclass(
    "Settings",
    _settings_fields(),
    frozen=True,
    namespace={
        "__doc__": "Engine settings by the names of the command line's options (``scales``, ``vision_weight``...): "
                   "checked on creation, a bad value raises :class:`SettingError` naming the setting. "
                   "See :data:`SETTINGS` for each one's meaning and default.",
        "__post_init__": _check_all,
        "engine_config": _engine_config,
        "replace": _replace,
        "to_dict": _to_dict,
        "of": classmethod(_given),
    },
)
Settings.__module__ = __name__


def config_from_dict(data: Any, source: str) -> EngineConfig:
    """An engine config read from a file (a bank): every field checked as its setting is, the file named."""
    from fade_cli.core.validation import Fields

    fields = Fields(data, source, "config")
    fields.unknown(f.name for f in dataclasses.fields(EngineConfig))
    values = {}
    for setting in SETTINGS:
        if setting.field is None:
            continue
        raw = fields._get(setting.field, _stored_default(setting))
        try:
            values[setting.field] = _checked_from_file(setting, raw)
        except SettingError as exc:
            raise fields.fail(setting.field, _expected(setting), raw) from exc
    return EngineConfig(**values)


def _stored_default(setting: Setting) -> Any:
    return list(setting.default) if isinstance(setting.default, tuple) else setting.default


def _checked_from_file(setting: Setting, raw: Any) -> Any:
    # A bank stores paths and sizes as JSON strings and lists; sizes must be a list there, not "240,448".
    if setting.kind == "sizes" and not isinstance(raw, list):
        raise SettingError(setting.name, "sizes must be a list")
    if setting.kind in ("file", "folder") and raw is not None and not isinstance(raw, str):
        raise SettingError(setting.name, "a path must be a string")
    return setting.check(raw)


def _expected(setting: Setting) -> str:
    if setting.choices:
        return f"one of {', '.join(setting.choices)}"
    if setting.kind in ("int", "float"):
        text = "an integer" if setting.kind == "int" else "a number"
        return f"{text} {_range_text(setting)}" if setting.minimum is not None or setting.maximum is not None else text
    return {"sizes": "a list of image sizes", "flag": "true or false", "optional_flag": "true, false or null",
            "device": "auto, cpu, cuda, cuda:N or mps"}.get(setting.kind, "a string")


__all__ = ["SETTINGS", "SCORE_NEUTRAL", "Setting", "SettingError", "Settings", "names_with_role"]
