"""`fade detect --mutual` and `fade eval --shots 0 --mutual` with the tiny golden model: outputs, invariances,
edge cases and refusals."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CLS_PROMPTS, FAST_ARGS, GOLDEN, QUERIES, SEG_PROMPTS, run_cli as run

COOKIE = Path(__file__).parent.parent / "examples" / "cookie"
# The golden model at one small size with the short golden prompt sets: these tests check behaviour.
ARGS = [*FAST_ARGS, "--scales", "240", "--cls-prompts", str(CLS_PROMPTS), "--seg-prompts", str(SEG_PROMPTS)]


def rows_of(result) -> dict[str, dict]:
    assert result.exit_code in (0, 1), result.output
    return {row["path"]: row for row in map(json.loads, result.stdout.splitlines())}


def detect_mutual(folder: Path, *extra: str, out: Path = None):
    args = ["detect", str(folder), "--mutual", "--format", "jsonl", "-q", *ARGS, *extra]
    return run(args + (["--out", str(out)] if out else []))


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for path in sorted(QUERIES.glob("*.png")):
        shutil.copy(path, root / path.name)
    return root


def assert_same_scores(a: dict, b: dict, tol: float = 1e-4):
    assert sorted(a) == sorted(b)
    for name in a:
        for field in ("score", "language_score", "vision_score"):
            assert a[name][field] == pytest.approx(b[name][field], abs=tol), (name, field)


@pytest.mark.slow
def test_detect_mutual_writes_the_outputs_of_a_zero_shot_run(images, tmp_path):
    out = tmp_path / "run"
    result = detect_mutual(images, "--threshold", "0.3", "--pixel-threshold", "0.5", out=out)
    rows = rows_of(result)
    assert list(rows) == ["cracked_a.png", "cracked_b.png", "good_a.png", "good_b.png"]
    saved = {row["path"]: row for row in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert saved == rows
    for name, row in rows.items():
        assert 0.0 <= row["score"] <= 1.0 and row["vision_score"] is not None and row["error"] is None
        assert row["verdict"] == ("NG" if row["score"] >= 0.3 else "OK")
        size = Image.open(images / name).size
        assert np.load(out / row["map_path"]).shape == (size[1], size[0])
        assert Image.open(out / row["heatmap_path"]).height == size[1]
        if row["verdict"] == "NG":
            assert Image.open(out / row["mask_path"]).size == size
    assert result.exit_code == (1 if any(r["verdict"] == "NG" for r in rows.values()) else 0)


@pytest.mark.slow
def test_results_do_not_depend_on_file_order_or_batch_size(images, tmp_path):
    reference = rows_of(detect_mutual(images))
    # Other names, so the files come in another order; the same pictures under them.
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    names = {path.name: f"{9 - i}_{path.name}" for i, path in enumerate(sorted(images.iterdir()))}
    for old, new in names.items():
        shutil.copy(images / old, renamed / new)
    shuffled = rows_of(detect_mutual(renamed, "--batch-size", "3"))
    assert_same_scores(reference, {old: shuffled[new] for old, new in names.items()})
    assert_same_scores(reference, rows_of(detect_mutual(images, "--batch-size", "2")))


@pytest.mark.slow
def test_groups_are_scored_apart(images, tmp_path):
    """Four images with --mutual-group 3: two groups of two, each scored as a run of its own."""
    grouped = rows_of(detect_mutual(images, "--mutual-group", "3"))
    for pair in (["cracked_a.png", "cracked_b.png"], ["good_a.png", "good_b.png"]):
        alone = tmp_path / pair[0]
        alone.mkdir()
        for name in pair:
            shutil.copy(images / name, alone / name)
        assert_same_scores({n: grouped[n] for n in pair}, rows_of(detect_mutual(alone)))


@pytest.mark.slow
def test_broken_image_is_an_error_row_and_left_out_of_the_comparisons(images):
    clean = rows_of(detect_mutual(images))
    (images / "broken.png").write_bytes(b"not a png")
    with_broken = rows_of(detect_mutual(images))
    assert with_broken["broken.png"]["score"] is None
    assert "not a readable image" in with_broken["broken.png"]["error"]
    del with_broken["broken.png"]
    assert_same_scores(clean, with_broken)


def test_two_images_of_different_sizes_and_aspect_ratios(tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    Image.open(QUERIES / "good_a.png").resize((300, 120)).save(folder / "wide.png")
    Image.open(QUERIES / "cracked_a.png").convert("L").resize((90, 200)).save(folder / "tall.png")
    out = tmp_path / "run"
    rows = rows_of(detect_mutual(folder, out=out))
    assert np.load(out / rows["wide.png"]["map_path"]).shape == (120, 300)
    assert np.load(out / rows["tall.png"]["map_path"]).shape == (200, 90)


def test_one_image_is_refused(images):
    result = run(["detect", str(images / "good_a.png"), "--mutual", "-q", *ARGS])
    assert result.exit_code == 2
    assert "at least two" in result.output


def test_only_one_readable_image_gets_an_error_row(tmp_path):
    folder = tmp_path / "one-good"
    folder.mkdir()
    shutil.copy(QUERIES / "good_a.png", folder)
    (folder / "broken.png").write_bytes(b"not a png")
    result = run(["detect", str(folder), "--mutual", "--format", "jsonl", "-q", *ARGS])
    assert result.exit_code == 2
    rows = {row["path"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert "no other readable image" in rows["good_a.png"]["error"]


def test_one_readable_and_two_broken_images_say_mutual_needs_two_readable(tmp_path):
    folder = tmp_path / "mostly-broken"
    folder.mkdir()
    shutil.copy(QUERIES / "good_a.png", folder)
    (folder / "broken_a.png").write_bytes(b"not a png")
    (folder / "broken_b.jpg").write_bytes(b"")
    result = run(["detect", str(folder), "--mutual", "--format", "jsonl", "-q", *ARGS])
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "no image could be read" not in message
    assert "needs at least two readable images" in message and "only 1 of the 3 image(s) could be read" in message
    rows = {row["path"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert sorted(rows) == ["broken_a.png", "broken_b.jpg", "good_a.png"]
    assert all(row["score"] is None and row["error"] for row in rows.values())
    assert "no other readable image" in rows["good_a.png"]["error"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--refs", str(GOLDEN / "images" / "refs1")], "cannot be combined with --refs"),
        (["--use-query"], "cannot be combined with --use-query"),
        (["--resume"], "cannot be combined with --resume"),
        (["--mutual-degrees", "1,2"], "must be odd"),
        (["--mutual-fraction", "0"], "--mutual-fraction"),
        (["--mutual-group", "2"], "--mutual-group"),
    ],
)
def test_mutual_refusals_exit_2(images, extra, message):
    result = run(["detect", str(images), "--mutual", "-q", *ARGS, *extra])
    assert result.exit_code == 2
    assert message in result.output


def test_mutual_options_without_mutual_are_refused(images):
    result = run(["detect", str(images), "--mutual-rescore", "2", "-q", *ARGS])
    assert result.exit_code == 2
    assert "--mutual-rescore given without --mutual" in result.output


def test_mutual_with_a_bank_is_refused_before_the_bank_is_read(images, tmp_path):
    bank = tmp_path / "widget.fadebank"
    bank.write_bytes(b"refused before it is opened")
    result = run(["detect", str(images), "--bank", str(bank), "--mutual", "-q"])
    assert result.exit_code == 2
    assert "cannot be combined with --bank" in result.output


@pytest.mark.slow
def test_rescore_changes_only_the_vision_score(images):
    plain = rows_of(detect_mutual(images))
    smoothed = rows_of(detect_mutual(images, "--mutual-rescore", "1"))
    vision = {name: row["vision_score"] for name, row in plain.items()}
    assert any(abs(smoothed[n]["vision_score"] - v) > 1e-6 for n, v in vision.items())
    for name, row in smoothed.items():
        assert row["language_score"] == pytest.approx(plain[name]["language_score"], abs=1e-6)
        assert row["score"] == pytest.approx((row["language_score"] + row["vision_score"]) / 2, abs=1e-5)


@pytest.mark.slow
def test_eval_zero_shot_mutual_end_to_end_agrees_with_detect(tmp_path):
    out = tmp_path / "eval"
    result = run(["eval", str(COOKIE), "--shots", "0", "--mutual", "--eval-size", "64", "--out", str(out), "-q",
                  *ARGS])
    assert result.exit_code == 0, result.output
    assert "zero-shot mutual" in result.output
    report = json.loads((out / "metrics.json").read_text())
    assert report["settings"]["mutual"]["fraction"] == 0.3
    with open(out / "scores.csv", newline="") as handle:
        scores = {row["image"]: float(row["score"]) for row in csv.DictReader(handle)}
    detected = rows_of(run(["detect", str(COOKIE / "cookie" / "test"), "--mutual", "--class", "cookie",
                            "--format", "jsonl", "-q", *ARGS]))
    assert sorted(scores) == sorted(f"cookie/test/{name}" for name in detected)
    for name, row in detected.items():
        assert scores[f"cookie/test/{name}"] == pytest.approx(row["score"], abs=1e-4)


def test_eval_mutual_with_shots_is_refused():
    result = run(["eval", str(COOKIE), "--shots", "1", "--mutual", "-q", *ARGS])
    assert result.exit_code == 2
    assert "cannot be combined with --shots 1" in result.output
