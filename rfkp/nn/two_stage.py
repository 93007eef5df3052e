"""Two-stage query selection: per-token proposals on the projector memory, top-k by class logit."""

from __future__ import annotations

import torch
from torch import nn

from rfkp.nn.layers import MLP, apply_box_delta
from rfkp.nn.linear import Linear


def grid_proposals(h: int, w: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """One proposal box per token of an h x w map: centre of the cell, side 0.05.

    Returns proposals (h*w, 4) cxcywh and a validity mask (h*w,): boxes whose every coordinate lies in
    (0.01, 0.99); invalid proposals (and their memory) are zeroed, as in the reference model.
    """
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=device),
        torch.arange(w, dtype=torch.float32, device=device),
        indexing="ij",
    )
    cxcy = torch.stack([(xs + 0.5) / w, (ys + 0.5) / h], dim=-1).reshape(-1, 2)
    props = torch.cat([cxcy, torch.full_like(cxcy, 0.05)], dim=-1)
    valid = ((props > 0.01) & (props < 0.99)).all(-1)
    props = props.masked_fill(~valid[:, None], 0.0)
    return props.to(dtype), valid


class TwoStage(nn.Module):
    """Per query group: a linear + LayerNorm on the memory, class and box heads, top-k selection."""

    def __init__(self, *, dim: int, num_classes: int, groups: int) -> None:
        super().__init__()
        self.enc_output = nn.ModuleList(Linear(dim, dim) for _ in range(groups))
        self.enc_output_norm = nn.ModuleList(nn.LayerNorm(dim) for _ in range(groups))
        self.enc_out_class_embed = nn.ModuleList(Linear(dim, num_classes) for _ in range(groups))
        self.enc_out_bbox_embed = nn.ModuleList(MLP(dim, dim, 4, 3) for _ in range(groups))

    def forward(
        self, memory: torch.Tensor, hw: tuple[int, int], num_queries: int, groups: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """memory (B, S, C) of one h x w level -> for the first `groups` groups, concatenated along queries:
        selected features (B, G*k, C), boxes (B, G*k, 4) cxcywh (differentiable), class logits (B, G*k, classes),
        with k = min(num_queries, S)."""
        B, S, C = memory.shape
        props, valid = grid_proposals(hw[0], hw[1], memory.device, memory.dtype)
        if not bool(valid.all()):
            memory = memory * valid[None, :, None].to(memory.dtype)
        k = min(num_queries, S)
        feats, boxes, logits = [], [], []
        for g in range(groups):
            normed = self.enc_output_norm[g](self.enc_output[g](memory))
            cls = self.enc_out_class_embed[g](normed)
            idx = torch.topk(cls.max(-1).values, k, dim=1).indices  # (B, k)
            sel = torch.gather(normed, 1, idx.unsqueeze(-1).expand(B, k, C))
            prop = props[idx]  # (B, k, 4)
            feats.append(sel)
            boxes.append(apply_box_delta(self.enc_out_bbox_embed[g](sel), prop))
            logits.append(torch.gather(cls, 1, idx.unsqueeze(-1).expand(B, k, cls.shape[-1])))
        return torch.cat(feats, 1), torch.cat(boxes, 1), torch.cat(logits, 1)
