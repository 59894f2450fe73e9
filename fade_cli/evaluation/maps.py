"""Anomaly maps at the evaluation size, kept as 16-bit codes.

Why codes: a class with a few hundred 448 x 448 maps would need hundreds of MB
as float64, and the pixel metrics only need the order of the values. Engine maps
are in [0, 1] (clipped), so each eval-size pixel is stored as
``round(value * 65535)`` in a uint16. All pixel metrics are computed exactly for
these codes; against the float32 map the only change is that values closer than
1/65535 (1.5e-5) can become ties, which moves pixel AUROC by at most half the
fraction of (defect, good) pixel pairs that share a code (in practice < 1e-5).

With ``quantize_8bit`` the map is first turned into 8 bits the way the
published pipeline did (``floor(map * 255)``), upsampled, and rounded back to
8 bits; every code is then a multiple of 257 (exactly ``k / 255``).
"""
from __future__ import annotations

import numpy as np

from fade_cli.evaluation.pixels import LEVELS
from fade_cli.io.heatmap import upsample_map

MAX_CODE = LEVELS - 1
_EIGHT_BIT_STEP = MAX_CODE // 255  # 257: k/255 is exactly k*257/65535


def eval_codes(anomaly_map_gg: np.ndarray, size: int, quantize_8bit: bool = False) -> np.ndarray:
    """The (size, size) uint16 codes of a (G, G) map in [0, 1], bilinearly upsampled.

    Upsampling is torch's bilinear with half-pixel centres (align_corners=False),
    as the golden reference and ``fade detect``'s saved maps use.
    """
    clipped = np.clip(anomaly_map_gg, 0.0, 1.0)
    if quantize_8bit:
        eight_bit = np.floor(clipped * 255.0)
        resized = np.clip(np.rint(upsample_map(eight_bit, size, size)), 0, 255)
        return resized.astype(np.uint16) * np.uint16(_EIGHT_BIT_STEP)
    resized = np.clip(upsample_map(clipped, size, size), 0.0, 1.0)
    return np.rint(resized.astype(np.float64) * MAX_CODE).astype(np.uint16)


def codes_to_scores(codes: np.ndarray) -> np.ndarray:
    """Codes back to float32 map values in [0, 1] (monotone, so metrics are unchanged)."""
    return (codes.astype(np.float32) / np.float32(MAX_CODE)).astype(np.float32)
