"""`fade bank build/info` and `fade detect --bank/--calibrate/--pixel-threshold` with the tiny model."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import GOLDEN, MODEL_CONFIG, QUERIES, TINY_MODEL_ARGS, WEIGHTS, run_cli as run
from fade_cli.bank.bank import load_bank, save_bank

REFS = GOLDEN / "images" / "refs2"
# One small scale and short prompt sets keep these tests fast; the settings matter here, not the numbers.
ARGS = [*TINY_MODEL_ARGS, "--scales", "240", "--cls-size", "240",
        "--cls-prompts", GOLDEN / "prompts" / "cls.json", "--seg-prompts", GOLDEN / "prompts" / "seg.json"]
BUILD_ARGS = ["--class", "widget", "-q", *ARGS]


def jsonl(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def bank_file(tmp_path_factory):
    """One bank built from the two golden references, shared by the tests that only read it."""
    path = tmp_path_factory.mktemp("bank") / "widget.fadebank"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        result = run(["bank", "build", REFS, "--out", path, *BUILD_ARGS])
    assert result.exit_code == 0, result.output
    assert "Wrote" in result.stdout and "image threshold" in result.stdout
    return path


@pytest.fixture(scope="module")
def bank_run(bank_file, tmp_path_factory):
    """`fade detect --bank` over the golden queries: (results, output folder)."""
    out = tmp_path_factory.mktemp("run") / "out"
    result = run(["detect", QUERIES, "--bank", bank_file, "--device", "cpu", "--out", out, "--format", "jsonl", "-q"])
    assert result.exit_code in (0, 1), result.output
    return result, out


def test_building_twice_gives_the_same_bytes(bank_file, tmp_path):
    again = tmp_path / "again.fadebank"
    assert run(["bank", "build", REFS, "--out", again, *BUILD_ARGS]).exit_code == 0
    assert again.read_bytes() == bank_file.read_bytes()
    refused = run(["bank", "build", REFS, "--out", again, *BUILD_ARGS])
    assert refused.exit_code == 2 and "--overwrite" in refused.output


def test_detect_with_the_bank_scores_like_detect_with_the_references(bank_run):
    from_refs = run(["detect", QUERIES, "--refs", REFS, "--class", "widget", "--format", "jsonl", "-q", *ARGS])
    assert from_refs.exit_code == 0, from_refs.output
    expected, got = jsonl(from_refs.stdout), jsonl(bank_run[0].stdout)
    assert [r["path"] for r in got] == [r["path"] for r in expected]
    for mine, theirs in zip(got, expected):
        for key in ("score", "language_score", "vision_score"):
            assert mine[key] == pytest.approx(theirs[key], abs=1e-6), key


def test_bank_thresholds_give_verdicts_masks_and_regions(bank_file, bank_run):
    result, out = bank_run
    thresholds = load_bank(bank_file).thresholds
    rows = jsonl(result.stdout)
    assert "Thresholds of the bank" in result.stderr and f"{thresholds.image:.4f}" in result.stderr
    assert result.exit_code == (1 if any(r["verdict"] == "NG" for r in rows) else 0)
    for row in rows:
        assert row["verdict"] == ("NG" if row["score"] >= thresholds.image else "OK")
        if row["verdict"] == "OK":
            assert row["mask_path"] is None and row["regions"] is None
            continue
        mask = np.asarray(Image.open(out / row["mask_path"]))
        assert mask.shape == (384, 288) and set(np.unique(mask)) <= {0, 255}
        saved_map = np.load(out / row["map_path"])
        np.testing.assert_array_equal(mask == 255, saved_map >= thresholds.pixel)
        assert sum(region["area"] for region in row["regions"]) == int((mask == 255).sum())
        for region in row["regions"]:
            x0, y0, x1, y1 = region["bbox"]
            assert 0 <= x0 < x1 <= 288 and 0 <= y0 < y1 <= 384
            assert mask[y0:y1, x0:x1].any() and region["peak"] >= thresholds.pixel
    csv_header = (out / "results.csv").read_text().splitlines()[0]
    assert "mask_path" in csv_header and "regions" in csv_header


def test_info_shows_what_the_bank_holds(bank_file):
    text = run(["bank", "info", bank_file])
    assert text.exit_code == 0
    assert "fade-golden (weights sha256" in text.output and "checksum OK" in text.output
    assert "ref_a.png" in text.output and "left out" in text.output and "1.1 x max" in text.output
    data = json.loads(run(["bank", "info", bank_file, "--format", "json"]).output)
    calibration = data["calibration"]
    assert data["format"] == "fade-bank" and data["config"]["seg_sizes"] == [240]
    assert data["thresholds"]["image"] == pytest.approx(1.1 * max(calibration["image_scores"]))
    assert data["tensors"]["patches.240"] == [2 * 15 * 15, 32]


def test_calibrate_on_references_gives_the_banks_thresholds(bank_file, tmp_path):
    out = tmp_path / "out"
    result = run(["detect", QUERIES / "cracked_a.png", "--refs", REFS, "--calibrate", "--pixel-threshold", "1.01",
                  "--out", out, "--format", "jsonl", "--no-heatmaps", "--no-maps", *BUILD_ARGS])
    threshold = load_bank(bank_file).thresholds.image
    assert f"Thresholds from the references: image threshold {threshold:.4f} (calibrated)" in result.stderr
    assert "pixel threshold 1.0100 (given)" in result.stderr and "1.1 x max over 2" in result.stderr
    [row] = jsonl(result.stdout)
    assert row["verdict"] == ("NG" if row["score"] >= threshold else "OK")
    assert result.exit_code == (1 if row["verdict"] == "NG" else 0)
    if row["verdict"] == "NG":
        assert row["regions"] == [] and not np.asarray(Image.open(out / row["mask_path"])).any()


@pytest.mark.parametrize("args, message", [
    (["--scales", "240,320"], "--scales 240,320 (the bank: --scales 240)"),
    (["--class", "nut"], "--class nut (the bank: --class widget)"),
    (["--vision-weight", "0.5"], "--vision-weight 0.5"),
    (["--no-cls-classname"], "--no-cls-classname"),
    (["--prompts", GOLDEN / "prompts" / "seg.json"], "classification prompts"),
    (["--seg-prompts", GOLDEN / "prompts" / "seg.json"], None),
    (["--pretrained", "openai"], "--pretrained openai"),
])
def test_options_that_contradict_the_bank_are_refused(bank_file, args, message):
    result = run(["detect", QUERIES, "--bank", bank_file, "--device", "cpu", "--scales", "240", *args])
    if message is None:  # the same prompt file as the bank's: no contradiction
        assert result.exit_code in (0, 1), result.output
        return
    assert result.exit_code == 2
    assert "contradict the bank" in result.output and message in result.output


def test_bank_from_another_architecture_file_is_refused(bank_file, tmp_path):
    renamed = tmp_path / "other-model.json"
    shutil.copy(MODEL_CONFIG, renamed)
    result = run(["detect", QUERIES, "--bank", bank_file, "--model-config", renamed, "--weights", WEIGHTS])
    assert result.exit_code == 2
    assert "architecture 'other-model'" in result.output and "fade-golden" in result.output


def test_bank_with_weights_that_differ_in_one_tensor_is_refused(bank_file, tmp_path):
    import torch

    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    state["visual.proj"] = state["visual.proj"] + 1e-3
    changed = tmp_path / "changed.pt"
    torch.save(state, changed)
    result = run(["detect", QUERIES, "--bank", bank_file, "--weights", changed, "--device", "cpu"])
    assert result.exit_code == 2
    assert f"--weights {changed}" in result.output and "weights sha256" in result.output


def _variant(bank_file, tmp_path, name, **changes):
    """A copy of the bank with some fields changed, saved properly (valid checksum)."""
    bank = load_bank(bank_file)
    for key, value in changes.items():
        setattr(bank, key, value)
    path = tmp_path / name
    save_bank(bank, path)
    return path


def test_weights_replaced_at_the_same_path_are_caught_after_loading(bank_file, tmp_path):
    identity = dict(load_bank(bank_file).identity, weights_sha256="f" * 64)
    other = _variant(bank_file, tmp_path, "other.fadebank", identity=identity)
    result = run(["detect", QUERIES, "--bank", other, "--device", "cpu", "-q"])
    assert result.exit_code == 2
    assert "was built with the model fade-golden (weights sha256 ffffffffffff" in result.output
    assert "this run loaded fade-golden (weights sha256 13bc1a349ea3" in result.output


def test_station_with_the_weights_elsewhere_passes_them_explicitly(bank_file, bank_run, tmp_path):
    bank = load_bank(bank_file)
    moved = _variant(bank_file, tmp_path, "moved.fadebank",
                     config=dataclasses.replace(bank.config, weights="/old/machine/weights.pt"))
    missing = run(["detect", QUERIES, "--bank", moved, "--device", "cpu"])
    assert missing.exit_code == 2 and "/old/machine/weights.pt" in missing.output and "--weights" in missing.output
    # Options equal to the bank's are not contradictions.
    same = run(["detect", QUERIES / "good_a.png", "--bank", moved, "--class", "widget", "--format", "jsonl",
                "-q", *ARGS])
    assert same.exit_code in (0, 1), same.output
    [row] = jsonl(same.stdout)
    [expected] = [r for r in jsonl(bank_run[0].stdout) if r["path"] == "good_a.png"]
    assert row["score"] == pytest.approx(expected["score"], abs=1e-6)


@pytest.mark.parametrize("damage, message", [("truncate", "truncated"), ("flip", "checksum")])
def test_damaged_bank_is_refused_with_a_message(bank_file, tmp_path, damage, message):
    raw = bytearray(bank_file.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 2] ^= 0x40
    damaged = tmp_path / "damaged.fadebank"
    damaged.write_bytes(bytes(raw))
    for args in (["bank", "info", damaged], ["detect", QUERIES, "--bank", damaged, "--device", "cpu"]):
        result = run(args)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("args, message", [
    (["--refs", REFS], "drop --refs"),
    (["--calibrate"], "calibrated when it is built"),
])
def test_bank_does_not_mix_with_references(bank_file, args, message):
    result = run(["detect", QUERIES, "--bank", bank_file, *args])
    assert result.exit_code == 2 and message in result.output


def test_calibrate_needs_references():
    result = run(["detect", QUERIES, "--calibrate", *ARGS])
    assert result.exit_code == 2 and "--calibrate needs --refs" in result.output


def test_one_reference_gives_a_bank_without_thresholds(tmp_path):
    path = tmp_path / "one.fadebank"
    result = run(["bank", "build", GOLDEN / "images" / "refs1", "--out", path, "--pixel-threshold", "0.7", *BUILD_ARGS])
    assert result.exit_code == 0, result.output
    assert "at least 2 references" in result.stderr
    bank = load_bank(path)
    assert bank.thresholds.image is None and bank.calibration is None and bank.reference_count == 1
    assert (bank.thresholds.pixel, bank.thresholds.pixel_source) == (0.7, "given")


def test_options_equal_to_the_bank_are_not_contradictions(bank_file):
    # --class nut makes the run stop before the model loads; only it may be reported.
    result = run(["detect", QUERIES, "--bank", bank_file, "--class", "nut", "--vision-weight", "0.85",
                  "--no-use-query", "--image-score", "mean", "--cls-size", "240", "--cls-classname",
                  "--model-config", MODEL_CONFIG, "--weights", WEIGHTS, "--precision", "bf16", "--batch-size", "4"])
    assert result.exit_code == 2
    problems = result.output.split("contradict the bank", 1)[1].split(". The bank sets")[0]
    assert "--class nut" in problems and problems.count("(the bank") == 1
