"""Engine options shared by every command that runs the engine (detect, eval, bank build).

One decorator adds them; :func:`engine_config_from_options` turns the parsed
values into an :class:`EngineConfig`, and :func:`prompt_sets_from_options` reads
the prompt files. Nothing here imports torch.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import click
from click.core import ParameterSource

from fade_cli.config import EngineConfig, parse_sizes
from fade_cli.settings import SETTING_NAMES, SETTINGS, Setting
from fade_cli.prompting.prompt_set import PromptSet

ENGINE_OPTION_NAMES = SETTING_NAMES


class FiniteFloat(click.FloatRange):
    """A float option that refuses nan, inf and -inf (exit 2), optionally within a range.

    Every float option of every command uses it: NaN compares False with everything,
    so a NaN threshold or weight would pass any range check and judge every image OK.
    """

    def __init__(self, min: Optional[float] = None, max: Optional[float] = None, min_open: bool = False,
                 max_open: bool = False):
        super().__init__(min, max, min_open, max_open)
        if min is None and max is None:
            self.name = "float"

    def _describe_range(self) -> str:
        return "" if self.min is None and self.max is None else super()._describe_range()

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


def parsed_with(parse: Callable[[str], Any], errors: tuple[type[Exception], ...] = (ValueError,)) -> Callable:
    """A click callback giving ``parse(value)`` (an option not given stays None); ``errors`` become click's
    usage error naming the option (exit 2)."""

    def callback(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except errors as exc:
            raise click.BadParameter(str(exc)) from exc

    return callback


def _offline(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """Runs while parsing, before the command imports anything that reads HF_HUB_OFFLINE."""
    if value:
        from fade_cli.backbone.cache import go_offline

        go_offline()
    return value


def _click_type(setting: Setting) -> dict[str, Any]:
    """How click reads ``setting`` from the command line (the checks of fade_cli.settings, as click types)."""
    kind = setting.kind
    if kind == "int":
        return {"type": click.IntRange(min=setting.minimum, max=setting.maximum)}
    if kind == "float":
        return {"type": FiniteFloat(setting.minimum, setting.maximum)}
    if kind == "choice":
        return {"type": click.Choice(list(setting.choices))}
    if kind in ("flag", "optional_flag"):
        return {} if setting.negatable else {"is_flag": True}
    if kind == "sizes":
        return {"callback": parsed_with(parse_sizes)}
    if kind == "file":
        return {"type": click.Path(exists=True, dir_okay=False, readable=True)}
    if kind == "folder":
        return {"type": click.Path(file_okay=False)}
    return {}


def _cli_default(setting: Setting) -> Any:
    if setting.kind == "sizes":
        return ",".join(map(str, setting.default))
    return setting.default


# What only the command line does with a setting: --offline acts while parsing.
_CLI_ONLY = {"offline": {"is_eager": True, "callback": _offline}, "prompt_generator": {"metavar": "NAME"}}


def setting_option(setting: Setting) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The click option of one setting of the schema."""
    flag = f"{setting.flag}/--no-{setting.flag[2:]}" if setting.negatable else setting.flag
    declarations = [*([setting.short] if setting.short else []), flag, setting.name]
    keywords: dict[str, Any] = {"default": _cli_default(setting), "help": setting.help, **_click_type(setting),
                                **_CLI_ONLY.get(setting.name, {})}
    if setting.default is not None and setting.kind not in ("optional_flag",) and not (
            setting.kind == "flag" and not setting.negatable):
        keywords["show_default"] = True
    return click.option(*declarations, **keywords)


ENGINE_OPTIONS = [setting_option(setting) for setting in SETTINGS]


# `fade detect --out` and `fade eval --out` write report.html (and its thumbnails) unless told not to.
report_option = click.option(
    "--report/--no-report", default=True, show_default=True,
    help="With --out: write OUT/report.html, an offline page of the run (gallery, threshold explorer), and the "
         "thumbnails it shows.")


def add_options(command: Callable[..., Any], options: list) -> Callable[..., Any]:
    """Add ``options`` (click.option decorators) to a click command, in the order listed."""
    for option in reversed(options):
        command = option(command)
    return command


def engine_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add every engine option to a click command."""
    return add_options(command, ENGINE_OPTIONS)


def refuse_without(ctx: click.Context, names: tuple[str, ...], flag: str, purpose: str) -> None:
    """Options ``names`` set up what ``flag`` turns on: given without it, they are refused (exit 2)."""
    stray = [name for name in names if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)]
    if stray:
        flags = ", ".join("--" + name.replace("_", "-") for name in stray)
        raise click.UsageError(f"{flags} given without {flag}: they {purpose}")


def pop_engine_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the engine options from a command's kwargs and return them."""
    return {name: kwargs.pop(name) for name in ENGINE_OPTION_NAMES}


def engine_config_from_options(options: dict[str, Any]) -> EngineConfig:
    return EngineConfig(**{setting.field: options[setting.name] for setting in SETTINGS if setting.field})


def prompt_sets_from_options(options: dict[str, Any]) -> tuple[Optional[PromptSet], Optional[PromptSet]]:
    """(classification, segmentation) prompt sets from files, else from --prompt-generator; None: built-in default."""
    from fade_cli.detector import PROMPT_SETTINGS, prompt_sets_for

    return prompt_sets_for(**{name: options[name] for name in PROMPT_SETTINGS})


__all__ = [
    "FiniteFloat",
    "add_options",
    "parsed_with",
    "engine_config_from_options",
    "engine_options",
    "pop_engine_options",
    "prompt_sets_from_options",
    "refuse_without",
]
