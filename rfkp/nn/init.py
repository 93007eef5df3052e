"""Initialisation for training from scratch (a loaded checkpoint overwrites all of it)."""

from __future__ import annotations

import math

import torch
from torch import nn

from rfkp.nn.deformable import DeformableAttention
from rfkp.nn.detector import KeypointDETR


def _init_deformable(m: DeformableAttention) -> None:
    nn.init.zeros_(m.sampling_offsets.weight)
    theta = torch.arange(m.heads, dtype=torch.float32) * (2 * math.pi / m.heads)
    grid = torch.stack([theta.cos(), theta.sin()], -1)
    grid = grid / grid.abs().max(-1, keepdim=True).values
    grid = grid.view(m.heads, 1, 1, 2).repeat(1, m.levels, m.points, 1)
    grid = grid * torch.arange(1, m.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
    with torch.no_grad():
        m.sampling_offsets.bias.copy_(grid.flatten())
    nn.init.zeros_(m.attention_weights.weight)
    nn.init.zeros_(m.attention_weights.bias)
    nn.init.xavier_uniform_(m.value_proj.weight)
    nn.init.zeros_(m.value_proj.bias)
    nn.init.xavier_uniform_(m.output_proj.weight)
    nn.init.zeros_(m.output_proj.bias)


def init_weights(model: KeypointDETR, prior_prob: float = 0.01) -> None:
    vit = model.backbone.vit
    nn.init.trunc_normal_(vit.pos_embed, std=0.02)
    nn.init.normal_(vit.cls_token, std=1e-6)
    nn.init.kaiming_uniform_(vit.patch_embed.weight, a=math.sqrt(5))
    for blk in vit.blocks:
        for lin in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
            nn.init.trunc_normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        nn.init.ones_(blk.ls1)
        nn.init.ones_(blk.ls2)
    for m in model.modules():
        if isinstance(m, DeformableAttention):
            _init_deformable(m)
    bias = -math.log((1 - prior_prob) / prior_prob)
    for cls in [model.class_embed, *model.two_stage.enc_out_class_embed]:
        nn.init.constant_(cls.bias, bias)
    for mlp in [model.bbox_embed, model.keypoint_embed, *model.two_stage.enc_out_bbox_embed,
                *model.enc_out_keypoint_embed]:
        nn.init.zeros_(mlp.layers[-1].weight)
        nn.init.zeros_(mlp.layers[-1].bias)
    nn.init.zeros_(model.refpoint_embed.weight)
    for layer in model.decoder.layers:
        nn.init.constant_(layer.instance_kp_layer_scale, 1e-6)
