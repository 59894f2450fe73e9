"""Inspection regions (docs/regions.md): what lies outside the ROI never counts, the part is cropped, outputs stay
in frame coordinates, and an ROI covering the whole frame changes nothing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import fade_cli
from fade_cli.bank.calibration import Thresholds
from fade_cli.cli import cli as main
from fade_cli.core.errors import InputError
from fade_cli.io.roi import load_roi
from fade_cli.settings import SettingError

from conftest import FAST_ARGS, GOLDEN, MODEL_CONFIG, QUERIES, WEIGHTS

SETTINGS = dict(model_config=str(MODEL_CONFIG), weights=str(WEIGHTS), device="cpu", scales=(240, 320), cls_size=240,
                class_name="widget")
FRAME = QUERIES / "good_a.png"
REFERENCE = GOLDEN / "images" / "refs1" / "ref_a.png"  # not a query: fade refuses references that are queries
WIDTH, HEIGHT = Image.open(FRAME).size  # 288 x 384
# The part: the middle of the frame; the crop box (5 % margin) leaves the corners out.
CENTRE_BOX = (WIDTH // 4, HEIGHT // 4, 3 * WIDTH // 4, 3 * HEIGHT // 4)


def _mask_file(path: Path, box=CENTRE_BOX, size=(WIDTH, HEIGHT)) -> Path:
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    if box is not None:
        left, top, right, bottom = box
        mask[top:bottom, left:right] = 255
    Image.fromarray(mask, "L").save(path)
    return path


def _with_blob(path: Path, centre: tuple[int, int], side: int = 40) -> Path:
    """The frame with a red and white checkerboard pasted at ``centre``: high contrast, nothing like the part."""
    pixels = np.array(Image.open(FRAME).convert("RGB"))
    cx, cy = centre
    tile = (np.indices((side, side)).sum(axis=0) // 5) % 2
    blob = np.where(tile[..., None] == 1, [255, 255, 255], [255, 0, 0]).astype(np.uint8)
    pixels[cy - side // 2 : cy + side // 2, cx - side // 2 : cx + side // 2] = blob
    Image.fromarray(pixels, "RGB").save(path)
    return path


@pytest.fixture(scope="module")
def roi_file(tmp_path_factory) -> Path:
    return _mask_file(tmp_path_factory.mktemp("roi") / "roi.png")


@pytest.fixture(scope="module")
def detector(roi_file) -> fade_cli.Detector:
    # The frame is its own reference: without a defect its vision score is 0, a defect inside the ROI stands out.
    return _self_referenced(roi_file)


def _self_referenced(roi_file: Path) -> fade_cli.Detector:
    return fade_cli.Detector.from_references(str(FRAME), roi=str(roi_file), image_score="vision",
                                             thresholds=fade_cli.Thresholds(image=0.2, pixel=0.3), **SETTINGS)


def test_blob_outside_the_roi_changes_nothing(detector, tmp_path):
    corner = _with_blob(tmp_path / "corner.png", (25, 25))
    plain, blobbed = detector.detect([str(FRAME), str(corner)])
    assert plain.error is None and blobbed.error is None
    # Cropped: the model's input is the same, so everything is bit-equal.
    assert plain.verdict == "OK"
    assert blobbed.score == plain.score and blobbed.vision_score == plain.vision_score
    assert blobbed.verdict == plain.verdict
    assert np.array_equal(blobbed.anomaly_map, plain.anomaly_map)
    assert blobbed.anomaly_map.shape == (HEIGHT, WIDTH)
    assert not blobbed.anomaly_map[:50, :50].any()  # 0 outside the ROI


def test_blob_inside_the_roi_raises_the_score(detector, tmp_path):
    centre = _with_blob(tmp_path / "centre.png", (WIDTH // 2, HEIGHT // 2))
    plain, blobbed = detector.detect([str(FRAME), str(centre)])
    assert plain.verdict == "OK" and blobbed.verdict == "NG"
    assert blobbed.score > plain.score + 0.1
    middle = np.s_[HEIGHT // 2 - 20 : HEIGHT // 2 + 20, WIDTH // 2 - 20 : WIDTH // 2 + 20]
    assert blobbed.anomaly_map[middle].mean() > plain.anomaly_map[middle].mean() + 0.1


def test_without_crop_the_map_and_vision_score_ignore_the_outside(roi_file, tmp_path):
    masked = fade_cli.Detector.from_references(str(REFERENCE), roi=str(roi_file), crop=False, **SETTINGS)
    corner = _with_blob(tmp_path / "corner.png", (25, 25))
    plain, blobbed = masked.detect([str(FRAME), str(corner)])
    assert not blobbed.anomaly_map[:50, :50].any()
    assert not plain.anomaly_map[:HEIGHT // 4 - 10].any() and plain.anomaly_map[HEIGHT // 2].any()
    # The whole frame was scored: the blob is seen by the model but, outside the ROI, cannot raise the vision score.
    assert blobbed.vision_score <= plain.vision_score + 0.02


def test_references_keep_only_their_patches_inside_the_roi(tmp_path):
    corner_roi = _mask_file(tmp_path / "corner.png", box=(0, 0, WIDTH // 3, HEIGHT // 3))
    few = fade_cli.Detector.from_references(str(REFERENCE), roi=str(corner_roi), crop=False, **SETTINGS)
    whole = fade_cli.Detector.from_references(str(REFERENCE), **SETTINGS)
    for size, patches in few.engine.bank.patches_by_size.items():
        total = whole.engine.bank.patches_by_size[size].shape[0]
        assert 0 < patches.shape[0] < total / 4
        assert few.engine.bank.counts_by_size[size] == [patches.shape[0]]


def test_an_roi_covering_the_whole_frame_equals_no_roi(tmp_path):
    full = _mask_file(tmp_path / "full.png", box=(0, 0, WIDTH, HEIGHT))
    images = [str(path) for path in sorted(QUERIES.glob("*.png"))]
    with_roi = fade_cli.Detector.from_references(str(REFERENCE), roi=str(full), **SETTINGS).detect(images)
    without = fade_cli.Detector.from_references(str(REFERENCE), **SETTINGS).detect(images)
    for a, b in zip(with_roi, without):
        assert (a.score, a.language_score, a.vision_score) == (b.score, b.language_score, b.vision_score)
        assert np.array_equal(a.anomaly_map, b.anomaly_map)


def test_a_mask_of_another_size_is_scaled_when_the_aspect_ratio_matches(detector, tmp_path):
    double = _mask_file(tmp_path / "double.png", box=tuple(2 * v for v in CENTRE_BOX), size=(2 * WIDTH, 2 * HEIGHT))
    scaled = _self_referenced(double)
    [native], [from_double] = detector.detect([str(FRAME)]), scaled.detect([str(FRAME)])
    assert from_double.score == native.score and np.array_equal(from_double.anomaly_map, native.anomaly_map)


def test_a_mask_of_another_aspect_ratio_gives_an_error_row(tmp_path):
    square = _mask_file(tmp_path / "square.png", box=(10, 10, 100, 100), size=(300, 300))
    with pytest.raises(InputError, match="300x300 but the frame is 288x384"):  # the references come first
        fade_cli.Detector.from_references(str(REFERENCE), roi=str(square), **SETTINGS)
    zero_shot = fade_cli.Detector.zero_shot(roi=str(square), **SETTINGS)
    other = tmp_path / "square_frame.png"
    Image.open(FRAME).resize((300, 300)).save(other)
    wrong, right = zero_shot.detect([str(FRAME), str(other)])
    assert wrong.score is None and "300x300" in wrong.error and "288x384" in wrong.error
    assert right.error is None and right.score is not None


def test_an_empty_roi_is_refused(tmp_path):
    empty = _mask_file(tmp_path / "empty.png", box=None)
    with pytest.raises(InputError, match="empty"):
        fade_cli.Detector.zero_shot(roi=str(empty), **SETTINGS)
    cancelled = tmp_path / "cancelled.json"
    cancelled.write_text(json.dumps({"units": "relative", "include": [{"rect": [0.1, 0.1, 0.5, 0.5]}],
                                     "exclude": [{"rect": [0, 0, 1, 1]}]}))
    with pytest.raises(InputError, match="empty"):
        fade_cli.Detector.zero_shot(roi=str(cancelled), **SETTINGS)
    result = CliRunner().invoke(main, ["detect", str(QUERIES), "--roi", str(empty), *FAST_ARGS])
    assert result.exit_code == 2 and "empty" in result.output


@pytest.mark.parametrize("content, message", [
    ({"include": [{"rect": [5, 5, 1, 1]}]}, "x0 < x1"),
    ({"units": "relative", "include": [{"rect": [0, 0, 1.5, 1]}]}, "fractions from 0 to 1"),
    ({"include": [{"polygon": [[0, 0], [1, 1]]}]}, "3 to"),
    ({"include": [{"circle": [1, 2, 3]}]}, "unknown field"),
    ({"include": []}, "at least 1"),
    ({"inclde": [{"rect": [0, 0, 5, 5]}]}, "unknown field"),
    ({"units": "relative", "size": [10, 10], "include": [{"rect": [0, 0, 1, 1]}]}, "relative units"),
])
def test_a_malformed_roi_file_is_refused_naming_the_field(tmp_path, content, message):
    path = tmp_path / "roi.json"
    path.write_text(json.dumps(content))
    with pytest.raises(InputError, match=message):
        load_roi(path)


def test_polygons_outside_the_frame(tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"include": [{"polygon": [[1000, 1000], [1200, 1000], [1100, 1200]]}]}))
    partly = tmp_path / "partly.json"
    partly.write_text(json.dumps({"include": [{"polygon": [[-100, -100], [200, -100], [200, 200], [-100, 200]]}]}))
    [nothing] = fade_cli.Detector.zero_shot(roi=str(outside), **SETTINGS).detect([str(FRAME)])
    assert nothing.score is None and "selects no pixel of this 288x384 frame" in nothing.error
    [clipped] = fade_cli.Detector.zero_shot(roi=str(partly), **SETTINGS).detect([str(FRAME)])
    assert clipped.error is None
    assert clipped.anomaly_map[:200, :200].any() and not clipped.anomaly_map[210:].any()


def test_relative_shapes_with_an_exclusion(tmp_path):
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps({"units": "relative", "include": [{"rect": [0.25, 0.25, 0.75, 0.75]}],
                                  "exclude": [{"polygon": [[0.4, 0.4], [0.6, 0.4], [0.6, 0.6], [0.4, 0.6]]}]}))
    [result] = fade_cli.Detector.zero_shot(roi=str(shapes), **SETTINGS).detect([str(FRAME)])
    assert result.anomaly_map[HEIGHT // 3, WIDTH // 2] > 0
    assert result.anomaly_map[HEIGHT // 2, WIDTH // 2] == 0  # excluded hole
    assert result.anomaly_map[10, 10] == 0


def test_a_bank_stores_the_roi_itself(roi_file, tmp_path):
    copy = tmp_path / "roi_copy.png"
    copy.write_bytes(roi_file.read_bytes())
    bank = fade_cli.build_bank(str(QUERIES), tmp_path / "parts.fadebank", **{**SETTINGS, "roi": str(copy)})
    copy.unlink()  # the bank holds the ROI, not its path
    station = fade_cli.Detector.from_bank(tmp_path / "parts.fadebank", device="cpu")
    assert station.engine.regions.roi.sha256 == bank.regions.roi.sha256
    same = fade_cli.Detector.from_references(str(QUERIES), roi=str(roi_file), **SETTINGS)
    corner = _with_blob(tmp_path / "corner.png", (25, 25))
    for a, b in zip(station.detect([str(FRAME), str(corner)]), same.detect([str(FRAME), str(corner)])):
        assert a.score == b.score and np.array_equal(a.anomaly_map, b.anomaly_map)
    with pytest.raises(SettingError, match="the bank sets roi"):
        fade_cli.Detector.from_bank(tmp_path / "parts.fadebank", device="cpu", roi=str(roi_file))
    # Frames of another size: scaled when the aspect ratio matches, an error row when it does not.
    half, square = tmp_path / "half.png", tmp_path / "square.png"
    Image.open(FRAME).resize((WIDTH // 2, HEIGHT // 2)).save(half)
    Image.open(FRAME).resize((300, 300)).save(square)
    scaled, refused = station.detect([str(half), str(square)])
    assert scaled.error is None and scaled.anomaly_map.shape == (HEIGHT // 2, WIDTH // 2)
    assert refused.score is None and "288x384" in refused.error and "300x300" in refused.error


def test_per_image_masks(tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    _mask_file(masks / "good_a.png")
    zero = fade_cli.Detector.zero_shot(roi_dir=str(masks), **SETTINGS)
    found, missing = zero.detect([str(FRAME), str(QUERIES / "good_b.png")])
    assert found.error is None and not found.anomaly_map[:50, :50].any()
    assert missing.score is None and "no ROI mask" in missing.error


def test_detect_cli_with_roi(roi_file, tmp_path):
    run = CliRunner().invoke(main, ["detect", str(QUERIES), "--refs", str(REFERENCE), "--roi", str(roi_file),
                                    "--out", str(tmp_path / "out"), "--pixel-threshold", "0.3", "--no-report",
                                    *FAST_ARGS])
    assert run.exit_code == 0, run.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    sha = load_roi(roi_file).sha256
    assert all(row["roi"] == {"file": str(roi_file), "sha256": sha} for row in rows)
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["region"]["sha256"] == sha and info["region"]["crop"] is True
    saved = np.load(tmp_path / "out" / "maps" / "good_a.png.npy")
    assert saved.shape == (HEIGHT, WIDTH) and not saved[:50, :50].any()
    heatmap = np.asarray(Image.open(tmp_path / "out" / "heatmaps" / "good_a.png.png").convert("RGB"))
    frame = np.asarray(Image.open(FRAME).convert("RGB"))
    # The ignored corner is dimmed under the half-transparent overlay.
    assert heatmap[:40, :40].astype(int).sum() < 0.5 * (frame[:40, :40].astype(int).sum() * 0.5 + 40 * 40 * 3 * 255)
    header = (tmp_path / "out" / "results.csv").read_text().splitlines()[0]
    assert header.endswith(",roi")


def test_detect_cli_with_a_whole_frame_roi_writes_what_a_run_without_one_does(tmp_path):
    full = _mask_file(tmp_path / "full.png", box=(0, 0, WIDTH, HEIGHT))
    common = ["--refs", str(REFERENCE), "--no-report", "--pixel-threshold", "0.3", *FAST_ARGS]
    for name, extra in (("plain", []), ("roi", ["--roi", str(full)])):
        run = CliRunner().invoke(main, ["detect", str(QUERIES), "--out", str(tmp_path / name), *common, *extra])
        assert run.exit_code == 0, run.output
    plain = [json.loads(line) for line in (tmp_path / "plain" / "results.jsonl").read_text().splitlines()]
    roi = [json.loads(line) for line in (tmp_path / "roi" / "results.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in row.items() if k != "roi"} for row in roi] == plain
    for name in ("good_a.png", "cracked_a.png"):
        assert np.array_equal(np.load(tmp_path / "plain" / "maps" / f"{name}.npy"),
                              np.load(tmp_path / "roi" / "maps" / f"{name}.npy"))


def test_detect_cli_bank_with_roi_refuses_another(roi_file, tmp_path):
    bank = tmp_path / "b.fadebank"
    built = CliRunner().invoke(main, ["bank", "build", str(QUERIES), "--out", str(bank), "--roi", str(roi_file),
                                      "-q", *FAST_ARGS])
    assert built.exit_code == 0, built.output
    info = CliRunner().invoke(main, ["bank", "info", str(bank)])
    assert "region:" in info.output and "roi.png" in info.output
    refused = CliRunner().invoke(main, ["detect", str(QUERIES), "--bank", str(bank), "--device", "cpu",
                                        "--roi-margin", "0.2"])
    assert refused.exit_code == 2 and "inspection region" in refused.output


def test_pixel_metrics_count_only_the_pixels_inside_the_roi():
    from fade_cli.evaluation.pixels import PixelAccumulator

    codes = np.array([[100, 200], [60000, 50]], dtype=np.uint16)
    defect = np.array([[False, True], [False, False]])
    inside = np.array([[True, True], [False, True]])  # the hot pixel at (1, 0) is outside the ROI
    restricted, whole = PixelAccumulator(), PixelAccumulator()
    restricted.add(codes, defect, inside)
    whole.add(codes, defect)
    assert restricted.metrics()["pixel_auroc"] == 1.0
    assert whole.metrics()["pixel_auroc"] < 1.0
    assert restricted.negative_counts.sum() == 2 and restricted.positive_counts.sum() == 1


def test_eval_cli_with_roi_says_so_and_a_whole_frame_roi_changes_no_metric(tmp_path):
    cookie = Path(__file__).parent.parent / "examples" / "cookie"
    full = _mask_file(tmp_path / "full.png", box=(0, 0, 576, 768), size=(576, 768))
    common = ["eval", str(cookie), "--dataset", "mvtec", "--shots", "1", "--seeds", "0", "--eval-size", "64", "-q",
              *FAST_ARGS]
    reports = {}
    for name, extra in (("plain", []), ("full", ["--roi", str(full)]), ("roi", ["--roi", str(cookie / "roi.json")])):
        result = CliRunner().invoke(main, [*common, *extra, "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        reports[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert "region" not in reports["plain"]
    assert reports["roi"]["region"]["pixel_metrics"] == "computed on the pixels inside the ROI only"
    assert reports["roi"]["region"]["sha256"] == load_roi(cookie / "roi.json").sha256
    assert reports["full"]["classes"] == reports["plain"]["classes"]
    assert reports["roi"]["classes"] != reports["plain"]["classes"]


def test_far_away_pixel_shapes_are_checked_without_drawing_a_giant_canvas(tmp_path):
    far = tmp_path / "far.json"
    far.write_text(json.dumps({"include": [{"rect": [999000, 999000, 999999, 999999]}]}))
    assert load_roi(far).include  # read at once: the canvas of the check is bounded
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({"size": [1000000, 1000000], "include": [{"rect": [0, 0, 10, 10]}]}))
    with pytest.raises(InputError, match="size"):
        load_roi(huge)


def test_a_bank_of_references_cut_to_per_image_masks_needs_the_masks_at_each_run(tmp_path):
    refs, masks = tmp_path / "refs", tmp_path / "masks"
    refs.mkdir(), masks.mkdir()
    (refs / "good_b.png").write_bytes(REFERENCE.read_bytes())
    _mask_file(masks / "good_b.png")
    _mask_file(masks / "good_a.png")
    bank_file = tmp_path / "moving.fadebank"
    bank = fade_cli.build_bank(str(refs), bank_file, calibrate=False, **{**SETTINGS, "roi_dir": str(masks)})
    assert bank.regions.roi is None and bank.patch_counts is not None
    with pytest.raises(SettingError, match="per-image ROI masks"):
        fade_cli.Detector.from_bank(bank_file, device="cpu")
    station = fade_cli.Detector.from_bank(bank_file, device="cpu", roi_dir=str(masks))
    [result] = station.detect([str(FRAME)])
    assert result.error is None and not result.anomaly_map[:50, :50].any()


def test_serve_applies_the_banks_roi(roi_file, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from fade_cli.bank.bank import load_bank
    from fade_cli.cli.engine_setup import bank_thresholds, engines_for_banks
    from fade_cli.cli.console import stderr_console
    from fade_cli.runs.serve.app import ApiSettings, create_app
    from fade_cli.runs.serve.service import InspectionService, ServedBank, ServiceSettings

    bank_file = tmp_path / "parts.fadebank"
    fade_cli.build_bank(str(QUERIES), bank_file, **{**SETTINGS, "roi": str(roi_file)})
    bank = load_bank(bank_file)
    config = bank.config.replace(weights=str(WEIGHTS), model_config=str(MODEL_CONFIG), device="cpu")
    [engine] = engines_for_banks([(bank, config, str(bank_file))], stderr_console(), quiet=True)
    served = ServedBank("parts", engine, bank_thresholds(bank, str(bank_file), Thresholds()).thresholds, str(bank_file))
    corner = _with_blob(tmp_path / "corner.png", (25, 25))
    detect = CliRunner().invoke(main, ["detect", str(FRAME), "--bank", str(bank_file), "--device", "cpu",
                                       "--format", "jsonl", "-q"])
    [expected] = [json.loads(line) for line in detect.stdout.splitlines() if line.startswith("{")]
    with TestClient(create_app(InspectionService(lambda: [served], ServiceSettings()), ApiSettings())) as client:
        for _ in range(600):
            if client.get("/readyz").status_code == 200:
                break
            import time

            time.sleep(0.05)
        answers = [client.post("/v1/detect", params={"name": path.name}, content=path.read_bytes()).json()
                   for path in (FRAME, corner)]
    assert answers[0]["roi"] == expected["roi"] and answers[0]["score"] == expected["score"]
    assert answers[1]["score"] == answers[0]["score"]  # the blob outside the ROI counts for nothing
