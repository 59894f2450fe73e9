"""The `llm` prompt generator: a local causal language model writes the sentences.

Registered like any third-party generator, through the entry point group
``fade.prompt_generators`` in setup.cfg. The work happens in
:mod:`fade_cli.prompting.llm`; transformers is imported only when it runs.
"""
from __future__ import annotations

from fade_cli.core.errors import InputError
from fade_cli.prompting.prompt_set import PromptSet
from fade_cli.prompting import GeneratorOption, PromptGenerator
from fade_cli.prompting.llm import LlmSettings, write_sentences
from fade_cli.prompting.llm_parse import SentenceFilter

_DEFAULTS = LlmSettings(model="")
_RULES = SentenceFilter(class_name="")


class LlmGenerator(PromptGenerator):
    name = "llm"
    help = """A local language model writes N descriptions of normal and of defective parts (needs fade[llm]).

    --llm-model is a local folder (e.g. a downloaded Qwen2.5-0.5B-Instruct) or a
    Hugging Face hub id already in the cache; nothing is downloaded without
    --download, and never with HF_HUB_OFFLINE=1. Sampling is seeded: the same
    model, options and machine give the same file. Answers are parsed, cleaned,
    de-duplicated and filtered by length; rounds continue until --count
    sentences per state or --max-rounds."""
    options = (
        GeneratorOption("llm_model", "Local model folder or cached hub id.", required=True, metavar="PATH_OR_ID"),
        GeneratorOption("count", "Sentences wanted per state (normal and abnormal).", type=int,
                        default=_DEFAULTS.count),
        GeneratorOption("seed", "Sampling seed.", type=int, default=_DEFAULTS.seed),
        GeneratorOption("max_rounds", "Give up after this many rounds per state.", type=int,
                        default=_DEFAULTS.max_rounds),
        GeneratorOption("max_new_tokens", "Token budget of one answer.", type=int, default=_DEFAULTS.max_new_tokens),
        GeneratorOption("temperature", "Sampling temperature.", type=float, default=_DEFAULTS.temperature),
        GeneratorOption("top_p", "Nucleus sampling mass.", type=float, default=_DEFAULTS.top_p),
        GeneratorOption("min_words", "Drop shorter sentences.", type=int, default=_RULES.min_words),
        GeneratorOption("max_words", "Drop longer sentences.", type=int, default=_RULES.max_words),
        GeneratorOption("classname", "Write class mentions as {classname}; --no-classname drops sentences that name "
                                     "the class (class-free sets, e.g. for anomaly maps).", type=bool, default=True),
        GeneratorOption("device", "auto, cpu, cuda or cuda:N.", default=_DEFAULTS.device),
        GeneratorOption("download", "Allow downloading --llm-model from the Hugging Face hub.", type=bool,
                        default=False),
    )

    def generate(self, class_name: str, *, llm_model: str, count: int, seed: int, max_rounds: int,
                 max_new_tokens: int, temperature: float, top_p: float, min_words: int, max_words: int,
                 classname: bool, device: str, download: bool) -> PromptSet:
        if not 1 <= min_words <= max_words:
            raise InputError("--min-words must be at least 1 and at most --max-words")
        settings = LlmSettings(model=llm_model, count=count, seed=seed, max_rounds=max_rounds,
                               max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, device=device,
                               download=download)
        rules = SentenceFilter(class_name=class_name, keep_classname=classname, min_words=min_words,
                               max_words=max_words)
        sentences, rounds = write_sentences(settings, rules)
        for state, found in sentences.items():
            if not found:
                raise InputError(f"the model wrote no usable {state} sentence in {rounds} rounds; try more "
                                 "--max-rounds, a larger --max-new-tokens or another --llm-model")
        return PromptSet(normal=tuple(sentences["normal"]), abnormal=tuple(sentences["abnormal"]),
                         meta={"rounds": rounds})
