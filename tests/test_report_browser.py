"""The HTML report in a real browser (Debian's Chromium through Playwright).

One `fade detect` run (tiny golden model) on the cookie example plus an unreadable
file and files with hostile names, one `fade eval` run with two seeds, and a
synthetic run of 20,000 rows. Set FADE_SCREENSHOTS=DIR to keep the screenshots
(docs/img/ holds the ones of the README).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image
import pytest
from click.testing import CliRunner
from sklearn.metrics import f1_score

import fade_cli
from conftest import FAST_ARGS, WEIGHTS
from report_support import OpenReport, synthetic_run

from fade_cli.cli import cli
from fade_cli.evaluation.outputs import _percent
from fade_cli.io.outputs import ResultRow, json_line
from fade_cli.report.build import build_report

pytestmark = pytest.mark.slow  # drives Chromium

COOKIE = Path(__file__).parent.parent / "examples" / "cookie"
HOSTILE_NAMES = [
    "cracked/<img src=x onerror=alert(1)>.jpg",
    "a</script><script>alert(2)</script>.jpg",  # folders 'a<' and 'script><script>alert(2)<'
    "cracked/q\"&amp;\u2028'<b>bold</b>.jpg",
]


def _fade(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fade_cli", *args], capture_output=True, text=True, timeout=600)


def _screenshot(page, name: str, tmp_path_factory) -> None:
    folder = Path(os.environ.get("FADE_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / name))


@pytest.fixture(scope="module")
def detect_run(tmp_path_factory):
    """fade detect --out on the cookie test images, a broken file and hostile names; its rows."""
    images = tmp_path_factory.mktemp("images")
    shutil.copytree(COOKIE / "cookie" / "test", images, dirs_exist_ok=True)
    for name in HOSTILE_NAMES:
        target = images / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(COOKIE / "cookie" / "test" / "cracked" / "001.jpg", target)
    (images / "good" / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path_factory.mktemp("run") / "cookie"
    result = _fade("detect", str(images), "--refs", str(COOKIE / "cookie" / "train" / "good"), "--class", "cookie",
                   "--out", str(out), "--threshold", "0.5", "--pixel-threshold", "0.6", "-q", *FAST_ARGS)
    assert result.returncode == 1, result.stderr  # NG images
    assert f"Report: {out / 'report.html'}" in result.stderr
    # split on newlines only: a file name may hold U+2028, which str.splitlines() would split on
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").split("\n") if line]
    return out, rows


def _checked(chromium, page_path: Path):
    """The report opened for a test; afterwards, nothing may have gone wrong in the page."""
    opened = OpenReport(chromium, page_path)
    yield opened
    assert opened.problems() == []
    opened.close()


@pytest.fixture
def report(chromium, detect_run):
    yield from _checked(chromium, detect_run[0] / "report.html")


def _until(page, expression: str, timeout: float = 10.0) -> None:
    """Wait until ``expression`` is true in the page (polled: the page's CSP forbids wait_for_function's eval)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(50)


def _card_paths(page) -> list[str]:
    return page.eval_on_selector_all("#gallery .card", "cards => cards.map(c => c.getAttribute('data-path'))")


def _gallery_order(page) -> list[str]:
    """The paths of the gallery's cards in reading order (they are positioned absolutely)."""
    return page.eval_on_selector_all(
        "#gallery .card",
        "cards => cards.map(c => [parseFloat(c.style.top), parseFloat(c.style.left), c.getAttribute('data-path')])"
        ".sort((a, b) => a[0] - b[0] || a[1] - b[1]).map(x => x[2])")


def _expected_order(rows: list[dict]) -> list[str]:
    scored = sorted((r for r in rows if r["error"] is None), key=lambda r: (-r["score"], r["path"]))
    return [r["path"] for r in scored] + sorted(r["path"] for r in rows if r["error"] is not None)


def _set_threshold(page, value) -> None:
    page.fill("#threshold-input", repr(value))


def _counts(page) -> dict[str, int]:
    return {name: int(page.text_content(f"#count-{name}")) for name in ("ok", "ng", "errors", "tp", "fp", "tn", "fn")}


def _python_counts(rows: list[dict], threshold: float) -> dict[str, int]:
    counts = dict.fromkeys(("ok", "ng", "errors", "tp", "fp", "tn", "fn"), 0)
    for row in rows:
        if row["error"] is not None:
            counts["errors"] += 1
            continue
        ng = row["score"] >= threshold
        counts["ng" if ng else "ok"] += 1
        good = "good" in Path(row["path"]).parts[:-1]
        counts[{(True, True): "fp", (True, False): "tp", (False, True): "tn", (False, False): "fn"}[(ng, good)]] += 1
    return counts


def test_one_card_per_row_highest_score_first_errors_last(report, detect_run, tmp_path_factory):
    _, rows = detect_run
    page = report.page
    assert page.text_content("#shown-count") == f"Showing {len(rows)} of {len(rows)} images"
    assert _gallery_order(page) == _expected_order(rows)
    error_card = page.locator("#gallery .card[data-verdict='error']")
    assert error_card.count() == 1 and "not a readable image" in error_card.locator(".error-text").text_content()
    page.select_option("#sort", "score-asc")
    scored = sorted((r for r in rows if r["error"] is None), key=lambda r: (r["score"], r["path"]))
    assert _gallery_order(page)[: len(scored)] == [r["path"] for r in scored]
    page.select_option("#sort", "score-desc")
    page.check("#show-heatmap")
    _until(page, "Array.from(document.querySelectorAll('#gallery img.map')).every(i => i.complete)")
    _screenshot(page, "report-gallery.png", tmp_path_factory)


@pytest.mark.parametrize("pick", ["lowest", "a middle score", "highest", "above all"])
def test_threshold_counts_equal_python(report, detect_run, pick):
    _, rows = detect_run
    scores = sorted(r["score"] for r in rows if r["error"] is None)
    threshold = {"lowest": scores[0], "a middle score": scores[len(scores) // 2], "highest": scores[-1],
                 "above all": scores[-1] + 0.01}[pick]
    page = report.page
    _set_threshold(page, threshold)
    assert _counts(page) == _python_counts(rows, threshold)
    counts = _python_counts(rows, threshold)
    precision = counts["tp"] / (counts["tp"] + counts["fp"]) if counts["tp"] + counts["fp"] else None
    assert page.text_content("#precision") == ("n/a" if precision is None else f"{precision:.3f}")
    verdicts = page.eval_on_selector_all("#gallery .card", "cs => cs.map(c => [c.getAttribute('data-path'), c.dataset.verdict])")
    by_path = {r["path"]: r for r in rows}
    for path, verdict in verdicts:
        row = by_path[path]
        assert verdict == ("error" if row["error"] else "NG" if row["score"] >= threshold else "OK")
    assert page.input_value("#threshold-arg") == f"--threshold {threshold!r}"
    page.click("#copy-threshold")
    _until(page, "document.getElementById('copy-status').textContent !== ''")


def test_slider_moves_the_threshold(report, detect_run):
    page = report.page
    page.fill("#threshold-slider", "0.45")
    page.dispatch_event("#threshold-slider", "input")
    assert float(page.input_value("#threshold-input")) == pytest.approx(0.45)
    assert _counts(page) == _python_counts(detect_run[1], float(page.input_value("#threshold-input")))


def test_filters(report, detect_run):
    _, rows = detect_run
    page = report.page
    _set_threshold(page, 0.5)
    page.select_option("#filter-verdict", "NG")
    ng = [r["path"] for r in rows if r["error"] is None and r["score"] >= 0.5]
    assert sorted(_card_paths(page)) == sorted(ng)
    assert page.text_content("#shown-count") == f"Showing {len(ng)} of {len(rows)} images"
    page.select_option("#filter-verdict", "")
    page.select_option("#filter-errors", "only")
    assert _card_paths(page) == [r["path"] for r in rows if r["error"] is not None]
    page.select_option("#filter-errors", "hide")
    assert sorted(_card_paths(page)) == sorted(r["path"] for r in rows if r["error"] is None)
    page.select_option("#filter-errors", "")
    page.select_option("#filter-group", "good")
    assert sorted(_card_paths(page)) == sorted(r["path"] for r in rows if r["path"].startswith("good/"))
    page.select_option("#filter-group", "")
    page.fill("#filter-search", "002")
    assert sorted(_card_paths(page)) == sorted(r["path"] for r in rows if "002" in r["path"])
    page.fill("#filter-search", "")
    page.select_option("#filter-label", "FP")
    fp = [r["path"] for r in rows if r["error"] is None and r["score"] >= 0.5 and r["path"].startswith("good/")]
    assert sorted(_card_paths(page)) == sorted(fp)
    page.select_option("#filter-label", "defective")
    assert sorted(_card_paths(page)) == sorted(r["path"] for r in rows if not r["path"].startswith("good/"))


def test_detail_view_follows_the_current_order_with_the_arrow_keys(report, detect_run, tmp_path_factory):
    _, rows = detect_run
    page = report.page
    page.select_option("#sort", "path")
    order = sorted(r["path"] for r in rows)
    first = page.locator("#gallery .card", has_text=Path(order[0]).name).first
    first.focus()
    page.keyboard.press("Enter")
    assert page.is_visible("#detail")

    def shown_path():
        return page.eval_on_selector("#detail-info dd", "dd => dd.textContent")

    assert shown_path() == order[0]
    for expected in order[1:4]:
        page.keyboard.press("ArrowRight")
        assert shown_path() == expected
    page.keyboard.press("ArrowLeft")
    assert shown_path() == order[2]
    page.keyboard.press("Escape")
    assert not page.is_visible("#detail")
    # The highest-scored NG image: its full-size image under the map, the opacity slider, the region boxes.
    page.select_option("#sort", "score-desc")
    page.click("#gallery .card >> nth=0")
    top = max((r for r in rows if r["error"] is None), key=lambda r: r["score"])
    assert shown_path() == top["path"]
    source = page.get_attribute("#detail-image", "src")  # the original image, not a thumbnail
    assert source.endswith(top["path"]) and "thumbnails" not in source
    page.fill("#detail-opacity", "0.8")
    page.dispatch_event("#detail-opacity", "input")
    assert page.eval_on_selector("#detail-map", "m => m.style.opacity") == "0.8"
    assert page.locator("#detail-regions rect").count() == len(top["regions"])
    _until(page, "document.getElementById('detail-image').complete")
    _screenshot(page, "report-detail.png", tmp_path_factory)
    page.keyboard.press("Escape")


def test_hostile_names_are_shown_literally_and_run_nothing(report, detect_run):
    page = report.page
    for name in HOSTILE_NAMES:
        page.fill("#filter-search", name)
        cards = page.locator("#gallery .card")
        assert cards.count() == 1, name
        assert cards.first.get_attribute("data-path") == name
        assert cards.first.locator(".name").text_content() == name.split("/")[-1]
        cards.first.click()
        assert page.eval_on_selector("#detail-info dd", "dd => dd.textContent") == name
        page.keyboard.press("Escape")
    assert page.locator("img[src='x']").count() == 0
    assert page.locator("#gallery b").count() == 0
    assert report.dialogs == []


def test_report_of_an_interrupted_run(chromium, detect_run, tmp_path):
    """An interrupted run has results.partial.jsonl, maybe with a torn last line; its report shows what it has."""
    out, rows = detect_run
    run = tmp_path / "interrupted"
    shutil.copytree(out, run)
    lines = [line + "\n" for line in (run / "results.jsonl").read_text(encoding="utf-8").split("\n") if line]
    (run / "results.jsonl").unlink()
    (run / "results.csv").unlink()
    (run / "results.partial.jsonl").write_text("".join(lines[:3]) + lines[3][:20], encoding="utf-8")
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert result.exit_code == 0, result.output
    opened = OpenReport(chromium, run / "report.html")
    assert opened.page.text_content("#shown-count") == "Showing 3 of 3 images"
    assert "interrupted" in opened.page.text_content("#subtitle")
    assert opened.problems() == []
    opened.close()


# ---- what the page says a run decided, and what made it ---------------------------------------

def _verdicts_shown(page) -> dict:
    return dict(page.eval_on_selector_all(
        "#gallery .card", "cs => cs.map(c => [c.getAttribute('data-path'), c.dataset.verdict])"))


def _facts(page) -> dict:
    return dict(page.eval_on_selector_all("#run-facts dd", "dds => dds.map(d => [d.dataset.term, d.textContent])"))


@pytest.fixture(scope="module")
def undecided_run(tmp_path_factory):
    """fade detect without --threshold on the cookie test images (ground truth from the folder names)."""
    out = tmp_path_factory.mktemp("undecided") / "cookie"
    result = _fade("detect", str(COOKIE / "cookie" / "test"), "--refs", str(COOKIE / "cookie" / "train" / "good"),
                   "--class", "cookie", "--out", str(out), "-q", *FAST_ARGS)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").split("\n") if line]
    assert rows and all(row["verdict"] is None for row in rows)
    return out, rows


@pytest.fixture
def undecided_report(chromium, undecided_run):
    yield from _checked(chromium, undecided_run[0] / "report.html")


def test_a_run_without_threshold_shows_no_verdict_until_one_is_picked(undecided_report, undecided_run):
    _, rows = undecided_run
    page = undecided_report.page
    assert page.locator("#gallery .badge.verdict").count() == 0
    assert set(_verdicts_shown(page).values()) == {""}
    assert [page.text_content(f"#count-{name}") for name in ("ok", "ng", "tp", "fp", "tn", "fn")] == ["\u2013"] * 6
    assert page.text_content("#precision") == page.text_content("#recall") == "n/a"
    assert page.input_value("#threshold-arg") == "" and page.is_disabled("#copy-threshold")
    assert page.input_value("#threshold-input") == ""
    assert "made no OK/NG decisions" in page.text_content("#threshold-note")
    # A pick on the slider: verdicts at that (rounded) value, said to be a what-if.
    page.fill("#threshold-slider", "0.4567891234")
    page.dispatch_event("#threshold-slider", "input")
    picked = float(page.input_value("#threshold-input"))
    assert picked == 0.4568
    assert page.input_value("#threshold-arg") == "--threshold 0.4568"
    assert _verdicts_shown(page) == {r["path"]: "NG" if r["score"] >= picked else "OK" for r in rows}
    assert _counts(page) == _python_counts(rows, picked)
    assert page.text_content("#threshold-note").startswith("What-if: your pick")
    page.click("#use-run-verdicts")  # back to none, as the run
    assert page.locator("#gallery .badge.verdict").count() == 0


def test_the_fitted_threshold_is_a_labelled_what_if_between_two_scores(undecided_report, undecided_run):
    _, rows = undecided_run
    page = undecided_report.page
    page.click("#use-fitted")
    note = page.text_content("#threshold-note")
    assert "What-if: fitted on 5 labelled images" in note and "not a production threshold" in note
    value = float(page.input_value("#threshold-input"))
    assert page.input_value("#threshold-arg") == f"--threshold {value!r}"
    scores = sorted(r["score"] for r in rows)
    assert value not in scores and len(repr(value)) <= 6  # 0.xyz: a few significant digits, no image's score
    below, above = max(s for s in scores if s < value), min(s for s in scores if s > value)
    assert value == float(f"{(below + above) / 2:.3g}")  # the midpoint of its neighbours, rounded
    defective = ["good" not in Path(r["path"]).parts for r in rows]
    f1 = {t: f1_score(defective, [r["score"] >= t for r in rows]) for t in [*scores, value]}
    assert f1[value] == max(f1.values())
    assert _counts(page) == _python_counts(rows, value)
    assert page.is_hidden("#use-fitted")


def test_a_run_with_a_threshold_shows_its_verdicts_as_decided(report, detect_run):
    _, rows = detect_run
    page = report.page
    decided = {r["path"]: r["verdict"] or "error" for r in rows}
    assert _verdicts_shown(page) == decided and "NG" in decided.values() and "OK" in decided.values()
    assert page.input_value("#threshold-arg") == "--threshold 0.5"
    assert page.text_content("#threshold-note") == "The run's verdicts, as it decided them (threshold 0.5: NG at or above)."
    _set_threshold(page, 0.9)
    assert page.text_content("#threshold-note").startswith("What-if: your pick, not the run's verdicts")
    page.click("#use-run-verdicts")
    assert _verdicts_shown(page) == decided
    assert _facts(page)["threshold"] == "0.5 (NG at or above); pixel threshold 0.6"


def test_the_header_says_what_made_the_run_and_that_its_weights_are_no_published_model(undecided_report):
    page = undecided_report.page
    facts = _facts(page)
    digest = hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()
    refs = COOKIE / "cookie" / "train" / "good"
    assert facts["command"].startswith("fade detect ") and "--refs" in facts["command"]
    assert facts["fade version"] == fade_cli.__version__
    assert facts["model"] == "fade-golden"
    assert facts["weights"] == f"file {WEIGHTS.name} (sha256 {digest[:12]})"
    assert facts["class"] == "cookie"
    assert facts["references"] == f"folder {refs} ({len(list(refs.iterdir()))} images)"
    assert facts["precision"] == "fp32"
    assert facts["scales"] == "map at 240 px, 320 px; image score at 240 px"
    assert facts["threshold"] == "none: the run made no OK/NG decisions"
    started = datetime.fromisoformat(facts["started"])
    assert abs((datetime.now(timezone.utc) - started).total_seconds()) < 3600
    banner = page.locator("#weights-banner")
    assert banner.is_visible() and banner.text_content().startswith("Scores are not from a published model")
    assert "random" in banner.text_content()


def test_an_older_run_shows_what_it_did_not_record(chromium, undecided_run, tmp_path):
    run = tmp_path / "older"
    shutil.copytree(undecided_run[0], run)
    (run / "run.json").unlink()
    (run / "run-settings.json").unlink()
    build_report(run)
    opened = OpenReport(chromium, run / "report.html")
    page = opened.page
    assert set(_facts(page).values()) == {"not recorded"}
    assert page.locator("#run-facts dd.not-recorded").count() == len(_facts(page))
    assert page.is_hidden("#weights-banner")
    assert opened.problems() == []
    opened.close()


def test_the_detail_view_spells_out_the_scores_and_shows_the_colour_scale(undecided_report):
    page = undecided_report.page
    sub = page.text_content("#gallery .card .sub")
    assert sub.startswith("language ") and " \u00b7 vision " in sub
    page.click("#gallery .card >> nth=0")
    terms = page.eval_on_selector_all("#detail-info dt", "dts => dts.map(d => d.textContent)")
    assert {"language score", "vision score"} <= set(terms)
    assert "linear-gradient" in page.eval_on_selector("#detail-scale-bar", "b => getComputedStyle(b).backgroundImage")
    assert page.text_content("#detail-scale").count("anomalous") == 2
    page.keyboard.press("Escape")


# ---- eval -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "cookie"
    result = _fade("eval", str(COOKIE), "--shots", "1", "--seeds", "0,1", "--out", str(out), "-q", *FAST_ARGS)
    assert result.returncode == 0, result.stderr
    assert f"Report: {out / 'report.html'}" in result.stderr
    return out, json.loads((out / "metrics.json").read_text()), json.loads((out / "curves.json").read_text())


@pytest.fixture
def eval_report(chromium, eval_run):
    yield from _checked(chromium, eval_run[0] / "report.html")


def test_eval_table_equals_metrics_json(eval_report, eval_run, tmp_path_factory):
    _, metrics, _ = eval_run
    page = eval_report.page
    expected = {**metrics["classes"], "mean": {"mean": metrics["mean"]["mean"], "std": metrics["mean"]["std"]}}
    shown = page.eval_on_selector_all(
        "#metrics-table tbody tr",
        "trs => trs.map(tr => [tr.dataset.class, Array.from(tr.querySelectorAll('td[data-metric]')).map("
        "td => [td.dataset.metric, td.dataset.value ?? null, td.dataset.std ?? null, td.textContent])])")
    assert [name for name, _ in shown] == list(expected)
    for name, cells in shown:
        assert [metric for metric, *_ in cells] == metrics["metrics"]
        for metric, value, std, text in cells:
            mean, spread = expected[name]["mean"][metric], (expected[name]["std"] or {}).get(metric)
            assert (None if value is None else float(value)) == mean
            assert (None if std is None else float(std)) == spread
            assert text == _percent(mean, spread)
    page.locator("#curves").scroll_into_view_if_needed()
    _screenshot(page, "report-eval.png", tmp_path_factory)


def _polyline_points(page, kind: str) -> dict:
    lines = page.eval_on_selector_all(
        f"polyline.curve-line[data-kind='{kind}']",
        "ls => ls.map(l => [l.dataset.class, l.dataset.seed, l.getAttribute('points')])")
    return {(name, int(seed) if seed else None): [tuple(map(float, p.split(","))) for p in points.split(" ")]
            for name, seed, points in lines}


def test_eval_curves_are_the_points_of_the_metrics(eval_report, eval_run):
    _, metrics, curves = eval_run
    page = eval_report.page
    by_run = {(run["class"], run["seed"]): run["metrics"] for run in metrics["runs"]}
    for kind, (x_name, y_name) in {"roc": ("fpr", "tpr"), "pr": ("recall", "precision"), "pro": ("fpr", "pro")}.items():
        drawn = _polyline_points(page, kind)
        expected = {(e["class"], e["seed"]): e[kind] for e in curves["runs"] if e[kind] is not None}
        assert set(drawn) == set(expected) and drawn, kind
        for key, points in drawn.items():
            assert points == list(zip(expected[key][x_name], expected[key][y_name]))
            x, y = np.array(points).T
            if kind == "roc":
                assert np.trapezoid(y, x) == pytest.approx(by_run[key]["image_auroc"], abs=1e-12)
            elif kind == "pr":  # average precision: precision weighted by each step in recall
                assert -np.sum(np.diff(x) * y[:-1]) == pytest.approx(by_run[key]["image_aupr"], abs=1e-12)
            else:
                assert np.trapezoid(y, x) / 0.3 == pytest.approx(by_run[key]["aupro"], abs=1e-12)


def test_eval_gallery_and_worst_images(eval_report, eval_run):
    out, metrics, _ = eval_run
    page = eval_report.page
    images = sum(run["counts"]["test_images"] for run in metrics["runs"])
    assert page.text_content("#shown-count") == f"Showing {images} of {images} images"
    with open(out / "scores.csv", newline="") as handle:
        scores = [[r["class"], r["seed"], r["image"], r["defect"], r["label"], r["score"]] for r in csv.DictReader(handle)]
    for seed in ("0", "1"):
        good = sorted((float(r[5]), r[2]) for r in scores if r[1] == seed and r[4] == "0")
        strip = page.locator(f".worst-class[data-run='cookie, seed {seed}'] [data-worst='fp'] .card")
        assert strip.first.get_attribute("data-path") == good[-1][1]
        defective = sorted((float(r[5]), r[2]) for r in scores if r[1] == seed and r[4] == "1")
        strip = page.locator(f".worst-class[data-run='cookie, seed {seed}'] [data-worst='fn'] .card")
        assert strip.first.get_attribute("data-path") == defective[0][1]
    page.locator("#gallery").scroll_into_view_if_needed()
    _until(page, f"document.querySelectorAll('#gallery .card img.image').length === {images}")  # written by eval


# ---- scale ------------------------------------------------------------------------------------

def test_twenty_thousand_rows_are_interactive_within_two_seconds(chromium, tmp_path):
    rows = synthetic_run(tmp_path / "big", 20_000)
    build_report(tmp_path / "big")
    opened = OpenReport(chromium, tmp_path / "big" / "report.html")
    page = opened.page
    # Timed by the page's own clock (from the start of navigation), not through the test's calls to it:
    # until it is ready, then how long a threshold change takes to relabel and recount.
    ready_ms = float(page.get_attribute("body", "data-ready-ms"))
    change_ms = page.evaluate(
        "() => { const box = document.getElementById('threshold-input'), t = performance.now();"
        " box.value = '0.5'; box.dispatchEvent(new Event('input')); return performance.now() - t; }")
    assert (ready_ms + change_ms) / 1000 < 2.0
    expected = _python_counts(rows, 0.5)
    assert int(page.text_content("#count-ng")) == expected["ng"]
    assert int(page.text_content("#count-errors")) == expected["errors"]
    assert page.text_content("#shown-count") == "Showing 20000 of 20000 images"
    assert page.locator("#gallery .card").count() < 200  # only what is on screen exists
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    _until(page, "document.querySelector('#gallery .card[data-verdict=\"error\"]') !== null")
    assert _expected_order(rows)[-1] in _card_paths(page)
    assert len(opened.requests) < 400  # thumbnails load as cards appear, not 20,000 at once
    assert opened.problems() == []
    opened.close()


def test_a_file_name_that_is_not_utf8_shows_and_finds_its_thumbnail(chromium, tmp_path):
    name = os.fsdecode(b"caf\xe9 #1?.png")  # the byte 0xE9 alone is not UTF-8: Python holds it as U+DCE9
    row = {"path": f"good/{name}", "score": 0.4, "error": None}
    (tmp_path / "results.jsonl").write_text(json_line(ResultRow(**row)) + "\n", encoding="utf-8")
    for kind in ("image", "map"):
        target = tmp_path / "thumbnails" / kind / "good" / f"{name}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 24), (200, 100, 50)).save(target, format="JPEG")
    build_report(tmp_path)
    opened = OpenReport(chromium, tmp_path / "report.html")
    page = opened.page
    _until(page, "Array.from(document.querySelectorAll('#gallery img.image')).every(i => i.complete)")
    assert page.evaluate("document.querySelector('#gallery img.image').naturalWidth") == 32
    assert page.text_content("#gallery .card .name") == name  # the same string, as Python and JSON hold it
    assert opened.problems() == []
    opened.close()
