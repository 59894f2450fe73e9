"""Image to model input at one size (FADE_SPEC section 1)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def image_to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """Square bicubic resize (PIL, antialiased), to [0, 1], CLIP normalisation: (3, size, size)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")  # no full-size copy of a large RGB photo
    resized = rgb.resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(resized, dtype=np.float32) / 255.0
    mean = np.asarray(CLIP_MEAN, dtype=np.float32)
    std = np.asarray(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(((array - mean) / std).transpose(2, 0, 1).copy())


def batch_to_tensor(images: list[Image.Image], size: int) -> torch.Tensor:
    """(B, 3, size, size) float32."""
    return torch.stack([image_to_tensor(image, size) for image in images])
