"""Mistakes of a first hour with fade (made with examples/cookie) that used to pass parts with exit 0."""
from __future__ import annotations

import csv
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import FAST_ARGS
from fade_cli.bank.calibration import Calibration, Thresholds, check_calibrated_thresholds, choose_thresholds
from fade_cli.cli import cli
from fade_cli.core.errors import InputError
from fade_cli.io.images import ImageFile, discover_images, load_image
from fade_cli.io.input_checks import defect_like_folder, find_dataset, upscale_warning

EXAMPLE = Path(__file__).parent.parent / "examples" / "cookie"
COOKIE = EXAMPLE / "cookie"
GOOD_REFS = COOKIE / "train" / "good"


def run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def detect(*args):
    return run(["detect", *map(str, args), "--class", "cookie", "-q", *FAST_ARGS])


def assert_refused(result, out: Path, *words: str) -> None:
    """Exit 2 with a message holding ``words``, no row printed and nothing written."""
    assert result.exit_code == 2, result.output
    for word in words:
        assert word in result.stderr, result.stderr
    assert result.stdout == ""
    assert not out.exists()


# Dataset folders


def test_dataset_root_as_references_is_refused(tmp_path):
    out = tmp_path / "run"
    result = detect(COOKIE / "test", "--refs", EXAMPLE, "--calibrate", "--out", out)
    assert_refused(result, out, "not a folder of good parts", "ground_truth", str(GOOD_REFS))
    assert "Palette images" not in result.output


def test_dataset_as_images_is_refused_pointing_to_fade_eval(tmp_path):
    out = tmp_path / "run"
    result = detect(COOKIE, "--refs", GOOD_REFS, "--out", out)
    assert_refused(result, out, "fade eval", "--classes cookie", str(COOKIE / "test"))


@pytest.mark.parametrize("masks", [COOKIE / "ground_truth", COOKIE / "ground_truth" / "cracked",
                                   COOKIE / "ground_truth" / "cracked" / "001_mask.png",
                                   EXAMPLE / "original_rgba_masks"])
def test_masks_are_never_scored_as_photos(tmp_path, masks):
    out = tmp_path / "run"
    result = detect(masks, "--out", out)
    assert_refused(result, out, "Masks would be scored as product photos")


def test_train_and_test_splits_make_a_dataset(tmp_path):
    for split in ("train/good", "test/good"):
        (tmp_path / "part" / split).mkdir(parents=True)
        Image.new("RGB", (64, 64)).save(tmp_path / "part" / split / "a.png")
    found = find_dataset(tmp_path, discover_images(tmp_path))
    assert found is not None and found.path == tmp_path / "part"
    assert find_dataset(tmp_path / "part" / "test", discover_images(tmp_path / "part" / "test")) is None


def test_visa_split_file_makes_a_dataset(tmp_path):
    (tmp_path / "split_csv").mkdir()
    (tmp_path / "split_csv" / "1cls.csv").write_text("object,split,label,image,mask\n")
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    found = find_dataset(tmp_path, discover_images(tmp_path))
    assert found is not None and "fade eval" in found.eval_command() and "visa" in found.eval_command()


def test_bank_build_refuses_a_dataset_and_writes_no_bank(tmp_path):
    bank = tmp_path / "cookie.fadebank"
    result = run(["bank", "build", str(EXAMPLE), "--out", str(bank), "-q", *FAST_ARGS])
    assert result.exit_code == 2 and str(GOOD_REFS) in result.stderr
    assert not bank.exists()


# References that look defective


def test_references_from_a_defect_class_are_warned_about():
    result = detect(COOKIE / "test" / "good", "--refs", COOKIE / "test" / "cracked", "--threshold", "0.5")
    assert result.exit_code in (0, 1)
    assert "warning: the references come from" in result.stderr and "test/cracked" in result.stderr


@pytest.mark.parametrize("folder, expected", [
    ("test/cracked", "test/cracked"), ("test", "test/cracked"), ("defects", "defects"), ("NG", "NG"),
    ("train/good", None), ("test/good", None), ("good", None), ("ok", None), ("Normal", None),
])
def test_defect_like_folders(folder, expected):
    base = {"test/cracked": COOKIE, "test": COOKIE, "train/good": COOKIE, "test/good": COOKIE}.get(folder)
    if base is not None:
        root = base / folder
        found = defect_like_folder(root, discover_images(root))
        assert (found is None) if expected is None else found.endswith(expected)
        return
    files = [ImageFile(Path("x") / folder / "a.png", f"{folder}/a.png"), ImageFile(Path("x/b.png"), "b.png")]
    found = defect_like_folder(Path("x"), files)
    assert (found is None) if expected is None else found.endswith(expected)


# References that are also queries


def test_references_that_are_the_queries_are_refused(tmp_path):
    out = tmp_path / "run"
    result = detect(COOKIE / "test" / "good", "--refs", COOKIE / "test" / "good", "--out", out)
    assert_refused(result, out, "also references", "001.jpg", "vision score 0")


def test_references_with_the_same_content_under_another_name_are_refused(tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    shutil.copy(GOOD_REFS / "001.jpg", refs / "renamed.jpg")
    shutil.copy(GOOD_REFS / "002.jpg", refs / "other.jpg")
    out = tmp_path / "run"
    result = detect(COOKIE / "train", "--refs", refs, "--out", out)
    assert_refused(result, out, "2 image(s) to score are also references", "renamed.jpg", "001.jpg")


# Calibrated thresholds


def calibration(margin, scores=(0.3, 0.5), maxima=(0.4, 0.6)):
    return Calibration(margin=margin, files=("a", "b"), image_scores=scores, pixel_maxima=maxima)


def test_a_calibrated_threshold_above_one_is_refused():
    too_high = calibration(2.5)
    with pytest.raises(InputError, match=r"above 1.*at most 2,"):
        check_calibrated_thresholds(too_high, choose_thresholds(too_high))
    # thresholds given by hand are the user's: not judged
    assert check_calibrated_thresholds(too_high, choose_thresholds(too_high, Thresholds(image=0.5, pixel=0.5))) == []


def test_a_margin_below_one_warns_that_good_parts_will_be_ng():
    low = calibration(0.8)
    warned = check_calibrated_thresholds(low, choose_thresholds(low))
    assert len(warned) == 2 and "1 of the 2 good references" in warned[0]
    assert check_calibrated_thresholds(calibration(1.1), choose_thresholds(calibration(1.1))) == []


def test_detect_refuses_a_margin_that_makes_nothing_ng(tmp_path):
    out = tmp_path / "run"
    result = detect(COOKIE / "test", "--refs", GOOD_REFS, "--calibrate", "--margin", "50", "--out", out)
    assert_refused(result, out, "above 1", "no image could ever be NG")


def test_bank_build_refuses_a_margin_that_makes_nothing_ng(tmp_path):
    bank = tmp_path / "cookie.fadebank"
    result = run(["bank", "build", str(GOOD_REFS), "--margin", "50", "--out", str(bank), "-q", *FAST_ARGS])
    assert result.exit_code == 2 and "no image could ever be NG" in result.stderr
    assert not bank.exists()


# Tiny images


def test_a_tiny_image_is_scored_with_a_warning_in_its_row(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (9, 12, 3), dtype=np.uint8)).save(images / "tiny.png")
    shutil.copy(COOKIE / "test" / "good" / "001.jpg", images / "photo.jpg")
    out = tmp_path / "run"
    result = detect(images, "--out", out, "--threshold", "0.99")
    assert result.exit_code == 0, result.output
    rows = {row["path"]: row for row in csv.DictReader((out / "results.csv").open())}
    assert rows["tiny.png"]["score"] != "" and rows["tiny.png"]["verdict"] == "OK"
    assert "12 x 9 pixels" in rows["tiny.png"]["error"] and "27-fold" in rows["tiny.png"]["error"]
    assert rows["photo.jpg"]["error"] == ""
    assert "warning:" in result.stderr and "12 x 9 pixels" in result.stderr


def test_upscale_limit():
    assert upscale_warning(30, 30, 240) is None  # exactly 8-fold
    assert "9-fold" in upscale_warning(27, 400, 240)


# PIL's palette warning


def test_palette_with_transparency_decodes_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = load_image(EXAMPLE / "original_rgba_masks" / "cracked" / "001_mask.png")
    assert image.mode == "RGB"


# Silent defaults


def test_notes_for_no_class_and_no_out(tmp_path):
    photo = COOKIE / "test" / "good" / "001.jpg"
    bare = run(["detect", str(photo), "-q", *FAST_ARGS])
    assert bare.exit_code == 0, bare.output
    assert bare.stderr.count('note: no --class: the prompts call the part "object"') == 1
    assert bare.stderr.count("note: no --out: only the table is printed") == 1
    named = run(["detect", str(photo), "--class", "cookie", "--out", str(tmp_path / "run"), "-q", *FAST_ARGS])
    assert named.exit_code == 0, named.output
    assert "note:" not in named.stderr


def test_the_largest_margin_offered_keeps_the_threshold_at_most_one():
    awkward = calibration(3.0, scores=(0.7, 0.7), maxima=(0.1, 0.1))
    with pytest.raises(InputError, match="at most 1.428,") as refused:
        check_calibrated_thresholds(awkward, choose_thresholds(awkward))
    offered = float(str(refused.value).split("at most ")[1].split(",")[0])
    assert offered * 0.7 <= 1.0


def test_a_split_dataset_without_masks_is_refused_as_images(tmp_path):
    for split in ("train/good", "test/good"):
        (tmp_path / "part" / split).mkdir(parents=True)
        shutil.copy(GOOD_REFS / "001.jpg", tmp_path / "part" / split / f"{split.replace('/', '-')}.jpg")
    out = tmp_path / "run"
    result = detect(tmp_path / "part", "--out", out)
    assert_refused(result, out, "train/ and test/ splits", "training images would be scored", "fade eval")
