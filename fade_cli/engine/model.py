"""Building the open_clip backbone: built-in architectures, custom JSON configs,
pretrained tags (their weights fetched into the cache by :mod:`fade_cli.model_cache`,
then loaded from that file) and local weight files.

Nothing here ever falls back to random weights: a model that cannot be loaded
raises :class:`ModelError` with a message that says how to fix it.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from fade_cli.config import EngineConfig
from fade_cli.engine.model_files import check_checkpoint_file, read_model_config
from fade_cli.errors import InputError, ModelError
from fade_cli.model_cache import check_architecture, check_pretrained_tag, default_cache_dir, fetch_weights



@dataclass
class LoadedModel:
    """An open_clip CLIP model in eval mode, its tokenizer and where it came from."""

    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    device: torch.device
    identity: dict[str, Any]
    has_text_tower: bool = True


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when it is available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name} was asked for, but torch sees no CUDA device on this machine.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise InputError("--device mps was asked for, but torch sees no Apple GPU (MPS) on this machine.")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"unknown device {name!r}: use auto, cpu or cuda") from exc


def file_sha256(path: str) -> str:
    """The file's SHA-256, read once per version of the file in this process.

    A run checks a weights file against a bank and then loads it: the second
    call must not read 800 MB again. The key holds the inode and the
    nanosecond mtime as well as the size, so a replaced or rewritten file is read anew.
    """
    stat = os.stat(path)
    return _sha256_of_version(os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of_version(path: str, inode: int, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def register_model_config(path: str) -> str:
    """Add a custom architecture (open_clip's JSON format) and return its model name (the file stem)."""
    import open_clip

    config_path = Path(path)
    read_model_config(config_path)
    open_clip.add_model_config(config_path)
    return config_path.stem


@dataclass(frozen=True)
class ModelSource:
    """Which architecture and which weights: known before anything is loaded."""

    name: str
    pretrained: str  # a tag, or a checkpoint file path
    is_file: bool
    identity: dict[str, Any]


def resolve_model_source(config: EngineConfig) -> ModelSource:
    """Validate the model options and say what will be loaded (identity for caches and bank files)."""
    name = register_model_config(config.model_config) if config.model_config else config.model
    check_architecture(name)
    if config.weights and not os.path.isfile(config.weights):
        raise InputError(f"weights file not found: {config.weights}")
    # open_clip's `pretrained` may itself be a file path; --weights wins over it.
    checkpoint = config.weights or (config.pretrained if config.pretrained and os.path.isfile(config.pretrained) else None)
    if checkpoint:
        check_checkpoint_file(checkpoint)
        return ModelSource(name, checkpoint, True, {"model": name, "weights_sha256": file_sha256(checkpoint)})
    if not config.pretrained:
        raise InputError(f"{name}: give --pretrained TAG or --weights FILE (fade never runs random weights)")
    check_pretrained_tag(name, config.pretrained)
    return ModelSource(name, config.pretrained, False, {"model": name, "pretrained": config.pretrained})


def load_model(config: EngineConfig, source: Optional[ModelSource] = None, text_tower: bool = True) -> LoadedModel:
    """Build the model described by ``config`` on its device, in eval mode.

    With ``text_tower=False`` only the vision tower's weights are read (the text
    tower stays an empty shell on the meta device): for runs whose prompt
    embeddings are already cached.
    """
    import open_clip

    source = source or resolve_model_source(config)
    device = resolve_device(config.device)
    checkpoint = source.pretrained if source.is_file else fetch_weights(
        source.name, source.pretrained, config.cache_dir or default_cache_dir())
    quick_gelu = _tag_uses_quick_gelu(source)
    model = None
    if not text_tower:
        model = _vision_tower_only(source.name, checkpoint, quick_gelu, device)
    if model is None:
        model = _full_model(source.name, checkpoint, quick_gelu, device)
        text_tower = True
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=open_clip.get_tokenizer(source.name),
        device=device,
        identity=source.identity,
        has_text_tower=text_tower,
    )


def _tag_uses_quick_gelu(source: ModelSource) -> bool:
    """Weights published with QuickGELU (the openai tags) need it in the model, whichever path loads them."""
    from open_clip import get_pretrained_cfg

    if source.is_file:
        return False
    return bool(get_pretrained_cfg(source.name, source.pretrained).get("quick_gelu", False))


def _full_model(name: str, checkpoint: str, quick_gelu: bool, device: torch.device):
    import open_clip

    try:
        return open_clip.create_model(
            name, pretrained=checkpoint, device=device, force_quick_gelu=quick_gelu, require_pretrained=True
        )
    except RuntimeError as exc:
        raise ModelError(f"cannot load weights {checkpoint} into {name}: {exc}") from exc


def _vision_tower_only(name: str, checkpoint: str, quick_gelu: bool, device: torch.device):
    """The CLIP model with only its vision weights loaded, or None where the checkpoint is in
    a form this fast path does not know (the caller then loads the full model)."""
    import open_clip

    try:
        visual_state = _visual_state_dict(checkpoint)
        with torch.device("meta"), _no_warnings():  # open_clip warns "no pretrained weights": they follow here
            model = open_clip.create_model(name, pretrained=None, device="meta", force_quick_gelu=quick_gelu)
        model.visual.load_state_dict(visual_state, strict=True, assign=True)
    except (RuntimeError, OSError, KeyError, ValueError):
        return None
    model.visual.to(device)
    return model


@contextlib.contextmanager
def _no_warnings() -> Iterator[None]:
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _visual_state_dict(checkpoint: str) -> dict[str, torch.Tensor]:
    """Read only the ``visual.*`` tensors of a checkpoint (memory-mapped, so the rest is never read)."""
    prefix = "visual."
    if checkpoint.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(checkpoint, framework="pt") as handle:
            return {k[len(prefix):]: handle.get_tensor(k) for k in handle.keys() if k.startswith(prefix)}
    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    visual = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not visual:
        raise KeyError("no visual.* weights in the checkpoint")
    return visual
