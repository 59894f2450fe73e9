"""Combining per-size patch scores into maps, and language with vision (FADE_SPEC sections 4 to 6)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def patch_scores_to_grid(scores_bn: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, grid*grid) row-major patch scores to (B, grid, grid)."""
    return scores_bn.reshape(scores_bn.shape[0], grid, grid)


def resize_maps(maps_bhw: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize with half-pixel centres (align_corners=False), no antialiasing."""
    if maps_bhw.shape[-1] == size and maps_bhw.shape[-2] == size:
        return maps_bhw
    return F.interpolate(maps_bhw[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def average_over_sizes(grids: list[torch.Tensor]) -> torch.Tensor:
    """Resize each size's (B, g, g) map to the largest grid and average them."""
    target = max(g.shape[-1] for g in grids)
    return torch.stack([resize_maps(g, target) for g in grids]).mean(dim=0)


def fuse_maps(language_bhw: torch.Tensor, vision_bhw: torch.Tensor, weight: float) -> torch.Tensor:
    """(1 - w) * language + w * vision, before clipping."""
    return (1.0 - weight) * language_bhw + weight * vision_bhw
