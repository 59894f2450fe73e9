"""A local causal language model as a writer of prompt sentences (optional: ``pip install fade[llm]``).

The model is asked, round after round, for short descriptions of normal and
of defective parts; answers are parsed and filtered
(:mod:`fade_cli.prompting.llm_parse`) and de-duplicated until each state has
``count`` sentences or ``max_rounds`` is reached. Each round samples with its
own seed (``seed + 2 * round + state``) inside a private RNG, so the same
model, settings and machine give the same sentences and the caller's RNG is
left untouched.

Nothing is downloaded unless asked for (``download=True``), and never when
``HF_HUB_OFFLINE`` is set: a hub id must already be in the Hugging Face cache.
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from fade_cli.core.errors import InputError, ModelError
from fade_cli.backbone.cache import OFFLINE_ENV, offline_by_environment
from fade_cli.prompting.prompt_set import STATES
from fade_cli.prompting.cleaning import duplicate_key
from fade_cli.prompting.llm_parse import SentenceFilter, parse_model_output
from fade_cli.prompting.progress import current_reporter
from fade_cli.prompting.vocabulary import load_vocabulary

INSTALL_HINT = "the llm prompt generator needs transformers: pip install 'fade[llm]' (or pip install transformers)"
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
_MAX_PER_ROUND = 20
_MAX_DEFECT_HINTS = 8


@dataclass(frozen=True)
class LlmSettings:
    model: str
    count: int = 50
    seed: int = 0
    max_rounds: int = 10
    max_new_tokens: int = 400
    temperature: float = 0.8
    top_p: float = 0.95
    device: str = "auto"
    download: bool = False

    def check(self) -> None:
        if self.count < 1 or self.max_rounds < 1 or self.max_new_tokens < 1:
            raise InputError("--count, --max-rounds and --max-new-tokens must be at least 1")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise InputError("--temperature must be above 0 and --top-p in (0, 1]")


@dataclass
class LanguageModel:
    model: Any
    tokenizer: Any
    device: str


def write_sentences(settings: LlmSettings, rules: SentenceFilter) -> tuple[dict[str, list[str]], int]:
    """``count`` sentences per state (fewer if the rounds run out, with a warning) and the rounds used."""
    settings.check()
    language_model = load_language_model(settings.model, settings.device, settings.download)
    hints = defect_hints(rules.class_name)
    collected: dict[str, dict[str, str]] = {state: {} for state in STATES}
    reporter = current_reporter()
    reporter.start(total=settings.count * len(STATES), description=f"Writing prompts with {settings.model}")
    rounds = 0
    while rounds < settings.max_rounds and any(len(found) < settings.count for found in collected.values()):
        for index, state in enumerate(STATES):
            missing = settings.count - len(collected[state])
            if missing <= 0:
                continue
            prompt = instruction(rules, state, min(missing, _MAX_PER_ROUND), hints)
            text, truncated = sample(language_model, prompt, settings, seed=settings.seed + 2 * rounds + index)
            added = _add_new(collected[state], parse_model_output(text, rules, truncated), settings.count)
            reporter.advance(added)
        rounds += 1
    for state, found in collected.items():
        if len(found) < settings.count:
            reporter.warn(f"llm: {len(found)} of {settings.count} {state} sentences after {rounds} rounds; "
                          "raise --max-rounds or lower --count")
    return {state: list(found.values()) for state, found in collected.items()}, rounds


def _add_new(found: dict[str, str], sentences: list[str], limit: int) -> int:
    added = 0
    for sentence in sentences:
        key = duplicate_key(sentence)
        if len(found) < limit and key not in found:
            found[key] = sentence
            added += 1
    return added


def defect_hints(class_name: str) -> list[str]:
    """Defect words from the vocabulary families of the part, to steer the model to industrial defects."""
    vocabulary = load_vocabulary()
    families = vocabulary.families_for(class_name)
    defects = [d for name in families for d in vocabulary.families[name].defects] or list(vocabulary.defects)
    return list(dict.fromkeys(defects))[:_MAX_DEFECT_HINTS]


def instruction(rules: SentenceFilter, state: str, count: int, hints: list[str]) -> str:
    """What the model is asked to write for one state."""
    part = rules.class_name.replace("_", " ")
    if state == "normal":
        subject = f"a flawless {part} in perfect condition, with no defect"
    else:
        subject = f"a defective {part} with one visible defect, such as {', '.join(hints)}"
    naming = "" if rules.keep_classname else f" Call it 'the object'; do not write the word '{part}'."
    return (f"Write {count} different short sentences, one per line, each describing a close-up inspection "
            f"photo of {subject}. Describe only what can be seen.{naming}")


def sample(language_model: LanguageModel, request: str, settings: LlmSettings, seed: int) -> tuple[str, bool]:
    """One sampled answer to ``request`` and whether it hit the token budget."""
    import torch

    model, tokenizer = language_model.model, language_model.tokenizer
    encoded = tokenizer(_prompt_text(tokenizer, request), return_tensors="pt").to(language_model.device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with _private_rng(language_model.device, seed), torch.inference_mode():
        output = model.generate(**encoded, do_sample=True, temperature=settings.temperature, top_p=settings.top_p,
                                max_new_tokens=settings.max_new_tokens, pad_token_id=pad_id)
    new_tokens = output[0, encoded["input_ids"].shape[1]:]
    truncated = len(new_tokens) >= settings.max_new_tokens and int(new_tokens[-1]) != tokenizer.eos_token_id
    return tokenizer.decode(new_tokens, skip_special_tokens=True), truncated


def _prompt_text(tokenizer: Any, request: str) -> str:
    """Chat models get their chat template; plain models a list to continue."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": request}], tokenize=False,
                                             add_generation_prompt=True)
    return f"{request}\n\n1."


@contextlib.contextmanager
def _private_rng(device: str, seed: int) -> Iterator[None]:
    import torch

    devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def load_language_model(reference: str, device: str = "auto", download: bool = False) -> LanguageModel:
    """A causal LM and its tokenizer from a local folder or the Hugging Face cache (a hub id).

    Raises:
        ModelError: transformers is missing, or the model is not available offline.
        InputError: a path that does not exist, or ``download`` while offline.
    """
    transformers = _transformers()
    folder = Path(reference).expanduser()
    is_folder = folder.is_dir()
    if not is_folder and (reference.startswith((".", "~", os.sep)) or not _HUB_ID.match(reference)):
        raise InputError(f"--llm-model {reference}: no such folder")
    if download and offline_by_environment(OFFLINE_ENV, "TRANSFORMERS_OFFLINE"):
        raise InputError("--download needs the network, but HF_HUB_OFFLINE is set")
    source = str(folder) if is_folder else reference
    local_only = is_folder or not download
    with _quiet_transformers(transformers):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=local_only)
            model = transformers.AutoModelForCausalLM.from_pretrained(source, local_files_only=local_only)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(_load_failure(reference, is_folder, local_only, exc)) from exc
    resolved = _device(device)
    return LanguageModel(model=model.to(resolved).eval(), tokenizer=tokenizer, device=resolved)


def _load_failure(reference: str, is_folder: bool, local_only: bool, exc: Exception) -> str:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if is_folder:
        return f"cannot load a causal language model from {reference}: {reason}"
    if local_only:
        return (f"language model '{reference}' is not a folder here and not in the Hugging Face cache; download it "
                f"on a connected machine (huggingface-cli download {reference}) and copy it over, pass a local "
                f"folder, or add --download")
    return f"cannot download language model '{reference}': {reason}"


def _device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device is available")
    return device


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise ModelError(INSTALL_HINT) from exc
    return transformers


@contextlib.contextmanager
def _quiet_transformers(transformers: Any) -> Iterator[None]:
    """No download/loading bars of transformers' own on the terminal; fade draws its own."""
    progress = transformers.utils.logging
    was_enabled = progress.is_progress_bar_enabled()
    progress.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            progress.enable_progress_bar()
