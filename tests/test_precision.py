"""`--precision auto`: which precision runs where and why, the cast-once towers, and banks calibrated in a precision."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CLS_PROMPTS, GOLDEN, QUERIES, SEG_PROMPTS, TINY_MODEL_ARGS, run_cli as run
from fade_cli.bank.bank import load_bank
from fade_cli.engine import precision
from fade_cli.engine.precision import CpuFeatures, cpu_flags_from_cpuinfo, resolve_precision
from fade_cli.core.errors import InputError

CPU = torch.device("cpu")
AMX = CpuFeatures(frozenset({"avx512f", "amx_bf16", "amx_tile", "amx_int8"}), "/proc/cpuinfo", True)
AVX512_ONLY = CpuFeatures(frozenset({"avx512f", "avx512_vnni"}), "/proc/cpuinfo", False)
ARGS = [*TINY_MODEL_ARGS, "--scales", "240", "--cls-size", "240", "--cls-prompts", CLS_PROMPTS,
        "--seg-prompts", SEG_PROMPTS, "--class", "widget"]
REFS = GOLDEN / "images" / "refs2"

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu
"""
ARM_CPUINFO = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


@pytest.fixture
def cpu_is(monkeypatch):
    """Make this machine's CPU look like the one given, for everything that asks."""
    def pretend(features: CpuFeatures) -> None:
        monkeypatch.setattr(precision, "cpu_features", lambda: features)
    return pretend


@pytest.mark.parametrize("text, expected", [
    (X86_CPUINFO, {"fpu", "vme", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}),
    (ARM_CPUINFO, {"fp", "asimd", "bf16", "i8mm"}),
    ("processor\t: 0\nmodel name\t: something\n", set()),
])
def test_cpu_flags_are_read_from_the_first_processor(text, expected):
    assert cpu_flags_from_cpuinfo(text) == expected


@pytest.mark.parametrize("features, chosen, said", [
    (AMX, "bf16", "amx_bf16"),
    (CpuFeatures(frozenset({"avx512_bf16"}), "/proc/cpuinfo", True), "bf16", "avx512_bf16"),
    (AVX512_ONLY, "fp32", "no bf16 matrix instructions"),
    (CpuFeatures(frozenset(), "timing probe", False), "fp32", "timing probe"),
])
def test_auto_on_a_cpu_follows_its_bf16_instructions(features, chosen, said):
    choice = resolve_precision("auto", CPU, cpu=lambda: features)
    assert (choice.requested, choice.precision) == ("auto", chosen)
    assert said in choice.reason and said in choice.describe()


@pytest.mark.parametrize("supported, chosen", [(True, "bf16"), (False, "fp32")])
def test_auto_on_a_gpu_asks_torch_whether_it_supports_bf16(supported, chosen):
    choice = resolve_precision("auto", torch.device("cuda"), cuda_bf16=lambda: supported)
    assert choice.precision == chosen and "is_bf16_supported" in choice.reason


def test_an_explicit_precision_is_kept_and_an_unknown_one_refused():
    never = lambda: pytest.fail("the hardware is not asked about an explicit precision")  # noqa: E731
    assert resolve_precision("fp32", CPU, cpu=never).precision == "fp32"
    assert resolve_precision("bf16", CPU, cpu=never).describe() == "precision bf16: as asked"
    with pytest.raises(InputError, match="unknown precision 'int4'"):
        resolve_precision("int4", CPU)


def test_without_cpuinfo_a_timing_probe_decides(monkeypatch, tmp_path):
    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "missing")
    monkeypatch.setattr(precision, "_bf16_matmul_is_fast", lambda: True)
    precision.cpu_features.cache_clear()
    try:
        features = precision.cpu_features()
    finally:
        precision.cpu_features.cache_clear()
    assert (features.source, features.native_bf16) == ("timing probe", True)
    assert "faster" in features.describe()


def test_this_machines_features_are_read_once(monkeypatch):
    precision.cpu_features.cache_clear()
    reads = []
    real_read = precision.CPUINFO.__class__.read_text

    def counting_read(self, *args, **kwargs):
        reads.append(self)
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(precision.CPUINFO.__class__, "read_text", counting_read)
    try:
        first, second = precision.cpu_features(), precision.cpu_features()
    finally:
        precision.cpu_features.cache_clear()
    assert first is second and len(reads) <= 1


def test_low_precision_tower_is_cast_once_and_shares_what_stays_float32(tiny_config):
    from fade_cli.backbone.model import load_model

    loaded = load_model(tiny_config)
    visual = loaded.model.visual
    tower = precision.vision_tower(loaded.model, "bf16", loaded.cast_towers)
    assert precision.vision_tower(loaded.model, "bf16", loaded.cast_towers) is tower
    assert precision.vision_tower(loaded.model, "fp32", loaded.cast_towers) is visual
    block, original = tower.transformer.resblocks[0], visual.transformer.resblocks[0]
    assert block.attn.in_proj_weight.dtype == block.mlp.c_fc.weight.dtype == tower.conv1.weight.dtype == torch.bfloat16
    assert block.ln_1.weight is original.ln_1.weight and tower.proj is visual.proj  # shared, float32
    assert tower.positional_embedding.dtype == torch.float32
    assert original.attn.in_proj_weight.dtype == visual.conv1.weight.dtype == torch.float32  # original untouched


def _fp32_and_auto(tiny_config, cpu_is, features):
    """One query scored in fp32 and with --precision auto on a CPU with ``features``: (auto engine, fp32, auto)."""
    from fade_cli.engine.detector import FadeEngine
    from fade_cli.backbone.model import load_model

    cpu_is(features)
    loaded = load_model(tiny_config)
    image = Image.open(sorted(QUERIES.glob("*.png"))[0])
    config = tiny_config.replace(seg_sizes=(240,))
    [exact] = FadeEngine.from_config(config, loaded=loaded).detect([image])
    auto_engine = FadeEngine.from_config(config.replace(precision="auto"), loaded=loaded)
    [auto] = auto_engine.detect([image])
    return auto_engine, exact, auto


def test_auto_without_bf16_instructions_computes_exactly_fp32(tiny_config, cpu_is):
    engine, exact, auto = _fp32_and_auto(tiny_config, cpu_is, AVX512_ONLY)
    assert engine.precision.precision == "fp32"
    assert auto.score == exact.score and np.array_equal(auto.anomaly_map, exact.anomaly_map)


def test_auto_with_amx_computes_in_bf16_near_fp32(tiny_config, cpu_is):
    engine, exact, auto = _fp32_and_auto(tiny_config, cpu_is, AMX)
    assert engine.precision.precision == "bf16" and engine.encoder.matrix_dtype == torch.bfloat16
    assert auto.score != exact.score and abs(auto.score - exact.score) < 1e-2


def test_detect_verbose_says_why_and_run_json_records_it(tmp_path, cpu_is):
    cpu_is(AMX)
    out = tmp_path / "out"
    result = run(["detect", QUERIES, *ARGS, "--precision", "auto", "--verbose", "--out", out, "-q"])
    assert result.exit_code == 0, result.output
    assert "precision bf16 (--precision auto): the CPU multiplies bf16 matrices natively" in result.stderr
    assert "amx_bf16" in result.stderr
    info = json.loads((out / "run.json").read_text())
    assert info["precision"]["requested"] == "auto" and info["precision"]["precision"] == "bf16"
    assert "amx_bf16" in info["precision"]["reason"] and info["device"] == "cpu"


def test_without_verbose_nothing_is_said_and_fp32_is_the_default(tmp_path):
    out = tmp_path / "out"
    result = run(["detect", QUERIES, *ARGS, "--out", out, "-q"])
    assert result.exit_code == 0, result.output
    assert "precision" not in result.stderr
    assert json.loads((out / "run.json").read_text())["precision"] == {
        "requested": "fp32", "precision": "fp32", "reason": "as asked"}


@pytest.fixture
def bf16_bank(tmp_path, cpu_is):
    """A bank built with --precision auto on a CPU with AMX: calibrated in bf16."""
    cpu_is(AMX)
    path = tmp_path / "widget.fadebank"
    result = run(["bank", "build", REFS, "--out", path, *ARGS, "--precision", "auto", "-q", "-v"])
    assert result.exit_code == 0, result.output
    assert "computed in bf16" in result.stdout and "precision bf16 (--precision auto)" in result.stderr
    return path


def test_a_bank_records_the_precision_its_thresholds_were_calibrated_in(bf16_bank):
    bank = load_bank(bf16_bank)
    assert bank.precision == "bf16" and bank.config.precision == "auto"
    assert bank.thresholds.image_source == "calibrated"
    info = run(["bank", "info", bf16_bank])
    assert "computed in bf16 (built with --precision auto" in info.stdout


@pytest.mark.slow
def test_detecting_in_another_precision_than_the_bank_was_calibrated_in_warns(bf16_bank, cpu_is):
    same = run(["detect", QUERIES, "--bank", bf16_bank, "--device", "cpu", "-q", "--format", "jsonl"])
    assert same.exit_code in (0, 1) and "calibrated in" not in same.stderr
    cpu_is(AVX512_ONLY)  # the station lacks bf16 instructions: auto resolves to fp32 there
    other = run(["detect", QUERIES, "--bank", bf16_bank, "--device", "cpu", "-q", "--format", "jsonl"])
    assert other.exit_code in (0, 1)
    assert "warning: the image and pixel threshold(s)" in other.stderr
    assert "calibrated in bf16, but this run computes in fp32" in other.stderr
    given = run(["detect", QUERIES, "--bank", bf16_bank, "--device", "cpu", "-q", "--format", "jsonl",
                 "--threshold", "0.5", "--pixel-threshold", "0.5"])
    assert "calibrated in" not in given.stderr  # thresholds of one's own are not the bank's calibration


def _rewritten(bank_path, tmp_path, change):
    """The bank with its metadata changed by ``change`` (and a valid checksum): a bank of another fade."""
    from fade_cli.bank.container import encode_container

    bank = load_bank(bank_path)
    metadata = bank.metadata()
    change(metadata)
    path = tmp_path / "changed.fadebank"
    path.write_bytes(encode_container(metadata, bank.tensors()))
    return path


@pytest.mark.slow
def test_a_bank_without_a_recorded_precision_was_computed_in_its_config_precision(bf16_bank, tmp_path):
    def as_older_fade(metadata):
        del metadata["precision"]
        metadata["config"]["precision"] = "fp16"

    assert load_bank(_rewritten(bf16_bank, tmp_path, as_older_fade)).precision == "fp16"


@pytest.mark.slow
def test_a_bank_with_an_unknown_precision_is_refused(bf16_bank, tmp_path):
    from fade_cli.bank.container import BankFileError

    with pytest.raises(BankFileError, match="precision"):
        load_bank(_rewritten(bf16_bank, tmp_path, lambda metadata: metadata.update(precision="auto")))
