"""Paths read from files fade did not just write stay inside their root, and files opened by names fade did not
choose are never FIFOs or devices: results rows in `fade report`, VisA split CSVs in `fade eval`, the text-embedding
cache. A refused path is named with its file, field and value; nothing is read or written outside the root.

The FIFO tests run fade in a subprocess with a timeout, so a regression fails instead of hanging the suite."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import CLS_PROMPTS, FAST_ARGS, QUERIES, SEG_PROMPTS
from fade_cli.cli import cli
from fade_cli.core.errors import InputError
from fade_cli.evaluation.datasets import load_dataset
from fade_cli.io.files import confined_path, read_file_bytes
from fade_cli.io.thumbnails import write_thumbnails

HANG_SECONDS = 120


def _picture(path: Path, colour=(200, 40, 40), size=(64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _row(path: str, score=0.5, **fields) -> dict:
    base = dict.fromkeys(("language_score", "vision_score", "verdict", "map_path", "heatmap_path", "mask_path",
                          "regions", "error"))
    return {**base, "path": path, "score": score, **fields}


def _write_rows(run_dir: Path, rows: list[dict]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _page_rows(page: Path) -> list[dict]:
    return json.loads(re.search(r'id="fade-data">(.*?)</script>', page.read_text()).group(1))["rows"]


def _tree(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*")}


def _fade(args: list, env: dict | None = None) -> subprocess.CompletedProcess:
    """fade in a child process: a read that blocks fails the test after HANG_SECONDS instead of hanging it."""
    try:
        return subprocess.run([sys.executable, "-m", "fade_cli", *map(str, args)], capture_output=True, text=True,
                              timeout=HANG_SECONDS, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        pytest.fail(f"fade {' '.join(map(str, args))} blocked for {HANG_SECONDS} s (a FIFO read?)")


# --- the helper ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("relative, reason", [
    ("../x.png", "goes up with '..'"),
    ("a/../../x.png", "goes up with '..'"),
    ("/etc/passwd", "is an absolute path"),
    ("", "is not a usable path"),
    ("a\0b", "is not a usable path"),
    ("link/secret.png", "leads outside"),
])
def test_confined_path_refuses_what_leaves_the_root_naming_it(tmp_path, relative, reason):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", root / "link")
    with pytest.raises(InputError, match=re.escape(reason)) as raised:
        confined_path(root, relative, "rows.jsonl, line 3: image")
    assert str(raised.value).startswith("rows.jsonl, line 3: image: ")


def test_confined_path_keeps_what_stays_inside_even_through_a_link(tmp_path):
    (tmp_path / "root" / "real").mkdir(parents=True)
    os.symlink(tmp_path / "root" / "real", tmp_path / "root" / "alias")
    assert confined_path(tmp_path / "root", "alias/a.png", "x") == tmp_path / "root" / "alias" / "a.png"
    assert confined_path(tmp_path / "root", "new/folder/b.png", "x") == tmp_path / "root" / "new/folder/b.png"


def test_read_file_bytes_is_bounded(tmp_path):
    (tmp_path / "big").write_bytes(b"x" * 100)
    with pytest.raises(InputError, match="more than the 99"):
        read_file_bytes(tmp_path / "big", "thing", limit=99)
    assert read_file_bytes(tmp_path / "big", "thing", limit=100) == b"x" * 100


def test_thumbnails_are_never_written_outside_the_output_folder(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "elsewhere").mkdir()
    (out / "thumbnails").mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere", out / "thumbnails" / "image")  # planted in the output folder
    picture = Image.new("RGB", (8, 8))
    for relative in ("a.png", "../../../x.png", str(tmp_path / "abs.png")):
        with pytest.raises(InputError):
            write_thumbnails(out, relative, picture, None)
    assert _tree(tmp_path / "elsewhere") == set() and not (tmp_path / "x.png.jpg").exists()


# --- fade report on hostile rows ----------------------------------------------------------------------------------

def test_report_refuses_rows_whose_paths_leave_the_run_or_the_images_and_goes_on(tmp_path):
    outside = tmp_path / "outside"
    secret = _picture(outside / "secret.png")
    images = tmp_path / "a" / "b" / "images"
    _picture(images / "good" / "fine.png", (40, 200, 40))
    os.symlink(outside, images / "linked")
    run_dir = tmp_path / "run"
    rows = [
        _row("good/fine.png", 0.1),
        _row("good/b.png", 0.9, heatmap_path=str(secret)),  # absolute heatmap: would be read as a picture
        _row("../../../outside/secret.png", 0.8),  # reads the secret through --images, thumbnails beside it
        _row(str(secret), 0.7),  # an absolute image path
        _row("good/c.png", 0.6, mask_path="../outside/secret.png", regions=[{"bbox": [0, 0, 2, 2]}]),
        _row("good/d.png", 0.5, map_path="maps/../../outside/m.npy"),
        _row("linked/secret.png", 0.4),  # inside --images by name, outside once the link is resolved
    ]
    _write_rows(run_dir, rows)
    before = _tree(tmp_path / "a") | {f"outside/{name}" for name in _tree(outside)}
    result = CliRunner().invoke(cli, ["report", str(run_dir), "--images", str(images), "-q"])
    assert result.exit_code == 0, result.output
    assert _tree(tmp_path / "a") | {f"outside/{name}" for name in _tree(outside)} == before  # nothing written there
    assert not any("outside" in name or "secret" in name for name in _tree(run_dir))
    page = _page_rows(run_dir / "report.html")
    by_path = {row["path"]: row for row in page}
    assert "error" not in by_path["good/fine.png"] and by_path["good/fine.png"]["thumb"]
    expected = {
        "good/b.png": f"line 2: heatmap_path: {str(secret)!r} is an absolute path",
        "../../../outside/secret.png": "line 3: path: '../../../outside/secret.png' goes up with '..'",
        str(secret): f"line 4: path: {str(secret)!r} is an absolute path",
        "good/c.png": "line 5: mask_path: '../outside/secret.png' goes up with '..'",
        "good/d.png": "line 6: map_path: 'maps/../../outside/m.npy' goes up with '..'",
        "linked/secret.png": "line 7: path: 'linked/secret.png' leads outside",
    }
    for path, message in expected.items():
        row = by_path[path]
        assert f"results.jsonl, {message}" in row["error"], row
        assert not {"source", "thumb", "heat_thumb", "heatmap", "mask", "size"} & set(row), row


def test_report_of_an_eval_run_refuses_a_scores_row_leaving_the_dataset(tmp_path):
    dataset = tmp_path / "data"
    _picture(dataset / "widget" / "test" / "good" / "a.png")
    secret = _picture(tmp_path / "secret.png")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    metrics = {"runs": [], "classes": {}, "mean": {}, "metrics": [], "dataset": {"root": str(dataset)}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "scores.csv").write_text(
        "class,seed,image,defect,label,score,language_score,vision_score,mask\n"
        "widget,,widget/test/good/a.png,good,0,0.1,0.1,,\n"
        f"widget,,../secret.png,good,0,0.2,0.2,,\n")
    result = CliRunner().invoke(cli, ["report", str(run_dir), "-q"])
    assert result.exit_code == 0, result.output
    rows = {row["path"]: row for row in _page_rows(run_dir / "report.html")}
    assert "error" not in rows["widget/test/good/a.png"]
    assert "scores.csv, line 3: image: '../secret.png' goes up with '..'" in rows["../secret.png"]["error"]
    assert "source" not in rows["../secret.png"]
    assert not (tmp_path / "thumbnails").exists() and secret.exists()


def test_report_does_not_block_on_a_fifo_mask(tmp_path):
    run_dir = tmp_path / "run"
    _write_rows(run_dir, [_row("a.png", 0.9, mask_path="masks/a.png.png", regions=[{"bbox": [0, 0, 4, 4]}]),
                          _row("b.png", 0.1)])
    (run_dir / "masks").mkdir()
    os.mkfifo(run_dir / "masks" / "a.png.png")
    result = _fade(["report", run_dir, "-q"])
    assert result.returncode == 0, result.stderr
    rows = {row["path"]: row for row in _page_rows(run_dir / "report.html")}
    assert "size" not in rows["a.png"]


@pytest.mark.parametrize("name", ["results.jsonl", "metrics.json"])
def test_report_names_a_fifo_in_place_of_a_run_file(tmp_path, name):
    os.mkfifo(tmp_path / name)
    result = _fade(["report", tmp_path, "-q"])
    assert result.returncode == 2, result.stderr
    assert f"{tmp_path / name} is a FIFO (named pipe), not a regular file" in result.stderr


# --- fade eval on a hostile VisA split CSV ------------------------------------------------------------------------

def _visa(root: Path, rows: list[str]) -> Path:
    for relative in ("pcb/Data/Normal/0.png", "pcb/Data/Normal/1.png", "pcb/Data/Anomaly/0.png",
                     "pcb/Data/Masks/0.png"):
        _picture(root / relative)
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text(
        "object,split,label,image,mask\n"
        "pcb,train,normal,pcb/Data/Normal/0.png,\n"
        "pcb,test,normal,pcb/Data/Normal/1.png,\n" + "".join(row + "\n" for row in rows))
    return root


@pytest.mark.parametrize("row, message", [
    ("pcb,test,anomaly,../outside/evil.png,", "line 4: image: '../outside/evil.png' goes up with '..'"),
    ("pcb,test,anomaly,ABSOLUTE,", "line 4: image: 'ABSOLUTE' is an absolute path"),
    ("pcb,test,anomaly,pcb/Data/Anomaly/0.png,../outside/evil.png", "line 4: mask: '../outside/evil.png' goes up"),
    ("pcb,test,anomaly,pcb/Data/Anomaly/0.png,ABSOLUTE", "line 4: mask: 'ABSOLUTE' is an absolute path"),
    ("pcb,test,anomaly,link/evil.png,", "line 4: image: 'link/evil.png' leads outside"),
    ("../../escape,test,anomaly,pcb/Data/Anomaly/0.png,", "line 4: object '../../escape' is not a class name"),
    ("a/b,test,normal,pcb/Data/Normal/1.png,", "line 4: object 'a/b' is not a class name"),
])
def test_a_visa_row_leaving_the_dataset_is_refused_naming_line_column_and_path(tmp_path, row, message):
    evil = _picture(tmp_path / "outside" / "evil.png")
    root = _visa(tmp_path / "visa", [row.replace("ABSOLUTE", str(evil))])
    os.symlink(tmp_path / "outside", root / "link")
    with pytest.raises(InputError, match=re.escape(message.replace("ABSOLUTE", str(evil)))) as raised:
        load_dataset(root, "visa")
    assert "1cls.csv" in str(raised.value)


def test_a_visa_csv_or_image_that_is_a_fifo_is_named_and_never_opened(tmp_path):
    root = _visa(tmp_path / "visa", ["pcb,test,anomaly,pcb/Data/fifo.png,"])
    os.mkfifo(root / "pcb" / "Data" / "fifo.png")
    with pytest.raises(InputError, match=r"image \(listed in .*1cls\.csv line 4\) .*fifo\.png is a FIFO"):
        load_dataset(root, "visa")
    csv_path = root / "split_csv" / "1cls.csv"
    csv_path.unlink()
    os.mkfifo(csv_path)
    with pytest.raises(InputError, match="VisA split file .*1cls.csv is a FIFO"):
        load_dataset(root, "visa")


def test_fade_eval_with_a_hostile_visa_csv_writes_nothing_outside_its_out(tmp_path):
    evil = _picture(tmp_path / "outside" / "evil.png")
    root = _visa(tmp_path / "visa", [f"pcb,test,anomaly,{evil},"])
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["eval", str(root), "--dataset", "visa", "--shots", "0", "--save-maps",
                                      "--out", str(out), "-q", *FAST_ARGS])
    assert result.exit_code == 2, result.output
    assert f"1cls.csv line 4: image: {str(evil)!r} is an absolute path" in " ".join(result.output.split())
    assert _tree(tmp_path / "outside") == {"evil.png"}


# --- the text-embedding cache -------------------------------------------------------------------------------------

def test_a_fifo_in_the_text_embedding_cache_is_discarded_not_read(tmp_path):
    args = ["detect", QUERIES, "--format", "jsonl", "-q", *FAST_ARGS, "--cls-prompts", CLS_PROMPTS,
            "--seg-prompts", SEG_PROMPTS]
    first = CliRunner().invoke(cli, [str(a) for a in args])
    assert first.exit_code == 0, first.output
    entries = sorted(Path(os.environ["FADE_CACHE_DIR"]).glob("text-embeddings/*.npy"))
    assert entries
    for entry in entries:
        entry.unlink()
        os.mkfifo(entry)
    second = _fade(args)
    assert second.returncode == 0, second.stderr
    message = " ".join(second.stderr.split())
    assert all(f"discarded the damaged text-embedding cache entry {entry}" in message for entry in entries), message
    assert "is a FIFO (named pipe), not a regular file" in message
    assert [json.loads(line)["score"] for line in second.stdout.splitlines()] == \
        [json.loads(line)["score"] for line in first.stdout.splitlines()]
    assert all(entry.is_file() and np.load(entry).shape[0] == 2 for entry in entries)


# --- prompt templates ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("statement", ['{% include "../../etc/passwd" %}', '{% import "/etc/passwd" as x %}',
                                       '{% extends "../secret.j2" %}'])
def test_a_template_can_include_no_file(tmp_path, statement):
    """A guard rather than a fix: templates are rendered without a loader, so no include can reach a file."""
    (tmp_path / "secret.j2").write_text("[normal]\nsecret\n[abnormal]\nsecret\n")
    template = tmp_path / "t" / "t.j2"
    template.parent.mkdir()
    template.write_text(f"[normal]\na photo.\n[abnormal]\n{statement}\n")
    result = CliRunner().invoke(cli, ["prompts", "generate", "bolt", "--generator", "template", "--template",
                                      str(template)])
    assert result.exit_code == 2, result.output
    assert "include, import and extends need files" in result.output and "secret" not in result.output
