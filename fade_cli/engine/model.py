"""Building the open_clip backbone: built-in architectures, custom JSON configs,
pretrained tags (downloaded and cached by open_clip) and local weight files.

Nothing here ever falls back to random weights: a model that cannot be loaded
raises :class:`ModelError` with a message that says how to fix it.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from fade_cli.config import EngineConfig
from fade_cli.errors import InputError, ModelError

CACHE_ENV = "FADE_CACHE_DIR"


@dataclass
class LoadedModel:
    """An open_clip CLIP model in eval mode, its tokenizer and where it came from."""

    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    device: torch.device
    identity: dict[str, Any]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when it is available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"--device {name} was asked for, but torch sees no CUDA device on this machine.")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"unknown device {name!r}: use auto, cpu or cuda") from exc


def default_cache_dir() -> Optional[str]:
    """FADE_CACHE_DIR when set; otherwise None, which lets open_clip use the Hugging Face cache."""
    return os.environ.get(CACHE_ENV) or None


def describe_cache_dir(cache_dir: Optional[str]) -> str:
    if cache_dir:
        return cache_dir
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - open_clip depends on huggingface_hub
        return "~/.cache/huggingface/hub"


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def register_model_config(path: str) -> str:
    """Add a custom architecture (open_clip's JSON format) and return its model name (the file stem)."""
    import open_clip

    config_path = Path(path)
    if not config_path.is_file():
        raise InputError(f"model config not found: {path}")
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"model config {path} is not valid JSON: {exc}") from exc
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(data, dict) or key not in data]
    if missing:
        raise InputError(f"model config {path} lacks {', '.join(missing)} (open_clip's model config format)")
    if not isinstance(data["vision_cfg"], dict) or "patch_size" not in data["vision_cfg"]:
        raise InputError(f"model config {path}: vision_cfg must describe a ViT (with patch_size)")
    open_clip.add_model_config(config_path)
    return config_path.stem


def _offline_message(config: EngineConfig, cache_dir: Optional[str], reason: Exception) -> str:
    reason_text = str(reason).split(". ")[0].removeprefix(f"Failed to download weights for tag '{config.pretrained}': ")
    return (
        f"Cannot load the weights of {config.model} (pretrained '{config.pretrained}'): they are not in "
        f"the cache at {describe_cache_dir(cache_dir)} and could not be downloaded ({reason_text}). "
        f"Either run once on a machine with internet access (`fade models download {config.model} "
        f"--pretrained {config.pretrained}`) and copy that cache folder here (or point {CACHE_ENV} at it), "
        f"or pass a local checkpoint with --weights FILE."
    )


def load_model(config: EngineConfig) -> LoadedModel:
    """Build the model described by ``config`` on its device, in eval mode."""
    import open_clip

    model_name = register_model_config(config.model_config) if config.model_config else config.model
    if model_name not in open_clip.list_models():
        raise InputError(
            f"unknown model architecture {model_name!r}; see `fade models list`, or give --model-config FILE.json"
        )
    device = resolve_device(config.device)
    cache_dir = config.cache_dir or default_cache_dir()
    if config.weights:
        if not os.path.isfile(config.weights):
            raise InputError(f"weights file not found: {config.weights}")
        source, identity_source = config.weights, {"weights_sha256": file_sha256(config.weights)}
    elif config.pretrained:
        source, identity_source = config.pretrained, {"pretrained": config.pretrained}
    else:
        raise InputError(f"{model_name}: give --pretrained TAG or --weights FILE (fade never runs random weights)")

    if not config.weights and config.pretrained not in open_clip.list_pretrained_tags_by_model(model_name):
        if not os.path.isfile(config.pretrained):
            known = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
            raise InputError(f"unknown pretrained tag {config.pretrained!r} for {model_name} (known: {known})")
    try:
        model = open_clip.create_model(
            model_name, pretrained=source, device=device, cache_dir=cache_dir, require_pretrained=True
        )
    except RuntimeError as exc:
        if config.weights:
            raise ModelError(f"cannot load weights {config.weights} into {model_name}: {exc}") from exc
        raise ModelError(_offline_message(config, cache_dir, exc)) from exc
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    identity = {"model": model_name, **identity_source}
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, identity=identity)
