"""DINOv2-style ViT with windowed attention, a resizable patch embedding and an interpolated position grid.

Token layout: with `w` windows per side, an image of `gh x gw` patches becomes `w*w` windows of
`(gh/w) x (gw/w)` patches, each with its own copy of the class token, stacked along the batch axis in
(image, window-row, window-col) order. Windowed blocks attend within a window; global blocks view the same
tensor as one sequence per image (all windows and their class tokens together).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rfkp.nn.linear import Linear
from rfkp.nn.patch_embed import ResizablePatchEmbed


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = Linear(dim, 3 * dim)
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-norm transformer block with layer scale (DINOv2)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.ls1 = nn.Parameter(torch.ones(dim))
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Module()  # holds fc1/fc2 under DINOv2's names; exact GELU between them (fused on CPU)
        self.mlp.fc1 = Linear(dim, hidden)
        self.mlp.fc2 = Linear(hidden, dim)
        self.ls2 = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, num_windows_sq: int, global_attn: bool) -> torch.Tensor:
        h = self.norm1(x)
        if global_attn and num_windows_sq > 1:
            bw, t, c = h.shape
            a = self.attn(h.reshape(bw // num_windows_sq, num_windows_sq * t, c)).reshape(bw, t, c)
        else:
            a = self.attn(h)
        x = x + a * self.ls1
        return x + self.mlp.fc2(self.mlp.fc1(self.norm2(x), "gelu")) * self.ls2


class WindowedViT(nn.Module):
    """Returns the layer-normed patch features after the blocks in `out_indexes` as (B, C, gh, gw) maps."""

    def __init__(
        self,
        *,
        dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        patch_size: int = 12,
        pos_grid: int = 48,
        out_indexes: tuple[int, ...] = (3, 6, 9, 12),
        windowed_blocks: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if max(out_indexes) > depth or min(out_indexes) < 1:
            raise ValueError(f"out_indexes {out_indexes} must lie in [1, {depth}]")
        self.dim = dim
        self.out_indexes = tuple(out_indexes)
        if windowed_blocks is None:  # every block up to the last output except the output blocks' indexes
            windowed_blocks = tuple(i for i in range(max(out_indexes) + 1) if i not in out_indexes)
        self.windowed_blocks = frozenset(windowed_blocks)
        self.patch_embed = ResizablePatchEmbed(dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_grid = pos_grid
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_grid * pos_grid + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(max(out_indexes)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self._pos_cache: dict[tuple, torch.Tensor] = {}

    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size

    def patch_pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        """Position embedding of the patch tokens for a gh x gw grid, (1, gh*gw, C) (bicubic, antialiased)."""
        grid = self.pos_embed[:, 1:]
        if (gh, gw) == (self.pos_grid, self.pos_grid):
            return grid
        # int(): under ONNX tracing the sizes arrive as tensors; the cached grid then exports as a constant
        key = (int(gh), int(gw), grid.dtype, grid.device, self.pos_embed._version)
        cacheable = not (torch.is_grad_enabled() and grid.requires_grad)
        if cacheable and key in self._pos_cache:
            return self._pos_cache[key]
        g = grid.reshape(1, self.pos_grid, self.pos_grid, self.dim).permute(0, 3, 1, 2).float()
        g = F.interpolate(g, size=(gh, gw), mode="bicubic", align_corners=False, antialias=True)
        out = g.permute(0, 2, 3, 1).reshape(1, gh * gw, self.dim).to(grid.dtype)
        if cacheable:
            self._pos_cache[key] = out
        return out

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - drop caches when moved or cast
        self._pos_cache = {}
        return super()._apply(fn, recurse)

    def forward(
        self, x: torch.Tensor, patch_size: int | None = None, num_windows: int = 2
    ) -> list[torch.Tensor]:
        B, _, H, W = x.shape
        p = patch_size or self.patch_size
        if H % (p * num_windows) or W % (p * num_windows):
            raise ValueError(
                f"input {H}x{W} must be a multiple of patch_size*num_windows = {p}*{num_windows} = {p * num_windows}"
            )
        gh, gw = H // p, W // p
        tokens = self.patch_embed(x, p) + self.patch_pos_embed(gh, gw)  # (B, gh*gw, C)
        cls = (self.cls_token + self.pos_embed[:, :1]).to(tokens.dtype)
        w = num_windows
        wh, ww = gh // w, gw // w
        # (B, gh, gw, C) -> (B, w, wh, w, ww, C) -> (B, w, w, wh, ww, C) -> (B*w*w, wh*ww, C)
        t = tokens.reshape(B, w, wh, w, ww, self.dim).permute(0, 1, 3, 2, 4, 5).reshape(B * w * w, wh * ww, self.dim)
        t = torch.cat([cls.expand(B * w * w, 1, self.dim), t], dim=1)
        feats = []
        for i, blk in enumerate(self.blocks):
            t = blk(t, w * w, global_attn=i not in self.windowed_blocks)
            if i + 1 in self.out_indexes:
                f = self.norm(t[:, 1:])
                f = f.reshape(B, w, w, wh, ww, self.dim).permute(0, 5, 1, 3, 2, 4).reshape(B, self.dim, gh, gw)
                feats.append(f)
        return feats
