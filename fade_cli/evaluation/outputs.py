"""The report of an evaluation: metrics.csv, metrics.json, scores.csv, curves.json and a Markdown table.

curves.json holds, per run, the image ROC and PR curves and the PRO curve (up to
the AUPRO's FPR limit) whose areas are the metrics: the HTML report draws them.

Numbers in the files are fractions in [0, 1] at full precision; the table shows
percentages with one decimal, as papers do. Nothing time- or host-dependent is
written, so the same arguments give byte-identical files.
"""
from __future__ import annotations

import contextlib
import csv
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import numpy as np
from PIL import Image

from fade_cli.core import strict_json
from fade_cli import __version__
from fade_cli.evaluation.summary import METRICS, Aggregate, Metrics, Summary
from fade_cli.io.atomic import atomic_write
from fade_cli.io.files import confined_path
from fade_cli.io.outputs import csv_bytes
from fade_cli.io.thumbnails import image_thumbnail_path, map_thumbnail_path, write_thumbnails

if TYPE_CHECKING:
    from fade_cli.evaluation.evaluate import ImageRecord, RunResult

REPORT_FILES = ("metrics.json", "metrics.csv", "metrics.md", "scores.csv", "curves.json")
COUNT_FIELDS = ("test_images", "good", "anomalous", "missing_masks")
CSV_FIELDS = ("class", "seed", *METRICS, *COUNT_FIELDS)
SCORE_FIELDS = ("class", "seed", "image", "defect", "label", "score", "language_score", "vision_score", "mask")
HEADERS = {
    "image_auroc": "I-AUROC",
    "image_aupr": "I-AUPR",
    "image_f1_max": "I-F1max",
    "pixel_auroc": "P-AUROC",
    "pixel_f1_max": "P-F1max",
    "aupro": "AUPRO",
}
DISTRIBUTIONS = ("torch", "torchvision", "open_clip_torch", "numpy", "scipy", "scikit-learn", "pillow")
REPORT_FORMAT = 1


def run_folder(seed: Optional[int]) -> Path:
    """Sub-folder of maps/ and worst/ for a run: ``seed<k>`` for k-shot runs, none for zero-shot."""
    return Path() if seed is None else Path(f"seed{seed}")


def save_eval_map(out_dir: Path, seed: Optional[int], relative: str, scores_hw: np.ndarray) -> Path:
    """maps/[seed<k>/]<image path>.npy: the float32 eval-size map exactly as it was scored."""
    path = confined_path(out_dir, f"maps/{run_folder(seed).as_posix()}/{relative}.npy", f"eval map in {out_dir}")
    atomic_write(path, lambda handle: np.save(handle, scores_hw, allow_pickle=False))
    return path


def files_named_by_report(out_dir: Path, fade_files: set[str]) -> Iterator[str]:
    """The files an earlier `fade eval` report in ``out_dir`` names where eval writes them: the maps and
    thumbnails of each scored image (scores.csv) and the worst-image heatmaps (metrics.json)."""
    if "scores.csv" in fade_files:
        with contextlib.suppress(OSError, csv.Error, UnicodeDecodeError):
            with open(out_dir / "scores.csv", newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    relative, seed = row.get("image"), row.get("seed") or ""
                    if not relative or not (seed == "" or seed.isdigit()):
                        continue
                    run = run_folder(int(seed) if seed else None)
                    yield from ((Path("maps") / run / f"{relative}.npy").as_posix(), image_thumbnail_path(relative),
                                map_thumbnail_path(relative, "" if seed == "" else run.as_posix()))
    if "metrics.json" in fade_files:
        with contextlib.suppress(OSError, ValueError):
            document = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
            for entry in document.get("runs", []) if isinstance(document, dict) else []:
                for worst in (entry.get("worst") or []) if isinstance(entry, dict) else []:
                    heatmap = worst.get("heatmap") if isinstance(worst, dict) else None
                    if isinstance(heatmap, str) and heatmap.startswith("worst/") and heatmap.endswith(".png"):
                        yield heatmap


def save_eval_thumbnails(out_dir: Path, seed: Optional[int], relative: str, image: Image.Image,
                         grid_map: np.ndarray) -> None:
    """The report's thumbnails of a test image: the image once (every seed shows the same), its map per seed."""
    first = not (out_dir / image_thumbnail_path(relative)).exists()
    write_thumbnails(out_dir, relative, image if first else None, grid_map, "" if seed is None else str(run_folder(seed)),
                     image_size=image.size)


def software_versions() -> dict[str, Optional[str]]:
    versions: dict[str, Optional[str]] = {"fade": __version__, "python": platform.python_version()}
    for name in DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _seed_label(seed: Optional[int]) -> str:
    return "" if seed is None else str(seed)


def _run_row(run: "RunResult") -> dict[str, Any]:
    return {"class": run.class_name, "seed": _seed_label(run.seed), **run.metrics, **run.counts()}


def _aggregate_rows(name: str, aggregate: Aggregate) -> list[dict[str, Any]]:
    rows = [{"class": name, "seed": "mean", **aggregate.mean}]
    if aggregate.std is not None:
        rows.append({"class": name, "seed": "std", **aggregate.std})
    return rows


def metrics_csv_rows(runs: Sequence["RunResult"], summary: Summary) -> list[dict[str, Any]]:
    """One row per (class, seed); with several seeds, mean and std rows per class; then the class mean."""
    rows: list[dict[str, Any]] = []
    several = len(summary.seeds) > 1
    for name, aggregate in summary.classes.items():
        rows.extend(_run_row(run) for run in runs if run.class_name == name)
        if several:
            rows.extend(_aggregate_rows(name, aggregate))
    if several:
        for seed, means in summary.per_seed_mean.items():
            rows.append({"class": "mean", "seed": _seed_label(seed), **means})
        rows.extend(_aggregate_rows("mean", summary.overall))
    else:
        rows.append({"class": "mean", "seed": _seed_label(summary.seeds[0]), **summary.overall.mean})
    return rows


def score_rows(runs: Sequence["RunResult"]) -> list[dict[str, Any]]:
    """One row per test image and run: what the image metrics were computed from."""
    return [
        {
            "class": run.class_name,
            "seed": _seed_label(run.seed),
            "image": record.relative,
            "defect": record.defect,
            "label": int(record.anomalous),
            "score": record.score,
            "language_score": record.language_score,
            "vision_score": record.vision_score,
            "mask": _mask_status(record),
        }
        for run in runs
        for record in run.records
    ]


def _mask_status(record: "ImageRecord") -> str:
    """Empty for good images; ``missing`` for a defective image left out of the pixel metrics."""
    if not record.anomalous:
        return ""
    return "yes" if record.mask is not None else "missing"


def run_entry(run: "RunResult", worst: Optional[list[dict]] = None) -> dict[str, Any]:
    entry = {
        "class": run.class_name,
        "prompt_class": run.prompt_class,
        "seed": run.seed,
        "references": run.references,
        "metrics": run.metrics,
        "counts": run.counts(),
        "missing_masks": run.missing_masks,
    }
    if worst is not None:
        entry["worst"] = worst
    return entry


def _aggregate_entry(aggregate: Aggregate) -> dict[str, Optional[Metrics]]:
    return {"mean": aggregate.mean, "std": aggregate.std}


def report_json(
    runs: Sequence["RunResult"], summary: Summary, context: dict[str, Any], worst: Optional[dict] = None
) -> dict:
    """metrics.json: ``context`` (dataset, settings, engine, model, prompts) plus every number.

    ``worst`` maps (class, seed) to the worst-image entries written for that run.
    """
    worst = worst or {}
    return {
        "format": REPORT_FORMAT,
        **context,
        "software": software_versions(),
        "metrics": list(METRICS),
        "runs": [run_entry(run, worst.get((run.class_name, run.seed))) for run in runs],
        "classes": {name: _aggregate_entry(aggregate) for name, aggregate in summary.classes.items()},
        "mean": {
            **_aggregate_entry(summary.overall),
            "per_seed": [{"seed": seed, "metrics": means} for seed, means in summary.per_seed_mean.items()],
        },
    }


def curves_json(runs: Sequence["RunResult"]) -> dict:
    """curves.json: one entry per run (class, seed) with its ``roc``, ``pr`` and ``pro`` points (or None)."""
    return {
        "format": REPORT_FORMAT,
        "runs": [{"class": run.class_name, "seed": run.seed, **run.curves} for run in runs],
    }


def _percent(mean: Optional[float], std: Optional[float]) -> str:
    if mean is None:
        return "n/a"
    text = f"{100 * mean:.1f}"
    return text if std is None else f"{text} ± {100 * std:.1f}"


def markdown_table(summary: Summary) -> str:
    """The per-class table in Markdown (percent; mean ± std over seeds when there are several), numbers right-aligned."""
    header = ["class", *(HEADERS[name] for name in METRICS)]
    rows = [[name, *(_percent(aggregate.mean[m], (aggregate.std or {}).get(m)) for m in METRICS)]
            for name, aggregate in [*summary.classes.items(), ("mean", summary.overall)]]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [cell.ljust(width) if column == 0 else cell.rjust(width)
                  for column, (cell, width) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (width + 2) if column == 0 else "-" * (width + 1) + ":"
                          for column, width in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *map(line, rows)]) + "\n"


def write_report(
    out_dir: Path,
    runs: Sequence["RunResult"],
    summary: Summary,
    context: dict[str, Any],
    title: str,
    worst: Optional[dict] = None,
) -> None:
    """Write every report file into ``out_dir`` (each atomically)."""
    document = report_json(runs, summary, context, worst)
    text = strict_json.dumps(document, indent=2) + "\n"
    atomic_write(out_dir / "metrics.json", lambda h: h.write(text.encode("utf-8")))
    atomic_write(out_dir / "metrics.csv", lambda h: h.write(csv_bytes(CSV_FIELDS, metrics_csv_rows(runs, summary))))
    atomic_write(out_dir / "scores.csv", lambda h: h.write(csv_bytes(SCORE_FIELDS, score_rows(runs))))
    curves = strict_json.dumps(curves_json(runs), separators=(",", ":")) + "\n"
    atomic_write(out_dir / "curves.json", lambda h: h.write(curves.encode("utf-8")))
    markdown = f"{title}\n\n{markdown_table(summary)}"
    atomic_write(out_dir / "metrics.md", lambda h: h.write(markdown.encode("utf-8")))
