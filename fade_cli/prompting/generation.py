"""Running a generator: options resolved and checked, output cleaned, meta stamped.

Every caller (``fade prompts generate``, ``fade detect --prompt-generator``,
library code) goes through :func:`run_generator`, so every generator, built-in
or third-party, gets the same checks and the same ``meta`` block.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Union

from fade_cli.core import strict_json
from fade_cli.io.files import require_regular_file
from fade_cli.core.validation import check_finite
from fade_cli import __version__
from fade_cli.core.errors import FadeError, InputError
from fade_cli.prompting.prompt_set import PromptSet
from fade_cli.prompting.cleaning import cleaned_prompt_set
from fade_cli.prompting.interface import GeneratorOption, PromptGenerator
from fade_cli.prompting.registry import GeneratorRegistry, discover_generators


def generate_prompt_set(
    name: str,
    class_name: str,
    options: Optional[Mapping[str, Any]] = None,
    plugins_dir: Union[str, Path, None] = None,
    registry: Optional[GeneratorRegistry] = None,
) -> PromptSet:
    """The prompt set the generator ``name`` writes for ``class_name`` (options by Python name)."""
    registry = registry if registry is not None else discover_generators(plugins_dir)
    return run_generator(registry.get(name), class_name, options or {})


def run_generator(generator: PromptGenerator, class_name: str, given: Mapping[str, Any]) -> PromptSet:
    """Call ``generator`` with resolved options; clean, check and stamp what it returns."""
    class_name = class_name.strip()
    if not class_name:
        raise InputError("the class name is empty")
    options = resolve_options(generator, given)
    label = f"prompt generator '{generator.name}'"
    try:
        produced = generator.generate(class_name, **options)
    except FadeError as exc:
        raise type(exc)(f"{label}: {exc}") from exc
    except Exception as exc:  # plugin code: report which generator failed and how
        raise FadeError(f"{label} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(produced, PromptSet):
        raise FadeError(f"{label} returned {type(produced).__name__}, not a PromptSet")
    cleaned = cleaned_prompt_set(produced, label)
    meta = generation_meta(generator, class_name, options, produced.meta)
    return PromptSet(normal=cleaned.normal, abnormal=cleaned.abnormal, meta=meta)


def resolve_options(generator: PromptGenerator, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every declared option with its value: given, else the default; checked and converted."""
    declared = {option.name: option for option in generator.options}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        accepted = ", ".join(option.flag for option in generator.options) or "none"
        raise InputError(f"prompt generator '{generator.name}' has no option "
                         f"{', '.join('--' + u.replace('_', '-') for u in unknown)} (its options: {accepted})")
    resolved = {}
    for option in generator.options:
        value = given.get(option.name)
        if value is None or (option.multiple and not value):
            value = option.default
        if option.required and (value is None or (option.multiple and not value)):
            raise InputError(f"prompt generator '{generator.name}' needs the option {option.flag} (fade detect "
                             "--prompt-generator passes none: write the set with `fade prompts generate`, then "
                             "use --prompts)")
        resolved[option.name] = _converted(option, value)
    return resolved


def _converted(option: GeneratorOption, value: Any) -> Any:
    if value is None:
        return () if option.multiple else None
    if option.multiple:
        values = [value] if isinstance(value, (str, Path)) else list(value)
        return tuple(_converted_one(option, item) for item in values)
    return _converted_one(option, value)


def _converted_one(option: GeneratorOption, value: Any) -> Any:
    if option.type is bool:
        if not isinstance(value, bool):
            raise InputError(f"{option.flag} is an on/off flag, not {value!r}")
        return value
    try:
        converted = option.type(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{option.flag}: {value!r} is not a valid {option.type.__name__}") from exc
    if option.type is Path:
        require_regular_file(converted, f"{option.flag}: file")
    if option.type is float:
        check_finite(converted, option.flag)
    if option.choices is not None and converted not in option.choices:
        raise InputError(f"{option.flag}: {converted!r} is not one of {', '.join(option.choices)}")
    return converted


def generation_meta(
    generator: PromptGenerator, class_name: str, options: Mapping[str, Any], extra: Mapping[str, Any]
) -> dict[str, Any]:
    """What made this set, enough to make it again: generator, class, options, versions, plus the generator's notes."""
    meta: dict[str, Any] = {
        "generator": generator.name,
        "generator_version": str(getattr(generator, "version", "")),
        "class_name": class_name,
        "options": {name: jsonable(value) for name, value in sorted(options.items())},
        "fade_version": __version__,
    }
    for key, value in extra.items():
        meta.setdefault(key, jsonable(value))
    try:
        strict_json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise FadeError(f"prompt generator '{generator.name}' returned meta that is not JSON: {exc}") from exc
    return meta


def jsonable(value: Any) -> Any:
    """Option values as JSON: paths as strings, tuples as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [jsonable(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    return value
