"""The library floor: fade_cli.Detector, Result, build_bank and Settings, against what `fade detect` writes."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import fade_cli
from conftest import CLS_PROMPTS, GOLDEN, MODEL_CONFIG, QUERIES, SEG_PROMPTS, TINY_MODEL_ARGS, WEIGHTS
from fade_cli.cli import cli
from fade_cli.core.errors import InputError

REFS = GOLDEN / "images" / "refs2"
# The tiny model at one small scale: the library must equal the command line, whatever the numbers.
SETTINGS = dict(model_config=str(MODEL_CONFIG), weights=str(WEIGHTS), device="cpu", scales=(240,), cls_size=240,
                cls_prompts=str(CLS_PROMPTS), seg_prompts=str(SEG_PROMPTS), class_name="widget")
CLI_ARGS = [*TINY_MODEL_ARGS, "--scales", "240", "--cls-size", "240", "--cls-prompts", CLS_PROMPTS,
            "--seg-prompts", SEG_PROMPTS, "--class", "widget", "-q", "--format", "jsonl", "--no-report"]
QUERY_FILES = sorted(QUERIES.glob("*.png"))


def run_detect(args, out):
    result = CliRunner().invoke(cli, ["detect", *map(str, args), "--out", str(out), *map(str, CLI_ARGS)],
                                catch_exceptions=False)
    assert result.exit_code in (0, 1), result.output
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return {row["path"]: row for row in rows}


def assert_equal_to_rows(results, rows, out):
    for result in results:
        row = rows[result.name.rsplit("/", 1)[-1]]
        assert (result.score, result.language_score, result.vision_score) == \
            (row["score"], row["language_score"], row["vision_score"])
        assert result.verdict == row["verdict"] and result.regions == row["regions"]
        assert np.array_equal(result.anomaly_map, np.load(out / row["map_path"]))


@pytest.fixture(scope="module")
def few_shot():
    return fade_cli.Detector.from_references(REFS, calibrate=True, thresholds=fade_cli.Thresholds(pixel=0.5),
                                             **SETTINGS)


def test_few_shot_results_equal_the_rows_of_fade_detect(few_shot, tmp_path):
    rows = run_detect([QUERIES, "--refs", REFS, "--calibrate", "--pixel-threshold", "0.5"], tmp_path)
    results = few_shot.detect([str(path) for path in QUERY_FILES])
    assert [r.name for r in results] == [str(p) for p in QUERY_FILES]
    assert_equal_to_rows(results, rows, tmp_path)
    assert few_shot.thresholds.image_source == "calibrated" and few_shot.thresholds.pixel_source == "given"
    assert {r.verdict for r in results} <= {"OK", "NG"}


def test_pil_images_and_arrays_score_like_their_files(few_shot):
    path = QUERY_FILES[0]
    image = Image.open(path)
    from_file, from_pil, from_array = few_shot.detect([path, image, np.asarray(image.convert("RGB"))])
    for other in (from_pil, from_array):
        assert other.score == from_file.score and np.array_equal(other.anomaly_map, from_file.anomaly_map)
    assert from_file.anomaly_map.shape == (image.height, image.width)
    assert from_pil.name == "image 1" and from_array.name == "image 2"


def test_unreadable_inputs_give_error_results_in_order(few_shot, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    results = few_shot.detect([broken, np.zeros((4, 4), np.float32), QUERY_FILES[0]])
    assert [r.error is not None for r in results] == [True, True, False]
    assert results[0].score is None and results[0].anomaly_map is None
    assert "broken.png" in results[0].error and "(H, W, 3) uint8" in results[1].error


def test_zero_shot_without_threshold_has_no_verdict():
    detector = fade_cli.Detector.zero_shot(**SETTINGS)
    [result] = detector.detect([QUERY_FILES[0]])
    assert result.verdict is None and result.score is not None and result.regions is None
    assert detector.thresholds.image is None and detector.thresholds.image_source is None


@pytest.mark.slow
def test_bank_detector_equals_fade_detect_with_the_bank_and_shares_the_model(tmp_path):
    bank_path = tmp_path / "widget.fadebank"
    bank = fade_cli.build_bank(REFS, out=bank_path, calibrate=True, **SETTINGS)
    assert bank_path.is_file() and bank.thresholds.image_source == "calibrated"
    with pytest.raises(InputError, match="already exists"):
        fade_cli.build_bank(REFS, out=bank_path, **SETTINGS)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["detect", str(QUERIES), "--bank", str(bank_path), "--out", str(out), "-q",
                                      "--no-report", "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code in (0, 1), result.output
    rows = {row["path"]: row for row in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    first = fade_cli.Detector.from_bank(bank_path, device="cpu")
    second = fade_cli.Detector.from_bank(bank_path, device="cpu", precision="fp32")
    assert first.engine.loaded is second.engine.loaded
    assert_equal_to_rows(first.detect(QUERY_FILES), rows, out)
    assert first.thresholds == bank.thresholds


@pytest.mark.parametrize("settings, name, text", [
    (dict(vision_weight=2.0), "vision_weight", "not in the range"),
    (dict(scales="240,abc"), "scales", "image size"),
    (dict(vision_wieght=0.5), "vision_wieght", "did you mean 'vision_weight'"),
    (dict(device="tpu"), "device", "not a device"),
    (dict(use_query="yes"), "use_query", "true or false"),
])
def test_a_bad_setting_raises_an_error_naming_it(settings, name, text):
    with pytest.raises(fade_cli.SettingError, match=text) as caught:
        fade_cli.Detector.zero_shot(**settings)
    assert caught.value.setting == name


def test_a_bank_refuses_settings_it_decides(tmp_path):
    bank_path = tmp_path / "b.fadebank"
    fade_cli.build_bank(REFS, out=bank_path, calibrate=False, **SETTINGS)
    with pytest.raises(fade_cli.SettingError, match="the bank sets class_name") as caught:
        fade_cli.Detector.from_bank(bank_path, class_name="nut")
    assert caught.value.setting == "class_name"


def test_settings_derive_the_engine_config_and_the_click_options():
    settings = fade_cli.Settings(scales="240,320", vision_weight=0.3, class_name="screw")
    config = settings.engine_config()
    assert config.seg_sizes == (240, 320) and config.vision_weight == 0.3 and config.class_name == "screw"
    from fade_cli.cli.detect_cmd import detect

    flags = {opt for param in detect.params for opt in param.opts}
    assert {s.flag for s in fade_cli.settings.SETTINGS} <= flags


def test_importing_the_library_does_not_import_torch():
    code = "import sys, fade_cli; fade_cli.Detector; fade_cli.Settings; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"


@pytest.mark.slow  # builds several detectors and a bank
def test_the_examples_of_docs_library_run(tmp_path, monkeypatch):
    """Every python block of docs/library.md runs, with the tiny model in place of the published download."""
    import re
    import shutil
    from pathlib import Path

    from fade_cli.settings import Settings

    doc = (Path(__file__).parent.parent / "docs" / "library.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert len(blocks) >= 3
    shutil.copytree(REFS, tmp_path / "good")
    shutil.copy(QUERY_FILES[0], tmp_path / "query.png")
    monkeypatch.chdir(tmp_path)
    tiny = dict(model_config=str(MODEL_CONFIG), weights=str(WEIGHTS), device="cpu")
    plain_of = Settings.of.__func__
    monkeypatch.setattr(Settings, "of", classmethod(lambda cls, **values: plain_of(cls, **{**tiny, **values})))
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/library.md", "exec"), namespace)
    assert namespace["r"].anomaly_map is not None and (tmp_path / "cookie.fadebank").is_file()


def test_nothing_below_the_command_line_imports_click_or_rich():
    """The library floor stands alone: click and rich are the command line's (fade_cli/cli/)."""
    import ast
    from pathlib import Path

    package = Path(fade_cli.__file__).parent
    offenders = []
    for path in package.rglob("*.py"):
        if "cli" in path.relative_to(package).parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(package)}: {name}" for name in names
                          if name.split(".")[0] in ("click", "rich")]
    assert offenders == []
