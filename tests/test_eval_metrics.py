"""Metrics of `fade eval`: hand-computed cases, scikit-learn, and a brute-force AUPRO."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from fade_cli.evaluation.aupro import area_up_to, aupro_from_histograms, region_overlap_weights
from fade_cli.evaluation.maps import MAX_CODE, codes_to_scores, eval_codes
from fade_cli.evaluation.metrics import auroc, average_precision, f1_max, image_metrics
from fade_cli.evaluation.pixels import PixelAccumulator
from fade_cli.evaluation.summary import summarise


# --- image metrics -------------------------------------------------------------------------

def test_image_metrics_hand_computed():
    # Pairs (defect, good): (0.35 vs 0.1) right, (0.35 vs 0.4) wrong, 0.8 beats both: AUROC 3/4.
    # Thresholds: 0.8 -> P=1, R=1/2, F1=2/3; 0.4 -> P=1/2, R=1/2; 0.35 -> P=2/3, R=1, F1=0.8.
    # AP = sum over recall steps: 1/2 * 1 (at 0.8) + 1/2 * 2/3 (at 0.35) = 5/6.
    metrics = image_metrics([False, False, True, True], [0.1, 0.4, 0.35, 0.8])
    assert metrics["image_auroc"] == pytest.approx(0.75)
    assert metrics["image_f1_max"] == pytest.approx(0.8)
    assert metrics["image_aupr"] == pytest.approx(5 / 6)


def test_ties_count_one_half():
    assert auroc([False, True], [0.5, 0.5]) == pytest.approx(0.5)


def test_single_label_gives_none():
    assert image_metrics([True, True], [0.2, 0.9]) == {"image_auroc": None, "image_aupr": None, "image_f1_max": None}
    assert f1_max([False, False], [0.1, 0.2]) is None


@pytest.mark.parametrize("seed", range(5))
def test_f1_max_equals_brute_force_over_thresholds(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(40) < 0.4
    scores = np.round(rng.random(40), 1)  # many ties
    best = 0.0
    for threshold in np.unique(scores):
        flagged = scores >= threshold
        tp = np.sum(flagged & labels)
        if tp:
            precision, recall = tp / flagged.sum(), tp / labels.sum()
            best = max(best, 2 * precision * recall / (precision + recall))
    assert f1_max(labels, scores) == pytest.approx(best)


def test_weights_equal_repeated_samples():
    labels = np.array([True, False, True, False])
    scores = np.array([0.9, 0.3, 0.2, 0.5])
    weights = np.array([3, 2, 1, 4])
    repeated = np.repeat(np.arange(4), weights)
    for metric in (auroc, average_precision, f1_max):
        expected = metric(labels[repeated], scores[repeated])
        assert metric(labels, scores, sample_weight=weights) == pytest.approx(expected)


# --- pixel metrics and AUPRO ---------------------------------------------------------------

def brute_force_aupro(maps, masks, max_fpr=0.3):
    """Straight from the definition: every distinct score is a threshold; regions one by one."""
    regions = []
    for score_map, mask in zip(maps, masks):
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [np.sort(score_map[labels == k]) for k in range(1, count + 1)]
    negatives = np.sort(np.concatenate([m[~k] for m, k in zip(maps, masks)]))
    thresholds = np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]

    def fraction_at_or_above(sorted_values):
        return (len(sorted_values) - np.searchsorted(sorted_values, thresholds, side="left")) / len(sorted_values)

    fprs = fraction_at_or_above(negatives)
    pros = np.mean([fraction_at_or_above(region) for region in regions], axis=0)
    points = [(0.0, 0.0), *zip(fprs, pros)]
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


def random_case(seed, levels):
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for index in range(4):
        shape = (int(rng.integers(6, 14)), int(rng.integers(6, 14)))
        mask = np.zeros(shape, dtype=bool)
        if index > 0:  # the first image is good
            for _ in range(int(rng.integers(1, 4))):
                top, left = rng.integers(0, shape[0] - 2), rng.integers(0, shape[1] - 2)
                mask[top : top + rng.integers(1, 4), left : left + rng.integers(1, 4)] = True
        codes = rng.integers(0, levels, size=shape)
        codes[mask] = np.minimum(codes[mask] + levels // 4, levels - 1)  # defects score higher, with overlap
        maps.append(codes.astype(np.uint16))
        masks.append(mask)
    return maps, masks


def accumulate(maps, masks, levels):
    accumulator = PixelAccumulator(levels)
    for codes, mask in zip(maps, masks):
        accumulator.add(codes, mask if mask.any() else None)
    return accumulator


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("levels", [5, 50, 4096])
def test_aupro_equals_brute_force(seed, levels):
    maps, masks = random_case(seed, levels)
    got = accumulate(maps, masks, levels).metrics()["aupro"]
    assert got == pytest.approx(brute_force_aupro(maps, masks), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_pixel_auroc_and_f1_equal_scikit_learn_on_all_pixels(seed):
    maps, masks = random_case(seed, 200)
    metrics = accumulate(maps, masks, 200).metrics()
    labels = np.concatenate([m.ravel() for m in masks])
    scores = np.concatenate([m.ravel() for m in maps]).astype(float)
    assert metrics["pixel_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert metrics["pixel_f1_max"] == pytest.approx(f1_max(labels, scores), abs=1e-12)


def test_aupro_hand_cases():
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 1:3] = True
    perfect = np.where(mask, 9, 1).astype(np.uint16)
    assert accumulate([perfect], [mask], 10).metrics()["aupro"] == pytest.approx(1.0)
    # A constant map: the curve jumps from (0, 0) to (1, 1); the area up to 0.3 is 0.3^2 / 2.
    constant = np.full((4, 4), 3, dtype=np.uint16)
    assert accumulate([constant], [mask], 10).metrics()["aupro"] == pytest.approx(0.15)


def test_regions_are_eight_connected():
    mask = np.zeros((5, 5), dtype=bool)
    mask[1, 1] = mask[2, 2] = True  # diagonal neighbours: one region
    mask[4, 0] = True  # a second region
    weights, count = region_overlap_weights(np.zeros((5, 5), dtype=np.uint16), mask, 4)
    assert count == 2
    assert weights[0] == pytest.approx(2.0)  # each region's weights sum to one


def test_area_up_to_interpolates_at_the_limit():
    x = np.array([0.0, 0.2, 0.4, 1.0])
    y = np.array([0.0, 0.5, 1.0, 1.0])
    # up to 0.2: 0.05; from 0.2 to 0.3 under a line from 0.5 to 0.75: 0.0625
    assert area_up_to(x, y, 0.3) == pytest.approx(0.1125)
    assert aupro_from_histograms(np.zeros(3, dtype=np.int64), np.ones(3), 1) is None
    assert aupro_from_histograms(np.ones(3, dtype=np.int64), np.zeros(3), 0) is None


def test_good_images_only_give_no_pixel_metrics():
    accumulator = PixelAccumulator(8)
    accumulator.add(np.arange(16, dtype=np.uint16).reshape(4, 4) % 8, None)
    assert accumulator.metrics() == {"pixel_auroc": None, "pixel_f1_max": None, "aupro": None}


# --- maps -----------------------------------------------------------------------------------

def test_codes_keep_the_map_to_within_half_a_level():
    rng = np.random.default_rng(0)
    grid = rng.random((8, 8)).astype(np.float32)
    codes = eval_codes(grid, 32)
    import torch
    import torch.nn.functional as F

    reference = F.interpolate(torch.from_numpy(grid)[None, None], size=(32, 32), mode="bilinear",
                              align_corners=False)[0, 0].numpy()
    assert codes.dtype == np.uint16 and codes.shape == (32, 32)
    assert np.abs(codes_to_scores(codes) - reference).max() <= 0.5 / MAX_CODE + 1e-7
    order = np.argsort(codes.ravel(), kind="stable")
    assert np.all(np.diff(codes_to_scores(codes).ravel()[order]) >= 0)


def test_8bit_quantisation_matches_the_published_pipeline():
    """The published pipeline's 8-bit eval maps had these maxima (its logs for the golden cases):
    floor to 8 bits, upsample, round."""
    from conftest import GOLDEN

    published_max = {"one_shot": [150, 158, 212, 129], "two_shot": [147, 153, 207, 126]}
    for case, expected in published_max.items():
        fused = np.load(GOLDEN / "expected" / f"{case}.npz")["fused_map"]
        codes = [eval_codes(np.clip(m, 0, 1).astype(np.float32), 448, quantize_8bit=True) for m in fused]
        assert all(np.all(c % 257 == 0) for c in codes)
        assert [int(c.max()) // 257 for c in codes] == expected


# --- summary --------------------------------------------------------------------------------

class Run:
    def __init__(self, class_name, seed, **metrics):
        self.class_name, self.seed = class_name, seed
        names = ("image_auroc", "image_aupr", "image_f1_max", "pixel_auroc", "pixel_f1_max", "aupro")
        self.metrics = {name: metrics.get(name) for name in names}


def test_summary_means_and_std_over_seeds_and_classes():
    runs = [Run("a", 0, image_auroc=0.8, aupro=0.5), Run("a", 1, image_auroc=0.6, aupro=0.7),
            Run("b", 0, image_auroc=1.0), Run("b", 1, image_auroc=0.8)]
    summary = summarise(runs)
    assert summary.classes["a"].mean["image_auroc"] == pytest.approx(0.7)
    assert summary.classes["a"].std["image_auroc"] == pytest.approx(0.1)
    assert summary.per_seed_mean[0]["image_auroc"] == pytest.approx(0.9)
    assert summary.per_seed_mean[1]["image_auroc"] == pytest.approx(0.7)
    assert summary.overall.mean["image_auroc"] == pytest.approx(0.8)
    assert summary.overall.std["image_auroc"] == pytest.approx(0.1)
    # b has no AUPRO: the class mean of AUPRO is a's alone; a metric nobody has stays None.
    assert summary.per_seed_mean[0]["aupro"] == pytest.approx(0.5)
    assert summary.overall.mean["pixel_auroc"] is None
    single = summarise([Run("a", None, image_auroc=0.8)])
    assert single.overall.std is None and single.classes["a"].std is None
