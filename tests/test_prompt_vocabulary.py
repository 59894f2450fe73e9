"""The industrial vocabulary, the `vocabulary` generator and the built-in prompt sets made from them."""
from __future__ import annotations

import json
from importlib import resources

import pytest

from fade_cli.core.errors import InputError
from fade_cli.prompting.prompt_set import default_prompt_sets
from fade_cli.prompting import generate_prompt_set
from fade_cli.prompting.defaults import default_prompt_set_builds
from fade_cli.prompting.templates import fix_articles, sized
from fade_cli.prompting.vocabulary import load_vocabulary, normalised_part_name


@pytest.mark.parametrize("class_name, families", [
    ("screw", ("metal",)),
    ("metal_nut", ("metal",)),
    ("Screws", ("metal",)),
    ("pcb3", ("electronics",)),
    ("circuit board", ("electronics",)),
    ("bottle", ("glass",)),
    ("carpet", ("textile",)),
    ("hazelnut", ("food",)),
    ("pipe_fryum", ("food",)),  # the longer phrase wins over the metal pipe
    ("cable", ("plastic", "electronics")),
    ("battery weld", ("metal",)),
    ("capsules", ("pharmaceutical",)),
    ("object", ()),
    ("widget", ()),
])
def test_class_names_pick_families(class_name, families):
    assert load_vocabulary().families_for(class_name) == families


def test_part_names_are_normalised():
    assert normalised_part_name("Metal_Nut2") == "metal nut"
    assert normalised_part_name("pipe-fryum") == "pipe fryum"


@pytest.mark.parametrize("text, expected", [
    ("a photo of a intact part.", "a photo of an intact part."),
    ("a undamaged {classname}", "an undamaged {classname}"),
    ("a uniform surface", "a uniform surface"),
    ("a {classname} with a scratch", "a {classname} with a scratch"),
    ("an hour", "an hour"),
])
def test_articles(text, expected):
    assert fix_articles(text) == expected


def test_sizes_go_inside_the_noun_phrase():
    assert sized("a scratch", "small") == "a small scratch"
    assert sized("an indentation", "large") == "a large indentation"
    assert sized("rust", "tiny") == "a tiny patch of rust"


def test_families_add_their_defects_to_the_generic_states():
    generic = generate_prompt_set("vocabulary", "widget")
    bottle = generate_prompt_set("vocabulary", "bottle")
    assert set(generic.abnormal) < set(bottle.abnormal)
    assert "a photo of the {classname} with a bubble." in bottle.abnormal
    assert "a photo of the {classname} with a bubble." not in generic.abnormal
    assert "a photo of the clear glass {classname}." in bottle.normal
    assert bottle.meta["families"] == ["glass"]
    assert all("{classname}" in sentence for sentence in bottle.normal + bottle.abnormal)


def test_family_option_overrides_the_guess():
    forced = generate_prompt_set("vocabulary", "bottle", {"family": ["metal", "wood"]})
    assert forced.meta["families"] == ["metal", "wood"]
    assert any("rust" in s for s in forced.abnormal) and any("knot hole" in s for s in forced.abnormal)
    assert not any("bubble" in s for s in forced.abnormal)
    with pytest.raises(InputError, match="--family: 'stone' is not one of"):
        generate_prompt_set("vocabulary", "bottle", {"family": ["stone"]})


def test_augmentation_adds_size_and_position_sentences():
    plain = generate_prompt_set("vocabulary", "screw")
    augmented = generate_prompt_set("vocabulary", "screw", {"augment": True})
    added = set(augmented.abnormal) - set(plain.abnormal)
    assert "a photo of the {classname} with a small burr." in added
    assert "a photo of the {classname} with rust near the edge." in added
    assert "a photo of the {classname} with a tiny patch of rust." in added
    assert augmented.normal == plain.normal


def test_local_adds_region_descriptions():
    plain = generate_prompt_set("vocabulary", "carpet")
    local = generate_prompt_set("vocabulary", "carpet", {"local": True})
    assert local.abnormal[:len(plain.abnormal)] == plain.abnormal
    assert "a loose thread on the fabric." in local.abnormal
    assert "a clean, even fabric without marks." in local.normal


def test_same_inputs_give_byte_identical_json():
    first = generate_prompt_set("vocabulary", "metal_nut", {"augment": True, "local": True}).to_json()
    second = generate_prompt_set("vocabulary", "metal_nut", {"augment": True, "local": True}).to_json()
    assert first == second
    meta = json.loads(first)["meta"]
    assert meta["generator"] == "vocabulary" and meta["class_name"] == "metal_nut"
    assert meta["options"] == {"augment": True, "family": [], "local": True}
    assert "fade_version" in meta and meta["vocabulary_version"] == load_vocabulary().version


def test_shipped_default_sets_are_the_generator_output():
    """prompts/default_*.json are regenerated with `python -m fade_cli.prompting.defaults prompts`."""
    for stem, build in default_prompt_set_builds().items():
        shipped = json.loads(resources.files("fade_cli.prompts").joinpath(f"{stem}.json").read_text("utf-8"))
        generated = build().to_json_dict()
        for data in (shipped, generated):
            data["meta"].pop("fade_version")
        assert shipped == generated, f"prompts/{stem}.json is stale: run python -m fade_cli.prompting.defaults prompts"
    cls_set, seg_set = default_prompt_sets()
    assert set(cls_set.abnormal) < set(seg_set.abnormal)
