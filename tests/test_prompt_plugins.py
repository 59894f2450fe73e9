"""Plugin discovery: entry points of an installed (temporary) package, a local plugins folder, broken plugins."""
from __future__ import annotations

import inspect
import shutil
import sys
import textwrap

import pytest

from conftest import write_sentence_files, run_cli as run
import fade_cli.plugins.example_textfile as example
from fade_cli.core.errors import FadeError, InputError
from fade_cli.prompting import PLUGINS_DIR_ENV, discover_generators, generate_prompt_set

FAKE_MODULE = '''
from fade_cli.prompting.prompt_set import PromptSet
from fade_cli.prompting import GeneratorOption, PromptGenerator


class BadReturn(PromptGenerator):
    name = "badreturn"
    help = "Returns a dict instead of a PromptSet."

    def generate(self, class_name):
        return {"normal": ["x"], "abnormal": ["y"]}


class Raises(PromptGenerator):
    name = "raises"
    help = "Fails inside generate."

    def generate(self, class_name):
        raise RuntimeError("the sensor table is missing")


class Sloppy(PromptGenerator):
    name = "sloppy"
    help = "Messy whitespace, duplicates, and no usable normal sentence unless --good."
    options = (GeneratorOption("good", "Write a normal sentence.", type=bool, default=False),)

    def generate(self, class_name, *, good):
        normal = ("  a   good {classname} .", "A good {classname}.") if good else ("   ",)
        return PromptSet(normal=normal, abnormal=("a bad\\t{classname}.", "a bad {classname}.", ""))


class Misnamed(PromptGenerator):
    name = "other-name"
    help = "Its entry point has another name."

    def generate(self, class_name):
        raise AssertionError("never called")
'''

ENTRY_POINTS = """\
[fade.prompt_generators]
textfile = fade_cli.plugins.example_textfile:TextFileGenerator
badreturn = fake_fade_plugin:BadReturn
raises = fake_fade_plugin:Raises
sloppy = fake_fade_plugin:Sloppy
misnamed = fake_fade_plugin:Misnamed
missing = fake_fade_plugin_that_does_not_exist:Generator
"""


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A package installed in a temporary site folder: its dist-info declares fade.prompt_generators entry points."""
    site = tmp_path / "site"
    dist_info = site / "fake_fade_plugin-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-fade-plugin\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(ENTRY_POINTS)
    (site / "fake_fade_plugin.py").write_text(FAKE_MODULE)
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("fake_fade_plugin", None)


@pytest.fixture
def text_files(tmp_path):
    return write_sentence_files(
        tmp_path, normal="# good parts\na clean {classname}.\n\na shiny {classname}.\n", abnormal="a rusty {classname}.\n"
    )


def test_builtin_generators_are_entry_points():
    registry = discover_generators()
    assert {"vocabulary", "template", "llm"} <= set(registry.names())
    assert "entry point fade_cli.plugins.vocabulary:VocabularyGenerator" in registry.entries["vocabulary"].source
    assert not [p for p in registry.broken if p.name in ("vocabulary", "template", "llm")]


def test_installed_plugin_is_listed_and_used(installed_plugin, text_files, tmp_path):
    registry = discover_generators()
    assert "textfile" in registry.names()
    assert "fake-fade-plugin 1.0" in registry.entries["textfile"].source
    normal, abnormal = text_files
    out = tmp_path / "screw.json"
    result = run(["prompts", "generate", "screw", "--generator", "textfile", "--normal-file", str(normal),
                  "--abnormal-file", str(abnormal), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert '"a shiny {classname}."' in out.read_text()


def test_broken_plugins_are_reported_by_name_and_the_rest_works(installed_plugin):
    registry = discover_generators()
    broken = {plugin.name: plugin.error for plugin in registry.broken}
    assert "ModuleNotFoundError" in broken["missing"]
    assert "other-name" in broken["misnamed"]
    with pytest.raises(FadeError, match="'badreturn' returned dict, not a PromptSet"):
        generate_prompt_set("badreturn", "screw", registry=registry)
    with pytest.raises(FadeError, match="'raises' failed: RuntimeError: the sensor table is missing"):
        generate_prompt_set("raises", "screw", registry=registry)
    with pytest.raises(FadeError, match="'missing' is broken"):
        generate_prompt_set("missing", "screw", registry=registry)
    assert generate_prompt_set("vocabulary", "screw", registry=registry).meta["generator"] == "vocabulary"

    listing = run(["prompts", "generators"])
    assert listing.exit_code == 0
    assert "Broken plugins" in listing.output and "missing (entry point" in listing.output
    failed = run(["prompts", "generate", "screw", "--generator", "raises"])
    assert failed.exit_code == 3 and "Error: prompt generator 'raises' failed" in failed.output


def test_output_is_cleaned_and_an_empty_state_is_an_error(installed_plugin):
    with pytest.raises(InputError, match="'sloppy' produced no normal prompt"):
        generate_prompt_set("sloppy", "screw")
    prompt_set = generate_prompt_set("sloppy", "screw", {"good": True})
    assert prompt_set.normal == ("a good {classname}.",)
    assert prompt_set.abnormal == ("a bad {classname}.",)


def test_options_are_checked():
    with pytest.raises(InputError, match="has no option --colour"):
        generate_prompt_set("vocabulary", "screw", {"colour": "red"})
    with pytest.raises(InputError, match="--count: 'many' is not a valid int"):
        generate_prompt_set("llm", "screw", {"llm_model": "x", "count": "many"})
    with pytest.raises(InputError, match="class name is empty"):
        generate_prompt_set("vocabulary", "  ")


BROKEN_FILES = {
    "syntax_error.py": "def oops(:\n",
    "no_list.py": "X = 1\n",
    "reserved_option.py": textwrap.dedent("""
        from fade_cli.prompting import GeneratorOption, PromptGenerator
        class Reserved(PromptGenerator):
            name = "reserved"
            help = "Takes --out, which fade uses."
            options = (GeneratorOption("out", "Clashes."),)
            def generate(self, class_name, *, out):
                raise AssertionError
        PROMPT_GENERATORS = [Reserved]
    """),
    "duplicate.py": textwrap.dedent("""
        class Vocabulary:
            name = "vocabulary"
            help = "Same name as the built-in one."
            options = ()
            def generate(self, class_name):
                raise AssertionError
        PROMPT_GENERATORS = [Vocabulary]
    """),
}


@pytest.fixture
def plugins_folder(tmp_path):
    """The example plugin copied into a folder, next to broken plugin files."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    shutil.copy(inspect.getsourcefile(example), folder / "textfile_plugin.py")
    for name, text in BROKEN_FILES.items():
        (folder / name).write_text(text)
    (folder / "_private_helper.py").write_text("raise RuntimeError('never imported')\n")
    return folder


def test_plugins_folder_from_option_and_environment(plugins_folder, text_files, monkeypatch):
    registry = discover_generators(plugins_folder)
    assert "textfile" in registry.names()
    assert registry.entries["vocabulary"].source.startswith("entry point")
    broken = {plugin.name: plugin.error for plugin in registry.broken}
    assert set(broken) == {"syntax_error", "no_list", "reserved", "vocabulary"}
    assert "SyntaxError" in broken["syntax_error"] and "PROMPT_GENERATORS" in broken["no_list"]
    assert "reserved by fade" in broken["reserved"] and "already used" in broken["vocabulary"]

    normal, abnormal = text_files
    args = ["prompts", "generate", "bolt", "--generator", "textfile", "--normal-file", str(normal), "--abnormal-file",
            str(abnormal), "-q"]
    assert run(args + ["--plugins-dir", str(plugins_folder)]).exit_code == 0
    assert run(args).exit_code == 2  # not found without the folder
    from_env = run(args, env={PLUGINS_DIR_ENV: str(plugins_folder)})
    assert from_env.exit_code == 0 and '"a rusty {classname}."' in from_env.output
    listing = run(["prompts", "generators", "--plugins-dir", str(plugins_folder)])
    assert "textfile" in listing.output and "syntax_error (plugins folder file" in listing.output


def test_missing_plugins_folder_is_an_input_error(tmp_path, monkeypatch):
    monkeypatch.setenv(PLUGINS_DIR_ENV, str(tmp_path / "nope"))
    with pytest.raises(InputError, match="plugins folder .*nope does not exist"):
        discover_generators()
