"""The result object that flows from the engine to the writers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class Detection:
    """One image's outcome. Maps are (G, G) float32 on the largest segmentation grid.

    ``anomaly_map`` is the fused map clipped to [0, 1] (the product's output);
    ``fused_map`` is the same before clipping.
    """

    score: float
    language_score: float
    vision_score: Optional[float]
    anomaly_map: np.ndarray
    language_map: np.ndarray
    vision_map: Optional[np.ndarray]
    fused_map: np.ndarray
