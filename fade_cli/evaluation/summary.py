"""Means and standard deviations: over the seeds of a class, and over classes.

Per class: the mean and standard deviation over seeds of each metric. Over
classes: for each seed the mean over classes (a class without a metric, e.g.
no mask for pixel metrics, is left out of that metric's mean), then the mean and
standard deviation of those per-seed means. Standard deviations are population
ones (numpy's default, ddof=0), as this field's code reports them; with a single
run (zero-shot, or one seed) there is none.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

import numpy as np

METRICS = ("image_auroc", "image_aupr", "image_f1_max", "pixel_auroc", "pixel_f1_max", "aupro")

Metrics = dict[str, Optional[float]]


class ScoredRun(Protocol):
    class_name: str
    seed: Optional[int]
    metrics: Metrics


@dataclass
class Aggregate:
    """Mean over runs, and the standard deviation when there is more than one run."""

    mean: Metrics
    std: Optional[Metrics]


@dataclass
class Summary:
    classes: dict[str, Aggregate]
    per_seed_mean: dict[Optional[int], Metrics]
    overall: Aggregate
    seeds: list[Optional[int]]


def mean_of(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def std_of(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return float(np.std(present)) if present else None


def aggregate(metric_sets: Sequence[Metrics]) -> Aggregate:
    mean = {name: mean_of([m[name] for m in metric_sets]) for name in METRICS}
    std = {name: std_of([m[name] for m in metric_sets]) for name in METRICS} if len(metric_sets) > 1 else None
    return Aggregate(mean, std)


def summarise(runs: Sequence[ScoredRun]) -> Summary:
    """Per-class aggregates over seeds and the over-class aggregate, in the order the runs came."""
    class_names = list(dict.fromkeys(run.class_name for run in runs))
    seeds = list(dict.fromkeys(run.seed for run in runs))
    classes = {
        name: aggregate([run.metrics for run in runs if run.class_name == name]) for name in class_names
    }
    per_seed_mean = {
        seed: aggregate([run.metrics for run in runs if run.seed == seed]).mean for seed in seeds
    }
    return Summary(classes, per_seed_mean, aggregate(list(per_seed_mean.values())), seeds)
