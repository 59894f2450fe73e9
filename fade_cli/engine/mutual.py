"""Mutual scoring: every image's patches against the other images of its run, with no reference image.

The idea of MuSc (Li et al., "MuSc: Zero-Shot Industrial Anomaly Classification and
Segmentation with Mutual Scoring of the Unlabeled Images", ICLR 2024, arXiv 2401.16753),
written from the paper for fade's features (docs/mutual.md):

- for patch p of image i and each other image j of its group,
  d_j(p) = min over the patches q of j of 0.5 (1 - cos(p, q));
- the patch score is the mean of the smallest ``fraction`` of the d_j(p), at least one image:
  a normal patch finds close matches in most images, a defect in few;
- before scoring, patch features are averaged over r x r windows for each degree r, each
  degree scored, the maps averaged (the paper's neighbourhood aggregation);
- optionally, each image's score is smoothed with those of its k most similar images by
  class-token similarity (in the spirit of the paper's RsCIN).

Cost per group of n images at one size of P patches of dimension D: n^2 P^2 D multiply-adds per
degree, in chunked matrix products of at most ``BLOCK_ELEMENTS`` similarities; the n x n x P x P
tensor never exists.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, TypeVar

import torch
import torch.nn.functional as F

from fade_cli.config import MutualSettings
from fade_cli.engine.fusion import patch_scores_to_grid
from fade_cli.engine.memory_bank import QUERY_CHUNK, cosine_distance
from fade_cli.core.errors import InputError

# Similarities held at once (float32): query patches x the patches of a block of other images, 256 MB.
BLOCK_ELEMENTS = 64 * 2**20
# Images whose windows are averaged at once: bounds the float32 copy that pooling makes.
POOL_IMAGES = 16

T = TypeVar("T")


@dataclass
class MutualBatch:
    """What the first pass keeps of a batch of B images: everything the scoring pass needs.

    ``patches_by_size``: {size: (B, P, D)} L2-normalised patch features (float16 unless asked otherwise);
    ``class_tokens_bd``: CLIP class tokens at the classification size, for the re-scoring.
    """

    language_scores_b: torch.Tensor
    language_map_bhw: torch.Tensor
    class_tokens_bd: torch.Tensor
    patches_by_size: dict[int, torch.Tensor]
    grids: dict[int, int]

    def __len__(self) -> int:
        return self.language_scores_b.shape[0]


def concatenate(batches: Sequence[MutualBatch]) -> MutualBatch:
    """One :class:`MutualBatch` of the images of several, in order."""
    first = batches[0]
    return MutualBatch(
        language_scores_b=torch.cat([b.language_scores_b for b in batches]),
        language_map_bhw=torch.cat([b.language_map_bhw for b in batches]),
        class_tokens_bd=torch.cat([b.class_tokens_bd for b in batches]),
        patches_by_size={size: torch.cat([b.patches_by_size[size] for b in batches]) for size in first.patches_by_size},
        grids=dict(first.grids),
    )


def require_mutual_batch(count: int) -> None:
    """A run scored mutually needs images to compare with each other."""
    if count < 2:
        raise InputError(
            f"--mutual scores each image against the other images of the run, but the run has {count} image(s); "
            "give at least two (or drop --mutual)"
        )


ALONE_IN_GROUP = "mutual scoring: no other readable image in its group to compare it with"


def too_few_readable(readable: int, total: int) -> str:
    """Why a mutual run scored nothing although ``readable`` of its ``total`` images could be read."""
    if readable >= 2:  # each alone in its group
        return (f"mutual scoring needs at least two readable images in a group of images scored together, and the "
                f"{readable} readable images of the {total} were each alone in their group "
                "(the unreadable ones have error rows)")
    return (f"mutual scoring needs at least two readable images: each image is scored against the other images "
            f"of its batch, and only {readable} of the {total} image(s) could be read "
            "(the unreadable ones have error rows)")


def balanced_groups(items: Sequence[T], group: int) -> list[Sequence[T]]:
    """``items`` cut, in order, into as few groups of at most ``group`` as possible, their sizes within one."""
    if not items:
        return []
    count = math.ceil(len(items) / group)
    base, extra = divmod(len(items), count)
    groups, start = [], 0
    for index in range(count):
        size = base + (1 if index < extra else 0)
        groups.append(items[start : start + size])
        start += size
    return groups


def images_counted(others: int, fraction: float) -> int:
    """How many of the ``others`` images' distances a patch score averages: the fraction, at least one."""
    # The small epsilon keeps 0.3 * 10 at 3 whatever the rounding of the product.
    return max(1, min(others, math.floor(fraction * others + 1e-9)))


def neighbourhood_average(patches_npd: torch.Tensor, grid: int, degree: int) -> torch.Tensor:
    """Each patch's feature averaged over the ``degree`` x ``degree`` window around it, L2-normalised: (N, P, D).

    At the border the window holds only the patches inside the image. Degree 1 is the features themselves.
    The result keeps the input's dtype; the averaging runs in float32, a few images at a time.
    """
    if degree == 1:
        return patches_npd
    count, patches, dim = patches_npd.shape
    out = torch.empty_like(patches_npd)
    for start in range(0, count, POOL_IMAGES):
        chunk = patches_npd[start : start + POOL_IMAGES].float()
        image = chunk.reshape(-1, grid, grid, dim).permute(0, 3, 1, 2)
        pooled = F.avg_pool2d(image, degree, stride=1, padding=degree // 2, count_include_pad=False)
        out[start : start + POOL_IMAGES] = F.normalize(pooled.permute(0, 2, 3, 1).reshape(-1, patches, dim), dim=-1)
    return out


def nearest_similarity_per_image(
    queries_qd: torch.Tensor, keys_npd: torch.Tensor, block_elements: int = BLOCK_ELEMENTS
) -> torch.Tensor:
    """For each query row and each key image, the largest cosine similarity to that image's patches: (Q, N).

    The key images are taken in blocks so that a block's similarities stay under ``block_elements``.
    """
    count, patches, dim = keys_npd.shape
    images_per_block = max(1, block_elements // max(1, queries_qd.shape[0] * patches))
    queries = queries_qd.float()
    best = []
    for start in range(0, count, images_per_block):
        block = keys_npd[start : start + images_per_block]
        sims = queries @ block.reshape(-1, dim).float().T
        best.append(sims.view(queries.shape[0], block.shape[0], patches).amax(dim=2))
    return torch.cat(best, dim=1)


def mutual_patch_distances(
    patches_npd: torch.Tensor,
    fraction: float,
    query_chunk: int = QUERY_CHUNK,
    block_elements: int = BLOCK_ELEMENTS,
) -> torch.Tensor:
    """The mutual score of every patch of every image against the other images: (N, P).

    Score of patch p of image i: the mean over the ``images_counted`` other images j with the
    smallest d_j(p) of d_j(p) = min over q in j of 0.5 (1 - cos(p, q)). Query patches of all images
    are taken ``query_chunk`` rows at a time; the chunk sizes change the cost, never the result.
    """
    count, patches, dim = patches_npd.shape
    if count < 2:
        raise ValueError("mutual scoring needs at least two images")
    counted = images_counted(count - 1, fraction)
    flat = patches_npd.reshape(count * patches, dim)
    scores = []
    for start in range(0, flat.shape[0], query_chunk):
        rows = flat[start : start + query_chunk]
        sims = nearest_similarity_per_image(rows, patches_npd, block_elements)
        own_image = torch.arange(start, start + rows.shape[0], device=sims.device) // patches
        sims[torch.arange(rows.shape[0], device=sims.device), own_image] = -math.inf
        closest = sims.topk(counted, dim=1).values  # the largest similarities are the smallest distances
        scores.append(cosine_distance(closest).mean(dim=1))
    return torch.cat(scores).view(count, patches)


def mutual_vision_grid(patches_npd: torch.Tensor, grid: int, settings: MutualSettings) -> torch.Tensor:
    """The mutual map of one size, (N, grid, grid): each degree's patch scores, averaged over the degrees."""
    maps = [
        patch_scores_to_grid(mutual_patch_distances(neighbourhood_average(patches_npd, grid, degree), settings.fraction),
                             grid)
        for degree in settings.degrees
    ]
    return torch.stack(maps).mean(dim=0)


def rescore(scores_n: torch.Tensor, class_tokens_nd: torch.Tensor, neighbours: int) -> torch.Tensor:
    """Each score averaged with those of its ``neighbours`` most similar other images (cosine of class tokens).

    s'_i = (s_i + sum over the k nearest j of s_j) / (k + 1), k at most the number of other images.
    """
    count = scores_n.shape[0]
    k = min(neighbours, count - 1)
    if k < 1:
        return scores_n
    tokens = F.normalize(class_tokens_nd.float(), dim=-1)
    sims = tokens @ tokens.T
    sims.fill_diagonal_(-math.inf)
    nearest = sims.topk(k, dim=1).indices
    return (scores_n + scores_n[nearest].sum(dim=1)) / (k + 1)


def stored(patches_bnd: torch.Tensor, settings: MutualSettings) -> torch.Tensor:
    """Patch features as kept between the passes: float16 unless ``store_fp16`` is off."""
    return patches_bnd.to(torch.float16) if settings.store_fp16 else patches_bnd.float()


def vision_score_override(
    vision_map_bhw: torch.Tensor, group: MutualBatch, settings: MutualSettings
) -> Optional[torch.Tensor]:
    """The re-scored vision scores (max of each map, smoothed), or None when re-scoring is off."""
    if settings.rescore is None:
        return None
    return rescore(vision_map_bhw.flatten(1).amax(dim=1), group.class_tokens_bd, settings.rescore)
