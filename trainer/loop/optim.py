"""AdamW parameter groups: a lower, layer-wise decayed learning rate for the ViT backbone.

Layer ids: 0 for the patch embedding, positional embedding and class token, ``i + 1`` for block ``i``, and
``depth`` for the final norm. A ViT parameter of layer ``l`` gets ``lr_backbone * layer_decay ** (depth + 1 - l)``:
the last block ``lr_backbone * layer_decay``, the embeddings the smallest rate. Everything else
(projectors, two-stage, decoder, heads) is new to the task and gets ``lr``. Biases, norms, embeddings and layer
scales are not weight-decayed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

_VIT_PREFIX = "backbone.vit."
_BLOCK = re.compile(r"^backbone\.vit\.blocks\.(\d+)\.")
_NO_DECAY_NAMES = ("pos_embed", "cls_token", "ls1", "ls2", "query_feat", "refpoint_embed", "level_embed")


@dataclass(frozen=True)
class OptimizerSettings:
    lr: float = 1e-4
    lr_backbone: float = 1.5e-4
    layer_decay: float = 0.8
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)


def backbone_depth_of(name: str, depth: int) -> int | None:
    """ViT layer id of a parameter: 0 for the patch/position embeddings, ``i + 1`` for block ``i``, None if
    the parameter is not in the ViT."""
    if not name.startswith(_VIT_PREFIX):
        return None
    match = _BLOCK.match(name)
    if match:
        return int(match.group(1)) + 1
    if name.startswith(_VIT_PREFIX + "norm") or name.startswith(_VIT_PREFIX + "final_norm"):
        return depth
    return 0


def _decays(name: str, param: nn.Parameter) -> bool:
    return param.ndim > 1 and not any(token in name for token in _NO_DECAY_NAMES)


def parameter_groups(model: nn.Module, settings: OptimizerSettings, vit_depth: int) -> list[dict[str, Any]]:
    """One AdamW group per (learning rate, weight decay) pair; each group records its ``lr_scale`` names."""
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = backbone_depth_of(name, vit_depth)
        if layer is None:
            lr = settings.lr
        else:
            lr = settings.lr_backbone * settings.layer_decay ** (vit_depth + 1 - layer)
        wd = settings.weight_decay if _decays(name, param) else 0.0
        group = groups.setdefault((lr, wd), {"params": [], "names": [], "lr": lr, "weight_decay": wd})
        group["params"].append(param)
        group["names"].append(name)
    return sorted(groups.values(), key=lambda g: (g["lr"], g["weight_decay"]))


def build_optimizer(model: nn.Module, settings: OptimizerSettings, vit_depth: int) -> torch.optim.AdamW:
    groups = parameter_groups(model, settings, vit_depth)
    for group in groups:
        group["initial_lr"] = group["lr"]
    return torch.optim.AdamW(groups, lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay)
