"""Every file fade parses is untrusted input: bank headers, prompt files, model configs, checkpoints, templates,
the text cache, images that are not files. Each hostile case is exit 2 (or an error row) with a message naming the
file and the field, never a traceback; sizes are checked against the model and the memory before any loading."""
from __future__ import annotations

import json
import os
import pickle
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import CLS_PROMPTS, FAST_ARGS, MODEL_CONFIG, QUERIES, SEG_PROMPTS, TINY_MODEL_ARGS, WEIGHTS
from fade_cli.cli import cli
from fade_cli.core.errors import FadeError, FadeWarning, ImageError, InputError
from fade_cli.io.images import load_image
from test_bank_format import forged_bank

DEEP = "[" * 100 + "]" * 100
HUGE = "1" + "0" * 30


def run(args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_refused(result, *expected):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for text in expected:
        assert str(text) in result.output, result.output


def _replace_value(field: str, value: str):
    """Edit the canonical metadata text: the value of the first ``"field":`` becomes ``value`` (raw JSON)."""
    def edit(text):
        start = text.index(f'"{field}":') + len(field) + 3
        depth, end = 0, start
        while depth or text[end] not in ",}":
            depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(text[end], 0)
            end += 1
        return text[:start] + value + text[end:]
    return edit


@pytest.mark.parametrize("field, value, named", [
    ("config", '"ops"', "field config must be a JSON object, not a string"),
    ("cls_size", '"240"', "config.cls_size"),
    ("cls_size", "240.5", "config.cls_size"),
    ("cls_size", HUGE, "config.cls_size"),
    ("cls_size", "-240", "config.cls_size"),
    ("seg_sizes", "[0]", "config.seg_sizes"),
    ("seg_sizes", "[]", "config.seg_sizes"),
    ("seg_sizes", '"32,48"', "config.seg_sizes"),
    ("gem_depth", "true", "config.gem_depth"),
    ("vision_weight", "2", "config.vision_weight"),
    ("device", '"meta"', "meta"),
    ("thresholds", "[1]", "field thresholds must be a JSON object"),
    ("image", '"0.5"', "thresholds.image"),
    ("margin", "0", "calibration.margin"),
    ("image_scores", '["x", 0.3]', "calibration.image_scores[0]"),
    ("references", '"a.png"', "field references"),
    ("model", "[1]", "field config.model must be a string"),
    ("prompts", DEEP, "nested too deeply"),
])
def test_a_bank_with_a_hostile_field_names_the_file_and_the_field(tmp_path, field, value, named):
    path = forged_bank(tmp_path / "hostile.fadebank", _replace_value(field, value))
    assert_refused(run(["bank", "info", path]), path, named)
    assert_refused(run(["detect", QUERIES, "--bank", path, "-q"]), path, named)


@pytest.mark.parametrize("entry", [
    {"shape": [10**30, 8]},
    {"shape": [2**62, 4, 0]},
    {"shape": [2.0, 8]},
    {"shape": ["2", 8]},
    {"shape": [[2], 8]},
    {"dtype": ["F32"]},
    {"data_offsets": [0.0, 64.0]},
    {"data_offsets": [-64, 0]},
    {"shape": json.loads(DEEP)},
])
def test_a_bank_with_a_hostile_tensor_index_is_refused(tmp_path, entry):
    path = forged_bank(tmp_path / "hostile.fadebank", edit_index=lambda index: index["text.cls"].update(entry))
    assert_refused(run(["bank", "info", path]), path)
    assert_refused(run(["detect", QUERIES, "--bank", path, "-q"]), path)


def test_a_bank_header_nested_thousands_deep_is_refused(tmp_path):
    header = ("[" * 50_000 + "]" * 50_000).encode()
    path = tmp_path / "deep.fadebank"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    assert_refused(run(["bank", "info", path]), path, "nested too deeply")


@pytest.mark.parametrize("content, named", [
    (DEEP, "nested too deeply"),
    ("[" * 50_000, "nested too deeply"),
    ('{"normal": {"prompts": [' + HUGE * 200 + ']}}', "too large"),
    ('{"normal": {"prompts": [1e999]}}', "out of range"),
    ('{"normal": {"prompts": [NaN]}}', "NaN"),
    ('{"normal": {"prompts": ["a"]}, "abnormal": {"prompts": [7]}}', "'abnormal' must be"),
    ('"just a string"', "expected a JSON object"),
])
def test_a_hostile_prompt_file_is_refused_by_every_command(tmp_path, content, named):
    path = tmp_path / "hostile.json"
    path.write_text(content)
    assert_refused(run(["prompts", "show", path]), path, named)
    assert_refused(run(["detect", QUERIES, "--prompts", path, "-q", *FAST_ARGS]), path, named)


def test_prompts_show_survives_a_meta_block_of_the_wrong_shape(tmp_path):
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({"normal": {"prompts": ["a"]}, "abnormal": {"prompts": ["b"]},
                                "meta": {"generator": "vocabulary", "options": "not a mapping"}}))
    result = run(["prompts", "show", path])
    assert result.exit_code == 0 and "regenerate: fade prompts generate" in result.output


def _config_variant(tmp_path, edit):
    data = json.loads(MODEL_CONFIG.read_text())
    edit(data)
    path = tmp_path / "variant.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("edit, named", [
    (lambda d: d.update(embed_dim="x"), "field embed_dim"),
    (lambda d: d["vision_cfg"].update(patch_size=0), "field vision_cfg.patch_size"),
    (lambda d: d["vision_cfg"].update(patch_size=1.5), "field vision_cfg.patch_size"),
    (lambda d: d["vision_cfg"].update(width=10**30), "field vision_cfg.width"),
    (lambda d: d["vision_cfg"].update(layers=-1), "field vision_cfg.layers"),
    (lambda d: d["text_cfg"].update(width="wide"), "field text_cfg.width"),
    (lambda d: d.update(text_cfg=[1, 2]), "field text_cfg must be a JSON object"),
    (lambda d: d["vision_cfg"].update(width=60000, layers=1000), "cannot be built"),
])
def test_a_model_config_with_a_hostile_field_is_not_a_usable_config(tmp_path, edit, named):
    path = _config_variant(tmp_path, edit)
    result = run(["detect", QUERIES, "--model-config", path, "--weights", WEIGHTS, "--device", "cpu", "-q"])
    assert_refused(result, f"model config {path}", named, f"{path} is not a usable open_clip model config")


def test_a_model_config_nested_deeply_is_refused(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 50_000)
    result = run(["detect", QUERIES, "--model-config", path, "--weights", WEIGHTS, "--device", "cpu", "-q"])
    assert_refused(result, path, "nested too deeply")


class _Trap:
    def __reduce__(self):
        return (open, ("pwned.txt", "w"))


def _weights(tmp_path, kind) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("these are not weights\n")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"visual.proj": _Trap()}))
    elif kind == "truncated":
        path.write_bytes(WEIGHTS.read_bytes()[:4096])
    elif kind == "list":
        import torch

        torch.save([1, 2, 3], path)
    return path


@pytest.mark.parametrize("kind, reason", [
    ("empty", "empty (0 bytes)"),
    ("text", "neither a PyTorch checkpoint"),
    ("pickle", "never unpickles"),
    ("truncated", "not a usable open_clip checkpoint"),
    ("list", "not a state dict of tensors"),
])
def test_a_weights_file_that_is_not_a_checkpoint_is_named_as_such(tmp_path, monkeypatch, kind, reason):
    monkeypatch.chdir(tmp_path)
    path = _weights(tmp_path, kind)
    result = run(["detect", QUERIES, "--model-config", MODEL_CONFIG, "--weights", path, "--device", "cpu", "-q"])
    assert_refused(result, f"weights file {path} is not a usable open_clip checkpoint", reason)
    assert not (tmp_path / "pwned.txt").exists()


@pytest.mark.parametrize("scales", ["1", "15", "240,8"])
def test_sizes_smaller_than_the_patch_are_refused_before_the_model_is_loaded(monkeypatch, scales):
    forbid_model_loading(monkeypatch)
    result = run(["detect", QUERIES, *TINY_MODEL_ARGS, "--scales", scales, "--cls-size", "240", "-q"])
    assert_refused(result, "smaller than the patch", "at least 16")


def _never_called(*args, **kwargs):
    raise AssertionError("the model must not be loaded")


def forbid_model_loading(monkeypatch):
    for module in ("fade_cli.backbone.model", "fade_cli.engine.detector"):
        monkeypatch.setattr(f"{module}.load_model", _never_called)


@pytest.mark.parametrize("options, named", [
    (["--scales", "20000", "--cls-size", "240"], "--scales 20000"),
    (["--scales", "240", "--cls-size", "20000"], "--cls-size 20000"),
    (["--scales", "4000", "--cls-size", "240", "--batch-size", "64"], "smaller --batch-size"),
])
def test_sizes_too_large_for_the_memory_are_refused_with_the_largest_that_fits(monkeypatch, options, named):
    monkeypatch.setattr("fade_cli.engine.sizes.physical_memory_bytes", lambda: 8 << 30)
    forbid_model_loading(monkeypatch)
    result = run(["detect", QUERIES, *TINY_MODEL_ARGS, *options, "-q"])
    assert_refused(result, named, "8.6 GB of memory", "the largest size that fits is about")


@pytest.mark.parametrize("command, option", [
    (["detect", QUERIES, "--out", "OUT"], "--map-size"),
    (["watch", QUERIES, "--out", "OUT", "--once", "--maps"], "--map-size"),
    (["eval", QUERIES, "--dataset", "folder"], "--eval-size"),
])
def test_a_map_size_too_large_for_the_memory_is_refused(monkeypatch, tmp_path, command, option):
    monkeypatch.setattr("fade_cli.core.memory.physical_memory_bytes", lambda: 8 << 30)
    command = [tmp_path / "out" if part == "OUT" else part for part in command]
    result = run([*command, *FAST_ARGS, option, "100000", "-q"])
    assert_refused(result, f"{option} 100000", "more than half of this machine's 8.6 GB", "or less")
    assert not (tmp_path / "out" / "results.csv").exists()


@pytest.mark.parametrize("message", [
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to allocate 1 GB",
    "DefaultCPUAllocator: can't allocate memory: you tried to allocate 123456789 bytes. Error code 12",
    "CUDA out of memory. Tried to allocate 2.00 GiB",
])
def test_allocation_failures_of_cpu_torch_are_reported_as_out_of_memory(message):
    from fade_cli.core.memory import guard_engine_failures

    def allocate():
        raise RuntimeError(message)

    with pytest.raises(FadeError, match="out of memory; try --batch-size 1") as caught:
        guard_engine_failures(allocate)
    assert caught.value.exit_code == 3


@pytest.mark.parametrize("device", ["meta", "xla", "cuda:x", "gpu"])
def test_an_unusable_device_is_a_usage_error(device):
    result = run(["detect", QUERIES, *FAST_ARGS, "--device", device, "-q"])
    assert_refused(result, f"--device '{device}' is not a device fade runs on")


@pytest.mark.parametrize("template, reason", [
    ("[normal]\n{{ 1/0 }}\n[abnormal]\nx\n", ":2: ZeroDivisionError"),
    ('{% include "other.j2" %}\n', "include, import and extends"),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}\n", "recursion too deep"),
    ("[normal]\n{{ 'a' * 100000000 }}\n", "a repetition longer than"),
    ("[normal]\n{{ 9 ** 99999999 }}\n", "an exponent of"),
    ("[normal]\n{% for i in range(99999) %}{% for j in range(99999) %}a{% endfor %}{% endfor %}\n", "longer than"),
    ("[normal]\n{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}\n", "ran longer than"),
])
def test_template_errors_and_runaway_templates_exit_2(tmp_path, monkeypatch, template, reason):
    monkeypatch.setattr("fade_cli.prompting.templates.MAX_RENDER_SECONDS", 1)
    path = tmp_path / "hostile.j2"
    path.write_text(template)
    result = run(["prompts", "generate", "bolt", "--generator", "template", "--template", path, "-q"])
    assert_refused(result, path, reason)


def test_the_render_time_bound_holds_outside_the_main_thread(monkeypatch):
    from fade_cli.prompting.templates import TemplateSource, render

    monkeypatch.setattr("fade_cli.prompting.templates.MAX_RENDER_SECONDS", 1)
    source = TemplateSource("loops", "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}")
    errors = []
    worker = threading.Thread(target=lambda: _catch(errors, lambda: render(source, {})))
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive() and "ran longer than" in str(errors[0])


def _catch(errors, action):
    try:
        action()
    except InputError as exc:
        errors.append(exc)


@pytest.mark.parametrize("damage", ["nan", "shape", "bytes"])
@pytest.mark.slow
def test_a_damaged_text_cache_entry_is_discarded_rebuilt_and_named(damage):
    args = ["detect", QUERIES, "--format", "jsonl", "-q", *FAST_ARGS, "--cls-prompts", CLS_PROMPTS,
            "--seg-prompts", SEG_PROMPTS]
    first = run(args)
    entries = sorted(Path(os.environ["FADE_CACHE_DIR"]).glob("text-embeddings/*.npy"))
    assert entries
    for entry in entries:
        if damage == "nan":
            np.save(entry, np.full((2, 32), np.nan, np.float32))
        elif damage == "shape":
            np.save(entry, np.ones((2, 7), np.float32))
        else:
            entry.write_bytes(b"\x93NUMPY garbage")
    with pytest.warns(FadeWarning) as warned:
        second = run(args)
    messages = " ".join(str(warning.message) for warning in warned)
    assert all(f"discarded the damaged text-embedding cache entry {entry}" in messages for entry in entries)
    assert second.exit_code == first.exit_code == 0
    assert [json.loads(line)["score"] for line in second.stdout.splitlines()] == \
        [json.loads(line)["score"] for line in first.stdout.splitlines()]
    assert all(np.load(entry).shape == (2, 32) and np.isfinite(np.load(entry)).all() for entry in entries)


def test_a_fifo_and_a_device_are_named_as_what_they_are_and_never_block(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    os.symlink("/dev/zero", tmp_path / "zero.png")
    Image.new("RGB", (32, 32), (90, 90, 90)).save(tmp_path / "real.png")
    done = []
    worker = threading.Thread(target=lambda: done.append(run(["detect", tmp_path, "--format", "jsonl", "-q",
                                                              *FAST_ARGS])), daemon=True)
    worker.start()
    worker.join(timeout=300)
    assert done, "the run blocked on the FIFO"
    rows = {row["path"]: row for row in map(json.loads, done[0].stdout.splitlines())}
    assert "a FIFO (named pipe), not an image file" in rows["pipe.png"]["error"]
    assert "a character device, not an image file" in rows["zero.png"]["error"]
    assert rows["real.png"]["score"] is not None


@pytest.mark.parametrize("command, what", [
    (["prompts", "show", "FIFO"], "prompts file"),
    (["bank", "info", "FIFO"], "bank file"),
    (["detect", QUERIES, "--bank", "FIFO"], "bank file"),
    (["prompts", "generate", "bolt", "--generator", "template", "--template", "FIFO"], "--template: file"),
    (["detect", QUERIES, *TINY_MODEL_ARGS[2:], "--model-config", "FIFO"], "model config"),
])
def test_a_fifo_given_as_a_file_to_parse_is_refused_without_reading(tmp_path, command, what):
    os.mkfifo(tmp_path / "fifo")
    result = run([tmp_path / "fifo" if part == "FIFO" else part for part in command])
    assert_refused(result, f"{what} {tmp_path / 'fifo'} is a FIFO (named pipe), not a regular file")


def _float_tiff(path, values):
    Image.fromarray(np.asarray(values, dtype=np.float32), mode="F").save(path)


def test_a_float_tiff_with_nan_pixels_loads_without_numpy_warnings(tmp_path):
    values = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    values[0, :4] = np.nan
    values[1, 0] = np.inf
    _float_tiff(tmp_path / "nan.tif", values)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = load_image(tmp_path / "nan.tif")
    pixels = np.asarray(image)[:, :, 0]
    assert pixels[0, :4].tolist() == [0, 0, 0, 0]  # NaN is black
    assert pixels[1, 0] == 255 and pixels[7, 7] == 255  # +inf is the brightest finite value


def test_a_float_tiff_without_a_finite_pixel_is_an_image_error(tmp_path):
    _float_tiff(tmp_path / "void.tif", np.full((4, 4), np.nan))
    with pytest.raises(ImageError, match="without a single finite pixel"):
        load_image(tmp_path / "void.tif")


def test_the_pixel_count_is_checked_before_decoding(tmp_path, monkeypatch):
    from PIL import ImageFile

    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr("fade_cli.io.images.MAX_PIXELS", 1000)
    monkeypatch.setattr(ImageFile.ImageFile, "load", _never_called)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match=r"image too large \(100 x 100"):
            load_image(tmp_path / "big.png")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_on_a_machine_without_one_is_a_usage_error():
    result = run(["detect", QUERIES, "--model-config", MODEL_CONFIG, "--weights", WEIGHTS, "--device", "cuda", "-q"])
    assert_refused(result, "--device cuda was asked for, but torch sees no CUDA device")


@pytest.mark.parametrize("options, message", [
    (["--gem-depth", "10"], "--gem-depth 10 does not fit fade-golden, a ViT with 8 blocks: use 2 to 9"),
    (["--gem-iters", "1000000000"], "--gem-iters"),
    (["--cls-size", "99999999"], "--cls-size"),
    (["--batch-size", "1000000000000"], "use a smaller --batch-size"),
])
def test_settings_that_cannot_fit_the_model_are_refused_before_loading(monkeypatch, options, message):
    forbid_model_loading(monkeypatch)
    result = run(["detect", QUERIES, *FAST_ARGS, *options, "-q"])
    assert_refused(result, message)
