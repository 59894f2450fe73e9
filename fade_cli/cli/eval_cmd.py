"""`fade eval`: the field's benchmark metrics on MVTec-AD, VisA or labelled folders.

The numbers come from :mod:`fade_cli.evaluation`; this module parses options,
shows progress and writes the report.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click
from click.core import ParameterSource

from fade_cli.cli.help_sections import sectioned
from fade_cli.cli.mutual_options import MUTUAL_OPTION_NAMES, mutual_options, pop_mutual_settings, refuse_with_mutual
from fade_cli.cli.options import (
    engine_config_from_options,
    engine_options,
    pop_engine_options,
    prompt_sets_from_options,
    report_option,
)
from fade_cli.cli.exit_codes import OK, Terminated, stop_exit_code
from fade_cli.cli.ray_options import RAY_OPTION_NAMES, pop_ray_settings, ray_options, start_ray
from fade_cli.cli.stopping import STOPS, OutputStreamFailed
from fade_cli.core.errors import InputError
from fade_cli.io.thumbnails import THUMBNAILS_DIR

EVAL_EXIT_CODES_HELP = """\b
Exit codes:
  0    done
  2    usage or input error (malformed dataset, too few good images for --shots, existing report,
       --out in use by another run)
  3    failure while running (model, memory, disk)
  130  interrupted by Ctrl-C (with --out, the report holds the finished runs, marked incomplete)
  141  stdout or stderr cannot be written (closed early as by | head, disk full); the report in --out is
       written first (as on Ctrl-C, it holds the finished runs)
  143  stopped by SIGTERM (as Ctrl-C: the report holds the finished runs, marked incomplete)"""


def _seeds(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if not parts or not all(part.isdigit() for part in parts):
        raise click.BadParameter(f"{value!r} is not a comma-separated list of non-negative integers")
    seeds = tuple(int(part) for part in parts)
    if len(set(seeds)) != len(seeds):
        raise click.BadParameter(f"{value!r} repeats a seed")
    return seeds


def _classes(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[tuple[str, ...]]:
    if value is None:
        return None
    names = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    if not names:
        raise click.BadParameter("no class name given")
    return names


@click.command(epilog=EVAL_EXIT_CODES_HELP, **sectioned(
    Everyday=("layout", "classes", "shots", "seeds", "out", "overwrite"),
    Outputs=("save_worst", "save_maps", "quiet", "report"),
    Published_method=("eval_size", "quantize_8bit", "mask_suffix"), Mutual_scoring=MUTUAL_OPTION_NAMES,
    Ray_cluster=RAY_OPTION_NAMES))
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--dataset", "layout", type=click.Choice(["auto", "mvtec", "visa", "folder"]), default="auto",
              show_default=True, help="Layout of ROOT; auto: visa when ROOT/split_csv/1cls.csv exists, else mvtec.")
@click.option("--classes", callback=_classes, help="Comma-separated classes to evaluate [default: all].")
@click.option("--shots", type=click.IntRange(min=0), default=0, show_default=True,
              help="Reference images per class, drawn from its good training images; 0 is zero-shot.")
@click.option("--seeds", callback=_seeds, default="0", show_default=True,
              help="Seeds of the reference draw, comma-separated: one run per seed (k-shot only).")
@click.option("--eval-size", type=click.IntRange(min=8), default=448, show_default=True,
              help="Maps and masks are compared at N x N pixels.")
@click.option("--quantize-8bit", is_flag=True,
              help="Quantise maps to 8 bits before upsampling, as the published pipeline did.")
@click.option("--mask-suffix", help="folder layout: masks are ground_truth/<defect>/<name><SUFFIX>.<image ext> "
                                    "[default: _mask].")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Write metrics.json, metrics.csv, metrics.md and scores.csv into this folder.")
@click.option("--overwrite", is_flag=True,
              help="Replace a report already in --out: the files earlier runs wrote there are removed, no others.")
@click.option("--save-worst", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Heatmaps of the N worst-scored images of each class (and seed) into OUT/worst/.")
@click.option("--save-maps", is_flag=True, help="Every eval-size map, as scored, as float32 .npy into OUT/maps/.")
@click.option("-q", "--quiet", is_flag=True, help="Hide the progress bar only: rows, warnings and errors still print.")
@report_option
@ray_options
@mutual_options
@engine_options
@click.pass_context
def eval_command(ctx: click.Context, root: Path, layout: str, classes: Optional[tuple[str, ...]], shots: int,
                 seeds: tuple[int, ...], eval_size: int, quantize_8bit: bool, mask_suffix: Optional[str],
                 out: Optional[Path], overwrite: bool, save_worst: int, save_maps: bool, quiet: bool,
                 report: bool, **kwargs: Any) -> None:
    """Benchmark FADE on the labelled dataset at ROOT.

    Image AUROC, AUPR and F1-max; pixel AUROC and F1-max; AUPRO up to FPR 0.3:
    per class, then the mean over classes; with several --seeds, mean and
    standard deviation over the seeds of the drawn reference shots. Each class's
    folder name goes into the prompts unless --class is given. The engine options
    are those of `fade detect`: both score an image identically.

    \b
      fade eval ./mvtec --dataset mvtec --shots 1 --seeds 0,1,2 --out ./eval-1shot
      fade eval ./visa --dataset visa --shots 0
      fade eval ./my_parts --dataset folder --classes screw,nut --shots 4
      fade eval ./mvtec --shots 0 --mutual        # each class's test images scored against each other
      fade eval /shared/mvtec --shots 1 --seeds 0,1,2 --ray --ray-gpus-per-worker 1   # classes x seeds on a cluster
    """
    from fade_cli.cli.console import stderr_console
    from fade_cli.evaluation.datasets import DEFAULT_MASK_SUFFIX, detect_layout, load_dataset
    from fade_cli.evaluation.plan import EvalSettings, plan_runs
    from fade_cli.evaluation.outputs import REPORT_FILES, files_named_by_report
    from fade_cli.io.folder_lock import output_folder_lock
    from fade_cli.io.manifest import recording_writes
    from fade_cli.io.outputs import REPORT_FILE, clear_previous_outputs

    options = pop_engine_options(kwargs)
    mutual = pop_mutual_settings(ctx, kwargs)
    ray = pop_ray_settings(ctx, kwargs)
    refuse_with_mutual(mutual, {f"--shots {shots}": shots > 0, "--use-query": bool(options["use_query"])})
    if (save_worst or save_maps) and out is None:
        raise click.UsageError("--save-worst and --save-maps write into --out DIR; give --out")
    if mask_suffix is not None and layout != "folder":
        raise click.BadParameter("only the folder layout takes a mask suffix", param_hint="--mask-suffix")
    explicit_class = ctx.get_parameter_source("class_name") not in (ParameterSource.DEFAULT, None)
    settings = EvalSettings(shots=shots, seeds=seeds, eval_size=eval_size, quantize_8bit=quantize_8bit,
                            prompt_class=options["class_name"] if explicit_class else None, mutual=mutual)
    if layout == "auto":
        layout = detect_layout(root)
    dataset = load_dataset(root, layout, classes, mask_suffix or DEFAULT_MASK_SUFFIX)
    runs = plan_runs(dataset, settings)  # fails now, not after hours, when a class lacks good images
    regions = _regions(options)
    if regions is not None and (ray is not None or mutual is not None):
        raise InputError("an inspection region (--roi, --roi-dir) is not taken with --ray or --mutual")
    if out is not None:
        ctx.with_resource(output_folder_lock(out, refuse=None if overwrite else lambda: _refuse_existing_report(out)))
        ctx.with_resource(recording_writes(out))
        if overwrite:
            clear_previous_outputs(out, (*REPORT_FILES, REPORT_FILE), files_named_by_report)
    if ray is not None:
        start_ray(ctx, ray, options["device"])

    console = stderr_console()
    if shots == 0 and len(seeds) > 1:
        console.print("note: --seeds has no effect with --shots 0 (zero-shot is deterministic): one run per class")
    prompt_source = _prompt_source(options)
    evaluator = _load_evaluator(engine_config_from_options(options), prompt_source, settings, console, quiet)
    evaluator.regions = regions
    from fade_cli.cli.engine_setup import report_engine_setup

    report_engine_setup(console, options["verbose"], evaluator.loaded.device, evaluator.precision)
    thumbnails = out is not None and report
    if ray is None:
        results, worst, stop = _run_all(evaluator, runs, out, save_maps, save_worst, console, quiet, thumbnails)
    else:
        results, worst, stop = _run_all_on_ray(evaluator, runs, ray, out, save_maps, save_worst, console, quiet,
                                               thumbnails)
    if results:
        table = _report(results, evaluator, root, layout, dataset, out, worst, stop is not None,
                        _prompt_origins(options))
        if thumbnails:
            from fade_cli.cli.report_cmd import report_after_run

            report_after_run(out, console)
        click.echo(table, nl=False)  # last: a stdout that cannot be written must not cost the files in --out
    ctx.exit(OK if stop is None else stop_exit_code(stop))


def _run_all(evaluator, runs, out, save_maps, save_worst, console, quiet, thumbnails=False):
    """Evaluate every planned run; on Ctrl-C or SIGTERM keep the finished ones. Returns (results, worst, the stop)."""
    results, worst = [], {}
    try:
        for index, run in enumerate(runs, start=1):
            result = _evaluate_run(evaluator, run, f"{run.label} [{index}/{len(runs)}]", out, save_maps,
                                   console, quiet, thumbnails)
            results.append(result)
            if save_worst:
                worst[(result.class_name, result.seed)] = _save_worst(result, save_worst, out)
    except STOPS as stop:
        _print_stop(console, stop, len(results), len(runs))
        return results, worst, stop
    return results, worst, None


def _run_all_on_ray(evaluator, runs, ray, out, save_maps, save_worst, console, quiet, thumbnails=False):
    """:func:`_run_all` with the runs spread over a Ray cluster; the finished runs come back in the plan's order."""
    from fade_cli.cli.console import progress_bar
    from fade_cli.runs.ray.ray_eval import evaluate_on_ray, in_plan_order

    on_eval_map, on_scored = _image_sinks(out, save_maps, thumbnails)
    finished, stop = {}, None
    try:
        with progress_bar(console, quiet, total=len(runs), description=f"{len(runs)} run(s) on Ray") as advance:
            for index, result in evaluate_on_ray(evaluator, runs, ray, on_eval_map, on_scored):
                finished[index] = result
                _warn_missing_masks(console, runs[index], result)
                advance()
    except STOPS as interrupt:
        _print_stop(console, interrupt, len(finished), len(runs))
        stop = interrupt
    results = in_plan_order(evaluator, finished)
    worst = {(result.class_name, result.seed): _save_worst(result, save_worst, out) for result in results
             if save_worst}
    return results, worst, stop


def _print_stop(console, stop: BaseException, finished: int, planned: int) -> None:
    if isinstance(stop, BrokenPipeError):
        cause = f"Stopped: {stop}" if isinstance(stop, OutputStreamFailed) else "Stopped: stdout was closed"
    else:
        cause = "Stopped by SIGTERM" if isinstance(stop, Terminated) else "Interrupted"
    console.print(f"{cause} after {finished} of {planned} run(s).", markup=False, highlight=False, soft_wrap=True)


def _refuse_existing_report(out: Path) -> None:
    from fade_cli.evaluation.outputs import REPORT_FILES
    from fade_cli.io.outputs import refuse_existing_results

    refuse_existing_results(out, REPORT_FILES, "a report", resumable=False)


def _prompt_source(options: dict[str, Any]):
    """Prompt sets per class name, read like `fade detect` reads them for --class NAME.

    Prompt files are read (and checked) now, before the model is loaded; a
    --prompt-generator runs once per class name, when that class is reached.
    """
    fixed = prompt_sets_from_options({**options, "prompt_generator": None})
    if not options["prompt_generator"] or (fixed[0] is not None and fixed[1] is not None):
        return lambda name: fixed
    return lambda name: prompt_sets_from_options({**options, "class_name": name})


def _regions(options):
    """Where the test images are inspected (None: whole frames); the ROI is read and checked before the model."""
    from fade_cli.detector import regions_of
    from fade_cli.settings import Settings, names_with_role

    return regions_of(Settings.of(**{name: options[name] for name in names_with_role("region")}))


def _load_evaluator(config, prompt_source, settings, console, quiet):
    from fade_cli.cli.engine_setup import loading_model
    from fade_cli.core.memory import guard_engine_failures
    from fade_cli.evaluation.evaluate import Evaluator

    with loading_model(config, console, quiet, "Loading model...") as source:
        return guard_engine_failures(lambda: Evaluator(config, prompt_source, settings, source=source))


def _evaluate_run(evaluator, run, description, out, save_maps, console, quiet, thumbnails=False):
    from fade_cli.core.memory import guard_engine_failures
    from fade_cli.cli.console import progress_bars

    sink, scored = _image_sinks(out, save_maps, thumbnails)
    count = len(run.split.test)
    mutual = evaluator.settings.mutual is not None
    passes = [(f"{description} encoding", count)] if mutual else []
    with progress_bars(console, quiet, passes + [(description, count)]) as advancers:
        on_encoded = advancers[0] if mutual else None
        result = guard_engine_failures(lambda: evaluator.evaluate(run, on_image=advancers[-1], on_eval_map=sink,
                                                                  on_scored=scored, on_encoded=on_encoded))
    _warn_missing_masks(console, run, result)
    return result


def _image_sinks(out, save_maps: bool, thumbnails: bool):
    """(on_eval_map, on_scored) for Evaluator.evaluate: the eval-size maps and the report's thumbnails, into
    ``out`` (None: not asked). With --ray they run in the workers (Ray pickles them with their ``out``)."""
    from fade_cli.evaluation.outputs import save_eval_map, save_eval_thumbnails

    def on_eval_map(planned, sample, scores):
        save_eval_map(out, planned.seed, sample.relative, scores)

    def on_scored(planned, sample, image, grid_map):
        save_eval_thumbnails(out, planned.seed, sample.relative, image, grid_map)

    return on_eval_map if save_maps else None, on_scored if thumbnails else None


def _warn_missing_masks(console, run, result) -> None:
    from fade_cli.cli.console import print_warning

    if result.missing_masks:
        print_warning(console, f"{run.label}: {len(result.missing_masks)} defective image(s) without a mask, left "
                               f"out of the pixel metrics (first: {result.missing_masks[0]})")


def _save_worst(result, count: int, out: Path) -> list[dict]:
    from fade_cli.evaluation.outputs import run_folder
    from fade_cli.evaluation.worst import write_worst_heatmaps

    folder = out / "worst" / run_folder(result.seed) / result.class_name
    return write_worst_heatmaps(result.records, count, folder, out)


def _title(root: Path, layout: str, settings, interrupted: bool) -> str:
    mode = "zero-shot" if settings.shots == 0 else f"{settings.shots}-shot"
    if settings.mutual is not None:
        mode += " mutual"
    seeds = "" if settings.shots == 0 else f", seeds {','.join(map(str, settings.seeds))}"
    spread = " (mean ± std over seeds)" if settings.shots and len(settings.seeds) > 1 else ""
    maps = ", 8-bit maps" if settings.quantize_8bit else ""
    partial = " - INTERRUPTED, finished runs only" if interrupted else ""
    return f"fade eval {root} ({layout}): {mode}{seeds}, eval size {settings.eval_size}{maps}, in %{spread}{partial}"


def _prompt_origins(options: dict[str, Any]) -> dict[str, str]:
    """Where each stage's prompts came from, in the order `prompt_sets_from_options` prefers them."""
    fallback = f"generator {options['prompt_generator']}" if options["prompt_generator"] else "built-in"
    return {
        "classification": str(options["cls_prompts"] or options["prompts"] or fallback),
        "segmentation": str(options["seg_prompts"] or options["prompts"] or fallback),
    }


def _report(results, evaluator, root, layout, dataset, out, worst, interrupted, prompt_origins) -> str:
    """Write the report into ``out`` (when given); returns the table for stdout."""
    from fade_cli.evaluation.outputs import markdown_table, write_report
    from fade_cli.evaluation.summary import summarise

    summary = summarise(results)
    title = _title(root, layout, evaluator.settings, interrupted)
    if out is not None:
        context = {
            "dataset": {"root": str(root), "layout": layout, "classes": [split.name for split in dataset]},
            "complete": not interrupted,
            **evaluator.describe(),
        }
        context["prompts"]["sources"] = prompt_origins
        write_report(out, results, summary, context, title, worst)
    return f"{title}\n\n{markdown_table(summary)}"
