"""`fade bank`: build a reference bank once, then run `fade detect --bank` on the station."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Optional

import click

from fade_cli.core import strict_json
from fade_cli.bank.bank import ReferenceBank, load_bank, save_bank
from fade_cli.bank.calibration import DEFAULT_MARGIN, MIN_REFERENCES, check_calibrated_thresholds, choose_thresholds
from fade_cli.bank.calibration import Thresholds, describe_thresholds
from fade_cli.bank.compat import describe_identity
from fade_cli.cli.help_sections import sectioned
from fade_cli.cli.exit_codes import EXIT_CODES_HELP
from fade_cli.cli.options import FiniteFloat, engine_config_from_options, engine_options, pop_engine_options
from fade_cli.cli.options import prompt_sets_from_options
from fade_cli.core.errors import InputError

BANK_SUFFIX = ".fadebank"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def bank() -> None:
    """Build and inspect saved reference banks.

    A bank holds the reference embeddings, prompts, settings, model identity and
    calibrated thresholds, so a station runs without the reference images:

    \b
      fade bank build ./good --class screw --out screw.fadebank
      fade bank info screw.fadebank
      fade detect ./incoming --bank screw.fadebank --out results
    """


@bank.command("build", epilog=EXIT_CODES_HELP, **sectioned(
    Everyday=("out", "class_name", "overwrite", "threshold", "pixel_threshold", "margin"),
    Outputs=("patch_dtype", "quiet")))
@click.argument("refs", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help=f"Bank file to write (by convention *{BANK_SUFFIX}).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing bank file (without it, an existing file is refused).")
@click.option("--threshold", type=FiniteFloat(), help="Image threshold to store instead of the calibrated one.")
@click.option("--pixel-threshold", type=FiniteFloat(), help="Pixel threshold to store instead of the calibrated one.")
@click.option("--margin", type=FiniteFloat(min=0, min_open=True), default=DEFAULT_MARGIN, show_default=True,
              help="Calibration: threshold = margin x the highest leave-one-out reference score.")
@click.option("--dtype", "patch_dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True, help="Storage of the reference patches; float16 halves the file, scores move slightly.")
@click.option("-q", "--quiet", is_flag=True, help="Hide the progress bar only: rows, warnings and errors still print.")
@engine_options
def build_command(refs: Path, out: Path, overwrite: bool, threshold: Optional[float],
                  pixel_threshold: Optional[float], margin: float, patch_dtype: str, quiet: bool,
                  **kwargs: Any) -> None:
    """Encode the good images under REFS into a bank file, with calibrated thresholds.

    Every reference is scored against a bank of the others (leave-one-out); the
    image and pixel thresholds are MARGIN x the highest of those scores. This needs
    at least two references; --threshold / --pixel-threshold set them by hand.
    Building twice from the same images and options gives the same file.

    \b
      fade bank build ./good --class screw --out screw.fadebank
      fade bank build ./good --class screw --scales 240,448 --margin 1.2 --out screw.fadebank
    """
    from fade_cli.bank.engine_bridge import bank_from_engine
    from fade_cli.cli.engine_setup import build_engine, calibrate_references, report_engine_setup
    from fade_cli.cli.console import print_warning, stderr_console
    from fade_cli.io.folder_lock import single_output_file
    from fade_cli.io.images import require_images
    from fade_cli.io.input_checks import check_reference_folder
    from fade_cli.core.memory import guard_engine_failures
    from fade_cli.prompting.prompt_set import with_default_prompts

    from fade_cli.detector import regions_of
    from fade_cli.settings import Settings, names_with_role

    given = Thresholds(image=threshold, pixel=pixel_threshold)
    options = pop_engine_options(kwargs)
    config = engine_config_from_options(options)
    cls_prompts, seg_prompts = with_default_prompts(*prompt_sets_from_options(options))
    regions = regions_of(Settings.of(**{name: options[name] for name in names_with_role("region")}))
    _check_out(out)
    # Held until the bank is written: a second build of the same file is refused now, not after its work.
    click.get_current_context().with_resource(single_output_file(out, overwrite))
    console = stderr_console()
    ref_files = require_images(refs, on_skip=functools.partial(print_warning, console))
    for message in check_reference_folder(refs, ref_files):
        print_warning(console, message)
    engine = build_engine(config, cls_prompts, seg_prompts, ref_files, console, quiet, regions)
    report_engine_setup(console, options["verbose"], engine.device, engine.precision)
    calibration = None
    if len(ref_files) >= MIN_REFERENCES:
        calibration = guard_engine_failures(lambda: calibrate_references(engine, ref_files, margin, console, quiet))
    else:
        print_warning(console, f"thresholds are calibrated from at least {MIN_REFERENCES} references; this bank "
                               "has one, so it stores only the thresholds given with --threshold/--pixel-threshold")
    thresholds = choose_thresholds(calibration, given)
    if calibration is not None:
        for message in check_calibrated_thresholds(calibration, thresholds):
            print_warning(console, message)
    saved = bank_from_engine(engine, cls_prompts, seg_prompts, ref_files, patch_dtype, thresholds, calibration)
    size = save_bank(saved, out)
    click.echo(f"Wrote {out}: {len(ref_files)} reference(s), sizes {_sizes(saved.patches_by_size)}, "
               f"{patch_dtype}, computed in {saved.precision}, {_megabytes(size)}")
    click.echo(f"Thresholds: {describe_thresholds(thresholds, calibration)}")


def _check_out(out: Path) -> None:
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; give a file name such as {out / ('refs' + BANK_SUFFIX)}")


def _region_line(saved: ReferenceBank) -> str:
    plan = saved.regions
    if plan is None:
        return "the whole frame"
    where = f"ROI {plan.roi.name} (sha256 {plan.roi.sha256[:12]})" if plan.roi else "per-image ROI masks"
    return f"{where}, {'cropped with margin ' + format(plan.margin, 'g') if plan.crop else 'masked, not cropped'}"


def _sizes(patches_by_size: dict) -> str:
    return ",".join(str(size) for size in sorted(patches_by_size))


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


@bank.command("info", **sectioned(Outputs=("output_format",)))
@click.argument("bank_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text for people; json: the bank's metadata and tensor shapes.")
def info_command(bank_file: Path, output_format: str) -> None:
    """Check BANK_FILE (format, checksum) and show what it holds.

    \b
      fade bank info screw.fadebank
      fade bank info screw.fadebank --format json | jq .thresholds
    """
    saved = load_bank(bank_file)
    size = bank_file.stat().st_size
    if output_format == "json":
        shapes = {name: list(array.shape) for name, array in sorted(saved.tensors().items())}
        click.echo(strict_json.dumps({**saved.metadata(), "tensors": shapes, "file_size": size}, indent=2))
        return
    for label, value in _info_lines(saved, bank_file, size):
        click.echo(f"{label + ':':<13}{value}")


def _info_lines(saved: ReferenceBank, bank_file: Path, size: int) -> list[tuple[str, str]]:
    config, preset = saved.config, saved.config.preset(has_references=True)
    patches = ", ".join(f"{s}: {a.shape[0]} x {a.shape[1]}" for s, a in sorted(saved.patches_by_size.items()))
    lines = [
        ("file", f"{bank_file} ({_megabytes(size)}, format version {saved.metadata()['version']}, checksum OK)"),
        ("model", describe_identity(saved.identity)),
        ("class", config.class_name),
        ("sizes", f"image score {config.cls_size}, maps {_sizes(saved.patches_by_size)}"),
        ("patches", f"{patches} ({preset.feature} features, stored as {saved.patch_dtype})"),
        ("vision", f"multiplier {preset.multiplier:g}, weight {preset.weight:g}, "
                   f"query patches {'on' if preset.use_query else 'off'}, image score {preset.image_score}"),
        ("prompts", f"image score {len(saved.cls_prompts.normal)} normal / {len(saved.cls_prompts.abnormal)} abnormal, "
                    f"maps {len(saved.seg_prompts.normal)} normal / {len(saved.seg_prompts.abnormal)} abnormal, "
                    f"template {config.text_template!r}"),
        ("references", ", ".join(ref["path"] for ref in saved.references)),
        ("thresholds", describe_thresholds(saved.thresholds, saved.calibration)),
        ("region", _region_line(saved)),
        ("precision", f"computed in {saved.precision}" + (" (built with --precision auto: a station resolves auto "
                      "on its own hardware)" if config.precision == "auto" else "")),
    ]
    if saved.calibration is not None:
        calibration = saved.calibration
        for path, score, peak in zip(calibration.files, calibration.image_scores, calibration.pixel_maxima):
            lines.append(("  left out", f"{path}: score {score:.4f}, max pixel {peak:.4f}"))
    return lines
