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

from fade_cli.config import (
    DEFAULT_CLS_SIZE,
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    DEFAULT_SEG_SIZES,
    DEFAULT_TEXT_TEMPLATE,
    MAX_GEM_ITERS,
    MAX_INPUT_SIZE,
    EngineConfig,
    parse_sizes,
)
from fade_cli.prompt_set import PromptSet, load_prompt_set

ENGINE_OPTION_NAMES = (
    "model", "pretrained", "weights", "model_config", "cache_dir", "device", "precision",
    "class_name", "scales", "cls_size", "text_template", "prompts", "cls_prompts", "seg_prompts",
    "prompt_generator",
    "cls_classname", "seg_classname", "gem_depth", "gem_iters", "gem_temperature", "vision_feature",
    "vision_multiplier", "vision_weight", "use_query", "image_score", "batch_size", "compile", "verbose", "offline",
)


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
        from fade_cli.model_cache import go_offline

        go_offline()
    return value


def _existing_file() -> click.Path:
    return click.Path(exists=True, dir_okay=False, readable=True)


ENGINE_OPTIONS = [
    click.option("--model", default=DEFAULT_MODEL, show_default=True, help="open_clip ViT architecture."),
    click.option("--pretrained", default=DEFAULT_PRETRAINED, show_default=True,
                 help="Pretrained tag, downloaded and cached by open_clip on a connected machine."),
    click.option("--weights", type=_existing_file(), help="Local checkpoint file (overrides --pretrained)."),
    click.option("--model-config", type=_existing_file(),
                 help="Custom architecture as an open_clip JSON config; its file stem is the model name."),
    click.option("--cache-dir", type=click.Path(file_okay=False),
                 help="Model cache folder [default: $FADE_CACHE_DIR, else the Hugging Face cache]."),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
    click.option("--precision", type=click.Choice(["fp32", "auto", "tf32", "bf16", "fp16"]), default="fp32",
                 show_default=True,
                 help="fp32 reproduces the published numbers; auto: bf16 where the hardware computes it natively "
                      "(CPUs with AMX or AVX512-BF16, GPUs with bf16), else fp32 (--verbose says why); tf32 is fp32 "
                      "with TF32 matrix products on NVIDIA GPUs (fp32 elsewhere); bf16/fp16 as asked (slow on a "
                      "CPU without bf16 instructions)."),
    click.option("--class", "class_name", default="object", show_default=True,
                 help="Object name put into the prompts, e.g. screw (underscores become spaces)."),
    click.option("--scales", callback=parsed_with(parse_sizes), default=",".join(map(str, DEFAULT_SEG_SIZES)),
                 show_default=True,
                 help="Segmentation input sizes, comma-separated; fewer or smaller sizes run faster."),
    click.option("--cls-size", type=click.IntRange(min=16, max=MAX_INPUT_SIZE), default=DEFAULT_CLS_SIZE, show_default=True,
                 help="Input size for the image-level (classification) score."),
    click.option("--text-template", default=DEFAULT_TEXT_TEMPLATE, show_default=True,
                 help="Wrapper put around every prompt; {} marks the prompt."),
    click.option("--prompts", type=_existing_file(), help="Prompt set JSON for both stages."),
    click.option("--cls-prompts", type=_existing_file(), help="Prompt set JSON for the image score."),
    click.option("--seg-prompts", type=_existing_file(), help="Prompt set JSON for the anomaly map."),
    click.option("--prompt-generator", metavar="NAME",
                 help="Generate the prompt sets for --class with this generator and its defaults (see `fade prompts "
                      "generators`; local plugins from $FADE_PLUGINS_DIR); prompt files win over it."),
    click.option("--cls-classname/--no-cls-classname", default=True, show_default=True,
                 help="Fill {classname} with --class in image-score prompts (else 'object')."),
    click.option("--seg-classname/--no-seg-classname", default=False, show_default=True,
                 help="Fill {classname} with --class in map prompts (else 'object')."),
    click.option("--gem-depth", type=click.IntRange(min=2), default=7, show_default=True,
                 help="GEM depth D: the last D-1 blocks get the GEM stream."),
    click.option("--gem-iters", type=click.IntRange(min=0, max=MAX_GEM_ITERS), default=1, show_default=True,
                 help="Self-self attention iterations."),
    click.option("--gem-temperature", type=FiniteFloat(), help="Constant inverse temperature [default: per image]."),
    click.option("--vision-feature", type=click.Choice(["clip", "gem"]),
                 help="Patch features of the memory bank [default: gem zero-shot, clip few-shot and --mutual]."),
    click.option("--vision-multiplier", type=FiniteFloat(),
                 help="Vision map multiplier [default: 80 zero-shot, 3.5 few-shot and --mutual]."),
    click.option("--vision-weight", type=FiniteFloat(0, 1),
                 help="Weight of the vision map in the fusion [default: 0.5 zero-shot, 0.85 few-shot and --mutual]."),
    click.option("--use-query/--no-use-query", default=None,
                 help="Add the query's own patches to the bank (2nd neighbour) [default: on zero-shot, off few-shot]."),
    click.option("--image-score", type=click.Choice(["language", "vision", "mean"]),
                 help="Image score: the language score, the vision score (max of the vision map), or their mean "
                      "[default: language zero-shot, mean few-shot and --mutual]."),
    click.option("--batch-size", type=click.IntRange(min=1),
                 help="Images per forward pass [default: 8 on a GPU, 1 on a CPU]; results do not depend on it."),
    click.option("--compile", is_flag=True,
                 help="Compile the vision tower with torch.compile: faster on a GPU for long runs; the first batch "
                      "at each size waits for the compilation (about a minute)."),
    click.option("-v", "--verbose", is_flag=True,
                 help="Say how the engine runs: device, precision and why it was chosen."),
    click.option("--offline", is_flag=True, is_eager=True, callback=_offline,
                 help="Never use the network: models must be in the cache (sets HF_HUB_OFFLINE=1)."),
]


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
    return EngineConfig(
        model=options["model"],
        pretrained=options["pretrained"],
        weights=options["weights"],
        model_config=options["model_config"],
        cache_dir=options["cache_dir"],
        device=options["device"],
        precision=options["precision"],
        class_name=options["class_name"],
        cls_size=options["cls_size"],
        seg_sizes=options["scales"],
        text_template=options["text_template"],
        cls_use_classname=options["cls_classname"],
        seg_use_classname=options["seg_classname"],
        gem_depth=options["gem_depth"],
        gem_iters=options["gem_iters"],
        gem_temperature=options["gem_temperature"],
        vision_feature=options["vision_feature"],
        vision_multiplier=options["vision_multiplier"],
        vision_weight=options["vision_weight"],
        use_query=options["use_query"],
        image_score=options["image_score"],
        batch_size=options["batch_size"],
        compile=options["compile"],
    )


def prompt_sets_from_options(options: dict[str, Any]) -> tuple[Optional[PromptSet], Optional[PromptSet]]:
    """(classification, segmentation) prompt sets from files, else from --prompt-generator; None: built-in default."""
    both = load_prompt_set(options["prompts"]) if options["prompts"] else None
    cls_set = load_prompt_set(options["cls_prompts"]) if options["cls_prompts"] else both
    seg_set = load_prompt_set(options["seg_prompts"]) if options["seg_prompts"] else both
    if options["prompt_generator"] and (cls_set is None or seg_set is None):
        from fade_cli.prompting import generate_prompt_set

        generated = generate_prompt_set(options["prompt_generator"], options["class_name"])
        cls_set = cls_set if cls_set is not None else generated
        seg_set = seg_set if seg_set is not None else generated
    return cls_set, seg_set


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
