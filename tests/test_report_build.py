"""The report builder without a browser: reading run folders, safe embedding, thumbnails, curves."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from conftest import FAST_ARGS
from fade_cli.cli import cli
from fade_cli.core.errors import InputError
from fade_cli.evaluation.metrics import image_curves
from fade_cli.evaluation.pixels import LEVELS, PixelAccumulator
from fade_cli.io.heatmap import overlay, overlay_image_width
from fade_cli.io.thumbnails import image_thumbnail, thumbnail_size
from fade_cli.report.build import (best_f1_threshold, build_report, fitted_threshold, initial_threshold,
                                   short_threshold_between)
from fade_cli.report.page import embedded_json, render_page
from fade_cli.report.runs import DEFECTIVE, GOOD, Row, load_run

COOKIE_TEST = Path(__file__).parent.parent / "examples" / "cookie" / "cookie" / "test"
HOSTILE = "</script><script>alert(1)</script><!-- & \u2028\u2029 \"'<img src=x onerror=alert(2)>"


def _row(path: str, score=None, **fields) -> dict:
    base = dict.fromkeys(("score", "language_score", "vision_score", "verdict", "map_path", "heatmap_path",
                          "mask_path", "regions", "error"))
    return {**base, "path": path, "score": score, **fields}


def _write_rows(path: Path, rows: list[dict], tail: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows) + tail, encoding="utf-8")


def test_embedded_json_cannot_end_the_script_and_parses_back():
    data = {"rows": [{"path": HOSTILE}], HOSTILE: [1.5, None, True]}
    text = embedded_json(data)
    assert not re.search("[<>&\u2028\u2029]", text)
    assert json.loads(text) == data


def test_page_has_only_its_own_script_elements_whatever_the_names():
    page = render_page(HOSTILE, {"rows": [{"path": HOSTILE}], "title": HOSTILE})
    assert page.lower().count("<script") == 2 and page.lower().count("</script") == 2
    assert "<title>&lt;/script&gt;" in page
    assert "<img src=x" not in page


def test_an_interrupted_run_is_read_from_the_partial_file_without_its_torn_line(tmp_path):
    _write_rows(tmp_path / "results.partial.jsonl", [_row("good/a.png", 0.2), _row("bad/b.png", 0.9)],
                tail='{"path": "bad/c.pn')
    run = load_run(tmp_path)
    assert (run.kind, run.complete, [r.path for r in run.rows]) == ("detect", False, ["good/a.png", "bad/b.png"])
    assert [r.label for r in run.rows] == [GOOD, DEFECTIVE]  # a folder named good beside another name


def test_no_labels_without_a_good_folder_beside_others(tmp_path):
    _write_rows(tmp_path / "results.jsonl", [_row("a/x.png", 0.2), _row("b/y.png", 0.9)])
    assert [r.label for r in load_run(tmp_path).rows] == [None, None]


@pytest.mark.parametrize("line, message", [
    ("not json", "line 2: not JSON"),
    ("[1, 2]", "line 2: not a JSON object"),
    (json.dumps(_row("x.png", "high")), "line 2: score must be a finite number"),
    (json.dumps(_row("x.png", 0.5, verdict="MAYBE")), "line 2: verdict must be OK or NG"),
    (json.dumps(_row("", 0.5)), "line 2: path must be a non-empty string"),
    (json.dumps(_row("x.png", 0.5, regions=[{"bbox": [1, 2]}])), "line 2: a region's bbox"),
])
def test_malformed_results_name_the_file_line_and_field(tmp_path, line, message):
    (tmp_path / "results.jsonl").write_text(json.dumps(_row("a.png", 0.1)) + "\n" + line + "\n" +
                                            json.dumps(_row("b.png", 0.2)) + "\n")
    with pytest.raises(InputError, match=re.escape(message)) as raised:
        load_run(tmp_path)
    assert "results.jsonl" in str(raised.value)


def test_fade_report_on_a_folder_without_a_run_exits_2(tmp_path):
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "holds no results of fade detect, watch or eval" in result.output
    assert not (tmp_path / "report.html").exists()


def test_initial_threshold_is_the_given_value_else_the_runs_decisions_else_none():
    rows = [Row("good/a", score=0.2, verdict="OK", label=GOOD), Row("bad/b", score=0.7, verdict="NG", label=DEFECTIVE),
            Row("bad/c", score=0.4, verdict="OK", label=DEFECTIVE)]
    assert initial_threshold(rows, 0.33) == (0.33, "given")
    assert initial_threshold(rows, None, recorded=0.5) == (0.5, "run")
    assert initial_threshold(rows, None) == (0.55, "run")  # between the highest OK and the lowest NG score
    for row in rows:
        row.verdict = None
    # no decisions: no threshold, not one fitted on the labels (that is only a what-if: fitted_threshold)
    assert initial_threshold(rows, None) == (None, "none")
    assert initial_threshold(rows, None, recorded=0.5) == (None, "none")


@pytest.mark.parametrize("low, high, expected", [
    (0.3011, 0.3910, 0.346), (0.36110621, 0.36110622, 0.361106215), (None, 0.8, 0.796), (0.1, 0.1000001, 0.10000005),
])
def test_a_threshold_between_two_scores_is_short_and_no_images_score(low, high, expected):
    value = short_threshold_between(low, high)
    assert value == expected
    assert (low if low is not None else 0) < value < high


def test_the_fitted_threshold_decides_as_best_f1_between_two_neighbouring_scores():
    rng = np.random.default_rng(3)
    scores = rng.random(40)
    labels = rng.random(40) < scores
    rows = [Row(f"{i}", score=float(s), label=DEFECTIVE if y else GOOD) for i, (s, y) in enumerate(zip(scores, labels))]
    rows.append(Row("unlabelled", score=float(scores.mean())))
    fitted = fitted_threshold(rows)
    value = fitted["value"]
    assert fitted["labelled"] == 40
    assert value not in scores and len(f"{value:.15g}".lstrip("0.").rstrip("0")) <= 5  # a short number
    best = max(f1_score(labels, scores >= t) for t in scores)
    assert f1_score(labels, scores >= value) == pytest.approx(best)
    everything = sorted([*scores, scores.mean()])
    below = [s for s in everything if s < value]
    above = [s for s in everything if s > value]
    assert below and above and value == pytest.approx((below[-1] + above[0]) / 2, rel=5e-3)  # the midpoint, rounded
    assert fitted_threshold([Row("a", score=0.3, label=GOOD)]) is None


def _header(run_dir: Path) -> dict:
    data = json.loads(re.search(r'id="fade-data">(.*?)</script>', build_report(run_dir).read_text()).group(1))
    return {"items": dict(data["header"]["items"]), "banner": data["header"]["banner"], "notes": data["header"]["notes"]}


def test_the_header_of_a_run_that_recorded_a_published_tag_has_no_banner(tmp_path):
    _write_rows(tmp_path / "results.jsonl", [_row("a.png", 0.3, verdict="OK")])
    (tmp_path / "run.json").write_text(json.dumps({
        "fade_version": "9.9", "device": "cuda:0", "model": {"model": "ViT-B-16-plus-240", "pretrained": "laion400m_e31"},
        "precision": {"requested": "auto", "precision": "bf16", "reason": "the GPU supports it"},
        "class_name": "screw", "scales": [240, 448], "cls_size": 240, "references": 0,
        "command": ["fade", "detect", "my images", "--bank", "screw.fadebank"], "started": "2026-01-02T03:04:05+00:00",
        "threshold": 0.42, "pixel_threshold": None}))
    (tmp_path / "run-settings.json").write_text(json.dumps({"bank_path": "/banks/screw.fadebank", "refs": None}))
    header = _header(tmp_path)
    assert header["banner"] is None and header["notes"] == []
    assert header["items"] == {
        "command": "fade detect 'my images' --bank screw.fadebank", "fade version": "9.9",
        "model": "ViT-B-16-plus-240", "weights": "published pretrained tag laion400m_e31", "class": "screw",
        "references": "bank /banks/screw.fadebank (0 images)", "precision": "bf16 (asked auto: the GPU supports it)",
        "scales": "map at 240 px, 448 px; image score at 240 px", "device": "cuda:0",
        "threshold": "0.42 (NG at or above)", "started": "2026-01-02T03:04:05+00:00"}


def test_a_local_weights_file_gets_the_banner(tmp_path):
    _write_rows(tmp_path / "results.jsonl", [_row("a.png", 0.3)])
    (tmp_path / "run.json").write_text(json.dumps({"model": {"model": "ViT-L-14", "weights_sha256": "ab" * 32}}))
    (tmp_path / "run-settings.json").write_text(json.dumps({"weights": "/models/finetuned.pt"}))
    header = _header(tmp_path)
    assert header["items"]["weights"] == "file finetuned.pt (sha256 abababababab)"
    assert header["banner"].startswith("Scores are not from a published model: ViT-L-14 ran a local weights file")


@pytest.mark.parametrize("run_json, note", [
    (None, None),  # an older run: no run.json at all
    ("{not json", "run.json could not be read"),
    ("[1, 2]", "run.json is not a JSON object"),
    ('{"fade_version": 7, "model": "x", "command": [1], "scales": "big", "threshold": "high", "started": NaN}',
     "run.json could not be read"),
    ('{"fade_version": 7, "model": "x", "command": [1], "scales": "big", "threshold": "high"}', None),
])
def test_what_a_run_did_not_record_or_recorded_wrongly_is_not_recorded(tmp_path, run_json, note):
    _write_rows(tmp_path / "results.jsonl", [_row("a.png", 0.3)])
    if run_json is not None:
        (tmp_path / "run.json").write_text(run_json)
    header = _header(tmp_path)
    assert header["banner"] is None
    assert all(value is None for value in header["items"].values())
    assert [note in text for text in header["notes"]] == ([True] if note else [])


def test_best_f1_threshold_is_the_best_of_every_score():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(60), 2)  # ties on purpose
    labels = rng.random(60) < scores
    rows = [Row(f"{i}", score=float(s), label=DEFECTIVE if y else GOOD) for i, (s, y) in enumerate(zip(scores, labels))]
    best = best_f1_threshold(rows)
    f1 = {t: f1_score(labels, scores >= t) for t in scores}
    assert f1[best] == pytest.approx(max(f1.values()))


@pytest.mark.parametrize("width", [1, 17, 199, 200, 233, 640, 4000])
def test_overlay_image_width_undoes_the_colour_scale(width):
    canvas = overlay(Image.new("RGB", (width, 30)), np.zeros((30, width), dtype=np.float32))
    assert overlay_image_width(canvas.width) == width


def test_thumbnails_keep_the_aspect_ratio_and_are_never_enlarged():
    assert thumbnail_size(768, 576) == (320, 240)
    assert thumbnail_size(100, 4000) == (8, 320)
    assert thumbnail_size(200, 100) == (200, 100)
    assert image_thumbnail(Image.new("L", (1000, 500))).size == (320, 160)


def test_image_curves_are_the_points_of_auroc_and_aupr():
    rng = np.random.default_rng(1)
    labels = rng.random(80) < 0.4
    scores = np.round(rng.random(80) + labels * 0.3, 2)
    curves = image_curves(labels, scores)
    roc, pr = curves["roc"], curves["pr"]
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    ap = -np.sum(np.diff(pr["recall"]) * np.array(pr["precision"])[:-1])
    assert ap == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert image_curves([True, True], [0.1, 0.2]) == {"roc": None, "pr": None}


def test_pro_curve_is_what_aupro_integrates():
    rng = np.random.default_rng(2)
    pixels = PixelAccumulator()
    for index in range(4):
        codes = (rng.random((32, 32)) * (LEVELS - 1)).astype(np.uint16)
        mask = np.zeros((32, 32), dtype=bool)
        if index % 2:
            mask[4:12, 5:9] = True
            mask[20:30, 20:22] = True
            codes[mask] = np.minimum(codes[mask].astype(np.int64) + 20000, LEVELS - 1).astype(np.uint16)
        pixels.add(codes, mask if mask.any() else None)
    curve = pixels.pro_curve()
    assert curve["fpr"][0] == 0.0 and curve["fpr"][-1] == pytest.approx(0.3)
    assert np.trapezoid(curve["pro"], curve["fpr"]) / 0.3 == pytest.approx(pixels.metrics()["aupro"], abs=1e-12)
    assert PixelAccumulator().pro_curve() is None


def test_no_report_then_fade_report_makes_the_thumbnails_from_the_images_and_maps(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["detect", str(COOKIE_TEST / "good"), "--out", str(out), "--no-report", "-q",
                                      "--format", "jsonl", *FAST_ARGS])
    assert result.exit_code == 0, result.output
    assert not (out / "report.html").exists() and not (out / "thumbnails").exists()
    report = CliRunner().invoke(cli, ["report", str(out), "--images", str(COOKIE_TEST / "good"), "-q"])
    assert report.exit_code == 0, report.output
    assert f"Report: {out / 'report.html'}" in report.output
    for name in ("001.jpg", "002.jpg"):
        assert Image.open(out / "thumbnails" / "image" / f"{name}.jpg").size == (240, 320)
        assert Image.open(out / "thumbnails" / "map" / f"{name}.jpg").size == (240, 320)
    rows = json.loads(re.search(r'id="fade-data">(.*?)</script>', (out / "report.html").read_text()).group(1))["rows"]
    assert [row["thumb"] for row in rows] == ["thumbnails/image/001.jpg.jpg", "thumbnails/image/002.jpg.jpg"]


def test_without_the_original_the_heatmap_stands_in(tmp_path):
    image = Image.new("RGB", (400, 300), (200, 150, 100))
    heatmap = overlay(image, np.full((300, 400), 0.7, dtype=np.float32))
    (tmp_path / "heatmaps").mkdir()
    heatmap.save(tmp_path / "heatmaps" / "a.png.png")
    _write_rows(tmp_path / "results.jsonl", [_row("a.png", 0.7, heatmap_path="heatmaps/a.png.png")])
    build_report(tmp_path, out=tmp_path / "elsewhere" / "page.html")
    assert Image.open(tmp_path / "thumbnails" / "heatmap" / "a.png.jpg").size == (320, 240)
    page = (tmp_path / "elsewhere" / "page.html").read_text()
    row = json.loads(re.search(r'id="fade-data">(.*?)</script>', page).group(1))["rows"][0]
    assert row["heat_thumb"] == "../thumbnails/heatmap/a.png.jpg"  # relative to the page


def test_a_watch_folder_is_reported_as_a_watch(tmp_path):
    _write_rows(tmp_path / "results.jsonl", [_row("cam/a.png", 0.3), _row("cam/b.png", 0.8, verdict="NG")])
    (tmp_path / "watch-state.jsonl").write_text("")
    page = build_report(tmp_path).read_text()
    data = json.loads(re.search(r'id="fade-data">(.*?)</script>', page).group(1))
    # no run.json: the threshold lies between the run's OK and NG scores, and is neither of them
    assert (data["kind"], data["threshold"], data["threshold_source"]) == ("watch", 0.796, "run")
    assert [row["path"] for row in data["rows"]] == ["cam/a.png", "cam/b.png"]
