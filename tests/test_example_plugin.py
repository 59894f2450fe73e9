"""Test of the example plugin (plugins/example_textfile.py): a template for testing your own generator.

Two levels: the generator class called directly, then the whole path a user
takes, with the plugin found in a plugins folder and run by `fade prompts generate`.
"""
from __future__ import annotations

import inspect
import json
import shutil

import pytest
from click.testing import CliRunner

from conftest import write_sentence_files
import fade_cli.plugins.example_textfile as example
from fade_cli.cli import cli
from fade_cli.core.errors import InputError
from fade_cli.prompting import run_generator
from fade_cli.prompting.interface import interface_problems


@pytest.fixture
def sentence_files(tmp_path):
    return write_sentence_files(
        tmp_path,
        normal="# one sentence per line\na clean hex bolt.\n\na hex bolt with an even thread.\n",
        abnormal="a hex bolt with a   damaged thread.\na hex bolt with a damaged thread.\n",
    )


def test_it_follows_the_interface():
    assert interface_problems(example.TextFileGenerator()) == []
    assert example.PROMPT_GENERATORS == [example.TextFileGenerator]


def test_generate_reads_the_files(sentence_files):
    normal, abnormal = sentence_files
    prompt_set = example.TextFileGenerator().generate("hex_bolt", normal_file=normal, abnormal_file=abnormal,
                                                      name_to_placeholder=True)
    assert prompt_set.normal == ("a clean {classname}.", "a {classname} with an even thread.")
    assert prompt_set.meta == {"files": ["ok.txt", "ng.txt"]}


def test_fade_cleans_and_stamps_what_it_returns(sentence_files):
    normal, abnormal = sentence_files
    prompt_set = run_generator(example.TextFileGenerator(), "hex_bolt",
                               {"normal_file": normal, "abnormal_file": abnormal})
    assert prompt_set.abnormal == ("a hex bolt with a damaged thread.",)  # whitespace and duplicate cleaned
    assert prompt_set.meta["generator"] == "textfile"
    assert prompt_set.meta["options"]["name_to_placeholder"] is False


def test_a_file_without_sentences_is_an_error(sentence_files, tmp_path):
    normal, _ = sentence_files
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n")
    with pytest.raises(InputError, match="empty.txt has no sentence"):
        run_generator(example.TextFileGenerator(), "bolt", {"normal_file": normal, "abnormal_file": empty})


def test_found_in_a_plugins_folder_and_run_from_the_command_line(sentence_files, tmp_path):
    folder = tmp_path / "plugins"
    folder.mkdir()
    shutil.copy(inspect.getsourcefile(example), folder / "textfile.py")
    normal, abnormal = sentence_files
    result = CliRunner().invoke(cli, ["prompts", "generate", "hex_bolt", "--plugins-dir", str(folder), "--generator",
                                      "textfile", "--normal-file", str(normal), "--abnormal-file", str(abnormal),
                                      "--name-to-placeholder", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["abnormal"]["prompts"] == ["a {classname} with a damaged thread."]
