"""Patch embedding whose kernel can be resized at call time (FlexiViT pseudo-inverse resize)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _resize_matrix(src: int, dst: int) -> torch.Tensor:
    """R (dst*dst, src*src): bilinear resize of a src x src patch to dst x dst, as a matrix."""
    basis = torch.eye(src * src, dtype=torch.float64).reshape(src * src, 1, src, src)
    resized = F.interpolate(basis, size=(dst, dst), mode="bilinear", align_corners=False, antialias=False)
    return resized.reshape(src * src, dst * dst).T


def resize_patch_kernel(weight: torch.Tensor, new_size: int) -> torch.Tensor:
    """Kernel w' with <resize(x), w'> = <x, w> for every patch x (least squares when shrinking).

    weight: (C_out, C_in, p, p) -> (C_out, C_in, new_size, new_size).
    """
    p = weight.shape[-1]
    if p == new_size:
        return weight
    R = _resize_matrix(p, new_size)  # (n*n, p*p)
    proj = torch.linalg.pinv(R.T)  # (n*n, p*p): w' = pinv(R^T) w
    flat = weight.reshape(-1, p * p).to(torch.float64)
    return (flat @ proj.T).reshape(*weight.shape[:2], new_size, new_size).to(weight.dtype)


class ResizablePatchEmbed(nn.Module):
    def __init__(self, dim: int, patch_size: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.weight = nn.Parameter(torch.zeros(dim, in_chans, patch_size, patch_size))
        self.bias = nn.Parameter(torch.zeros(dim))
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def _apply(self, fn, recurse=True):  # noqa: ANN001
        self._cache = {}
        return super()._apply(fn, recurse)

    def kernel(self, patch_size: int) -> torch.Tensor:
        if patch_size == self.patch_size:
            return self.weight
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return resize_patch_kernel(self.weight, patch_size)
        key = (patch_size, self.weight._version)  # in-place updates (optimiser steps) invalidate the cache
        if key not in self._cache:
            self._cache = {key: resize_patch_kernel(self.weight.detach(), patch_size)}
        return self._cache[key]

    def forward(self, x: torch.Tensor, patch_size: int | None = None) -> torch.Tensor:
        """(B, 3, H, W) -> (B, (H/p)*(W/p), dim), row-major patches."""
        p = patch_size or self.patch_size
        if x.shape[1] != self.weight.shape[1]:
            raise ValueError(f"expected {self.weight.shape[1]} input channels, got {x.shape[1]}")
        out = F.conv2d(x, self.kernel(p).to(x.dtype), self.bias.to(x.dtype), stride=p)
        return out.flatten(2).transpose(1, 2)
