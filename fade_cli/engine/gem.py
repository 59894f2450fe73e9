"""GEM: a second, language-aligned token stream through the last ViT blocks.

Written for open_clip 3.x vision transformers (batch-first blocks with
``nn.MultiheadAttention``). Every attention, the original one and GEM's
self-self attention, goes through ``scaled_dot_product_attention`` so that no
N x N matrix is materialised; both streams of a block share one qkv projection.
See FADE_SPEC.md section 2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from fade_cli.core.errors import ModelError

# F.normalize's default floor for a norm.
NORM_EPS = 1e-12


@dataclass
class VisionFeatures:
    """L2-normalised embeddings of one batch at one input size.

    ``*_cls_bd`` are (B, D); ``*_patches_bnd`` are (B, N, D) with N = grid * grid,
    patches in row-major order.
    """

    clip_cls_bd: torch.Tensor
    clip_patches_bnd: torch.Tensor
    gem_cls_bd: torch.Tensor
    gem_patches_bnd: torch.Tensor
    grid: int

    def patches(self, kind: str) -> torch.Tensor:
        return self.gem_patches_bnd if kind == "gem" else self.clip_patches_bnd


def resample_positional_embedding(pos_embed_nw: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize the patch part of a (1 + G*G, W) positional embedding to ``grid`` x ``grid``.

    Bicubic with antialiasing, as the published code does; the class-token
    position is kept as is.
    """
    class_pos, patch_pos = pos_embed_nw[:1], pos_embed_nw[1:]
    old_grid = int(round(patch_pos.shape[0] ** 0.5))
    if old_grid * old_grid != patch_pos.shape[0]:
        raise ModelError("the positional embedding is not a square patch grid")
    if old_grid == grid:
        return pos_embed_nw
    width = patch_pos.shape[1]
    image = patch_pos.reshape(1, old_grid, old_grid, width).permute(0, 3, 1, 2)
    image = F.interpolate(image.float(), size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    resized = image.permute(0, 2, 3, 1).reshape(grid * grid, width).to(pos_embed_nw.dtype)
    return torch.cat([class_pos, resized], dim=0)


def _check_supported(visual: nn.Module) -> None:
    if not hasattr(visual, "transformer") or not hasattr(visual, "conv1"):
        raise ModelError("GEM needs an open_clip VisionTransformer (a ViT); this model's vision tower is not one")
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "final_ln_after_pool", False):
        raise ModelError("vision towers with attentional pooling are not supported by GEM")
    for block in visual.transformer.resblocks:
        if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
            raise ModelError("GEM supports open_clip's standard ViT blocks (nn.MultiheadAttention) only")


class GemVisionEncoder(nn.Module):
    """Runs a CLIP ViT and returns CLIP and GEM embeddings of every token.

    ``depth`` is GEM's D: the last ``depth - 1`` blocks carry the GEM stream.
    ``temperature`` None means the per-image temperature of the paper.
    """

    def __init__(self, visual: nn.Module, depth: int = 7, iters: int = 1, temperature: Optional[float] = None):
        super().__init__()
        _check_supported(visual)
        blocks = list(visual.transformer.resblocks)
        if not 1 <= depth - 1 <= len(blocks):
            raise ModelError(f"GEM depth {depth} does not fit a ViT with {len(blocks)} blocks")
        self.visual = visual
        self.plain_blocks = blocks[: len(blocks) - (depth - 1)]
        self.gem_blocks = blocks[len(blocks) - (depth - 1):]
        self.iters = iters
        self.temperature = temperature
        self.patch_size = visual.conv1.kernel_size[0]
        # The dtype of the matrix weights (see fade_cli.engine.precision): activations are cast to it where
        # they enter a matrix product; the residual streams stay float32.
        self.matrix_dtype = visual.conv1.weight.dtype
        self._pos_cache: dict[int, torch.Tensor] = {}

    def positional_embedding(self, grid: int) -> torch.Tensor:
        if grid not in self._pos_cache:
            with torch.no_grad():
                self._pos_cache[grid] = resample_positional_embedding(self.visual.positional_embedding, grid)
        return self._pos_cache[grid]

    def embed_patches(self, pixels_bchw: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Patchify, add the class token and positions, apply ln_pre: (B, 1 + g*g, W)."""
        visual = self.visual
        x = visual.conv1(pixels_bchw.to(self.matrix_dtype)).to(pixels_bchw.dtype)
        grid = x.shape[-1]
        x = x.flatten(2).transpose(1, 2)
        class_token = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([class_token, x], dim=1)
        x = x + self.positional_embedding(grid).to(x.dtype)
        return visual.ln_pre(x), grid

    @torch.no_grad()
    def forward(self, pixels_bchw: torch.Tensor) -> VisionFeatures:
        x, grid = self.embed_patches(pixels_bchw)
        for block in self.plain_blocks:
            x = _plain_block(block, x)
        g = x
        for block in self.gem_blocks:
            x, g = _two_stream_block(block, x, g, self.iters, self.temperature)
        clip_tokens = self._project(x)
        gem_tokens = self._project(g)
        return VisionFeatures(
            clip_cls_bd=clip_tokens[:, 0],
            clip_patches_bnd=clip_tokens[:, 1:],
            gem_cls_bd=gem_tokens[:, 0],
            gem_patches_bnd=gem_tokens[:, 1:],
            grid=grid,
        )

    def _project(self, tokens_bnw: torch.Tensor) -> torch.Tensor:
        projected = self.visual.ln_post(tokens_bnw) @ self.visual.proj
        return F.normalize(projected.float(), dim=-1)


def _split_heads(block: nn.Module, h_bnw: torch.Tensor) -> torch.Tensor:
    """One shared qkv projection: (3, B, heads, N, head_dim), q, k, v on the first axis."""
    attn: nn.MultiheadAttention = block.attn
    batch, tokens, width = h_bnw.shape
    qkv = F.linear(h_bnw.to(attn.in_proj_weight.dtype), attn.in_proj_weight, attn.in_proj_bias)
    qkv = qkv.view(batch, tokens, 3, attn.num_heads, width // attn.num_heads).permute(2, 0, 3, 1, 4)
    return qkv


def _merge_heads(block: nn.Module, o_bhnd: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, head_dim = o_bhnd.shape
    merged = o_bhnd.transpose(1, 2).reshape(batch, tokens, heads * head_dim)
    return block.attn.out_proj(merged)


def _mlp_residual(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + block.ls_2(block.mlp(block.ln_2(x).to(block.mlp.c_fc.weight.dtype)))


def _plain_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    q, k, v = _split_heads(block, block.ln_1(x))
    x = x + block.ls_1(_merge_heads(block, F.scaled_dot_product_attention(q, k, v)))
    return _mlp_residual(block, x)


def _unit_and_scaled(z: torch.Tensor, inv_temp: Union[torch.Tensor, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``z`` L2-normalised over its last axis, and that times ``inv_temp``: contiguous, in z's dtype.

    The norm is accumulated in float32. In fp32 this is F.normalize's arithmetic.
    In bf16/fp16 each row is multiplied by its scale rounded to z's dtype: that
    changes a row's length by at most 2^-9 (as much as rounding its elements
    does), and arithmetic mixing dtypes on these large tensors (3 x B x heads x N
    x head_dim) is ten times slower on a CPU than arithmetic in one dtype.
    """
    with torch.autocast(z.device.type, enabled=False):
        norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True, dtype=torch.float32).clamp_min(NORM_EPS)
        if z.dtype == torch.float32:
            unit = torch.div(z, norm, out=_empty_contiguous(z))
            return unit, torch.mul(unit, inv_temp, out=_empty_contiguous(z))
        inverse = norm.reciprocal()
        unit = torch.mul(z, inverse.to(z.dtype), out=_empty_contiguous(z))
        return unit, torch.mul(z, (inverse * inv_temp).to(z.dtype), out=_empty_contiguous(z))


def _empty_contiguous(like: torch.Tensor) -> torch.Tensor:
    # Contiguous, so that flattening the q/k/v axis into the batch is a view; torch.compile also
    # cannot trace out= tensors with other strides.
    return torch.empty(like.shape, dtype=like.dtype, device=like.device)


def _self_self_attention(
    qkv_sbhnd: torch.Tensor, v: torch.Tensor, inv_temp: Union[torch.Tensor, float], iters: int
) -> torch.Tensor:
    """GEM's self-self attention of q, k and v, each applied to the values, averaged.

    ``qkv_sbhnd`` is q, k and v stacked on a first axis of 3 (3, B, heads, N,
    head_dim); they go through the attention kernel as one batch of 3B. The
    per-image inverse temperature (B, 1, 1, 1) is folded into the queries so
    that the fused kernel can run with scale 1.
    """
    z = qkv_sbhnd
    for _ in range(iters):
        unit, scaled = _unit_and_scaled(z, inv_temp)
        z = F.scaled_dot_product_attention(scaled.flatten(0, 1), unit.flatten(0, 1), unit.flatten(0, 1), scale=1.0)
        z = z.unflatten(0, qkv_sbhnd.shape[:2])
    unit, scaled = _unit_and_scaled(z, inv_temp)
    out = F.scaled_dot_product_attention(scaled.flatten(0, 1), unit.flatten(0, 1), v.repeat(3, 1, 1, 1), scale=1.0)
    return out.unflatten(0, qkv_sbhnd.shape[:2]).mean(dim=0)


def _two_stream_block(
    block: nn.Module, x: torch.Tensor, g: torch.Tensor, iters: int, temperature: Optional[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    h = block.ln_1(x)
    qkv = _split_heads(block, h)
    q, k, v = qkv[0], qkv[1], qkv[2]
    head_dim = q.shape[-1]
    inv_temp: Union[torch.Tensor, float]
    if temperature is None:
        # Kept in float32: rounded to bf16 it would scale every attention logit of the image by up to 0.4 %.
        inv_temp = (h.float().norm(dim=-1).mean(dim=1) * head_dim**-0.5).view(-1, 1, 1, 1)
    else:
        inv_temp = temperature  # a Python number: a tensor made from it would be a blocking copy to the GPU

    gem_out = _self_self_attention(qkv, v, inv_temp, iters)
    g = g + block.ls_1(_merge_heads(block, gem_out))

    x = x + block.ls_1(_merge_heads(block, F.scaled_dot_product_attention(q, k, v)))
    return _mlp_residual(block, x), g
