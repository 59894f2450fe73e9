"""Text side: prompt ensembles to the two mean text embeddings (FADE_SPEC section 3)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from fade_cli.core.errors import InputError
from fade_cli.prompting.prompt_set import PromptSet

TEXT_BATCH = 256
LOGIT_SCALE = 100.0


def wrap_prompts(prompts: tuple[str, ...], template: str) -> list[str]:
    """Put each sentence into the wrapper template's ``{}``."""
    if "{}" not in template:
        raise InputError(f"text template {template!r} has no '{{}}' for the prompt")
    return [template.replace("{}", p, 1) for p in prompts]


def _can_trim_padding(model: torch.nn.Module) -> bool:
    return (
        getattr(model, "text_pool_type", None) == "argmax"
        and getattr(model, "attn_mask", None) is not None
        and hasattr(model, "positional_embedding")
        and hasattr(model, "token_embedding")
    )


def _encode_trimmed(model: torch.nn.Module, tokens_bl: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` on tokens cut after the longest sentence's end token.

    CLIP's text tower is causal and pools at the end token, so the padding after
    it cannot change the result; skipping it makes prompt encoding several times
    faster (prompts are ~15 of 77 tokens). A copy of open_clip's ``CLIP.encode_text`` because that
    method always adds the full 77-position embedding and causal mask; other text towers (CustomTextCLIP,
    other pooling) go through ``encode_text`` itself (:func:`_can_trim_padding`).
    """
    length = int(tokens_bl.argmax(dim=-1).max()) + 1
    tokens_bl = tokens_bl[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens_bl).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens_bl.argmax(dim=-1)]
    projection = model.text_projection
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


@torch.no_grad()
def encode_sentences(
    model: torch.nn.Module, tokenizer: Callable, sentences: list[str], device: torch.device
) -> torch.Tensor:
    """L2-normalised text embeddings, (S, D) float32."""
    chunks = []
    for start in range(0, len(sentences), TEXT_BATCH):
        tokens = tokenizer(sentences[start : start + TEXT_BATCH]).to(device)
        features = _encode_trimmed(model, tokens) if _can_trim_padding(model) else model.encode_text(tokens)
        chunks.append(F.normalize(features.float(), dim=-1))
    return torch.cat(chunks)


def text_classifier(
    model: torch.nn.Module,
    tokenizer: Callable,
    prompts: PromptSet,
    template: str,
    device: torch.device,
) -> torch.Tensor:
    """The published "average" text model: (2, D) = [mean normal, mean abnormal], not re-normalised."""
    normal = encode_sentences(model, tokenizer, wrap_prompts(prompts.normal, template), device)
    abnormal = encode_sentences(model, tokenizer, wrap_prompts(prompts.abnormal, template), device)
    return torch.stack([normal.mean(dim=0), abnormal.mean(dim=0)])


def abnormal_probability(embeddings: torch.Tensor, classifier_2d: torch.Tensor) -> torch.Tensor:
    """p(abnormal) = softmax(100 * [e.m_normal, e.m_abnormal])[1] for (..., D) embeddings.

    One image's (B, D) embeddings are multiplied one row at a time: a (B, D) product takes
    another BLAS path than a (1, D) one and differs in the last bit, and an image's score
    must not depend on the images it shared a batch with (`fade serve` batches requests).
    """
    classifier_d2 = classifier_2d.T.to(embeddings.device, torch.float32)
    embeddings = embeddings.float()
    if embeddings.dim() == 2:
        logits = torch.cat([LOGIT_SCALE * embeddings[i : i + 1] @ classifier_d2 for i in range(len(embeddings))])
    else:
        logits = LOGIT_SCALE * embeddings @ classifier_d2
    return logits.softmax(dim=-1)[..., 1]
