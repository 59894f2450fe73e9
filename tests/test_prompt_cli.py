"""`fade prompts generate | generators | show`, and generated sets through `fade detect`."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from conftest import FAST_ARGS, QUERIES, run_cli as run
from fade_cli.cli.options import prompt_sets_from_options


def test_generate_to_stdout_and_to_a_file(tmp_path):
    to_stdout = run(["prompts", "generate", "bottle"])
    assert to_stdout.exit_code == 0
    data = json.loads(to_stdout.stdout)
    assert data["meta"]["generator"] == "vocabulary" and data["meta"]["families"] == ["glass"]
    assert "Wrote 156 normal and 240 abnormal prompts" in to_stdout.stderr

    out = tmp_path / "bottle.json"
    assert run(["prompts", "generate", "bottle", "--out", str(out), "-q"]).exit_code == 0
    assert out.read_text(encoding="utf-8") == to_stdout.stdout
    refused = run(["prompts", "generate", "screw", "--out", str(out)])
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    assert run(["prompts", "generate", "screw", "--out", str(out), "--overwrite", "-q"]).exit_code == 0
    assert json.loads(out.read_text())["meta"]["class_name"] == "screw"
    assert not [p for p in tmp_path.iterdir() if p.name != "bottle.json"]  # no temporary file left


def test_help_shows_the_chosen_generators_options():
    default = run(["prompts", "generate", "--help"])
    assert "--augment / --no-augment" in default.output and "Generator 'vocabulary'" in default.output
    template = run(["prompts", "generate", "--generator", "template", "--help"])
    assert "--var KEY=VALUE" in template.output and "--llm-model PATH_OR_ID" not in template.output
    unknown_option = run(["prompts", "generate", "bottle", "--var", "x=1"])
    assert unknown_option.exit_code == 2 and "add --generator template" in unknown_option.output


def test_generators_lists_each_with_help_and_options():
    result = run(["prompts", "generators"])
    assert result.exit_code == 0
    for text in ("vocabulary  (default)", "--family FAMILY ...", "template", "--template FILE ...", "llm",
                 "--llm-model PATH_OR_ID", "from: entry point fade_cli.plugins.llm:LlmGenerator"):
        assert text in result.output


def test_show_reports_counts_duplicates_and_how_to_regenerate(tmp_path):
    out = tmp_path / "nut.json"
    run(["prompts", "generate", "metal_nut", "--augment", "--out", str(out), "-q"])
    shown = run(["prompts", "show", str(out), "--samples", "2"])
    assert shown.exit_code == 0
    assert "156 normal, 400 abnormal prompts" in shown.output and "0 duplicate(s)" in shown.output
    assert "abnormal (first 2 of 400):\n  a photo of the damaged {classname}." in shown.output
    command = next(line for line in shown.output.splitlines() if line.startswith("regenerate: "))
    again = tmp_path / "again.json"
    words = shlex.split(command.removeprefix("regenerate: "))[1:] + ["--out", str(again), "-q"]
    assert run(words).exit_code == 0
    assert again.read_bytes() == out.read_bytes()


def test_show_a_hand_written_file_with_duplicates(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"normal": {"prompts": ["a good part.", "A  good part.", "fine {classname}."]},
                                "abnormal": {"prompts": ["bad."]}}))
    shown = run(["prompts", "show", str(path)])
    assert shown.exit_code == 0
    assert "normal: 1 with {classname}, 1 duplicate(s)\n    2x a good part." in shown.output
    assert "made by: unknown" in shown.output
    path.write_text('{"normal": {"prompts": []}, "abnormal": {"prompts": ["x"]}}')
    assert run(["prompts", "show", str(path)]).exit_code == 2


def test_generating_does_not_import_torch():
    code = ("import sys; from click.testing import CliRunner; from fade_cli.cli import cli; "
            "r = CliRunner().invoke(cli, ['prompts', 'generate', 'bottle', '-q']); "
            "assert r.exit_code == 0, r.output; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_prompt_files_win_over_the_generator(tmp_path):
    path = tmp_path / "cls.json"
    path.write_text(json.dumps({"normal": {"prompts": ["ok."]}, "abnormal": {"prompts": ["ng."]}}))
    options = {"prompts": None, "cls_prompts": str(path), "seg_prompts": None, "prompt_generator": "vocabulary",
               "class_name": "bottle"}
    cls_set, seg_set = prompt_sets_from_options(options)
    assert cls_set.normal == ("ok.",) and "generator" not in cls_set.meta
    assert seg_set.meta["generator"] == "vocabulary" and seg_set.meta["families"] == ["glass"]
    assert prompt_sets_from_options({**options, "prompt_generator": None})[1] is None


def _scores(args):
    result = run(["detect", str(QUERIES / "cracked_a.png"), "--class", "bottle", "--format", "jsonl", "-q",
                  *FAST_ARGS, *args])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout.splitlines()[0])
    return row["score"], row["language_score"], row["vision_score"]


@pytest.mark.slow
def test_generated_sets_run_through_detect(tmp_path):
    out = tmp_path / "bottle.json"
    assert run(["prompts", "generate", "bottle", "--out", str(out), "-q"]).exit_code == 0
    from_file = _scores(["--prompts", str(out)])
    on_the_fly = _scores(["--prompt-generator", "vocabulary"])
    assert on_the_fly == pytest.approx(from_file, abs=1e-6)
    assert _scores([]) != pytest.approx(from_file, abs=1e-6)  # the built-in sets say other things
    bad = run(["detect", str(QUERIES / "cracked_a.png"), "--prompt-generator", "nope", "-q", *FAST_ARGS])
    assert bad.exit_code == 2 and "unknown prompt generator 'nope'" in bad.output
