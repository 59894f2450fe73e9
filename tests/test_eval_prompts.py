"""Prompt sets of `fade eval`: one per class name, from files, defaults or a generator."""
from __future__ import annotations

import json

from click.testing import CliRunner

from conftest import CLS_PROMPTS, FAST_ARGS
from fade_cli.cli import cli
from fade_cli.cli.eval_cmd import _prompt_source, eval_command
from fade_cli.cli.options import pop_engine_options
from fade_cli.evaluation.prompts import ClassPrompts
from fade_cli.prompting.prompt_set import default_prompt_sets, load_prompt_set


def options_for(*args):
    context = eval_command.make_context("eval", ["root", *args])
    return pop_engine_options(dict(context.params))


def test_sets_are_asked_for_once_per_class_name_with_defaults_filled_in():
    calls = []
    own = load_prompt_set(CLS_PROMPTS)

    def source(name):
        calls.append(name)
        return own, None

    prompts = ClassPrompts(source, loaded=None)
    assert prompts.sets("screw") == (own, default_prompt_sets()[1])
    prompts.sets("screw")
    prompts.sets("nut")
    assert calls == ["screw", "nut"]
    assert list(prompts.describe()) == ["screw", "nut"]
    assert prompts.describe()["nut"]["classification"]["sha256"] == own.digest()


def test_a_generator_writes_a_set_per_class_name():
    source = _prompt_source(options_for("--prompt-generator", "vocabulary"))
    cookie, screw = source("cookie")[0], source("screw")[0]
    assert cookie.digest() != screw.digest()


def test_prompt_files_win_and_are_read_once():
    source = _prompt_source(options_for("--prompts", str(CLS_PROMPTS), "--prompt-generator", "vocabulary"))
    assert source("cookie") == source("screw") == (load_prompt_set(CLS_PROMPTS),) * 2
    assert _prompt_source(options_for())("cookie") == (None, None)  # built-in defaults


def test_malformed_prompt_file_stops_before_the_model_is_loaded(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"normal": {"prompts": []}}))
    from test_eval_cli import EXAMPLES

    result = CliRunner().invoke(cli, ["eval", str(EXAMPLES), "--prompts", str(bad), *FAST_ARGS])
    assert result.exit_code == 2
    assert "bad.json" in result.output
