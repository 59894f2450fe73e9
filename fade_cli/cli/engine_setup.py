"""Setting up the engine of a run from a saved bank, and thresholds from a bank or a calibration.

Shared by the commands that score images (`detect`, `watch`) and `bank build`. Nothing here imports
torch at module level.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import click
from click.core import ParameterSource
from rich.console import Console

from fade_cli.bank.bank import ReferenceBank, load_bank
from fade_cli.bank.calibration import DEFAULT_MARGIN, Calibration, Thresholds, check_calibrated_thresholds
from fade_cli.bank.calibration import choose_thresholds, describe_thresholds
from fade_cli.bank.compat import BankMismatchError, describe_identity, model_file_contradictions
from fade_cli.bank.compat import precision_warning, setting_differences
from fade_cli.cli.options import ENGINE_OPTION_NAMES, engine_config_from_options, prompt_sets_from_options
from fade_cli.cli.console import download_announcer, print_warning, progress_bar, shows_progress, status_line
from fade_cli.config import EngineConfig
from fade_cli.core.errors import InputError
from fade_cli.core.memory import guard_engine_failures
from fade_cli.prompting.prompt_set import PromptSet
from fade_cli.detector import bank_run_config
from fade_cli.settings import RUNTIME_FIELDS, SETTINGS, names_with_role

if TYPE_CHECKING:  # importing the model module pulls in torch
    from fade_cli.backbone.model import ModelSource

# The roles of the settings (fade_cli.settings): which the bank decides, which this machine does.
RUNTIME_OPTIONS = names_with_role("runtime")
MODEL_OPTIONS = names_with_role("model")
PROMPT_OPTIONS = names_with_role("prompts")
# Settings compared with the bank's as they are, and vision settings whose "not given" means the preset:
# compared as the run would use them (the preset's attribute is the setting's name without "vision_").
PLAIN_FIELDS = {s.name: s.field for s in SETTINGS if s.role == "stored"}
# Where frames are inspected: a bank stores its ROI, margin and cropping (per-image masks come with each run).
REGION_OPTIONS = names_with_role("region")
PRESET_FIELDS = {s.name: s.name.removeprefix("vision_") for s in SETTINGS if s.role == "preset"}


def given_engine_options(ctx: click.Context) -> set[str]:
    """The engine options the user actually set (command line or environment), not defaults."""
    given = set()
    for name in ENGINE_OPTION_NAMES:
        source = ctx.get_parameter_source(name)
        if source is not None and source not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP):
            given.add(name)
    return given


def load_run_bank(
    ctx: click.Context, bank_path: Path, options: dict[str, Any], refs: Optional[Path], calibrate: bool
) -> tuple[ReferenceBank, EngineConfig]:
    """Read a bank for a run and the config to run it with; contradicting options are refused (exit 2)."""
    if refs is not None:
        raise InputError("--bank already holds the reference images; drop --refs (or drop --bank)")
    if calibrate:
        raise InputError("--calibrate needs --refs; a bank is calibrated when it is built (`fade bank build`)")
    bank = load_bank(bank_path)
    given = given_engine_options(ctx)
    problems = _contradictions(ctx, bank, options, given)
    if problems:
        raise BankMismatchError(
            f"options contradict the bank {bank_path}: {'; '.join(problems)}. The bank sets the model and the "
            "settings: drop these options, or rebuild the bank with them (`fade bank build`)"
        )
    # How this machine runs the bank, and where its model files are here (None: where it was built).
    here = {s.name: options[s.name] for s in SETTINGS if s.field in RUNTIME_FIELDS}
    here.update(weights=options["weights"], model_config=options["model_config"])
    if "precision" in given:
        here["precision"] = options["precision"]
    return bank, bank_run_config(bank, here)


def _contradictions(ctx: click.Context, bank: ReferenceBank, options: dict[str, Any], given: set[str]) -> list[str]:
    model_given = {name: options[name] for name in MODEL_OPTIONS if name in given}
    problems = [f"{text} (the bank's model: {describe_identity(bank.identity)})"
                for text in model_file_contradictions(bank, **model_given, cache_dir=options["cache_dir"])]
    problems += _setting_problems(ctx, bank, engine_config_from_options(options), given)
    if given & set(PROMPT_OPTIONS):
        problems += _prompt_problems(bank, options)
    problems += [f"{_flag(ctx, name, options[name])} (the bank sets the inspection region)"
                 for name in REGION_OPTIONS if name in given and name != "roi_dir"]
    return problems


def _setting_problems(ctx: click.Context, bank: ReferenceBank, requested: EngineConfig, given: set[str]) -> list[str]:
    """Settings given that differ from the bank's; vision settings are compared as the few-shot run uses them."""
    names = [name for name in ENGINE_OPTION_NAMES if name in given]
    plain = {PLAIN_FIELDS[name]: name for name in names if name in PLAIN_FIELDS}
    preset = {PRESET_FIELDS[name]: name for name in names if name in PRESET_FIELDS}
    differences = [(plain, setting_differences(bank.config, requested, plain)),
                   (preset, setting_differences(bank.config.preset(True), requested.preset(True), preset))]
    return [f"{_flag(ctx, option[field], asked)} (the bank: {_flag(ctx, option[field], saved)})"
            for option, found in differences for field, (saved, asked) in found.items()]


def _prompt_problems(bank: ReferenceBank, options: dict[str, Any]) -> list[str]:
    cls_set, seg_set = prompt_sets_from_options(options)
    problems = []
    if cls_set is not None and cls_set != bank.cls_prompts:
        problems.append("the classification prompts given differ from the bank's")
    if seg_set is not None and seg_set != bank.seg_prompts:
        problems.append("the segmentation prompts given differ from the bank's")
    return problems


def _flag(ctx: click.Context, name: str, value: Any) -> str:
    """How the option would be written on the command line, e.g. ``--scales 240,320``."""
    param = next(p for p in ctx.command.params if p.name == name)
    if isinstance(value, bool) and getattr(param, "secondary_opts", None):
        return param.opts[0] if value else param.secondary_opts[0]
    shown = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else value
    return f"{param.opts[0]} {shown}"


def engine_for_bank(bank: ReferenceBank, config: EngineConfig, source: str, console: Console, quiet: bool):
    """Load the bank's model and rebuild the engine from the bank (no text or reference encoding)."""
    return engines_for_banks([(bank, config, source)], console, quiet)[0]


def engines_for_banks(banks: list[tuple[ReferenceBank, EngineConfig, str]], console: Console, quiet: bool) -> list:
    """One engine per (bank, config, source); banks of the same model on the same device share one loaded model.

    A bank holds its prompt embeddings, so only the vision tower's weights are read.
    """
    from fade_cli.detector import engine_for_bank

    engines = []
    for bank, config, source in banks:
        with loading_model(config, console, quiet, "Loading model...") as model_source:
            engines.append(engine_for_bank(bank, config, source, model_source))
    return engines


def calibrate_references(engine, ref_files: list, margin: float, console: Console, quiet: bool) -> Calibration:
    """Leave-one-out over the references already in ``engine``, with a progress bar."""
    from fade_cli.detector import calibrate_references as leave_one_out

    with progress_bar(console, quiet, total=len(ref_files), description="Calibrating (leave-one-out)") as advance:
        return leave_one_out(engine, ref_files, margin, on_done=advance)


@dataclass(frozen=True)
class RunThresholds:
    """The thresholds a run uses and, when they come from a bank or a calibration, one line saying where."""

    thresholds: Thresholds
    report: Optional[str] = None


def bank_thresholds(bank: ReferenceBank, source: str, given: Thresholds) -> RunThresholds:
    """The bank's thresholds, each replaced by the one given on the command line."""
    from fade_cli.detector import thresholds_of_bank

    chosen = thresholds_of_bank(bank, given)
    return RunThresholds(chosen, f"Thresholds of the bank {source}: {describe_thresholds(chosen, bank.calibration)}")


def calibrated_thresholds(calibration: Calibration, given: Thresholds) -> RunThresholds:
    chosen = choose_thresholds(calibration, given)
    return RunThresholds(chosen, f"Thresholds from the references: {describe_thresholds(chosen, calibration)}")


@dataclass(frozen=True)
class RunSetup:
    """What a scoring run (detect, watch) is configured with: options and prompt sets, or a saved bank."""

    config: EngineConfig
    cls_prompts: Optional[PromptSet] = None
    seg_prompts: Optional[PromptSet] = None
    bank: Optional[ReferenceBank] = None
    bank_path: Optional[Path] = None
    verbose: bool = False
    regions: Any = None  # where frames are inspected (fade_cli.io.roi.RegionPlan); None: whole frames


def read_run_setup(
    ctx: click.Context, options: dict[str, Any], refs: Optional[Path], bank_path: Optional[Path], calibrate: bool
) -> RunSetup:
    """The run's settings, checked before any image is read or the model is loaded."""
    from fade_cli.detector import regions_of, regions_of_bank
    from fade_cli.settings import Settings

    verbose = options["verbose"]
    if bank_path is not None:
        bank, config = load_run_bank(ctx, bank_path, options, refs, calibrate)
        regions = regions_of_bank(bank, options["roi_dir"], str(bank_path))
        return RunSetup(config, bank=bank, bank_path=bank_path, verbose=verbose, regions=regions)
    regions = regions_of(Settings.of(**{name: options[name] for name in REGION_OPTIONS}))
    return RunSetup(engine_config_from_options(options), *prompt_sets_from_options(options), verbose=verbose,
                    regions=regions)


def start_engine(
    setup: RunSetup,
    ref_files: list,
    given: Thresholds,
    console: Console,
    quiet: bool,
    calibrate: bool = False,
    margin: float = DEFAULT_MARGIN,
) -> tuple[Any, RunThresholds]:
    """The engine of a run and the thresholds to use: the ones ``given``, the rest from its bank or a calibration
    on ``ref_files``.

    Without a bank or a calibration the thresholds are the ones given, and there is no report line.
    """
    if setup.bank is not None:
        source = str(setup.bank_path)
        engine = guard_engine_failures(lambda: engine_for_bank(setup.bank, setup.config, source, console, quiet))
        engine.regions = setup.regions
        report_engine_setup(console, setup.verbose, engine.device, engine.precision)
        chosen = bank_thresholds(setup.bank, source, given)
        warning = precision_warning(setup.bank, chosen.thresholds, engine.precision.precision, source)
        if warning:
            print_warning(console, warning)
        return engine, chosen
    engine = build_engine(setup.config, setup.cls_prompts, setup.seg_prompts, ref_files, console, quiet,
                          setup.regions)
    report_engine_setup(console, setup.verbose, engine.device, engine.precision)
    if not calibrate:
        return engine, RunThresholds(choose_thresholds(None, given))
    calibration = guard_engine_failures(lambda: calibrate_references(engine, ref_files, margin, console, quiet))
    chosen = calibrated_thresholds(calibration, given)
    for warning in check_calibrated_thresholds(calibration, chosen.thresholds):
        print_warning(console, warning)
    return engine, chosen


def report_engine_setup(console: Console, verbose: bool, device: Any, precision: Any) -> None:
    """With --verbose: the device and the precision (a ``PrecisionChoice``), and why that precision."""
    if verbose:
        console.print(f"Engine on {device}, {precision.describe()}", markup=False, highlight=False, soft_wrap=True)


def build_engine(config: EngineConfig, cls_prompts, seg_prompts, ref_files: list, console: Console, quiet: bool,
                 regions: Any = None):
    """Load the model, encode the prompts and the references (cut to ``regions``), with a status line and a
    progress bar."""
    from fade_cli.engine import FadeEngine
    from fade_cli.runs.runner import load_references

    with loading_model(config, console, quiet, "Loading model and encoding prompts...") as source:
        engine = guard_engine_failures(lambda: FadeEngine.from_config(config, cls_prompts, seg_prompts, source=source))
    engine.regions = regions
    if ref_files:
        with progress_bar(console, quiet, total=None, description=f"Encoding {len(ref_files)} reference(s)"):
            guard_engine_failures(lambda: load_references(engine, ref_files))
    return engine


@contextlib.contextmanager
def loading_model(config: EngineConfig, console: Console, quiet: bool, text: str) -> Iterator[ModelSource]:
    """Fetch the weights of a pretrained tag first (one line, then a download bar), then a spinner with ``text``;
    yields the checked model source.

    The download comes before the spinner so that its bar is not drawn under it; the model
    loaded inside then finds the weights in the cache.
    """
    from fade_cli.engine.detector import checked_model_source
    from fade_cli.backbone.cache import fetch_weights

    # Usage errors (sizes, files, devices) come before a download of hundreds of megabytes.
    source = guard_engine_failures(lambda: checked_model_source(config))
    if not source.is_file:
        fetch_weights(source.name, source.pretrained, config.cache_dir, announce=download_announcer(console),
                      progress=shows_progress(console, quiet))
    with status_line(console, quiet, text):
        yield source
