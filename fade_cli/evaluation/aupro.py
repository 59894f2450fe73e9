"""AUPRO: the area under the per-region-overlap curve up to a false-positive rate of 0.3.

Definition (FADE_SPEC section 7, as in the MVTec-AD paper): regions are the
8-connected components of every ground-truth mask. For a threshold t, the
per-region overlap PRO(t) is the mean over all regions of the fraction of the
region's pixels scoring >= t, and FPR(t) the fraction of defect-free pixels
(good images included) scoring >= t. The curve runs through the points of
every distinct score, starting at (0, 0); it is integrated with the trapezoid
rule up to FPR 0.3 (interpolating linearly where it crosses 0.3) and divided by
0.3, so a perfect map scores 1.

Here the scores are integer codes (:mod:`fade_cli.evaluation.maps`), so the
whole curve is carried by two histograms over the codes that can be summed
image by image: the count of defect-free pixels per code, and per code the
sum over region pixels of 1 / (size of their region). Cumulating both from the
top code down gives FPR and R * PRO at every threshold, exactly.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

MAX_FPR = 0.3
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def label_regions(mask_hw: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a bool mask: (labels (H, W) with 0 = background, count)."""
    labels, count = ndimage.label(mask_hw, structure=EIGHT_CONNECTED)
    return labels, int(count)


def region_overlap_weights(codes_hw: np.ndarray, mask_hw: np.ndarray, levels: int) -> tuple[np.ndarray, int]:
    """Per code, the sum over defect pixels of 1 / (size of the pixel's region); and the region count.

    Each region's weights sum to 1, so cumulating them from the top code gives
    the summed overlap of all regions at every threshold.
    """
    labels, count = label_regions(mask_hw)
    if count == 0:
        return np.zeros(levels, dtype=np.float64), 0
    sizes = np.bincount(labels.ravel())
    in_region = labels > 0
    inverse_sizes = 1.0 / sizes[labels[in_region]]
    weights = np.bincount(codes_hw[in_region], weights=inverse_sizes, minlength=levels)
    return weights, count


def aupro_from_histograms(
    negative_counts: np.ndarray, region_weights: np.ndarray, region_count: int, max_fpr: float = MAX_FPR
) -> Optional[float]:
    """Normalised AUPRO from the two per-code histograms; None without regions or defect-free pixels."""
    curve = pro_curve(negative_counts, region_weights, region_count)
    if curve is None:
        return None
    fpr, pro = curve
    return area_up_to(fpr, pro, max_fpr) / max_fpr


def pro_curve(
    negative_counts: np.ndarray, region_weights: np.ndarray, region_count: int
) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(FPR, PRO) at every threshold from the highest occupied code down, from (0, 0); None when undefined."""
    negative_total = int(negative_counts.sum())
    if region_count == 0 or negative_total == 0:
        return None
    occupied = (negative_counts > 0) | (region_weights > 0)
    # Thresholds from the highest occupied code down: cumulative sums give the curve's points.
    fpr = np.cumsum(negative_counts[occupied][::-1]) / negative_total
    pro = np.cumsum(region_weights[occupied][::-1]) / region_count
    fpr = np.concatenate([[0.0], fpr])
    pro = np.concatenate([[0.0], np.minimum(pro, 1.0)])
    return fpr, pro


def cut_curve(x: np.ndarray, y: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """The points of a curve up to ``x = limit``, the crossing segment cut there as :func:`area_up_to` cuts it."""
    inside = int(np.searchsorted(x, limit, side="right"))
    if inside < len(x) and x[inside - 1] < limit:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        return np.append(x[:inside], limit), np.append(y[:inside], y_limit)
    return x[:inside], y[:inside]


def area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under a curve with non-decreasing ``x`` (starting at 0), from 0 to ``limit``.

    The segment that crosses ``limit`` is cut there by linear interpolation.
    """
    inside = int(np.searchsorted(x, limit, side="right"))
    area = float(np.sum(np.diff(x[:inside]) * (y[1:inside] + y[: inside - 1]) / 2.0))
    if inside < len(x) and x[inside - 1] < limit:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += float((limit - x0) * (y0 + y_limit) / 2.0)
    return area
