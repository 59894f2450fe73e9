"""Combining per-size patch scores into maps, and language with vision (FADE_SPEC sections 4 to 6)."""
from __future__ import annotations

import numpy as np
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


def cells_inside(mask_hw: np.ndarray, grid: int) -> np.ndarray:
    """(grid, grid) bool: the cells of a ``grid`` x ``grid`` map of an image that hold at least one pixel of the
    image's bool ``mask_hw`` (the image is stretched to the square the model sees)."""
    height, width = mask_hw.shape
    row_edges = [(i * height // grid, max(i * height // grid + 1, -(-(i + 1) * height // grid))) for i in range(grid)]
    col_edges = [(j * width // grid, max(j * width // grid + 1, -(-(j + 1) * width // grid))) for j in range(grid)]
    rows = np.stack([mask_hw[top:min(bottom, height)].any(axis=0) for top, bottom in row_edges])
    return np.stack([rows[:, left:min(right, width)].any(axis=1) for left, right in col_edges], axis=1)


def masks_on_grid(inside: list, grid: int, device: torch.device) -> torch.Tensor:
    """(B, grid, grid) bool: each image's ROI cells (``None``: the whole image)."""
    cells = [np.ones((grid, grid), dtype=bool) if mask is None else cells_inside(mask, grid) for mask in inside]
    return torch.from_numpy(np.stack(cells)).to(device)
