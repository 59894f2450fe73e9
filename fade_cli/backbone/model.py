"""Building the open_clip backbone: built-in architectures, custom JSON configs,
pretrained tags (their weights fetched into the cache by :mod:`fade_cli.backbone.cache`,
then loaded from that file) and local weight files.

Nothing here ever falls back to random weights: a model that cannot be loaded
raises :class:`ModelError` with a message that says how to fix it.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from fade_cli.config import EngineConfig
from fade_cli.backbone.file_hash import weights_sha256
from fade_cli.backbone.model_files import ZIP_MAGIC, check_checkpoint_file, read_model_config
from fade_cli.core.errors import InputError, ModelError
from fade_cli.backbone.cache import check_architecture, check_pretrained_tag, default_cache_dir, fetch_weights
from fade_cli.backbone.open_clip_import import enable_backends_for, open_clip_logs_dropped, open_clip_module
from fade_cli.core.naming import named

VISUAL_PREFIX = "visual."


@dataclass
class LoadedModel:
    """An open_clip CLIP model in eval mode, its tokenizer and where it came from."""

    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    device: torch.device
    identity: dict[str, Any]
    has_text_tower: bool = True
    # Vision towers with their weights cast to a lower precision, made once per precision (engine.precision).
    cast_towers: dict[str, torch.nn.Module] = field(default_factory=dict, repr=False, compare=False)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when it is available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"{named('device')} {name} was asked for, but torch sees no CUDA device on this machine.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{named('device')} mps was asked for, but torch sees no Apple GPU (MPS) on this machine.")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"unknown device {name!r}: use auto, cpu or cuda") from exc


def register_model_config(path: str) -> str:
    """Add a custom architecture (open_clip's JSON format) and return its model name (the file stem)."""
    open_clip = open_clip_module()

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
    cache_dir: Optional[str] = None  # where the memo of a weights file's hash lives (see file_hash)

    @functools.cached_property
    def identity(self) -> dict[str, Any]:
        """What the model is, for caches and bank files. A weights file is hashed here, on first use (a bank's
        identity check, a prompt cache key), and then remembered on disk for this version of the file."""
        if self.is_file:
            return {"model": self.name, "weights_sha256": weights_sha256(self.pretrained, self.cache_dir)}
        return {"model": self.name, "pretrained": self.pretrained}


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
        return ModelSource(name, checkpoint, True, config.cache_dir)
    if not config.pretrained:
        raise InputError(f"{name}: give {named('pretrained')} TAG or {named('weights')} FILE (fade never runs random "
                         "weights)")
    check_pretrained_tag(name, config.pretrained)
    return ModelSource(name, config.pretrained, False, config.cache_dir)


def load_model(config: EngineConfig, source: Optional[ModelSource] = None, text_tower: bool = True) -> LoadedModel:
    """Build the model described by ``config`` on its device, in eval mode.

    With ``text_tower=False`` only the vision tower's weights are read (the text
    tower stays an empty shell on the meta device): for runs whose prompt
    embeddings are already cached or come from a bank.
    """
    source = source or resolve_model_source(config)
    device = resolve_device(config.device)
    checkpoint = source.pretrained if source.is_file else fetch_weights(
        source.name, source.pretrained, config.cache_dir or default_cache_dir())
    model = _model_from_checkpoint(source.name, checkpoint, _tag_uses_quick_gelu(source), device, text_tower)
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=_TokenizerOnFirstUse(source.name),
        device=device,
        identity=source.identity,
        has_text_tower=text_tower,
    )


class _TokenizerOnFirstUse:
    """open_clip's tokenizer of an architecture, made when first called: making it reads its vocabulary
    (0.1 s), and runs whose prompt embeddings are cached or in a bank never tokenize."""

    def __init__(self, name: str):
        self.name = name
        self._tokenizer: Optional[Callable[[list[str]], torch.Tensor]] = None

    def __call__(self, texts: list[str]) -> torch.Tensor:
        if self._tokenizer is None:
            self._tokenizer = open_clip_module().get_tokenizer(self.name)
        return self._tokenizer(texts)


def _tag_uses_quick_gelu(source: ModelSource) -> bool:
    """Weights published with QuickGELU (the openai tags) need it in the model, whichever path loads them."""
    if source.is_file:
        return False
    return bool(open_clip_module().get_pretrained_cfg(source.name, source.pretrained).get("quick_gelu", False))


def _model_from_checkpoint(name: str, checkpoint: str, quick_gelu: bool, device: torch.device, text_tower: bool):
    """The model with the checkpoint's tensors as its weights; with ``text_tower=False`` only the vision tower's.

    The modules are built on the meta device (no memory, no random initialisation, which
    costs seconds for a ViT-B), then the tensors read from the file become the parameters
    (``assign=True``: not copied once more). Whatever is not loaded stays on the meta device,
    where using it fails loudly.
    """
    open_clip = open_clip_module()
    enable_backends_for(open_clip.get_model_config(name) or {})
    with torch.device("meta"), open_clip_logs_dropped():  # open_clip warns "no pretrained weights": they follow here
        model = open_clip.create_model(name, pretrained=None, device="meta", force_quick_gelu=quick_gelu)
    target, prefix = (model, "") if text_tower else (model.visual, VISUAL_PREFIX)
    try:
        state = _as_open_clip_state(model, _read_state_dict(checkpoint, prefix))
        _assign_weights(target, {key[len(prefix):]: value for key, value in state.items()})
    except (RuntimeError, OSError, KeyError, ValueError) as exc:
        raise ModelError(f"cannot load weights {checkpoint} into {name}: {exc}") from exc
    target.to(device)
    return model


def _read_state_dict(checkpoint: str, prefix: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors whose names start with ``prefix`` (all with ""), under open_clip's names.

    Read with ``weights_only`` (a pickle is never executed) and memory-mapped where the
    format allows, so tensors not asked for are never read. Those asked for are copied out of
    the mapping: a model must not change, or crash the process with SIGBUS, when its file is
    rewritten in place (``cp new.pt weights.pt``) while a server runs.
    """
    if checkpoint.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(checkpoint, framework="pt") as handle:
            return {key: handle.get_tensor(key).clone() for key in handle.keys() if key.startswith(prefix)}
    with open(checkpoint, "rb") as handle:
        zipped = handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC  # the legacy pickle format cannot be memory-mapped
    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=zipped)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    state = {key.removeprefix("module."): value for key, value in state.items()}
    chosen = {key: value.clone() if isinstance(value, torch.Tensor) else value
              for key, value in state.items() if key.startswith(prefix)}
    if not chosen:
        raise KeyError(f"no {prefix}* weights in the checkpoint" if prefix else "no weights in the checkpoint")
    return chosen


def _as_open_clip_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What open_clip's own ``load_checkpoint`` does to a state dict before loading it (other formats, older
    key names, a position embedding of another size), applied here to the model built on the meta device.

    A copy of that function's middle, because the function itself cannot be called: it reads the whole
    file (fade reads only the vision tower's tensors, memory-mapped) and copies them with
    ``load_state_dict`` into existing tensors (a model on the meta device needs ``assign=True``). The
    conversions it calls are open_clip's own; tests/test_startup.py checks the result against the model
    open_clip loads itself, in every format and key spelling load_checkpoint accepts.
    """
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for name in ("logit_scale", "logit_bias"):
        own = getattr(model, name, None)
        if name in state and own is not None and own.ndim != state[name].ndim:
            state[name] = state[name].reshape(own.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None and "logit_scale" in state:
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])
    state.pop("text.transformer.embeddings.position_ids", None)
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    return state


def _assign_weights(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Make ``state``'s tensors the module's own (every one needed, none extra), in the module's dtypes.

    Buffers that are not in checkpoints (the text towers' causal attention masks) are then
    the only tensors left on the meta device: they are computed here.
    """
    expected = dict(module.state_dict(keep_vars=True))
    state = {key: value.to(expected[key].dtype) if _needs_cast(value, expected.get(key)) else value
             for key, value in state.items()}
    module.load_state_dict(state, strict=True, assign=True)
    for owner in module.modules():
        for buffer_name, buffer in list(owner.named_buffers(recurse=False)):
            if buffer.is_meta:
                owner.register_buffer(buffer_name, _unloaded_buffer(owner, buffer_name, buffer), persistent=False)


def _needs_cast(value: Any, own: Optional[torch.Tensor]) -> bool:
    """fp16 weights (the openai tags) go into a float32 model as float32, as load_state_dict's copy would make them."""
    return isinstance(value, torch.Tensor) and own is not None and value.dtype != own.dtype


def _unloaded_buffer(owner: torch.nn.Module, name: str, buffer: torch.Tensor) -> torch.Tensor:
    """open_clip's only tensors that checkpoints do not hold are causal masks (-inf above the diagonal)."""
    if name != "attn_mask" or buffer.ndim != 2 or buffer.shape[0] != buffer.shape[1]:
        raise ValueError(f"{type(owner).__name__}.{name} is neither in the checkpoint nor a known causal mask")
    return torch.full(tuple(buffer.shape), float("-inf"), dtype=buffer.dtype).triu_(1)
