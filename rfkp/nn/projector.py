"""C2f-style projector: concatenated ViT features -> `out_channels` map with channel LayerNorm (stride kept).

The conv blocks normalise with a channel LayerNorm (the released model) or BatchNorm (`norm="batch"`, the peer's
`layer_norm=False`); the projector's output norm is a LayerNorm either way."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rfkp.config import PROJECTOR_NORMS


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) map."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the normalised shape comes from the weight, a constant (an input size is not, in an exported graph)
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNormAct(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, norm: str = "layer") -> None:
        super().__init__()
        if norm not in PROJECTOR_NORMS:
            raise ValueError(f"norm must be one of {PROJECTOR_NORMS}, got {norm!r}")
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False)
        self.norm = ChannelLayerNorm(c_out) if norm == "layer" else nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.norm(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 conv-norm-SiLU layers, no shortcut."""

    def __init__(self, channels: int, norm: str = "layer") -> None:
        super().__init__()
        self.cv1 = ConvNormAct(channels, channels, 3, norm)
        self.cv2 = ConvNormAct(channels, channels, 3, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv2(self.cv1(x))


class Projector(nn.Module):
    """C2f: split a 1x1 projection in two halves, chain `num_blocks` bottlenecks on the second half, fuse all."""

    def __init__(self, in_channels: int, out_channels: int = 256, num_blocks: int = 3, norm: str = "layer") -> None:
        super().__init__()
        self.hidden = out_channels // 2
        self.cv1 = ConvNormAct(in_channels, 2 * self.hidden, 1, norm)
        self.blocks = nn.ModuleList(Bottleneck(self.hidden, norm) for _ in range(num_blocks))
        self.cv2 = ConvNormAct((2 + num_blocks) * self.hidden, out_channels, 1, norm)
        self.norm = ChannelLayerNorm(out_channels)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """features: L maps (B, C_i, h, w) of the same size -> (B, out_channels, h, w)."""
        x = torch.cat(features, dim=1) if len(features) > 1 else features[0]
        ys = list(self.cv1(x).split(self.hidden, dim=1))
        for blk in self.blocks:
            ys.append(blk(ys[-1]))
        return self.norm(self.cv2(torch.cat(ys, dim=1)))
