"""Input sizes checked against the model and the device's memory before anything is loaded.

A size smaller than the model's patch gives no patch at all, and a size whose
activations do not fit in memory ends in an OOM kill (exit 137) or an allocator
failure minutes later; both are usage errors (exit 2) with a message instead.

The memory estimate of one image at size S, with P the patch, W the vision width
and N = (S / P)^2 tokens, is what the encoder holds at once (both token streams of
a block, its MLP, the query/key/value and their copies; measured at about 60 float
activations of N x W on the golden model, rounded up to ``ACTIVATION_COPIES``), plus
the query-patch similarity blocks of the memory bank search (``QUERY_CHUNK`` x N).
Attention itself goes through ``scaled_dot_product_attention`` and never holds
N x N. It errs on the large side: it refuses sizes that would certainly fail,
not sizes that would be slow.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from fade_cli.config import EngineConfig
from fade_cli.engine.memory_bank import QUERY_CHUNK
from fade_cli.core.errors import InputError
from fade_cli.core.memory import gigabytes, largest_fitting, physical_memory_bytes
from fade_cli.backbone.open_clip_import import open_clip_module
from fade_cli.core.naming import named

ACTIVATION_COPIES = 64
FLOAT_BYTES = 4


@dataclass(frozen=True)
class ModelGeometry:
    """What sizes a ViT accepts and what they cost (patch side, token width), and its embedding size."""

    patch_size: int
    width: int
    embed_dim: Optional[int]
    layers: Optional[int] = None


def model_geometry(model_name: str) -> Optional[ModelGeometry]:
    """The patch size, width and embedding size of an open_clip architecture, from its config (no weights read)."""
    open_clip = open_clip_module()

    config = open_clip.get_model_config(model_name) or {}
    vision = config.get("vision_cfg") or {}
    patch, width, embed_dim = vision.get("patch_size"), vision.get("width"), config.get("embed_dim")
    if isinstance(patch, (list, tuple)):
        patch = max(patch)
    if not isinstance(patch, int) or not isinstance(width, int):
        return None
    layers = vision.get("layers")
    return ModelGeometry(patch, width, embed_dim if isinstance(embed_dim, int) else None,
                         layers if isinstance(layers, int) else None)


def image_bytes(size: int, geometry: ModelGeometry) -> int:
    """Estimated peak bytes of scoring one image at ``size`` (see the module docstring)."""
    tokens = (size // geometry.patch_size) ** 2 + 1
    return FLOAT_BYTES * tokens * (geometry.width * ACTIVATION_COPIES + 2 * min(tokens, QUERY_CHUNK))


def device_memory_bytes(device: torch.device) -> Optional[int]:
    """The memory of the device the engine runs on; None where it cannot be known."""
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError(f"{named('device')} {device}: this machine has {count} CUDA device(s), numbered from 0")
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type == "cpu":
        return physical_memory_bytes()
    return None


def check_input_sizes(config: EngineConfig, model_name: str, device: torch.device, batch_size: int) -> None:
    """Refuse a GEM depth deeper than the model, sizes smaller than the patch, or sizes and batches too large
    for the device's memory (InputError, exit 2)."""
    geometry = model_geometry(model_name)
    if geometry is None:
        return
    if geometry.layers is not None and config.gem_depth - 1 > geometry.layers:
        raise InputError(f"{named('gem_depth')} {config.gem_depth} does not fit {model_name}, a ViT with {geometry.layers} "
                         f"blocks: use 2 to {geometry.layers + 1}")
    sizes = [(named("cls_size"), config.cls_size)] + [(named("scales"), size) for size in config.seg_sizes]
    for option, size in sizes:
        if size < geometry.patch_size:
            raise InputError(f"{option} {size} is smaller than the patch of {model_name} ({geometry.patch_size} "
                             f"pixels): every size must be at least {geometry.patch_size}")
    limit = device_memory_bytes(device)
    if limit is None:
        return
    for option, size in sorted(sizes, key=lambda item: -item[1]):
        needed = batch_size * image_bytes(size, geometry)
        if needed > limit:
            fitting = largest_fitting(limit, lambda s: batch_size * image_bytes(s, geometry), size)
            if fitting < geometry.patch_size:
                raise InputError(f"{named('batch_size')} {batch_size}: a batch at {option} {size} needs about "
                                 f"{gigabytes(needed)} (an estimate), more than the {gigabytes(limit)} of memory "
                                 f"of {device}; use a smaller {named('batch_size')}")
            raise InputError(
                f"{option} {size}: scoring {batch_size} image(s) at {size} x {size} needs about "
                f"{gigabytes(needed)} (an estimate), more than the {gigabytes(limit)} of memory of {device}; "
                f"the largest size that fits is about {fitting}"
                + (f" (or use a smaller {named('batch_size')})" if batch_size > 1 else "")
            )
