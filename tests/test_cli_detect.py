"""`fade detect` through click's runner, and once through the installed console script."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CLS_PROMPTS, FAST_ARGS, GOLDEN, QUERIES, SEG_PROMPTS, run_cli as run


@pytest.fixture
def images(tmp_path):
    """The four golden queries, two of them in a sub-folder."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i, path in enumerate(sorted(QUERIES.glob("*.png"))):
        shutil.copy(path, (root / "sub" if i % 2 else root) / path.name)
    return root


def test_few_shot_writes_results_maps_and_heatmaps(images, tmp_path):
    out = tmp_path / "run"
    result = run(["detect", str(images), "--refs", str(GOLDEN / "images" / "refs1"), "--out", str(out),
                  "--class", "widget", "--format", "jsonl", "-q", *FAST_ARGS])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in rows] == ["cracked_a.png", "good_a.png", "sub/cracked_b.png", "sub/good_b.png"]
    saved = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert saved == rows
    assert (out / "results.csv").read_text().splitlines()[0].startswith("path,score,")
    for row in rows:
        assert 0.0 <= row["score"] <= 1.0 and row["vision_score"] is not None
        saved_map = np.load(out / row["map_path"])
        assert saved_map.shape == (384, 288) and saved_map.dtype == np.float32
        assert Image.open(out / row["heatmap_path"]).height == 384
    assert not (out / "results.partial.jsonl").exists()


def test_threshold_gives_verdicts_and_exit_code(images):
    low = run(["detect", str(images), "--threshold", "0.0", "--format", "csv", "-q", *FAST_ARGS])
    assert low.exit_code == 1
    assert low.output.count(",NG,") == 4
    high = run(["detect", str(images), "--threshold", "1.01", "--format", "csv", "-q", *FAST_ARGS])
    assert high.exit_code == 0
    assert high.output.count(",OK,") == 4


def test_map_size_option(images, tmp_path):
    out = tmp_path / "run"
    result = run(["detect", str(images / "good_a.png"), "--out", str(out), "--map-size", "64", "--no-heatmaps",
                  "-q", *FAST_ARGS])
    assert result.exit_code == 0
    assert np.load(out / "maps" / "good_a.png.npy").shape == (64, 64)
    assert not (out / "heatmaps").exists()


def test_existing_results_are_not_overwritten(images, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.csv").write_text("old\n")
    result = run(["detect", str(images), "--out", str(out), "-q", *FAST_ARGS])
    assert result.exit_code == 2
    assert "--overwrite" in result.output
    assert (out / "results.csv").read_text() == "old\n"
    again = run(["detect", str(images), "--out", str(out), "--overwrite", "-q", *FAST_ARGS])
    assert again.exit_code == 0
    assert (out / "results.csv").read_text().startswith("path,")


def test_broken_image_is_reported_and_run_goes_on(images, tmp_path):
    (images / "broken.png").write_bytes(b"not a png")
    result = run(["detect", str(images), "--format", "jsonl", "-q", *FAST_ARGS])
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    broken = [r for r in rows if r["path"] == "broken.png"]
    assert broken and broken[0]["score"] is None and "not a readable image" in broken[0]["error"]
    assert sum(r["score"] is not None for r in rows) == 4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompts", "BAD_PROMPTS"], "'abnormal' must be"),
        (["--text-template", "no placeholder"], "must contain '{}'"),
        (["--scales", "240,abc"], "not an image size from 1 to"),
    ],
)
def test_bad_input_exits_2(images, tmp_path, extra, message):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"normal": {"prompts": ["ok"]}}))
    extra = [str(bad) if e == "BAD_PROMPTS" else e for e in extra]
    result = run(["detect", str(images), "-q", *FAST_ARGS, *extra])
    assert result.exit_code == 2
    assert message in result.output


def test_missing_folder_and_empty_folder(tmp_path):
    assert run(["detect", str(tmp_path / "nope"), *FAST_ARGS]).exit_code == 2
    (tmp_path / "empty").mkdir()
    result = run(["detect", str(tmp_path / "empty"), *FAST_ARGS])
    assert result.exit_code == 2 and "no image files" in result.output


def test_prompt_files_are_used(images):
    base = run(["detect", str(images / "good_a.png"), "--format", "jsonl", "-q", *FAST_ARGS])
    custom = run(["detect", str(images / "good_a.png"), "--format", "jsonl", "-q", "--cls-prompts",
                  str(CLS_PROMPTS), "--seg-prompts", str(SEG_PROMPTS), "--class", "widget", *FAST_ARGS])
    assert json.loads(base.stdout)["language_score"] != json.loads(custom.stdout)["language_score"]


def _env_without_network():
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return env


def test_offline_without_weights_explains_the_fix(tmp_path, images):
    env = dict(_env_without_network(), FADE_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "fade_cli", "detect", str(images)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3
    assert "ViT-B-16-plus-240" in proc.stderr and str(tmp_path / "cache") in proc.stderr
    assert "--weights" in proc.stderr and "fade models download" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_and_version_do_not_import_torch():
    code = ("import sys; from fade_cli.cli import main; sys.argv=['fade','--help'];\n"
            "try: main()\nexcept SystemExit: pass\n"
            "assert not {'torch', 'fastapi', 'uvicorn'} & set(sys.modules), 'torch or the serve stack imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "detect" in proc.stdout and "serve" in proc.stdout


@pytest.mark.slow  # a fresh interpreter runs the console script end to end
def test_installed_console_script_runs_end_to_end(images, tmp_path):
    fade = shutil.which("fade", path=str(Path(sys.executable).parent)) or shutil.which("fade")
    assert fade, "the fade console script is not installed"
    out = tmp_path / "run"
    proc = subprocess.run([fade, "detect", str(images), "--out", str(out), "--threshold", "0.0", "--format", "jsonl",
                           *FAST_ARGS], capture_output=True, text=True, timeout=300, env=_env_without_network())
    assert proc.returncode == 1, proc.stderr
    assert len(proc.stdout.splitlines()) == 4
    assert len((out / "results.jsonl").read_text().splitlines()) == 4
