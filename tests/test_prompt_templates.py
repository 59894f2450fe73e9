"""The `template` generator: user Jinja2 templates over the vocabulary, strict variables, clear errors."""
from __future__ import annotations

import pytest

from fade_cli.core.errors import InputError
from fade_cli.prompting import generate_prompt_set

WELD_TEMPLATE = """\
{# a user template: sections, vocabulary variables, a --var #}
[normal]
a {{ process }} weld seam on the {classname}, even and closed.
{% for state in normal_states[:2] %}
{{ framings[0] | compose(state) }}
{% endfor %}
[abnormal]
{% for defect in defects %}
a {{ process }} weld seam on the {classname} with {{ defect }}.
{% endfor %}
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_user_template_with_vocabulary_and_variables(tmp_path):
    template = write(tmp_path, "weld.j2", WELD_TEMPLATE)
    prompt_set = generate_prompt_set("template", "weld", {"template": [template], "var": ["process=laser"]})
    assert prompt_set.normal == ("a laser weld seam on the {classname}, even and closed.",
                                 "a photo of the {classname}.", "a photo of the flawless {classname}.")
    assert "a laser weld seam on the {classname} with weld spatter." in prompt_set.abnormal  # metal, from "weld"
    assert "a laser weld seam on the {classname} with a crack." in prompt_set.abnormal
    assert prompt_set.meta["families"] == ["metal"]
    assert prompt_set.meta["options"]["var"] == ["process=laser"]
    assert prompt_set.meta["templates"][0]["name"] == str(template)


def test_several_templates_are_concatenated_and_cleaned(tmp_path):
    first = write(tmp_path, "a.j2", "[normal]\n  a  good   {classname}.\n\n[abnormal]\na bad {classname}.\n")
    second = write(tmp_path, "b.j2", "[abnormal]\nA bad {classname}.\na torn {classname}.\n[normal]\nfine.\n")
    prompt_set = generate_prompt_set("template", "sock", {"template": [first, second]})
    assert prompt_set.normal == ("a good {classname}.", "fine.")
    assert prompt_set.abnormal == ("a bad {classname}.", "a torn {classname}.")


def test_without_template_it_matches_the_vocabulary_generator():
    from_template = generate_prompt_set("template", "pcb", {"augment": True})
    from_vocabulary = generate_prompt_set("vocabulary", "pcb", {"augment": True})
    assert (from_template.normal, from_template.abnormal) == (from_vocabulary.normal, from_vocabulary.abnormal)


@pytest.mark.parametrize("text, options, message", [
    ("[normal]\n{{ colour }} part\n[abnormal]\nbad\n", {}, "'colour' is undefined"),
    ("[normal]\n{% for x in framings %}\n[abnormal]\nbad\n", {}, r"t\.j2:\d+: .*"),
    ("a stray line\n[normal]\nok\n[abnormal]\nbad\n", {}, "outside a \\[normal\\] or \\[abnormal\\] section"),
    ("[normal]\nok\n", {}, r"no line in a \[abnormal\] section"),
    ("[normal]\nok\n[abnormal]\nbad\n", {"var": ["defects=x"]}, "already a vocabulary variable"),
    ("[normal]\nok\n[abnormal]\nbad\n", {"var": ["no equals sign"]}, "expected key=value"),
    ("[normal]\n{{ ''.__class__.__mro__ }}\n[abnormal]\nbad\n", {}, "unsafe"),
])
def test_template_errors_are_one_clear_line(tmp_path, text, options, message):
    template = write(tmp_path, "t.j2", text)
    with pytest.raises(InputError, match=message):
        generate_prompt_set("template", "part", {"template": [template], **options})


def test_missing_template_file(tmp_path):
    with pytest.raises(InputError, match="--template: file not found"):
        generate_prompt_set("template", "part", {"template": [tmp_path / "nope.j2"]})
