"""The llm generator: parsing fixed model outputs, and end to end with a tiny random causal LM built here.

The model is a 2-layer GPT-2 with 32 dimensions and random weights, and its
tokenizer a word-level one made from a short word list: nothing is downloaded,
and the test checks the machinery (prompting, seeded sampling, parsing,
filtering, rounds, determinism), not the quality of the sentences.
"""
from __future__ import annotations

import json
import sys

import pytest

from conftest import run_cli as run
from fade_cli.core.errors import InputError, ModelError
from fade_cli.prompting import generate_prompt_set
from fade_cli.prompting.llm import load_language_model
from fade_cli.prompting.llm_parse import SentenceFilter, candidate_sentences, parse_model_output

# A random model often falls short of --count; that warning is tested once, with a recorder.
# slow: a language model (transformers) generates the sentences
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:llm. .* rounds:UserWarning")]

WORDS = ("a the of on with near and is bottle scratch dent crack stain chip bubble surface glass edge rim clean "
         "smooth clear small large visible defect photo part shows").split()


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A folder holding a random-weight GPT-2 (2 layers, 32 dims) and a word-level tokenizer, as from_pretrained reads it."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "[EOS]": 1, ".": 2, "\n": 3}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),
        pre_tokenizers.Split(Regex(r"\n|\."), behavior="isolated"),
    ])
    wrapped = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", eos_token="[EOS]",
                                                   pad_token="[EOS]")
    config = transformers.GPT2Config(vocab_size=len(vocab), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=1, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    folder = tmp_path_factory.mktemp("tiny-lm")
    model.save_pretrained(folder)
    wrapped.save_pretrained(folder)
    return folder


def llm_options(folder, **extra):
    return {"llm_model": str(folder), "count": 3, "max_new_tokens": 48, "max_rounds": 6, "device": "cpu", **extra}


CHATTY_ANSWER = (
    "Sure! Here are 4 descriptions:\n"
    "1. A scratch across the bottle.\n"
    "2) \"A dent near the rim.\"\n"
    "- a chip on the glass edge. A bubble inside the glass!\n"
    "\n"
    "3. Two bottles with cracks side by side\n"
    "4. A crack running along the"
)


@pytest.mark.parametrize("rules, truncated, expected", [
    (SentenceFilter("bottle"), True, [
        "A scratch across the {classname}.", "A dent near the rim.", "a chip on the glass edge.",
        "A bubble inside the glass!", "Two {classname} with cracks side by side."]),
    (SentenceFilter("bottle", keep_classname=False), True, [
        "A dent near the rim.", "a chip on the glass edge.", "A bubble inside the glass!"]),
    (SentenceFilter("bottle", min_words=6), True, ["a chip on the glass edge.", "Two {classname} with cracks side by side."]),
    (SentenceFilter("bottle", max_words=5), False, [
        "A scratch across the {classname}.", "A dent near the rim.", "A bubble inside the glass!",
        "A crack running along the."]),
    (SentenceFilter("bottle"), False, [
        "A scratch across the {classname}.", "A dent near the rim.", "a chip on the glass edge.",
        "A bubble inside the glass!", "Two {classname} with cracks side by side.", "A crack running along the."]),
])
def test_parse_fixed_model_output(rules, truncated, expected):
    assert parse_model_output(CHATTY_ANSWER, rules, truncated=truncated) == expected


def test_multi_word_class_names_become_the_placeholder():
    rules = SentenceFilter("metal_nut")
    assert parse_model_output("a Metal Nut with rust on the thread\n", rules) == ["a {classname} with rust on the thread."]
    assert candidate_sentences("1. Here is one:\n2. ***\n3. 'a crack.'") == ["***", "a crack."]


def test_same_seed_same_bytes_other_seed_other_sentences(tiny_lm):
    first = generate_prompt_set("llm", "bottle", llm_options(tiny_lm, seed=7))
    again = generate_prompt_set("llm", "bottle", llm_options(tiny_lm, seed=7))
    other = generate_prompt_set("llm", "bottle", llm_options(tiny_lm, seed=8))
    assert first.to_json() == again.to_json()
    assert (first.normal, first.abnormal) != (other.normal, other.abnormal)
    assert first.meta["generator"] == "llm" and first.meta["options"]["seed"] == 7


def test_output_is_parsed_cleaned_and_filtered(tiny_lm):
    prompt_set = generate_prompt_set("llm", "bottle", llm_options(tiny_lm, count=4, min_words=3, max_words=12))
    from fade_cli.prompting.cleaning import duplicate_key

    for sentences in (prompt_set.normal, prompt_set.abnormal):
        assert 1 <= len(sentences) <= 4
        assert len({duplicate_key(s) for s in sentences}) == len(sentences)
        for sentence in sentences:
            assert 3 <= len(sentence.split()) <= 12 and sentence[-1] in ".!?"
            assert "bottle" not in sentence.lower() and "[" not in sentence


def test_no_classname_drops_every_mention(tiny_lm):
    prompt_set = generate_prompt_set("llm", "bottle", llm_options(tiny_lm, classname=False, count=4, max_rounds=3))
    for sentence in prompt_set.normal + prompt_set.abnormal:
        assert "{classname}" not in sentence and "bottle" not in sentence.lower()


def test_rounds_run_out_with_a_warning_and_progress_is_reported(tiny_lm):
    from fade_cli.prompting import reporting_to

    class Recorder:
        def __init__(self):
            self.total, self.done, self.warnings = None, 0, []

        def start(self, total, description):
            self.total = total

        def advance(self, steps=1):
            self.done += steps

        def warn(self, message):
            self.warnings.append(message)

    recorder = Recorder()
    with reporting_to(recorder):
        prompt_set = generate_prompt_set("llm", "bottle", llm_options(tiny_lm, count=40, max_rounds=1))
    assert recorder.total == 80
    assert recorder.done == len(prompt_set.normal) + len(prompt_set.abnormal) < 80
    assert any("of 40" in warning and "1 rounds" in warning for warning in recorder.warnings)
    assert prompt_set.meta["rounds"] == 1


def test_cli_writes_the_same_file_twice(tiny_lm, tmp_path):
    outputs = []
    for name in ("a.json", "b.json"):
        result = run(["prompts", "generate", "bottle", "--generator", "llm", "--llm-model", str(tiny_lm), "--count",
                      "3", "--max-new-tokens", "48", "--device", "cpu", "--out", str(tmp_path / name), "-q"])
        assert result.exit_code == 0, result.output
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]
    assert json.loads(outputs[0])["meta"]["options"]["count"] == 3


def test_cli_warns_when_the_rounds_run_out(tiny_lm):
    result = run(["prompts", "generate", "bottle", "--generator", "llm", "--llm-model", str(tiny_lm), "--count", "30",
                  "--max-rounds", "1", "--max-new-tokens", "32", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "warning: llm:" in result.stderr and "of 30 normal sentences after 1 rounds" in result.stderr


def test_without_transformers_the_error_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ModelError, match=r"pip install 'fade\[llm\]'"):
        load_language_model(str(tmp_path))
    result = run(["prompts", "generate", "pcb", "--generator", "llm", "--llm-model", str(tmp_path)])
    assert result.exit_code == 3 and "fade[llm]" in result.output


def test_never_downloads_when_offline(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(ModelError, match="not in the Hugging Face cache"):
        load_language_model("someone/model-that-is-not-cached")
    with pytest.raises(InputError, match="HF_HUB_OFFLINE"):
        load_language_model("someone/model-that-is-not-cached", download=True)
    with pytest.raises(InputError, match="no such folder"):
        load_language_model(str(tmp_path / "missing") + "/")
    with pytest.raises(ModelError, match="cannot load a causal language model"):
        load_language_model(str(tmp_path))


def test_model_is_required():
    result = run(["prompts", "generate", "pcb", "--generator", "llm"])
    assert result.exit_code == 2 and "Missing option '--llm-model'" in result.output
    with pytest.raises(InputError, match="'llm' needs the option --llm-model"):
        generate_prompt_set("llm", "pcb")


def test_the_llm_generator_runs_after_open_clip_was_imported_without_transformers(tiny_lm):
    """fade imports open_clip with transformers hidden (fade_cli.backbone.open_clip_import); the hiding ends with that
    import, so the generator imports transformers as usual in the same process."""
    import subprocess

    code = (
        "import sys\n"
        "from fade_cli.backbone.open_clip_import import open_clip_module\n"
        "assert open_clip_module().hf_model.transformers is None and 'transformers' not in sys.modules\n"
        "from fade_cli.prompting import generate_prompt_set\n"
        f"prompt_set = generate_prompt_set('llm', 'bottle', {llm_options(tiny_lm, seed=7)!r})\n"
        "assert prompt_set.normal and prompt_set.abnormal and 'transformers' in sys.modules\n"
        "print(prompt_set.to_json())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == generate_prompt_set("llm", "bottle", llm_options(tiny_lm, seed=7)).to_json().strip()
