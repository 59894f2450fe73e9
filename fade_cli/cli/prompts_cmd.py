"""`fade prompts`: generate prompt sets with pluggable generators, list the generators, inspect a set.

The work lives in :mod:`fade_cli.prompting`; this module parses options and
prints. `generate` builds its options from the chosen generator, so
`fade prompts generate --generator llm --help` shows the llm options.
Nothing here imports torch unless a generator does.
"""
from __future__ import annotations

import contextlib
import inspect
import shlex
from pathlib import Path
from typing import Any, Callable, Optional

import click

from fade_cli.cli.help_sections import SectionedCommand, sectioned
from fade_cli.cli.options import FiniteFloat
from fade_cli.prompting.prompt_set import PLACEHOLDER, STATES, PromptSet, load_prompt_set
from fade_cli.prompting import (
    DEFAULT_GENERATOR,
    PLUGINS_DIR_ENV,
    GeneratorOption,
    GeneratorRegistry,
    PromptGenerator,
    discover_generators,
    reporting_to,
    run_generator,
)
from fade_cli.prompting.cleaning import duplicate_groups

EXIT_CODES_HELP = """\b
Exit codes:
  0  done
  2  usage or input error (unknown generator, bad option or template, unreadable file)
  3  failure while running (a plugin failed, the language model cannot be loaded)"""
_REGISTRY_KEY = "fade.prompts.registry"
_GENERATOR_KEY = "fade.prompts.generator"
_OPTIONS_KEY = "fade.prompts.generator_options"


@click.group()
def prompts() -> None:
    """Generate and inspect prompt sets (the sentences behind the language-guided scores).

    \b
      fade prompts generate bottle --out bottle.json           # built-in industrial vocabulary
      fade prompts generate weld --generator template --template my.j2
      fade prompts generate pcb --generator llm --llm-model ./qwen-0.5b --count 200
      fade prompts generators                                  # what is installed, with help
      fade prompts show bottle.json                            # counts, samples, duplicates
      fade detect ./imgs --class bottle --prompts bottle.json
    """


def _peek(args: list[str], flag: str, short: Optional[str] = None) -> Optional[str]:
    """The value of ``flag`` in raw arguments, before click parses them (None when absent)."""
    for index, arg in enumerate(args):
        if arg == "--":
            break
        if arg in (flag, short) and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def click_option(option: GeneratorOption) -> click.Option:
    """A generator option as a click option (bool options become --x/--no-x)."""
    if option.type is bool:
        decls = [option.name, f"{option.flag}/--no-{option.flag[2:]}"]
        return click.Option(decls, default=bool(option.default), show_default=True, help=option.help)
    if option.type is Path:
        value_type: Any = click.Path(exists=True, dir_okay=False, path_type=Path)
    elif option.choices is not None:
        value_type = click.Choice(option.choices)
    elif option.type is float:
        value_type = FiniteFloat()
    else:
        value_type = option.type
    # No default at all (not None) when the option has none, or click would not enforce `required`.
    default = {"default": option.default, "show_default": True} if option.default not in (None, ()) else {}
    return click.Option([option.name, option.flag], type=value_type, multiple=option.multiple, metavar=option.metavar,
                        required=option.required, help=option.help, **default)


class GeneratorCommand(SectionedCommand):
    """A command whose options are those of the generator named by --generator (found before parsing)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        registry = discover_generators(_peek(args, "--plugins-dir"))
        ctx.meta[_REGISTRY_KEY] = registry
        generator = registry.get(_peek(args, "--generator", "-g") or DEFAULT_GENERATOR)
        ctx.meta[_GENERATOR_KEY] = generator
        ctx.meta[_OPTIONS_KEY] = [click_option(option) for option in generator.options]
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            owners = [name for name in registry.names()
                      if any(option.flag == exc.option_name for option in registry.entries[name].generator.options)]
            if owners:
                exc.message += f" It belongs to generator {' and '.join(owners)}: add --generator {owners[0]}."
            raise

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        return params[:-1] + ctx.meta.get(_OPTIONS_KEY, []) + params[-1:]  # keep --help last

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        generator = ctx.meta.get(_GENERATOR_KEY)
        registry = ctx.meta.get(_REGISTRY_KEY)
        if generator is not None and registry is not None:
            with formatter.section(f"Generator '{generator.name}'"):
                formatter.write_text(inspect.cleandoc(generator.help))
            formatter.write_paragraph()
            formatter.write_text(f"Installed generators: {', '.join(registry.names())}; "
                                 "`fade prompts generate --generator NAME --help` shows the options of each.")
        super().format_epilog(ctx, formatter)


@prompts.command(cls=GeneratorCommand, epilog=EXIT_CODES_HELP, short_help="Write a prompt set for a part, as JSON.",
                 sections={"Everyday": ("generator", "out", "overwrite", "quiet"), "Other options": ("plugins_dir",)})
@click.argument("class_name", metavar="CLASS")
@click.option("-g", "--generator", default=DEFAULT_GENERATOR, show_default=True, metavar="NAME",
              help="Prompt generator (see `fade prompts generators`).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the set here [default: stdout].")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@click.option("--plugins-dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help=f"Folder of plugin modules [default: ${PLUGINS_DIR_ENV}].")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary on stderr.")
@click.pass_context
def generate(ctx: click.Context, class_name: str, generator: str, out: Optional[Path], overwrite: bool,
             plugins_dir: Optional[Path], quiet: bool, **generator_options: Any) -> None:
    """Write a prompt set for the part CLASS (e.g. screw, weld_seam, pcb) as JSON.

    The output is the format `fade detect --prompts` reads, with a `meta` block
    recording the generator, its options and versions. The same inputs give
    byte-identical output.

    \b
      fade prompts generate bottle --out bottle.json
      fade prompts generate metal_nut --family metal --augment
      fade prompts generate weld --generator template --template my.j2 --var process=laser
      fade prompts generate pcb --generator llm --llm-model ./qwen-0.5b --count 200 --out pcb.json
    """
    chosen: PromptGenerator = ctx.meta[_GENERATOR_KEY]
    if out is not None:
        from fade_cli.io.folder_lock import single_output_file

        ctx.with_resource(single_output_file(out, overwrite))
    reporter = _TerminalReporter(quiet)
    try:
        with reporting_to(reporter):
            prompt_set = run_generator(chosen, class_name, generator_options)
    finally:
        reporter.close()
    _write(prompt_set, out)
    if not quiet:
        where = f" to {out}" if out is not None else ""
        click.echo(f"Wrote {len(prompt_set.normal)} normal and {len(prompt_set.abnormal)} abnormal prompts{where} "
                   f"(generator {chosen.name}).", err=True)


def _write(prompt_set: PromptSet, out: Optional[Path]) -> None:
    """stdout, or ``out`` through a temporary file renamed into place (never half a file)."""
    text = prompt_set.to_json()
    if out is None:
        click.echo(text, nl=False)
        return
    from fade_cli.io.atomic import atomic_write

    atomic_write(out, lambda handle: handle.write(text.encode("utf-8")))


class _TerminalReporter:
    """Progress of a generator as a bar on stderr; warnings as yellow lines. Opened lazily: most generators are instant."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self._stack = contextlib.ExitStack()
        self._advance: Callable[[], None] = lambda: None

    def start(self, total: int, description: str) -> None:
        from fade_cli.cli.console import progress_bar, stderr_console

        self._stack.close()
        self._advance = self._stack.enter_context(progress_bar(stderr_console(), self.quiet, total, description))

    def advance(self, steps: int = 1) -> None:
        for _ in range(steps):
            self._advance()

    def warn(self, message: str) -> None:
        from fade_cli.cli.console import print_warning, stderr_console

        print_warning(stderr_console(), message)

    def close(self) -> None:
        self._stack.close()


@prompts.command(short_help="List the installed generators with their options.",
                 **sectioned(Everyday=("plugins_dir",)))
@click.option("--plugins-dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help=f"Folder of plugin modules [default: ${PLUGINS_DIR_ENV}].")
def generators(plugins_dir: Optional[Path]) -> None:
    """List the installed prompt generators with their help and options, and any broken plugin."""
    registry = discover_generators(plugins_dir)
    for name in registry.names():
        _describe_generator(registry, name)
    if registry.broken:
        click.echo("Broken plugins (not usable; the others work):")
        for plugin in registry.broken:
            click.echo(f"  {plugin.name} ({plugin.source}): {plugin.error}")


def _describe_generator(registry: GeneratorRegistry, name: str) -> None:
    entry = registry.entries[name]
    click.echo(click.style(name, bold=True) + ("  (default)" if name == DEFAULT_GENERATOR else ""))
    for line in inspect.cleandoc(entry.generator.help).splitlines():
        click.echo(f"  {line}".rstrip())
    click.echo(f"  from: {entry.source}")
    for option in entry.generator.options:
        click.echo(f"  {_option_synopsis(option):<28} {option.help}")
    click.echo("")


def _option_synopsis(option: GeneratorOption) -> str:
    if option.type is bool:
        return f"{option.flag}/--no-{option.flag[2:]}"
    metavar = option.metavar or ("FILE" if option.type is Path else option.type.__name__.upper())
    return f"{option.flag} {metavar}" + (" ..." if option.multiple else "")


@prompts.command(epilog=EXIT_CODES_HELP, short_help="Counts, samples and duplicates of a prompt set.",
                 **sectioned(Everyday=("samples",)))
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--samples", type=click.IntRange(min=0), default=5, show_default=True,
              help="Sentences shown per state.")
def show(file: Path, samples: int) -> None:
    """Summarise a prompt set FILE: counts, samples, duplicates and how it was made."""
    prompt_set = load_prompt_set(file)
    click.echo(f"{file}: {len(prompt_set.normal)} normal, {len(prompt_set.abnormal)} abnormal prompts")
    for state in STATES:
        sentences = getattr(prompt_set, state)
        with_placeholder = sum(PLACEHOLDER in sentence for sentence in sentences)
        duplicates = duplicate_groups(sentences)
        click.echo(f"  {state}: {with_placeholder} with {PLACEHOLDER}, "
                   f"{sum(count - 1 for _, count in duplicates)} duplicate(s)")
        for text, count in duplicates:
            click.echo(f"    {count}x {text}")
    _show_meta(prompt_set.meta)
    for state in STATES:
        sentences = getattr(prompt_set, state)
        if samples:
            click.echo(f"{state} (first {min(samples, len(sentences))} of {len(sentences)}):")
            for sentence in sentences[:samples]:
                click.echo(f"  {sentence}")


def _show_meta(meta: dict[str, Any]) -> None:
    if "generator" not in meta:
        click.echo("made by: unknown (no generator in meta)")
        return
    click.echo(f"made by: generator {meta['generator']} {meta.get('generator_version', '')}".rstrip()
               + f", fade {meta.get('fade_version', '?')}, class {meta.get('class_name', '?')}")
    click.echo(f"regenerate: {regenerate_command(meta)}")


def regenerate_command(meta: dict[str, Any]) -> str:
    """The `fade prompts generate` command line that remakes a set from its meta block."""
    words = ["fade", "prompts", "generate", str(meta.get("class_name", "object")), "--generator", str(meta["generator"])]
    options = meta.get("options")
    for name, value in (options if isinstance(options, dict) else {}).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, list):
            for item in value:
                words += [flag, str(item)]
        elif value is not None:
            words += [flag, str(value)]
    return shlex.join(words)
