"""`fade eval` end to end with the tiny golden model: report structure, numbers recomputed
from the saved maps, reruns, agreement with `fade detect`, and error messages."""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from conftest import FAST_ARGS, run_cli as run
from fade_cli.cli import cli
from fade_cli.evaluation.masks import load_mask
from fade_cli.evaluation.metrics import f1_max, image_metrics
from test_eval_metrics import brute_force_aupro

EXAMPLES = Path(__file__).parent.parent / "examples" / "cookie"
COOKIE = EXAMPLES / "cookie"
EVAL_SIZE = 128  # smaller than the published 448: these tests check behaviour, not published numbers


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def recompute(out: Path, report: dict, run_entry: dict, root: Path) -> dict:
    """The metrics of one run straight from scores.csv and maps/, with scikit-learn and a brute-force AUPRO."""
    seed = run_entry["seed"]
    rows = [r for r in read_csv(out / "scores.csv")
            if r["class"] == run_entry["class"] and r["seed"] == ("" if seed is None else str(seed))]
    metrics = image_metrics([r["label"] == "1" for r in rows], [float(r["score"]) for r in rows])
    maps, masks = [], []
    for row in rows:
        if row["mask"] == "missing":
            continue
        folder = out / "maps" / ("" if seed is None else f"seed{seed}")
        maps.append(np.load(folder / f"{row['image']}.npy"))
        mask_path = _mask_path(root, report, row)
        masks.append(load_mask(mask_path, EVAL_SIZE) if mask_path else np.zeros((EVAL_SIZE, EVAL_SIZE), bool))
    labels = np.concatenate([m.ravel() for m in masks])
    scores = np.concatenate([m.ravel() for m in maps])
    metrics["pixel_auroc"] = roc_auc_score(labels, scores)
    metrics["pixel_f1_max"] = f1_max(labels, scores)
    metrics["aupro"] = brute_force_aupro(maps, masks)
    return metrics


def _mask_path(root: Path, report: dict, row: dict):
    if row["label"] != "1":
        return None
    image = Path(row["image"])
    if report["dataset"]["layout"] == "visa":
        return root / "cookie" / "Data" / "Masks" / "Anomaly" / f"{image.stem}.png"
    return root / image.parts[0] / "ground_truth" / image.parts[2] / f"{image.stem}_mask.png"


def assert_metrics_close(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name


@pytest.mark.slow
def test_mvtec_eval_report_numbers_and_detect_agree(tmp_path):
    args = ["eval", str(EXAMPLES), "--dataset", "mvtec", "--shots", "1", "--seeds", "0,1", "--eval-size",
            str(EVAL_SIZE), "--save-maps", "--save-worst", "2", "-q", *FAST_ARGS]
    result = run([*args, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "a"

    # stdout: the Markdown table, per class and the mean, mean ± std over the two seeds
    lines = result.stdout.splitlines()
    assert lines[2].startswith("| class ") and "AUPRO" in lines[2]
    assert [line.split("|")[1].strip() for line in lines[4:]] == ["cookie", "mean"]
    assert "±" in lines[4]

    report = json.loads((out / "metrics.json").read_text())
    assert report["settings"]["shots"] == 1 and report["settings"]["seeds"] == [0, 1]
    assert report["dataset"]["classes"] == ["cookie"]
    assert report["model"]["model"] == "fade-golden" and len(report["model"]["weights_sha256"]) == 64
    assert report["prompts"]["sources"] == {"classification": "built-in", "segmentation": "built-in"}
    assert len(report["prompts"]["by_class_name"]["cookie"]["segmentation"]["sha256"]) == 64
    assert report["engine"]["seg_sizes"] == [240, 320]
    assert report["precision"] == {"requested": "fp32", "precision": "fp32", "reason": "as asked"}
    assert {"torch", "open_clip_torch", "scikit-learn"} <= set(report["software"])
    assert [(r["seed"], r["prompt_class"]) for r in report["runs"]] == [(0, "cookie"), (1, "cookie")]
    for entry in report["runs"]:
        assert len(entry["references"]) == 1 and entry["references"][0].startswith("cookie/train/good/")
        assert entry["counts"] == {"test_images": 5, "good": 2, "anomalous": 3, "missing_masks": 0}
        assert_metrics_close(entry["metrics"], recompute(out, report, entry, EXAMPLES))
        assert [w["rank"] for w in entry["worst"]] == [1, 2]
        assert all((out / w["heatmap"]).is_file() for w in entry["worst"])

    # means and standard deviations over seeds, in the JSON and the CSV
    per_seed = [entry["metrics"]["pixel_auroc"] for entry in report["runs"]]
    assert report["classes"]["cookie"]["mean"]["pixel_auroc"] == pytest.approx(np.mean(per_seed))
    assert report["mean"]["std"]["pixel_auroc"] == pytest.approx(np.std(per_seed))
    rows = read_csv(out / "metrics.csv")
    assert [(r["class"], r["seed"]) for r in rows] == [
        ("cookie", "0"), ("cookie", "1"), ("cookie", "mean"), ("cookie", "std"),
        ("mean", "0"), ("mean", "1"), ("mean", "mean"), ("mean", "std")]
    assert float(rows[0]["aupro"]) == report["runs"][0]["metrics"]["aupro"]
    assert (out / "metrics.md").read_text().splitlines()[2:] == lines[2:]

    # `fade detect` with the same options and seed 0's reference gives the same image scores
    reference = EXAMPLES / report["runs"][0]["references"][0]
    detect = run(["detect", str(COOKIE / "test"), "--refs", str(reference), "--class", "cookie",
                  "--format", "csv", "-q", *FAST_ARGS])
    detected = {row["path"]: float(row["score"]) for row in csv.DictReader(detect.stdout.splitlines())}
    evaluated = {r["image"].removeprefix("cookie/test/"): float(r["score"])
                 for r in read_csv(out / "scores.csv") if r["seed"] == "0"}
    assert detected == evaluated


@pytest.fixture
def visa_root(tmp_path):
    """A tiny VisA layout made from the cookie example, with the original RGBA masks and one mask missing."""
    root = tmp_path / "visa"
    rows = []
    for kind, folder in (("normal", "train/good"), ("normal", "test/good"), ("anomaly", "test/cracked")):
        split = folder.split("/")[0]
        for source in sorted((COOKIE / folder).glob("*.jpg")):
            label_dir = "Normal" if kind == "normal" else "Anomaly"
            name = f"{split}_{source.name}" if kind == "normal" else source.name
            image = Path("cookie") / "Data" / "Images" / label_dir / name
            (root / image).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, root / image)
            mask = ""
            if kind == "anomaly" and source.stem != "003":  # 003 has no mask: reported as missing
                mask_path = Path("cookie") / "Data" / "Masks" / "Anomaly" / f"{source.stem}.png"
                (root / mask_path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(EXAMPLES / "original_rgba_masks" / "cracked" / f"{source.stem}_mask.png", root / mask_path)
                mask = mask_path.as_posix()
            rows.append(f"cookie,{split},{kind},{image.as_posix()},{mask}")
    (root / "split_csv").mkdir()
    (root / "split_csv" / "1cls.csv").write_text("object,split,label,image,mask\n" + "\n".join(rows) + "\n")
    return root


def test_visa_zero_shot_with_8bit_maps_a_missing_mask_and_a_rerun(visa_root, tmp_path):
    args = ["eval", str(visa_root), "--shots", "0", "--seeds", "0,1", "--quantize-8bit", "--class", "biscuit",
            "--eval-size", str(EVAL_SIZE), "--save-maps", *FAST_ARGS]
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "--seeds has no effect" in result.stderr
    assert "1 defective image(s) without a mask" in result.stderr and "003.jpg" in result.stderr
    report = json.loads((out / "metrics.json").read_text())
    assert report["dataset"]["layout"] == "visa"  # detected
    [entry] = report["runs"]
    assert (entry["seed"], entry["prompt_class"], entry["references"]) == (None, "biscuit", [])
    assert list(report["prompts"]["by_class_name"]) == ["biscuit"]
    assert entry["missing_masks"] == ["cookie/Data/Images/Anomaly/003.jpg"]
    assert entry["counts"] == {"test_images": 5, "good": 2, "anomalous": 3, "missing_masks": 1}
    saved = np.load(out / "maps" / "cookie" / "Data" / "Images" / "Anomaly" / "001.jpg.npy")
    assert saved.shape == (EVAL_SIZE, EVAL_SIZE)
    np.testing.assert_allclose(saved * 255, np.round(saved * 255), atol=1e-4)  # 8-bit levels
    assert_metrics_close(entry["metrics"], recompute(out, report, entry, visa_root))
    assert [r["mask"] for r in read_csv(out / "scores.csv")] == ["yes", "yes", "missing", "", ""]
    assert [(r["class"], r["seed"]) for r in read_csv(out / "metrics.csv")] == [("cookie", ""), ("mean", "")]

    # the same arguments give the same files
    again = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "again")])
    assert again.exit_code == 0 and again.stdout == result.stdout
    for name in ("metrics.json", "metrics.csv", "scores.csv", "metrics.md"):
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--save-worst", "3"], "give --out"),
        (["--mask-suffix", "_gt"], "only the folder layout takes a mask suffix"),
        (["--shots", "4"], r"--shots 4 needs 4 good training image\(s\), but .*cookie/train/good holds 3"),
        (["--classes", "cake"], "class 'cake' not found"),
        (["--seeds", "1,x", "--shots", "1"], "not a comma-separated list"),
    ],
)
def test_usage_and_input_errors_exit_2_before_loading_the_model(extra, message):
    result = run(["eval", str(EXAMPLES), "--dataset", "mvtec", *extra, *FAST_ARGS])
    assert result.exit_code == 2
    assert re.search(message, result.output), result.output


def test_existing_report_is_not_overwritten(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    result = run(["eval", str(EXAMPLES), "--out", str(tmp_path), *FAST_ARGS])
    assert result.exit_code == 2
    assert "already holds a report (metrics.json)" in result.output and "--overwrite" in result.output
    assert (tmp_path / "metrics.json").read_text() == "{}"


def test_malformed_dataset_names_the_path(tmp_path):
    (tmp_path / "widget" / "test").mkdir(parents=True)
    (tmp_path / "widget" / "test" / "x.png").write_bytes(b"")
    result = run(["eval", str(tmp_path), "--dataset", "mvtec", *FAST_ARGS])
    assert result.exit_code == 2
    assert "widget/test/good" in result.output


def test_help_lists_eval_without_importing_torch():
    code = ("import sys; from click.testing import CliRunner; from fade_cli.cli import cli; "
            "r = CliRunner().invoke(cli, ['eval', '--help']); assert r.exit_code == 0, r.output; "
            "assert '--save-worst' in r.output and 'fade eval ./mvtec' in r.output; "
            "assert 'torch' not in sys.modules; print('ok')")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"


def test_unreadable_test_image_stops_the_eval_with_its_path(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(COOKIE, root / "cookie")
    (root / "cookie" / "test" / "good" / "002.jpg").write_bytes(b"not a jpeg")
    result = run(["eval", str(root), "-q", *FAST_ARGS])
    assert result.exit_code == 2
    assert "test image unreadable" in result.output and "good/002.jpg" in result.output
