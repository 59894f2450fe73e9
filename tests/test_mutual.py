"""Mutual scoring (fade_cli/engine/mutual.py) against brute-force numpy versions of its formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import MODEL_CONFIG, QUERIES, WEIGHTS
from fade_cli.config import MUTUAL, EngineConfig, MutualSettings
from fade_cli.engine import FadeEngine
from fade_cli.engine.mutual import (
    balanced_groups,
    images_counted,
    mutual_patch_distances,
    mutual_vision_grid,
    neighbourhood_average,
    rescore,
)

# Float16 storage of the patch features between the passes (docs/mutual.md): measured on the golden model,
# vision maps move by at most 1.7e-4 and scores by 5e-5; these bounds leave room for other data.
FP16_MAP_TOL = 1e-3
FP16_SCORE_TOL = 5e-4


def unit_patches(count: int, patches: int, dim: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(count, patches, dim, generator=generator), dim=-1)


def brute_force_scores(patches_npd: np.ndarray, fraction: float) -> np.ndarray:
    """The formula as written: d_j(p) = min_q 0.5 (1 - cos(p, q)); mean of the smallest max(1, floor(f (n-1)))."""
    count, patches, _ = patches_npd.shape
    counted = max(1, math.floor(fraction * (count - 1) + 1e-9))
    scores = np.zeros((count, patches))
    for i in range(count):
        for p in range(patches):
            per_image = []
            for j in range(count):
                if j != i:
                    cosines = patches_npd[j] @ patches_npd[i, p]
                    per_image.append(min(0.5 * (1.0 - c) for c in cosines))
            scores[i, p] = np.mean(sorted(per_image)[:counted])
    return scores


def brute_force_window_average(patches_npd: np.ndarray, grid: int, degree: int) -> np.ndarray:
    """Each patch's mean over the patches of the r x r window around it that lie inside the grid, normalised."""
    count, _, dim = patches_npd.shape
    image = patches_npd.reshape(count, grid, grid, dim)
    out = np.zeros_like(image)
    half = degree // 2
    for y in range(grid):
        for x in range(grid):
            window = image[:, max(0, y - half): y + half + 1, max(0, x - half): x + half + 1]
            mean = window.reshape(count, -1, dim).mean(axis=1)
            out[:, y, x] = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    return out.reshape(count, grid * grid, dim)


@pytest.mark.parametrize("fraction", [0.3, 0.5, 1.0])
def test_mutual_scores_equal_brute_force_whatever_the_chunks(fraction):
    patches = unit_patches(6, 9, 8)
    expected = brute_force_scores(patches.double().numpy(), fraction)
    for query_chunk, block_elements in [(1, 1), (7, 50), (4, 10**9), (10**6, 200)]:
        got = mutual_patch_distances(patches, fraction, query_chunk=query_chunk, block_elements=block_elements)
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-6, rtol=0,
                                   err_msg=f"query_chunk={query_chunk}, block_elements={block_elements}")


@pytest.mark.parametrize(
    "others, fraction, expected",
    [(1, 0.3, 1), (3, 0.3, 1), (4, 0.3, 1), (10, 0.3, 3), (9, 0.5, 4), (3, 1.0, 3), (199, 0.3, 59), (20, 0.35, 7)],
)
def test_fraction_rule_counts_at_least_one_image(others, fraction, expected):
    assert images_counted(others, fraction) == expected


def test_a_patch_unique_in_the_batch_scores_higher_than_one_repeated_in_every_image():
    generator = torch.Generator().manual_seed(3)
    normal = F.normalize(torch.randn(9, 16, generator=generator), dim=-1)
    # Five images of the same nine normal patches, each slightly noisy and in its own order.
    images = []
    for _ in range(5):
        noisy = normal[torch.randperm(9, generator=generator)] + 0.05 * torch.randn(9, 16, generator=generator)
        images.append(F.normalize(noisy, dim=-1))
    batch = torch.stack(images)
    batch[2, 4] = F.normalize(torch.randn(16, generator=generator), dim=0)  # a defect seen nowhere else
    scores = mutual_patch_distances(batch, 0.3)
    repeated = torch.ones_like(scores, dtype=torch.bool)
    repeated[2, 4] = False
    assert scores[2, 4] > 3 * scores[repeated].max()


@pytest.mark.parametrize("degree", [1, 3, 5])
def test_window_aggregation_equals_brute_force(degree):
    patches = unit_patches(3, 16, 6, seed=1)
    expected = brute_force_window_average(patches.double().numpy(), 4, degree)
    np.testing.assert_allclose(neighbourhood_average(patches, 4, degree).numpy(), expected, atol=1e-6, rtol=0)


def test_vision_grid_averages_the_degrees():
    patches = unit_patches(4, 16, 6, seed=2)
    settings = MutualSettings(degrees=(1, 3), fraction=0.5)
    expected = np.mean([
        brute_force_scores(brute_force_window_average(patches.double().numpy(), 4, r), 0.5) for r in (1, 3)
    ], axis=0).reshape(4, 4, 4)
    np.testing.assert_allclose(mutual_vision_grid(patches, 4, settings).numpy(), expected, atol=1e-6, rtol=0)


def test_rescoring_averages_each_score_with_its_most_similar_images():
    tokens = unit_patches(1, 6, 5, seed=4)[0]
    scores = torch.tensor([0.1, 0.9, 0.3, 0.5, 0.2, 0.7])
    sims = tokens.numpy() @ tokens.numpy().T
    for k in (1, 2, 5, 9):
        used = min(k, 5)
        expected = []
        for i in range(6):
            others = sorted((j for j in range(6) if j != i), key=lambda j: -sims[i, j])[:used]
            expected.append((scores[i].item() + sum(scores[j].item() for j in others)) / (used + 1))
        np.testing.assert_allclose(rescore(scores, tokens, k).numpy(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("count", range(2, 40))
@pytest.mark.parametrize("group", [3, 4, 7, 200])
def test_balanced_groups_keep_order_bound_and_never_leave_an_image_alone(count, group):
    items = list(range(count))
    groups = balanced_groups(items, group)
    assert [x for g in groups for x in g] == items
    sizes = [len(g) for g in groups]
    assert max(sizes) <= group and min(sizes) >= 2 and max(sizes) - min(sizes) <= 1
    assert len(groups) == math.ceil(count / group)


def test_invalid_settings_are_refused():
    for bad in [dict(fraction=0.0), dict(fraction=1.5), dict(degrees=(2,)), dict(degrees=()), dict(group=2),
                dict(rescore=0)]:
        with pytest.raises(ValueError):
            MutualSettings(**bad)


@pytest.fixture(scope="module")
def engine():
    config = EngineConfig(model_config=str(MODEL_CONFIG), weights=str(WEIGHTS), device="cpu", class_name="widget",
                          seg_sizes=(240, 320))
    return FadeEngine.from_config(config)


@pytest.fixture(scope="module")
def queries():
    return [Image.open(p) for p in sorted(QUERIES.glob("*.png"))]


def _detect(engine, images, settings):
    return engine.detect_mutual([engine.encode_for_mutual(engine.prepare(images), settings)], settings)


@pytest.mark.slow
def test_engine_fuses_the_mutual_map_with_the_language_branch(engine, queries):
    settings = MutualSettings(store_fp16=False)
    results = _detect(engine, queries, settings)
    plain = engine.detect(queries)  # zero-shot: the same language branch
    pixels = engine.prepare(queries)
    grids = []
    for size in (240, 320):
        features = engine._encode(pixels[size])
        grids.append(F.interpolate(mutual_vision_grid(features.clip_patches_bnd, features.grid, settings)[:, None],
                                   size=(20, 20), mode="bilinear", align_corners=False)[:, 0])
    vision = (torch.stack(grids).mean(dim=0) * MUTUAL.multiplier).numpy()
    for result, zero_shot, expected_vision in zip(results, plain, vision):
        np.testing.assert_allclose(result.language_map, zero_shot.language_map, atol=1e-6)
        assert result.language_score == pytest.approx(zero_shot.language_score, abs=1e-6)
        np.testing.assert_allclose(result.vision_map, expected_vision, atol=1e-5)
        fused = (1 - MUTUAL.weight) * result.language_map + MUTUAL.weight * result.vision_map
        np.testing.assert_allclose(result.fused_map, fused, atol=1e-6)
        assert result.vision_score == pytest.approx(float(expected_vision.max()), abs=1e-5)
        assert result.score == pytest.approx((result.language_score + result.vision_score) / 2, abs=1e-6)


@pytest.mark.slow
def test_engine_rescoring_replaces_the_vision_score(engine, queries):
    plain = _detect(engine, queries, MutualSettings())
    smoothed = _detect(engine, queries, MutualSettings(rescore=2))
    vision = torch.tensor([r.vision_score for r in plain])
    tokens = engine._encode(engine.prepare(queries)[240]).clip_cls_bd
    np.testing.assert_allclose([r.vision_score for r in smoothed], rescore(vision, tokens, 2).numpy(), atol=1e-5)
    for a, b in zip(plain, smoothed):
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)


def test_fp16_storage_stays_within_the_documented_tolerance(engine, queries):
    half = _detect(engine, queries, MutualSettings(store_fp16=True))
    full = _detect(engine, queries, MutualSettings(store_fp16=False))
    for a, b in zip(half, full):
        assert np.abs(a.vision_map - b.vision_map).max() < FP16_MAP_TOL
        assert abs(a.score - b.score) < FP16_SCORE_TOL


@pytest.mark.slow
def test_batches_of_the_first_pass_do_not_change_the_result(engine, queries):
    settings = MutualSettings()
    together = _detect(engine, queries, settings)
    batches = [engine.encode_for_mutual(engine.prepare([image]), settings) for image in queries]
    one_by_one = engine.detect_mutual(batches, settings)
    for a, b in zip(together, one_by_one):
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-4)
        assert a.score == pytest.approx(b.score, abs=1e-4)


def test_engine_with_references_refuses_mutual_scoring(engine, queries):
    from fade_cli.core.errors import InputError

    with_refs = FadeEngine(engine.loaded, engine.config, engine.cls_classifier_2d, engine.seg_classifier_2d)
    with_refs.add_references(queries[:1])
    with pytest.raises(InputError, match="zero-shot"):
        with_refs.encode_for_mutual(with_refs.prepare(queries), MutualSettings())
