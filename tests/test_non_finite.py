"""Non-finite numbers never pass as OK: refused at the door (options, banks, caches, configs), an error row if a
score still comes out NaN, and every JSON file fade writes is strict JSON."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import FAST_ARGS, QUERIES, run_cli as run
from fade_cli.core import strict_json
from fade_cli.bank.bank import load_bank
from fade_cli.bank.calibration import Thresholds
from fade_cli.bank.container import BankFileError
from fade_cli.config import EngineConfig
from fade_cli.core.errors import InputError
from test_bank_format import forged_bank, synthetic_bank

NON_FINITE = ["nan", "inf", "-inf", "1e999"]


def strict_loads(text: str):
    """A strict JSON reader: NaN and Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("command, option", [
    (["detect", QUERIES], "--threshold"),
    (["detect", QUERIES], "--pixel-threshold"),
    (["detect", QUERIES], "--margin"),
    (["detect", QUERIES], "--gem-temperature"),
    (["detect", QUERIES], "--vision-multiplier"),
    (["detect", QUERIES], "--vision-weight"),
    (["watch", QUERIES, "--out", "OUT", "--once"], "--threshold"),
    (["watch", QUERIES, "--out", "OUT", "--once"], "--pixel-threshold"),
    (["watch", QUERIES, "--out", "OUT", "--once"], "--settle"),
    (["watch", QUERIES, "--out", "OUT", "--once"], "--interval"),
    (["bank", "build", QUERIES, "--out", "OUT/b.fadebank"], "--threshold"),
    (["bank", "build", QUERIES, "--out", "OUT/b.fadebank"], "--pixel-threshold"),
    (["bank", "build", QUERIES, "--out", "OUT/b.fadebank"], "--margin"),
    (["eval", "DATA", "--dataset", "folder"], "--vision-multiplier"),
    (["prompts", "generate", "bolt", "--generator", "llm", "--llm-model", "MODEL"], "--temperature"),
])
@pytest.mark.parametrize("value", NON_FINITE)
def test_every_float_option_refuses_non_finite_values_before_any_work(tmp_path, command, option, value):
    command = [str(tmp_path / "out") + str(part)[3:] if str(part).startswith("OUT") else part for part in command]
    command = [tmp_path if part in ("DATA", "MODEL") else part for part in command]
    engine_args = FAST_ARGS if command[0] != "prompts" else []
    result = run([*command, *engine_args, option, value])
    assert result.exit_code == 2, result.output
    assert option in result.output and "not a finite number" in result.output
    assert not (tmp_path / "out").exists()


def test_bank_build_with_a_nan_threshold_is_refused_before_encoding(tmp_path):
    result = run(["bank", "build", QUERIES, "--out", tmp_path / "b.fadebank", *FAST_ARGS, "--threshold", "nan"])
    assert result.exit_code == 2 and "--threshold" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "b.fadebank").exists()


@pytest.mark.parametrize("field", ["gem_temperature", "vision_multiplier", "vision_weight"])
def test_an_engine_config_with_a_non_finite_setting_is_refused(field):
    with pytest.raises(InputError, match=field):
        EngineConfig(**{field: math.nan})
    with pytest.raises(InputError, match=field):
        EngineConfig().replace(**{field: math.inf})


@pytest.mark.parametrize("replacement", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize("field", ['"image":', '"margin":', '"vision_weight":'])
def test_a_bank_with_a_non_finite_number_is_refused(tmp_path, field, replacement):
    def edit(text):
        assert field in text
        start = text.index(field) + len(field)
        end = min(i for i in (text.find(",", start), text.find("}", start)) if i >= 0)
        return text[:start] + replacement + text[end:]

    path = forged_bank(tmp_path / "nan.fadebank", edit)
    with pytest.raises(BankFileError) as caught:
        load_bank(path)
    assert str(path) in str(caught.value)
    for command in (["bank", "info", path], ["detect", QUERIES, "--bank", path, "-q"]):
        result = run(command)
        assert result.exit_code == 2 and str(path) in result.output and "Traceback" not in result.output


def test_a_bank_with_nan_embeddings_is_refused(tmp_path):
    bank = synthetic_bank()
    bank.patches_by_size[32][0, 0] = np.nan
    from fade_cli.bank.bank import save_bank

    save_bank(bank, tmp_path / "nan.fadebank")
    with pytest.raises(BankFileError, match="patches.32 holds NaN"):
        load_bank(tmp_path / "nan.fadebank")


def test_a_score_that_comes_out_nan_is_an_error_row_never_ok(tmp_config_engine, tmp_path):
    from fade_cli.io.images import discover_images
    from fade_cli.io.outputs import RunOutput
    from fade_cli.runs.runner import run_detection

    engine = tmp_config_engine
    engine.config.vision_multiplier = math.nan  # past every door: as a bug in the engine would produce
    rows = []
    output = RunOutput(tmp_path / "out")
    run_detection(engine, discover_images(QUERIES)[:2], output, Thresholds(image=0.5), on_row=rows.append)
    output.finish()
    assert rows and all(row.verdict is None and row.score is None for row in rows)
    assert all("not inspected" in row.error and "non-finite" in row.error for row in rows)
    for name in ("results.jsonl",):
        for line in (tmp_path / "out" / name).read_text().splitlines():
            strict_loads(line)


@pytest.fixture
def tmp_config_engine(tiny_config):
    from fade_cli.engine import FadeEngine

    return FadeEngine.from_config(tiny_config.replace(seg_sizes=(240,), cls_size=240))


def test_the_json_writer_refuses_non_finite_numbers():
    with pytest.raises(ValueError):
        strict_json.dumps({"score": math.nan})
    assert strict_json.dumps({"name": "café", "score": 0.5}) == '{"name": "café", "score": 0.5}'


def test_json_readers_refuse_non_finite_numbers_and_name_the_file():
    for text in ('{"a": NaN}', '{"a": Infinity}', '{"a": -Infinity}', '{"a": 1e400}'):
        with pytest.raises(InputError, match="my.json"):
            strict_json.loads(text, "my.json")

