"""Hostile input: every case gets a message, a non-zero exit where the run cannot go on, and loses nothing.

Decoding and discovery are tested directly (no model); the CLI runs use the golden
tiny model at one small size. Tests run as root, where file permissions do not
apply: unreadable files and folders are simulated by making ``open``/``scandir``/
``os.access`` fail as they would for another user (the real chmod test is skipped
under root).
"""
from __future__ import annotations

import builtins
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import MODEL_CONFIG, QUERIES, TINY_MODEL_ARGS, WEIGHTS, run_cli as run
from fade_cli.core.errors import ImageError, InputError
from fade_cli.io.images import discover_images, load_image, require_images

# One small size: these tests are about behaviour, not numbers.
ARGS = TINY_MODEL_ARGS + ["--scales", "240", "--cls-size", "240"]
LATIN1_NAME = b"latin1-\xe9.png"  # not valid UTF-8: a name from an old Windows share


def bright_corner(width: int, height: int) -> Image.Image:
    """A dark picture with a bright square in its top-left corner."""
    image = Image.new("RGB", (width, height), (10, 10, 10))
    image.paste((250, 250, 250), (0, 0, width // 4, height // 4))
    return image


def save_exif_rotated(path: Path, displayed: Image.Image) -> None:
    """Store ``displayed`` turned a quarter left with EXIF Orientation 6 (viewers turn it back)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    displayed.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, quality=100)


def truncated_jpeg(path: Path) -> None:
    bright_corner(64, 48).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_png(path: Path) -> None:
    """A PNG whose compressed pixel data is overwritten: the header is fine, decoding fails."""
    bright_corner(64, 48).save(path)
    data = bytearray(path.read_bytes())
    start = data.find(b"IDAT") + 8
    data[start : start + 12] = bytes(12)
    path.write_bytes(bytes(data))


def make_symlink_loop(folder: Path) -> None:
    os.symlink(folder / "loop-b.png", folder / "loop-a.png")
    os.symlink(folder / "loop-a.png", folder / "loop-b.png")


@pytest.fixture
def deny_open(monkeypatch):
    """Make opening the given paths fail with EACCES, as it does for a file of another user."""
    denied: set[str] = set()
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(os.fspath(file)) in denied:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    return lambda path: denied.add(os.path.abspath(path))


# --- decoding -------------------------------------------------------------------------------


def _sixteen_bit(path):
    values = np.array([[0, 32768], [65535, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(path)  # mode I;16


@pytest.mark.parametrize(
    "name, write, message",
    [
        ("truncated.jpg", truncated_jpeg, "truncated image"),
        ("empty.png", lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
        ("notes.png", lambda p: p.write_text("not an image at all\n"), "not a readable image"),
        ("corrupt.png", corrupt_png, "cannot decode image (broken data stream"),
        ("dangling.png", lambda p: os.symlink(p.parent / "gone.png", p), "file not found"),
    ],
)
def test_undecodable_files_raise_a_clear_image_error(tmp_path, name, write, message):
    path = tmp_path / name
    write(path)
    with pytest.raises(ImageError) as caught:
        load_image(path)
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_symlink_loop_file_is_an_image_error(tmp_path):
    make_symlink_loop(tmp_path)
    with pytest.raises(ImageError, match="symbolic link loop"):
        load_image(tmp_path / "loop-a.png")


def test_unreadable_file_is_an_image_error(tmp_path, deny_open):
    path = tmp_path / "locked.png"
    bright_corner(8, 8).save(path)
    deny_open(path)
    with pytest.raises(ImageError, match="permission denied"):
        load_image(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file; simulated in test_unreadable_file_is_an_image_error")
def test_really_unreadable_file(tmp_path):
    path = tmp_path / "locked.png"
    bright_corner(8, 8).save(path)
    path.chmod(0)
    with pytest.raises(ImageError, match="permission denied"):
        load_image(path)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr("fade_cli.io.images.MAX_PIXELS", 1000)
    with pytest.raises(ImageError, match="image too large"):
        load_image(path)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    _sixteen_bit(tmp_path / "deep.png")
    image = load_image(tmp_path / "deep.png")
    assert image.mode == "RGB"
    assert np.asarray(image)[..., 0].tolist() == [[0, 128], [255, 255]]


@pytest.mark.parametrize(
    "mode, colour, expected",
    [
        ("L", 200, (200, 200, 200)),
        ("RGBA", (200, 40, 10, 255), (200, 40, 10)),
        ("RGBA", (200, 40, 10, 0), (200, 40, 10)),  # alpha dropped, as the published pipeline does
        ("LA", (90, 255), (90, 90, 90)),
        ("P", 3, None),  # palette: whatever colour index 3 is, as RGB
    ],
)
def test_colour_modes_become_rgb(tmp_path, mode, colour, expected):
    path = tmp_path / "image.png"
    Image.new(mode, (4, 3), colour).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (4, 3)
    if expected is None:
        expected = Image.open(path).convert("RGB").getpixel((0, 0))
    assert image.getpixel((2, 1)) == expected


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=100)  # pure red in CMYK
    assert Image.open(path).mode == "CMYK"
    red, green, blue = load_image(path).getpixel((8, 8))
    assert red > 200 and green < 60 and blue < 60


def test_exif_rotation_gives_the_displayed_image(tmp_path):
    save_exif_rotated(tmp_path / "phone.jpg", bright_corner(64, 40))
    assert Image.open(tmp_path / "phone.jpg").size == (40, 64)  # stored sideways
    image = load_image(tmp_path / "phone.jpg")
    assert image.size == (64, 40)
    pixels = np.asarray(image).mean(axis=2)
    assert pixels[:10, :16].mean() > 200 and pixels[-10:, -16:].mean() < 40


def test_one_pixel_image(tmp_path):
    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "dot.png")
    assert load_image(tmp_path / "dot.png").getpixel((0, 0)) == (1, 2, 3)


# --- discovery ------------------------------------------------------------------------------


def test_empty_folder_and_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="the folder is empty"):
        require_images(tmp_path / "empty")
    other = tmp_path / "other"
    (other / "deep").mkdir(parents=True)
    (other / "notes.txt").write_text("x")
    (other / "deep" / "scan.raw").write_bytes(b"x")
    with pytest.raises(InputError) as caught:
        require_images(other)
    assert "holds 2 other file(s) (deep/scan.raw, notes.txt)" in str(caught.value)
    assert ".png" in str(caught.value) and ".jpg" in str(caught.value)


def test_folder_symlink_loop_is_walked_once(tmp_path):
    (tmp_path / "a").mkdir()
    bright_corner(8, 8).save(tmp_path / "a" / "x.png")
    os.symlink(tmp_path, tmp_path / "a" / "back-to-root")
    files = discover_images(tmp_path)
    assert [f.relative for f in files] == ["a/x.png"]


def test_root_that_is_a_symlink_loop(tmp_path):
    os.symlink(tmp_path / "loop2", tmp_path / "loop1")
    os.symlink(tmp_path / "loop1", tmp_path / "loop2")
    with pytest.raises(InputError, match="symbolic link loop"):
        discover_images(tmp_path / "loop1")


def test_unreadable_sub_folder_is_reported_and_the_rest_found(tmp_path, monkeypatch):
    for folder in ("ok", "locked"):
        (tmp_path / folder).mkdir()
        bright_corner(8, 8).save(tmp_path / folder / "x.png")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == os.fspath(tmp_path / "locked"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    skipped = []
    files = discover_images(tmp_path, on_skip=skipped.append)
    assert [f.relative for f in files] == ["ok/x.png"]
    assert skipped == [f"skipped folder {tmp_path / 'locked'}: permission denied"]


def test_unreadable_input_folder(tmp_path, monkeypatch):
    (tmp_path / "in").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == tmp_path / "in"
                        else real_access(path, mode, **kw))
    with pytest.raises(InputError, match="permission denied"):
        discover_images(tmp_path / "in")
    result = run(["detect", tmp_path / "in", *ARGS])
    assert result.exit_code == 2 and "is not readable" in result.output


def test_excluded_folders_are_not_scanned(tmp_path):
    for folder in ("in", "in/out", "in/done"):
        (tmp_path / folder).mkdir()
        bright_corner(8, 8).save(tmp_path / folder / "x.png")
    files = discover_images(tmp_path / "in", exclude=[tmp_path / "in" / "out", tmp_path / "in" / "done", None])
    assert [f.relative for f in files] == ["x.png"]


# --- the command line -----------------------------------------------------------------------


def test_a_folder_of_hostile_files_is_scored_and_every_failure_reported(tmp_path, deny_open):
    images = tmp_path / "in"
    images.mkdir()
    save_exif_rotated(images / "exif rotated.jpg", bright_corner(64, 40))
    load_image(images / "exif rotated.jpg").save(images / "upright.png")  # the same pixels, stored upright
    Image.new("RGB", (1, 1), (120, 30, 30)).save(images / "one pixel.png")
    bright_corner(32, 24).save(images / "naïve café 日本.png")
    with open(os.fsencode(images) + b"/" + LATIN1_NAME, "wb") as handle:
        bright_corner(24, 24).save(handle, format="PNG")
    truncated_jpeg(images / "truncated.jpg")
    (images / "empty.png").write_bytes(b"")
    (images / "notes.png").write_text("hello")
    make_symlink_loop(images)
    bright_corner(8, 8).save(images / "locked.png")
    deny_open(images / "locked.png")
    (images / "d[").mkdir()
    (images / "d[" / "]bad.png").write_text("x")  # its path holds '[/]', a closing tag to a terminal printer
    os.symlink(images, images / "loop-dir")
    out = tmp_path / "out"

    result = run(["detect", images, "--out", out, "--format", "jsonl", "-q", *ARGS])

    assert result.exit_code == 0, result.output
    rows = {row["path"]: row for row in map(json.loads, (out / "results.jsonl").read_text("utf-8").splitlines())}
    assert [json.loads(line) for line in result.stdout.splitlines()] == list(rows.values())
    expected_errors = {"truncated.jpg": "truncated image", "empty.png": "empty file", "notes.png": "not a readable",
                       "loop-a.png": "symbolic link loop", "loop-b.png": "symbolic link loop",
                       "locked.png": "permission denied", "d[/]bad.png": "not a readable"}
    for name, message in expected_errors.items():
        assert message in rows[name]["error"] and rows[name]["score"] is None
        assert message in result.stderr
    latin1 = os.fsdecode(LATIN1_NAME)
    sizes = {"exif rotated.jpg": (40, 64), "upright.png": (40, 64), "one pixel.png": (1, 1),
             "naïve café 日本.png": (24, 32), latin1: (24, 24)}
    assert set(rows) == set(expected_errors) | set(sizes)  # the folder loop added nothing
    for name, shape in sizes.items():
        tiny = min(shape) * 8 < 240  # enlarged more than 8-fold to the model's 240 pixels: scored, with a warning
        assert (rows[name]["error"] is None) != tiny and 0.0 <= rows[name]["score"] <= 1.0
        assert not tiny or "so its score says little" in rows[name]["error"]
        assert (images / name).exists()  # paths in results lead back to the file, whatever its name
        assert np.load(out / rows[name]["map_path"]).shape == shape
    # The EXIF photo is scored as displayed: its map is the map of the upright copy.
    np.testing.assert_allclose(np.load(out / rows["exif rotated.jpg"]["map_path"]),
                               np.load(out / rows["upright.png"]["map_path"]), atol=1e-6)
    heat = np.asarray(Image.open(out / rows["exif rotated.jpg"]["heatmap_path"]).convert("L"), dtype=float)
    assert heat[:10, :16].mean() > heat[30:40, 48:64].mean() + 60  # the bright corner is top-left


def test_names_that_look_like_markup_print_as_they_are(tmp_path):
    (tmp_path / "d[").mkdir()
    bright_corner(16, 16).save(tmp_path / "d[" / "]x [bold].png")
    result = run(["detect", tmp_path, "-q", *ARGS])
    assert result.exit_code == 0, result.output
    assert "d[/]x [bold].png" in result.stdout


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"normal": ', "is not valid JSON"),
        (b"", "is not valid JSON"),
        (b"\xff\xfe{}", "cannot read prompts file"),
        (b"[]", "expected a JSON object"),
        (b'{"normal": {"prompts": []}, "abnormal": {"prompts": ["x"]}}', "no normal prompt"),
    ],
)
def test_bad_prompts_file_exits_2(tmp_path, content, message):
    (tmp_path / "prompts.json").write_bytes(content)
    result = run(["detect", QUERIES, "--prompts", tmp_path / "prompts.json", *ARGS])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_empty_folder_and_folder_without_images_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run(["detect", tmp_path / "empty", *ARGS])
    assert result.exit_code == 2 and "the folder is empty" in result.output
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("x")
    result = run(["detect", tmp_path / "docs", *ARGS])
    assert result.exit_code == 2 and "holds 1 other file(s) (readme.txt)" in result.output


def _earlier_run(out: Path) -> dict[str, bytes]:
    """An output folder holding the results of an earlier run; returns its files' bytes."""
    (out / "maps").mkdir(parents=True)
    # Its row names its map where fade writes maps: --overwrite may remove it (docs/station.md).
    (out / "results.jsonl").write_text('{"path": "good_a.png", "score": 0.5, "map_path": "maps/good_a.png.npy"}\n')
    (out / "results.csv").write_text("path,score\ngood_a.png,0.5\n")
    np.save(out / "maps" / "good_a.png.npy", np.zeros((2, 2), np.float32))
    return _snapshot(out)


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_existing_results_are_refused_and_left_untouched(tmp_path):
    out = tmp_path / "out"
    before = _earlier_run(out)
    result = run(["detect", QUERIES, "--out", out, *ARGS])
    assert result.exit_code == 2 and "already holds results" in result.output and "--overwrite" in result.output
    assert _snapshot(out) == before


def test_full_disk_exits_3_keeps_finished_rows_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    import fade_cli.io.outputs as outputs

    out = tmp_path / "out"
    _earlier_run(out)
    real_fdopen = outputs.os.fdopen
    writes_left = [5]  # the lock file, the run's settings and run.json, the first image's map and heatmap fit; then the disk is full

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            self.handle.write(bytes(data)[: len(data) // 2])  # half lands on disk, then no space
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def fdopen(fd, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)
        if not os.readlink(f"/proc/self/fd/{fd}").startswith(str(out)):  # another cache (prompts): not this disk
            return handle
        writes_left[0] -= 1
        return handle if writes_left[0] >= 0 else FullDisk(handle)

    monkeypatch.setattr(outputs.os, "fdopen", fdopen)
    result = run(["detect", QUERIES, "--out", out, "--overwrite", "--no-report", "-q", *ARGS])  # no thumbnails

    assert result.exit_code == 3
    assert "the disk is full" in result.output and "Traceback" not in result.output
    after = _snapshot(out)
    assert "results.jsonl" not in after and "results.csv" not in after  # --overwrite: the earlier run is gone
    assert "maps/good_a.png.npy" not in after  # ...its maps too, none left beside the new rows
    assert not [name for name in after if name.endswith(".tmp")]
    kept = [json.loads(line) for line in after["results.partial.jsonl"].decode().splitlines()]
    assert [row["path"] for row in kept] == ["cracked_a.png"]
    assert np.load(out / kept[0]["map_path"]).shape == (384, 288)


def test_ctrl_c_keeps_complete_results_of_finished_images(tmp_path, monkeypatch):
    from fade_cli.engine.detector import FadeEngine

    real_detect = FadeEngine.detect_prepared
    calls = []

    def interrupted_after_two(self, pixels_by_size):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_detect(self, pixels_by_size)

    monkeypatch.setattr(FadeEngine, "detect_prepared", interrupted_after_two)
    out = tmp_path / "out"
    result = run(["detect", QUERIES, "--out", out, "--format", "jsonl", "-q", *ARGS])

    assert result.exit_code == 130
    assert "Interrupted after 2 of 4 images" in result.stderr
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [row["path"] for row in rows] == ["cracked_a.png", "cracked_b.png"]
    for row in rows:
        assert np.load(out / row["map_path"]).shape == (384, 288)
        assert Image.open(out / row["heatmap_path"]).height == 384
    assert len((out / "results.csv").read_text().splitlines()) == 3
    assert not (out / "results.partial.jsonl").exists()
    assert not list(out.rglob("*.tmp"))


BIG_IMAGE_SCRIPT = """
import json, resource, sys
from pathlib import Path
from PIL import Image
from fade_cli.config import EngineConfig
from fade_cli.engine import FadeEngine
from fade_cli.io.images import ImageFile
from fade_cli.io.outputs import RunOutput
from fade_cli.runs.runner import run_detection

model_config, weights, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
Image.new("RGB", (1, 1), (90, 90, 90)).save(folder / "small.png")
Image.new("RGB", (8000, 5000), (90, 90, 90)).save(folder / "big.png", compress_level=1)
config = EngineConfig(model_config=model_config, weights=weights, device="cpu", seg_sizes=(240,), cls_size=240)
engine = FadeEngine.from_config(config)
output = RunOutput(folder / "out")
peak_kib = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run_detection(engine, [ImageFile(folder / "small.png", "small.png")], output)  # every code path once
before = peak_kib()
run_detection(engine, [ImageFile(folder / "big.png", "big.png")], output)
print(json.dumps({"increase_bytes": (peak_kib() - before) * 1024}))
output.finish()
"""


@pytest.mark.slow
def test_forty_megapixel_image_keeps_memory_bounded(tmp_path):
    """Peak memory for a 40 MP photo stays within a few image-sized buffers.

    Budget: the decoded image, one float32 map at full size (saved), and the
    heatmap's colours and canvas; 5 x (W x H x 4 bytes) in all. Holding a few
    more full-size float copies (or a float copy of the image) would exceed it.
    """
    script = tmp_path / "big.py"
    script.write_text(BIG_IMAGE_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(MODEL_CONFIG), str(WEIGHTS), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    increase = json.loads(proc.stdout.splitlines()[-1])["increase_bytes"]
    assert increase < 5 * 8000 * 5000 * 4, f"peak memory grew by {increase / 2**20:.0f} MiB"
    saved = np.load(tmp_path / "out" / "maps" / "big.png.npy", mmap_mode="r")
    assert saved.shape == (5000, 8000) and saved.dtype == np.float32
    assert Image.open(tmp_path / "out" / "heatmaps" / "big.png.png").height == 5000
