"""Vision memory bank: nearest reference patches by cosine similarity (FADE_SPEC section 5).

The search is chunked matrix products with top-k on the bank's device, so the
full query x bank similarity matrix never exists for large banks.
"""
from __future__ import annotations

from typing import Optional

import torch

# Query patches per chunk; a chunk's similarity block is CHUNK x bank size floats.
QUERY_CHUNK = 1024
BANK_CHUNK = 16384


def top_k_similarity(queries_nd: torch.Tensor, bank_md: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest cosine similarities of each query row against the bank: (N, k), descending.

    Both inputs are L2-normalised. The bank is scanned in blocks and the running
    top-k merged, so memory stays bounded by the chunk sizes.
    """
    if bank_md.shape[0] < k:
        raise ValueError(f"the memory bank holds {bank_md.shape[0]} patches, fewer than k={k}")
    results = []
    for q_start in range(0, queries_nd.shape[0], QUERY_CHUNK):
        q = queries_nd[q_start : q_start + QUERY_CHUNK]
        best: Optional[torch.Tensor] = None
        for b_start in range(0, bank_md.shape[0], BANK_CHUNK):
            sims = q @ bank_md[b_start : b_start + BANK_CHUNK].T
            block = sims.topk(min(k, sims.shape[1]), dim=1).values
            best = block if best is None else torch.cat([best, block], dim=1).topk(k, dim=1).values
        results.append(best)
    return torch.cat(results)


def cosine_distance(similarities: torch.Tensor) -> torch.Tensor:
    """The patch distance of FADE_SPEC section 5, 0.5 * (1 - cos), in [0, 1]."""
    return 0.5 * (1.0 - similarities)


def knn_distance(similarities_k: torch.Tensor, k: int) -> torch.Tensor:
    """0.5 * (1 - cos) to the k-th nearest neighbour, from descending top-k similarities (last dimension)."""
    return cosine_distance(similarities_k[..., k - 1])


class MemoryBank:
    """Reference patch embeddings per input size: {size: (M, D) normalised}."""

    def __init__(self, patches_by_size: Optional[dict[int, torch.Tensor]] = None):
        self.patches_by_size: dict[int, torch.Tensor] = dict(patches_by_size or {})

    def __bool__(self) -> bool:
        return bool(self.patches_by_size)

    def add(self, size: int, patches_bnd: torch.Tensor) -> None:
        """Append a batch of images' patches at one size."""
        flat = patches_bnd.reshape(-1, patches_bnd.shape[-1])
        current = self.patches_by_size.get(size)
        self.patches_by_size[size] = flat if current is None else torch.cat([current, flat])

    def patch_distances(self, size: int, query_patches_bnd: torch.Tensor, use_query: bool) -> torch.Tensor:
        """Per-patch anomaly distance (B, N) for one size.

        Against the references only, the 1st neighbour counts; when the query's
        own patches are part of the bank, the 2nd (the 1st is the patch itself).
        """
        k = 2 if use_query else 1
        batch, patches, dim = query_patches_bnd.shape
        candidates = []
        bank = self.patches_by_size.get(size)
        if bank is not None:
            # The bank is shared by the batch: one chunked search over all its patches.
            flat = query_patches_bnd.reshape(batch * patches, dim)
            nearest = top_k_similarity(flat, bank.to(flat.device), min(k, bank.shape[0]))
            candidates.append(nearest.reshape(batch, patches, -1))
        if use_query:
            candidates.append(torch.stack([top_k_similarity(query, query, k) for query in query_patches_bnd]))
        if not candidates:
            raise ValueError("the vision branch needs reference images or the query's own patches")
        merged = torch.cat(candidates, dim=2).topk(k, dim=2).values
        return knn_distance(merged, k)
