"""Image to model input at one size (FADE_SPEC section 1).

Preprocessing is split where the data is smallest: the host resizes (PIL,
bicubic, antialiased, as the published pipeline) and keeps 8-bit pixels; the
device converts them to floats and applies CLIP's normalisation. A batch then
crosses to the GPU as a quarter of the float bytes, and the host does no float
work per pixel.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image

# open_clip.OPENAI_DATASET_MEAN / _STD, not imported from there: importing open_clip takes over a second,
# and decoding needs only these numbers.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_rgb8(image: Image.Image, size: int) -> np.ndarray:
    """Square bicubic resize (PIL, antialiased) to (size, size, 3) uint8."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")  # no full-size copy of a large RGB photo
    return np.asarray(rgb.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def stack_rgb8(arrays_hwc: list[np.ndarray], pin: bool = False) -> torch.Tensor:
    """Resized images of one size as one (B, size, size, 3) uint8 tensor, in page-locked memory if ``pin``."""
    batch = torch.empty((len(arrays_hwc), *arrays_hwc[0].shape), dtype=torch.uint8, pin_memory=pin)
    np.stack(arrays_hwc, out=batch.numpy())
    return batch


def normalise(pixels_bhwc: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) to CLIP-normalised float32 (B, 3, H, W) on the pixels' device.

    The same float32 operations as the published ``ToTensor`` + ``Normalize``
    (divide by 255, subtract the mean, divide by the std), so results match it
    bit for bit on any device.
    """
    mean, std = _mean_and_std(pixels_bhwc.device)
    pixels = pixels_bhwc.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    return (pixels - mean) / std


@functools.lru_cache(maxsize=None)
def _mean_and_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: building them per batch would be a blocking host-to-GPU copy.
    shape = (1, 3, 1, 1)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(shape).to(device)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(shape).to(device)
    return mean, std
