"""The header block of a report: what made the run, in words, with a banner when its scores are not from a
published model.

A detect or watch run is described by ``run.json`` (how the engine ran, and for newer runs the command line,
start time and thresholds) and ``run-settings.json`` (what it was asked); an eval run by the context in
``metrics.json``. These files are read as untrusted input: strict JSON of bounded size, each field checked for
its type. A field that is missing or of another type is ``None`` (the page writes "not recorded": older runs
recorded less), and a file that cannot be read is named in a note; neither stops the report.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Optional

from fade_cli.core import strict_json
from fade_cli.core.errors import InputError
from fade_cli.io.files import read_file_bytes
from fade_cli.io.outputs import RUN_INFO_FILE, SETTINGS_FILE
from fade_cli.report.runs import RunData

INFO_FILE_LIMIT = 1 << 20  # fade writes a few hundred bytes; anything near this is not its file
SHORT_HASH = 12
# The architecture name of fade's tiny test model (tests/fixtures/golden): random weights, random scores.
TEST_MODEL = "fade-golden"


def run_header(run: RunData) -> dict[str, Any]:
    """``items``: [term, text or None] in reading order; ``banner``: a warning about the scores, or None;
    ``notes``: the metadata files that could not be read, and why; ``run_threshold``: the threshold the run
    decided with, where recorded."""
    notes: list[str] = []
    threshold = None
    if run.kind == "eval":
        items, model = _eval_items(run.metrics or {})
    else:
        info = _json_object(run.run_dir / RUN_INFO_FILE, notes)
        settings = _json_object(run.run_dir / SETTINGS_FILE, notes)
        items, model = _detect_items(info, settings)
        threshold = decided_threshold(info, settings)[1]
    return {"items": items, "banner": _banner(model), "notes": notes, "run_threshold": threshold}


def _json_object(path: Path, notes: list[str]) -> dict:
    if not path.exists():
        return {}
    try:
        document = strict_json.loads(read_file_bytes(path, "run file", INFO_FILE_LIMIT), str(path))
    except InputError as exc:
        notes.append(f"{path.name} could not be read ({exc}): its fields are shown as not recorded")
        return {}
    if not isinstance(document, dict):
        notes.append(f"{path.name} is not a JSON object: its fields are shown as not recorded")
        return {}
    return document


def _text(document: Any, key: str) -> Optional[str]:
    value = document.get(key) if isinstance(document, dict) else None
    return value if isinstance(value, str) and value else None


def _number(document: Any, key: str) -> Optional[float]:
    value = document.get(key) if isinstance(document, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _count(document: Any, key: str) -> Optional[int]:
    value = document.get(key) if isinstance(document, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _sizes(document: Any, key: str) -> Optional[list[int]]:
    value = document.get(key) if isinstance(document, dict) else None
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    return None


def _detect_items(info: dict, settings: dict) -> tuple[list, dict]:
    model = info.get("model") if isinstance(info.get("model"), dict) else {}
    command = info.get("command")
    command_text = shlex.join(command) if isinstance(command, list) and command and all(
        isinstance(part, str) for part in command) else None
    weights_file = _text(settings, "weights") or _text(settings, "pretrained")
    items = [
        ["command", command_text],
        ["fade version", _text(info, "fade_version")],
        ["model", _text(model, "model")],
        ["weights", _weights(model, weights_file)],
        ["class", _text(info, "class_name") or _text(settings, "class_name")],
        ["references", _references(info, settings)],
        ["precision", _precision(info.get("precision"))],
        ["scales", _scales(_sizes(info, "scales") or _sizes(settings, "scales"),
                           _count(info, "cls_size") or _count(settings, "cls_size"))],
        ["device", _text(info, "device")],
        ["threshold", _threshold(info, settings)],
        ["started", _text(info, "started")],
    ]
    return items, model


def _eval_items(metrics: dict) -> tuple[list, dict]:
    model = metrics.get("model") if isinstance(metrics.get("model"), dict) else {}
    engine = metrics.get("engine") if isinstance(metrics.get("engine"), dict) else {}
    settings = metrics.get("settings") if isinstance(metrics.get("settings"), dict) else {}
    dataset = metrics.get("dataset") if isinstance(metrics.get("dataset"), dict) else {}
    shots = _count(settings, "shots")
    seeds = _sizes(settings, "seeds")
    references = None
    if shots is not None:
        references = (f"{shots} good training image(s) per class and seed" if shots else "none (zero-shot)") + (
            f"; seeds {', '.join(map(str, seeds))}" if seeds else "")
    items = [
        ["command", None],
        ["fade version", _text(metrics.get("software"), "fade")],
        ["model", _text(model, "model")],
        ["weights", _weights(model, _text(engine, "weights") or _text(engine, "pretrained"))],
        ["class", _text(engine, "class_name") or "each class's own name"],
        ["dataset", _text(dataset, "root")],
        ["references", references],
        ["precision", _precision(metrics.get("precision"))],
        ["scales", _scales(_sizes(engine, "seg_sizes"), _count(engine, "cls_size"))],
        ["device", _text(model, "device")],
        ["threshold", "none: an evaluation makes no OK/NG decisions"],
        ["started", None],
    ]
    return items, model


def _weights(model: dict, weights_file: Optional[str]) -> Optional[str]:
    tag, digest = _text(model, "pretrained"), _text(model, "weights_sha256")
    if digest is not None:
        name = f"file {Path(weights_file).name}" if weights_file else "a weights file"
        return f"{name} (sha256 {digest[:SHORT_HASH]})"
    return f"published pretrained tag {tag}" if tag else None


def _banner(model: dict) -> Optional[str]:
    """Scores from weights that are not a published pretrained tag say nothing about a published model."""
    digest = _text(model, "weights_sha256")
    if digest is None:
        return None
    name = _text(model, "model") or "the model"
    if name == TEST_MODEL:
        return (f"Scores are not from a published model: {name} is fade's tiny test model, whose weights are "
                f"random (sha256 {digest[:SHORT_HASH]}); its scores mean nothing.")
    return (f"Scores are not from a published model: {name} ran a local weights file (sha256 "
            f"{digest[:SHORT_HASH]}), not a published pretrained tag.")


def _references(info: dict, settings: dict) -> Optional[str]:
    count = _count(info, "references")
    counted = f" ({count} images)" if count is not None else " (count not recorded)"
    bank, refs = _text(settings, "bank_path"), _text(settings, "refs")
    if bank:
        return f"bank {bank}{counted}"
    if refs:
        return f"folder {refs}{counted}"
    if settings.get("mutual") is True:
        return "none (zero-shot; the images were scored against each other)"
    if count == 0 or settings:
        return "none (zero-shot)"
    return None


def _precision(record: Any) -> Optional[str]:
    chosen, requested, reason = _text(record, "precision"), _text(record, "requested"), _text(record, "reason")
    if chosen is None:
        return None
    if requested and requested != chosen:
        return f"{chosen} (asked {requested}{': ' + reason if reason else ''})"
    return chosen


def _scales(sizes: Optional[list[int]], cls_size: Optional[int]) -> Optional[str]:
    if sizes is None:
        return None
    text = "map at " + ", ".join(f"{size} px" for size in sizes)
    return text + (f"; image score at {cls_size} px" if cls_size is not None else "")


def decided_threshold(info: dict, settings: dict) -> tuple[bool, Optional[float]]:
    """(known, value): the threshold the run decided with, None when it made no decisions. run.json has it
    (after --calibrate or a bank); an older run only has what it was asked, the same unless it calibrated or
    used a bank."""
    if "threshold" in info:
        source = info
    elif settings.get("calibrate") is False and settings.get("bank_path") is None and "threshold" in settings:
        source = settings
    else:
        return False, None
    value = _number(source, "threshold")
    return (source["threshold"] is None or value is not None), value


def _threshold(info: dict, settings: dict) -> Optional[str]:
    known, value = decided_threshold(info, settings)
    if not known:
        return None
    if value is None:
        return "none: the run made no OK/NG decisions"
    pixel = _number(info, "pixel_threshold")
    return f"{value!r} (NG at or above)" + (f"; pixel threshold {pixel!r}" if pixel is not None else "")
