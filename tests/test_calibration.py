"""Thresholds from good references alone: the statistic, and leave-one-out scoring with the tiny model."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import MODEL_CONFIG, WEIGHTS
from fade_cli.bank.calibration import Calibration, Thresholds, check_margin, choose_thresholds, describe_thresholds
from fade_cli.core.errors import InputError

COOKIE_GOOD = Path(__file__).parent.parent / "examples" / "cookie" / "cookie" / "train" / "good"


def test_thresholds_are_margin_times_the_highest_reference_score():
    calibration = Calibration(margin=1.2, files=("a", "b", "c"), image_scores=(0.3, 0.5, 0.4),
                              pixel_maxima=(0.6, 0.2, 0.7))
    assert calibration.image_threshold == pytest.approx(0.6)
    assert calibration.pixel_threshold == pytest.approx(0.84)
    text = describe_thresholds(choose_thresholds(calibration), calibration)
    assert "image threshold 0.6000 (calibrated)" in text and "1.2 x max over 3" in text
    assert Calibration.from_dict(calibration.to_dict()) == calibration


def test_thresholds_are_capped_at_one():
    calibration = Calibration(margin=1.5, files=("a", "b"), image_scores=(0.9, 0.8), pixel_maxima=(0.95, 0.1))
    assert calibration.image_threshold == 1.0 and calibration.pixel_threshold == 1.0


def test_given_thresholds_override_calibrated_ones():
    calibration = Calibration(margin=1.0, files=("a", "b"), image_scores=(0.3, 0.4), pixel_maxima=(0.5, 0.6))
    chosen = choose_thresholds(calibration, Thresholds(image=0.9))
    assert (chosen.image, chosen.image_source) == (0.9, "given")
    assert (chosen.pixel, chosen.pixel_source) == (pytest.approx(0.6), "calibrated")
    nothing = choose_thresholds(None)
    assert nothing.image is None and nothing.pixel is None and nothing.image_source is None


def test_given_thresholds_win_over_stored_ones_which_keep_their_origin():
    stored = Thresholds(image=0.4, pixel=0.7, image_source="calibrated", pixel_source="given")
    chosen = Thresholds(pixel=0.2).given_over(stored)
    assert chosen == Thresholds(image=0.4, pixel=0.2, image_source="calibrated", pixel_source="given")
    assert Thresholds().given_over(stored) == stored
    assert choose_thresholds(None, Thresholds(image=0.5)) == Thresholds(image=0.5, image_source="given")


@pytest.mark.parametrize("margin", [0.0, -1.0])
def test_margin_must_be_positive(margin):
    with pytest.raises(InputError, match="margin"):
        check_margin(margin)


@pytest.fixture(scope="module")
def cookie_engine():
    """The tiny model with the three good cookies as references (one small scale: fast)."""
    from fade_cli.config import EngineConfig
    from fade_cli.engine import FadeEngine
    from fade_cli.io.images import discover_images, load_image

    config = EngineConfig(model_config=str(MODEL_CONFIG), weights=str(WEIGHTS), device="cpu", class_name="cookie",
                          seg_sizes=(240,), cls_size=240)
    engine = FadeEngine.from_config(config)
    files = discover_images(COOKIE_GOOD)
    engine.add_references([load_image(f.path) for f in files])
    return engine, files


def test_leave_one_out_scores_each_reference_against_the_others(cookie_engine):
    from fade_cli.bank.leave_one_out import leave_one_out
    from fade_cli.engine import FadeEngine
    from fade_cli.engine.memory_bank import MemoryBank
    from fade_cli.io.images import load_image

    engine, files = cookie_engine
    done = []
    calibration = leave_one_out(engine, files, margin=1.1, on_done=lambda: done.append(1))
    assert calibration.files == ("001.jpg", "002.jpg", "003.jpg") and len(done) == 3
    for index, file in enumerate(files):
        # The same question asked from scratch: an engine whose references are the other two.
        others = FadeEngine.from_saved(engine.loaded, engine.config, engine.cls_classifier_2d,
                                       engine.seg_classifier_2d, MemoryBank(), 0)
        others.add_references([load_image(f.path) for i, f in enumerate(files) if i != index])
        [expected] = others.detect([load_image(file.path)])
        assert calibration.image_scores[index] == pytest.approx(expected.score, abs=1e-6)
        assert calibration.pixel_maxima[index] == pytest.approx(float(expected.anomaly_map.max()), abs=1e-6)
    # A reference scored against a bank that contains itself would have no vision anomaly at all.
    [self_scored] = engine.detect([load_image(files[0].path)])
    assert self_scored.vision_score == pytest.approx(0.0, abs=1e-4)
    assert min(calibration.image_scores) > self_scored.score
    assert calibration.image_threshold == pytest.approx(1.1 * max(calibration.image_scores))
    assert engine.reference_count == 3 and engine.bank.patches_by_size[240].shape[0] == 3 * 225  # untouched


def test_leave_one_out_needs_two_references(cookie_engine):
    from fade_cli.bank.leave_one_out import leave_one_out
    from fade_cli.engine import FadeEngine
    from fade_cli.engine.memory_bank import MemoryBank
    from fade_cli.io.images import load_image

    engine, files = cookie_engine
    single = FadeEngine.from_saved(engine.loaded, engine.config, engine.cls_classifier_2d,
                                   engine.seg_classifier_2d, MemoryBank(), 0)
    single.add_references([load_image(files[0].path)])
    with pytest.raises(InputError, match="at least 2 reference"):
        leave_one_out(single, files[:1])
