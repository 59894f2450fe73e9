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
# Searching in bf16/fp16: candidates per query beyond k whose similarity is recomputed in float32. A bf16
# similarity near 1 is rounded to a multiple of 2^-8: the true nearest is among the first few candidates.
EXTRA_CANDIDATES = 7


def top_k_similarity(
    queries_nd: torch.Tensor, bank_md: torch.Tensor, k: int, low_bank_md: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """The k largest cosine similarities of each query row against the bank: (N, k), descending, float32.

    Both inputs are L2-normalised. The bank is scanned in blocks and the running
    top-k merged, so memory stays bounded by the chunk sizes. With ``low_bank_md``
    (the bank in bf16 or fp16) the nearest candidates are found with products in that
    precision and their similarities recomputed in float32: the values are float32's,
    only the choice among near-ties can differ.
    """
    if bank_md.shape[0] < k:
        raise ValueError(f"the memory bank holds {bank_md.shape[0]} patches, fewer than k={k}")
    results = []
    for q_start in range(0, queries_nd.shape[0], QUERY_CHUNK):
        q = queries_nd[q_start : q_start + QUERY_CHUNK]
        if low_bank_md is None:
            results.append(_top_k_values(q, bank_md, k))
        else:
            candidates = _top_k_indices(q.to(low_bank_md.dtype), low_bank_md, min(k + EXTRA_CANDIDATES, len(bank_md)))
            exact = torch.einsum("nd,nkd->nk", q, bank_md[candidates])
            results.append(exact.topk(k, dim=1).values)
    return torch.cat(results)


def cosine_distance(similarities: torch.Tensor) -> torch.Tensor:
    """The patch distance of FADE_SPEC section 5, 0.5 * (1 - cos), in [0, 1]."""
    return 0.5 * (1.0 - similarities)


def _top_k_values(q_nd: torch.Tensor, bank_md: torch.Tensor, k: int) -> torch.Tensor:
    best: Optional[torch.Tensor] = None
    for b_start in range(0, bank_md.shape[0], BANK_CHUNK):
        sims = q_nd @ bank_md[b_start : b_start + BANK_CHUNK].T
        block = sims.topk(min(k, sims.shape[1]), dim=1).values
        best = block if best is None else torch.cat([best, block], dim=1).topk(k, dim=1).values
    return best


def _top_k_indices(q_nd: torch.Tensor, bank_md: torch.Tensor, k: int) -> torch.Tensor:
    """Bank rows of the k largest similarities of each query row, (N, k)."""
    best_values: Optional[torch.Tensor] = None
    best_indices: Optional[torch.Tensor] = None
    for b_start in range(0, bank_md.shape[0], BANK_CHUNK):
        sims = q_nd @ bank_md[b_start : b_start + BANK_CHUNK].T
        values, indices = sims.topk(min(k, sims.shape[1]), dim=1)
        indices = indices + b_start
        if best_values is not None:
            values, indices = torch.cat([best_values, values], dim=1), torch.cat([best_indices, indices], dim=1)
            values, order = values.topk(k, dim=1)
            indices = indices.gather(1, order)
        best_values, best_indices = values, indices
    return best_indices


def knn_distance(similarities_k: torch.Tensor, k: int) -> torch.Tensor:
    """0.5 * (1 - cos) to the k-th nearest neighbour, from descending top-k similarities (last dimension)."""
    return cosine_distance(similarities_k[..., k - 1])


class MemoryBank:
    """Reference patch embeddings per input size: {size: (M, D) normalised}."""

    def __init__(self, patches_by_size: Optional[dict[int, torch.Tensor]] = None,
                 counts_by_size: Optional[dict[int, list[int]]] = None):
        self.patches_by_size: dict[int, torch.Tensor] = dict(patches_by_size or {})
        # Patches of each reference, in order (an ROI keeps only some of them); None: all references alike.
        self.counts_by_size: Optional[dict[int, list[int]]] = (
            counts_by_size if counts_by_size is not None else None if self.patches_by_size else {})
        self._low_precision: dict[tuple[int, torch.dtype], torch.Tensor] = {}  # cast once, for the searches

    def __bool__(self) -> bool:
        return bool(self.patches_by_size)

    def add(self, size: int, patches_bnd: torch.Tensor, keep_bn: Optional[torch.Tensor] = None) -> None:
        """Append a batch of images' patches at one size; with ``keep_bn`` (bool, B x N) only the patches kept."""
        counts = [patches_bnd.shape[1]] * patches_bnd.shape[0] if keep_bn is None else keep_bn.sum(dim=1).tolist()
        if self.counts_by_size is not None:
            self.counts_by_size.setdefault(size, []).extend(int(count) for count in counts)
        flat = patches_bnd[keep_bn] if keep_bn is not None else patches_bnd.reshape(-1, patches_bnd.shape[-1])
        current = self.patches_by_size.get(size)
        self.patches_by_size[size] = flat if current is None else torch.cat([current, flat])
        self._low_precision = {key: value for key, value in self._low_precision.items() if key[0] != size}

    def without_reference(self, index: int, count: int) -> "MemoryBank":
        """A bank of the same patches but those of reference ``index`` (of ``count``)."""
        kept, counts = {}, None
        for size, patches_md in self.patches_by_size.items():
            if self.counts_by_size is None or size not in self.counts_by_size:
                per_reference = patches_md.shape[0] // count
                start, stop = index * per_reference, (index + 1) * per_reference
            else:
                sizes = self.counts_by_size[size]
                start = sum(sizes[:index])
                stop = start + sizes[index]
                counts = counts or {}
                counts[size] = sizes[:index] + sizes[index + 1 :]
            kept[size] = torch.cat([patches_md[:start], patches_md[stop:]])
        return MemoryBank(kept, counts)

    def patch_distances(
        self, size: int, query_patches_bnd: torch.Tensor, use_query: bool, search_dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Per-patch anomaly distance (B, N) for one size.

        Against the references only, the 1st neighbour counts; when the query's
        own patches are part of the bank, the 2nd (the 1st is the patch itself).
        A ``search_dtype`` other than float32 finds the neighbours among the
        references with products in that dtype (see :func:`top_k_similarity`).
        """
        k = 2 if use_query else 1
        batch, patches, dim = query_patches_bnd.shape
        candidates = []
        bank = self.patches_by_size.get(size)
        if bank is not None:
            # The bank is shared by the batch: one chunked search over all its patches.
            flat = query_patches_bnd.reshape(batch * patches, dim)
            bank = bank.to(flat.device)
            low = self._low_precision_bank(size, bank, search_dtype)
            nearest = top_k_similarity(flat, bank, min(k, bank.shape[0]), low)
            candidates.append(nearest.reshape(batch, patches, -1))
        if use_query:
            # Always float32: a query's own patches are near-ties by the thousand (smooth GEM features), and
            # the zero-shot multiplier (80) would make a neighbour missed among them visible in the map.
            candidates.append(torch.stack([top_k_similarity(query, query, k) for query in query_patches_bnd]))
        if not candidates:
            raise ValueError("the vision branch needs reference images or the query's own patches")
        merged = torch.cat(candidates, dim=2).topk(k, dim=2).values
        return knn_distance(merged, k)

    def _low_precision_bank(self, size: int, bank_md: torch.Tensor, dtype: torch.dtype) -> Optional[torch.Tensor]:
        if dtype == torch.float32:
            return None
        key = (size, dtype)
        if key not in self._low_precision or self._low_precision[key].device != bank_md.device:
            self._low_precision[key] = bank_md.to(dtype)
        return self._low_precision[key]
