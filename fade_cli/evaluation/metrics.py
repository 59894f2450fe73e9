"""Image and pixel metrics from scores and labels, through scikit-learn.

Each function returns None when the metric is undefined (only one label
present), so a class without good test images reports "n/a" instead of failing.
``sample_weight`` lets the pixel metrics pass histogram counts instead of
millions of pixels (see :mod:`fade_cli.evaluation.pixels`): a weighted sample
is exactly the same as that many repeated samples for these curves.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve


def _both_labels_present(labels: np.ndarray, sample_weight: Optional[np.ndarray]) -> bool:
    weights = np.ones(len(labels)) if sample_weight is None else np.asarray(sample_weight)
    positives = float(weights[labels].sum())
    negatives = float(weights[~labels].sum())
    return positives > 0 and negatives > 0


def auroc(labels, scores, sample_weight=None) -> Optional[float]:
    """Area under the ROC curve (ties count one half), or None with a single label."""
    labels = np.asarray(labels, dtype=bool)
    if not _both_labels_present(labels, sample_weight):
        return None
    return float(roc_auc_score(labels, np.asarray(scores), sample_weight=sample_weight))


def average_precision(labels, scores, sample_weight=None) -> Optional[float]:
    """AUPR as the field reports it: scikit-learn's average precision (step-wise, not interpolated)."""
    labels = np.asarray(labels, dtype=bool)
    if not _both_labels_present(labels, sample_weight):
        return None
    return float(average_precision_score(labels, np.asarray(scores), sample_weight=sample_weight))


def f1_max(labels, scores, sample_weight=None) -> Optional[float]:
    """The best F1 over all thresholds (a threshold flags scores >= it), or None with a single label."""
    labels = np.asarray(labels, dtype=bool)
    if not _both_labels_present(labels, sample_weight):
        return None
    precision, recall, _ = precision_recall_curve(labels, np.asarray(scores), sample_weight=sample_weight)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return float(f1.max())


def image_metrics(labels, scores) -> dict[str, Optional[float]]:
    """image_auroc, image_aupr and image_f1_max of one class's test images (labels: True = defective)."""
    return {
        "image_auroc": auroc(labels, scores),
        "image_aupr": average_precision(labels, scores),
        "image_f1_max": f1_max(labels, scores),
    }


def image_curves(labels, scores) -> dict[str, Optional[dict[str, list[float]]]]:
    """The image ROC curve (``fpr``, ``tpr``) and PR curve (``recall``, ``precision``) that the image
    AUROC and AUPR are computed from (scikit-learn's points); None each with a single label."""
    labels = np.asarray(labels, dtype=bool)
    if not _both_labels_present(labels, None):
        return {"roc": None, "pr": None}
    scores = np.asarray(scores)
    fpr, tpr, _ = roc_curve(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    return {"roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
            "pr": {"recall": recall.tolist(), "precision": precision.tolist()}}
