"""Ground-truth masks in the formats found in the wild, resized and binarised at 0.5."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fade_cli.core.errors import InputError
from fade_cli.evaluation.masks import load_mask

COOKIE = Path(__file__).parent.parent / "examples" / "cookie"

# A 6 x 8 (height x width) defect pattern: one rectangle.
PATTERN = np.zeros((6, 8), dtype=bool)
PATTERN[1:4, 2:6] = True


def save(tmp_path: Path, image: Image.Image, name: str = "m.png") -> Path:
    path = tmp_path / name
    image.save(path)
    return path


def palette_image(indices: np.ndarray, colours: list[tuple[int, int, int]]) -> Image.Image:
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette([c for colour in colours for c in colour])
    return image


CASES = {
    "grey 0/255": lambda: Image.fromarray(PATTERN.astype(np.uint8) * 255, mode="L"),
    "grey 0/1": lambda: Image.fromarray(PATTERN.astype(np.uint8), mode="L"),
    "bilevel": lambda: Image.fromarray(PATTERN.astype(np.uint8) * 255, mode="L").convert("1"),
    "16-bit": lambda: Image.fromarray(PATTERN.astype(np.uint16) * 65535),
    "palette black/white": lambda: palette_image(PATTERN, [(0, 0, 0), (255, 255, 255)]),
    "palette black/red": lambda: palette_image(PATTERN, [(0, 0, 0), (200, 0, 0)]),
    "colour red on black": lambda: Image.fromarray(
        np.stack([PATTERN * 255, PATTERN * 0, PATTERN * 0], -1).astype(np.uint8)),
    "RGBA defect in alpha": lambda: Image.fromarray(
        np.dstack([np.full((6, 8, 3), 90, np.uint8), PATTERN.astype(np.uint8) * 255]), mode="RGBA"),
    "RGBA opaque, white defect": lambda: Image.fromarray(
        np.dstack([np.repeat(PATTERN[..., None] * 255, 3, -1), np.full((6, 8), 255)]).astype(np.uint8), mode="RGBA"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_formats_decode_to_the_same_mask(tmp_path, case):
    path = save(tmp_path, CASES[case]())
    assert np.array_equal(load_mask(path, (8, 6)), PATTERN)


def test_grey_values_at_half_the_range_are_not_defects(tmp_path):
    values = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    path = save(tmp_path, Image.fromarray(values, mode="L"))
    assert load_mask(path, (4, 1)).tolist() == [[False, False, True, True]]


def test_resized_to_the_eval_size_then_binarised(tmp_path):
    big = np.zeros((40, 40), dtype=np.uint8)
    big[:, :20] = 255  # left half defective
    mask = load_mask(save(tmp_path, Image.fromarray(big, mode="L")), 10)
    assert mask.shape == (10, 10)
    assert mask[:, :5].all() and not mask[:, 5:].any()
    # A thin line covering under half of each eval pixel disappears.
    thin = np.zeros((40, 40), dtype=np.uint8)
    thin[:, 0] = 255
    assert not load_mask(save(tmp_path, Image.fromarray(thin, mode="L"), "thin.png"), 10).any()


@pytest.mark.parametrize("name", ["001_mask.png", "002_mask.png", "003_mask.png"])
def test_rgba_cookie_masks_use_the_alpha_channel(name):
    original = COOKIE / "original_rgba_masks" / "cracked" / name
    binary = COOKIE / "cookie" / "ground_truth" / "cracked" / name
    from_alpha = load_mask(original, 448)
    assert from_alpha.sum() > 1000
    # The binary masks were made from the originals (alpha > 127): only edge pixels may differ.
    assert np.mean(from_alpha != load_mask(binary, 448)) < 0.001
    # A grey conversion of the original is not the mask.
    converted = np.asarray(Image.open(original).convert("RGBA").convert("L").resize((448, 448))) > 127
    assert not converted.any()


def test_mask_of_another_shape_than_its_image_is_refused(tmp_path):
    path = save(tmp_path, Image.fromarray(PATTERN.astype(np.uint8) * 255, mode="L"))
    assert load_mask(path, 16, image_size=(16, 12)).shape == (16, 16)  # same aspect: fine
    with pytest.raises(InputError, match=r"m\.png is 8x6 but its image is 12x16"):
        load_mask(path, 16, image_size=(12, 16))


def test_unreadable_mask_names_the_file(tmp_path):
    bad = tmp_path / "bad_mask.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InputError, match="bad_mask.png"):
        load_mask(bad, 8)
    with pytest.raises(InputError, match="mask not found"):
        load_mask(tmp_path / "missing.png", 8)
