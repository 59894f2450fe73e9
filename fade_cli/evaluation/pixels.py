"""Pixel metrics of one class, streamed image by image through code histograms.

Memory stays at three arrays of 65536 numbers however many maps a class has:
per code, the count of defect pixels, the count of defect-free pixels, and the
region weights AUPRO needs. The metrics are exact for the coded maps
(:mod:`fade_cli.evaluation.maps`): scikit-learn receives each occupied code
once per label with its pixel count as ``sample_weight``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from fade_cli.evaluation.aupro import MAX_FPR, aupro_from_histograms, cut_curve, pro_curve, region_overlap_weights
from fade_cli.evaluation.metrics import auroc, f1_max

# Maps are coded as uint16 (fade_cli.evaluation.maps): one histogram bin per code.
LEVELS = 65536
PIXEL_METRICS = ("pixel_auroc", "pixel_f1_max", "aupro")


class PixelAccumulator:
    """Collects (codes, mask) pairs of one class; :meth:`metrics` gives pixel AUROC, F1-max and AUPRO."""

    def __init__(self, levels: int = LEVELS):
        self.levels = levels
        self.positive_counts = np.zeros(levels, dtype=np.int64)
        self.negative_counts = np.zeros(levels, dtype=np.int64)
        self.region_weights = np.zeros(levels, dtype=np.float64)
        self.region_count = 0
        self.image_count = 0

    def add(self, codes_hw: np.ndarray, mask_hw: Optional[np.ndarray], inside_hw: Optional[np.ndarray] = None) -> None:
        """One image's coded map and its bool mask (None: a good image, no defect pixel); with ``inside_hw`` (an
        ROI) only the pixels inside it count."""
        codes = np.asarray(codes_hw)
        if codes.dtype.kind != "u" or int(codes.max(initial=0)) >= self.levels:
            raise ValueError(f"codes must be unsigned integers below {self.levels}")
        if inside_hw is not None:
            self._add_inside(codes, mask_hw, inside_hw)
            return
        self.image_count += 1
        if mask_hw is None:
            self.negative_counts += np.bincount(codes.ravel(), minlength=self.levels)
            return
        if mask_hw.shape != codes.shape:
            raise ValueError(f"mask shape {mask_hw.shape} differs from map shape {codes.shape}")
        self.positive_counts += np.bincount(codes[mask_hw], minlength=self.levels)
        self.negative_counts += np.bincount(codes[~mask_hw], minlength=self.levels)
        weights, count = region_overlap_weights(codes, mask_hw, self.levels)
        self.region_weights += weights
        self.region_count += count

    def _add_inside(self, codes: np.ndarray, mask_hw: Optional[np.ndarray], inside_hw: np.ndarray) -> None:
        self.image_count += 1
        defect = np.zeros(codes.shape, dtype=bool) if mask_hw is None else mask_hw & inside_hw
        self.positive_counts += np.bincount(codes[defect], minlength=self.levels)
        self.negative_counts += np.bincount(codes[inside_hw & ~defect], minlength=self.levels)
        if defect.any():
            # Defect regions are cut to the ROI; the false-positive rate is that of the ROI's defect-free pixels.
            weights, count = region_overlap_weights(codes, defect, self.levels)
            self.region_weights += weights
            self.region_count += count

    def metrics(self, max_fpr: float = MAX_FPR) -> dict[str, Optional[float]]:
        """pixel_auroc, pixel_f1_max, aupro; None where undefined (no defect or no defect-free pixel)."""
        labels, codes, counts = self._weighted_samples()
        return {
            "pixel_auroc": auroc(labels, codes, sample_weight=counts),
            "pixel_f1_max": f1_max(labels, codes, sample_weight=counts),
            "aupro": aupro_from_histograms(self.negative_counts, self.region_weights, self.region_count, max_fpr),
        }

    def pro_curve(self, max_fpr: float = MAX_FPR) -> Optional[dict[str, list[float]]]:
        """The PRO curve AUPRO integrates, up to ``max_fpr``: ``{"fpr": [...], "pro": [...]}``; None if undefined."""
        curve = pro_curve(self.negative_counts, self.region_weights, self.region_count)
        if curve is None:
            return None
        fpr, pro = cut_curve(*curve, max_fpr)
        return {"fpr": fpr.tolist(), "pro": pro.tolist()}

    def _weighted_samples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each occupied (code, label) once, weighted by its pixel count."""
        positive = np.flatnonzero(self.positive_counts)
        negative = np.flatnonzero(self.negative_counts)
        labels = np.concatenate([np.ones(len(positive), dtype=bool), np.zeros(len(negative), dtype=bool)])
        codes = np.concatenate([positive, negative])
        counts = np.concatenate([self.positive_counts[positive], self.negative_counts[negative]]).astype(np.float64)
        return labels, codes, counts
