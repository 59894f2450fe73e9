"""Preprocessing: 8-bit resize on the host, normalisation on the device, equal to the published float pipeline."""
import numpy as np
import pytest
import torch
from PIL import Image

from fade_cli.engine.preprocess import CLIP_MEAN, CLIP_STD, normalise, resize_rgb8, stack_rgb8


def published_to_tensor(image: Image.Image, size: int) -> np.ndarray:
    """ToTensor + Normalize as the published pipeline computes them, in float32 numpy: (3, size, size)."""
    array = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    mean = np.asarray(CLIP_MEAN, dtype=np.float32)
    std = np.asarray(CLIP_STD, dtype=np.float32)
    return ((array - mean) / std).transpose(2, 0, 1)


@pytest.fixture
def photos():
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (37 + 11 * i, 53, 3), dtype=np.uint8)) for i in range(3)]


@pytest.mark.parametrize("size", [16, 64])
def test_normalised_batch_equals_the_published_float_pipeline_bit_for_bit(photos, size):
    batch = stack_rgb8([resize_rgb8(photo, size) for photo in photos])
    got = normalise(batch)
    assert got.dtype == torch.float32 and got.shape == (3, 3, size, size)
    expected = np.stack([published_to_tensor(photo, size) for photo in photos])
    np.testing.assert_array_equal(got.numpy(), expected)


def test_resize_converts_other_modes_to_rgb():
    grey = Image.fromarray(np.full((20, 30), 200, dtype=np.uint8), mode="L")
    resized = resize_rgb8(grey, 8)
    assert resized.shape == (8, 8, 3) and resized.dtype == np.uint8
    assert (resized == 200).all()


def test_stacked_batch_is_a_copy_in_file_order(photos):
    arrays = [resize_rgb8(photo, 8) for photo in photos]
    batch = stack_rgb8(arrays)
    assert batch.dtype == torch.uint8 and batch.shape == (3, 8, 8, 3)
    for index, array in enumerate(arrays):
        np.testing.assert_array_equal(batch[index].numpy(), array)
