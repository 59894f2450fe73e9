"""The user's own model files, checked before open_clip sees them: custom configs and local checkpoints.

Both are untrusted input. A config field of the wrong type or size (``"embed_dim": "x"``,
``"patch_size": 0``, a width whose weights would not fit in memory) and a checkpoint that
is empty, text, or a pickle of something other than tensors each give an
:class:`~fade_cli.core.errors.InputError` (exit 2) saying the file is not a usable open_clip
config or checkpoint. Checkpoints are read with ``weights_only=True``: a pickle is never
executed.
"""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any, Union

from fade_cli.core import strict_json
from fade_cli.core.errors import InputError
from fade_cli.io.files import read_text_file, require_regular_file
from fade_cli.core.memory import gigabytes, physical_memory_bytes
from fade_cli.core.validation import Fields

MAX_WIDTH = 1 << 16
MAX_LAYERS = 1024
MAX_IMAGE_SIDE = 1 << 16
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOL_MARK = 0x80


def read_model_config(path: Union[str, Path]) -> dict[str, Any]:
    """A custom architecture file (open_clip's JSON format) with every field fade relies on checked."""
    try:
        return _checked_model_config(path, f"model config {path}")
    except InputError as exc:
        raise InputError(f"{exc}; {path} is not a usable open_clip model config") from exc


def _checked_model_config(path: Union[str, Path], label: str) -> dict[str, Any]:
    data = strict_json.loads(read_text_file(path, "model config"), label)
    fields = Fields(data, label)
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in fields.data]
    if missing:
        raise InputError(f"{label} lacks {', '.join(missing)} (open_clip's model config format)")
    fields.integer("embed_dim", 1, MAX_WIDTH)
    vision = fields.object("vision_cfg")
    if "patch_size" not in vision.data:
        raise InputError(f"{label}: vision_cfg must describe a ViT (with patch_size)")
    vision.integer("patch_size", 1, 1024)
    width = vision.integer("width", 1, MAX_WIDTH, 768)
    layers = vision.integer("layers", 1, MAX_LAYERS, 12)
    vision.integer("head_width", 1, MAX_WIDTH, 64)
    vision.number("mlp_ratio", 0.125, 64.0, 4.0)
    image_size = vision.data.get("image_size", 224)
    for side in image_size if isinstance(image_size, list) else [image_size]:
        vision.check_integer("image_size", side, 1, MAX_IMAGE_SIDE)
    text = fields.object("text_cfg")
    text_width = text.integer("width", 1, MAX_WIDTH, 512)
    text_layers = text.integer("layers", 1, MAX_LAYERS, 12)
    vocabulary = text.integer("vocab_size", 1, 1 << 22, 49408)
    text.integer("context_length", 1, 1 << 16, 77)
    text.integer("heads", 1, MAX_LAYERS, 8)
    _check_weights_fit(label, 12 * (layers * width**2 + text_layers * text_width**2) + vocabulary * text_width)
    return data


def _check_weights_fit(label: str, parameters: int) -> None:
    """A transformer block holds about 12 x width^2 weights; refuse a model that cannot exist in this RAM."""
    limit = physical_memory_bytes()
    if limit is not None and 4 * parameters > limit:
        raise InputError(f"{label}: an architecture of about {parameters:,} weights ({gigabytes(4 * parameters)}) "
                         f"cannot be built in this machine's {gigabytes(limit)} of memory; check width and layers")


def check_checkpoint_file(path: Union[str, Path]) -> None:
    """Refuse a local checkpoint that open_clip could not load, naming why (never unpickling objects)."""
    status = require_regular_file(path, "weights file")
    unusable = f"weights file {path} is not a usable open_clip checkpoint"
    if status.st_size == 0:
        raise InputError(f"{unusable}: it is empty (0 bytes)")
    if str(path).endswith(".safetensors"):
        _check_safetensors(path, unusable)
        return
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head != ZIP_MAGIC and head[0] != PICKLE_PROTOCOL_MARK:
        raise InputError(f"{unusable}: it is neither a PyTorch checkpoint (torch.save) nor a .safetensors file")
    _check_state_dict(path, unusable, mmap=head == ZIP_MAGIC)


def _check_safetensors(path: Union[str, Path], unusable: str) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
    except Exception as exc:  # safetensors raises its own SafetensorError for any malformed file
        raise InputError(f"{unusable}: {exc}") from exc
    if not names:
        raise InputError(f"{unusable}: it holds no tensors")


def _check_state_dict(path: Union[str, Path], unusable: str, mmap: bool) -> None:
    """Unpickle with ``weights_only`` (tensors and containers only); memory-mapped, so no weight is read."""
    import torch

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before it refuses them
            warnings.simplefilter("ignore")
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise InputError(f"{unusable}: it pickles Python objects other than tensors, which fade never "
                         "unpickles") from exc
    except EOFError as exc:
        raise InputError(f"{unusable}: it is truncated") from exc
    except (RuntimeError, ValueError, KeyError, IndexError, TypeError, AttributeError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{unusable}: {reason}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not any(isinstance(value, torch.Tensor) for value in state.values()):
        raise InputError(f"{unusable}: it holds {type(state).__name__}, not a state dict of tensors")
